"""Mount points, without FUSE: lift what a dead mount left behind, unmount. (Kept apart from
:mod:`vhw.console.mount` so that commands that only unmount do not import pyfuse3 and trio.)"""

from __future__ import annotations

import errno
import logging
import os
import subprocess
from pathlib import Path

from ..errors import StateError

log = logging.getLogger(__name__)

# What statfs() says on a mount whose process died: ENOTCONN, or ECONNABORTED on newer kernels.
DEAD_MOUNT = (errno.ENOTCONN, errno.ECONNABORTED)


def clear_stale(mountpoint: Path) -> None:
    """A mount whose process died leaves a dead mount point behind: lift it.

    Asked with statfs, which the kernel never answers from its cache (a stat of the mount's root
    would be, for as long as the root's attributes are cached)."""
    try:
        os.statvfs(mountpoint)
    except OSError as exc:
        if exc.errno in DEAD_MOUNT:
            log.warning("%s: clearing a mount left by a process that died", mountpoint)
            subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], capture_output=True)
        else:
            raise StateError(f"{mountpoint}: cannot use as a mount point ({exc.strerror})") from None
    if os.path.ismount(mountpoint):
        raise StateError(f"{mountpoint} is already a mount point", hint="vhw console unmount it first")
    if not mountpoint.is_dir():
        raise StateError(f"{mountpoint} is not a folder")


def mount_fields(mountpoint: Path) -> list[str] | None:
    """The kernel's entry for a mount at ``mountpoint`` (its line of /proc/self/mountinfo, split:
    field 2 is the device, field 4 the mount point), or None while there is none. Unlike
    ``os.path.ismount``, it does not stat the mount: it holds while a stat would fail (a mount
    not served yet, or one whose process has closed its connection)."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if len(fields) > 4 and fields[4] == str(mountpoint):
            return fields
    return None


def is_dead_mount(mountpoint: Path) -> bool:
    """A mount whose process died (statfs answers ENOTCONN or ECONNABORTED)."""
    try:
        os.statvfs(mountpoint)
    except OSError as exc:
        return exc.errno in DEAD_MOUNT
    return False


def unmount(mountpoint: Path) -> None:
    if not os.path.ismount(mountpoint) and not is_dead_mount(mountpoint):
        raise StateError(f"{mountpoint}: not mounted")
    proc = subprocess.run(["fusermount3", "-u", str(mountpoint)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise StateError(f"{mountpoint}: cannot unmount ({proc.stderr.strip() or 'not mounted'})")
