"""Mount points, without FUSE: lift what a dead mount left behind, find a mount in the kernel's
table, raise its readahead, unmount. (Kept apart from the mounts themselves so that commands that
only unmount load neither the compiled file system nor pyfuse3 and trio.)"""

from __future__ import annotations

import errno
import logging
import os
import subprocess
from pathlib import Path

from ..errors import StateError

__all__ = ["unmount"]


log = logging.getLogger(__name__)

# What statfs() says on a mount whose process died: ENOTCONN, or ECONNABORTED on newer kernels.
DEAD_MOUNT = (errno.ENOTCONN, errno.ECONNABORTED)


def answers(mountpoint: Path) -> bool:
    """Whether a mount at ``mountpoint`` is served now: asked with statfs, which the kernel never
    answers from its cache (a mount whose process is dying, or has died, does not)."""
    try:
        os.statvfs(mountpoint)
    except OSError:
        return False
    return os.path.ismount(mountpoint)


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


def raise_readahead(mountpoint: Path, kib: int = 1024) -> None:
    """Let the kernel read ahead ``kib`` KiB of a sequentially read file, in requests of up to
    1 MiB (FUSE's max_pages): with the default 128 KiB, a sequential reader costs the mount a
    request per 128 KiB. Measured cold over 1 GiB with the pyfuse3 mount: 0.6-1.1 GB/s with
    128 KiB, 1.0-1.3 GB/s with 1 MiB (fio, which asks for sequential readahead and so doubles the
    window: 1.3-1.4), and less again with 2 and 4 MiB (0.7-1.0 with fio), against 1.0-1.6 GB/s
    for the plain file. The knob is the mount's backing device info in sysfs, which only root
    may change; others keep the default."""
    # Run once the mount serves: the stat is answered by the file system, which completes FUSE's
    # INIT (that caps readahead at 128 KiB); only then does the new value hold.
    try:
        os.stat(mountpoint)
        fields = mount_fields(mountpoint)
        if fields:
            Path(f"/sys/class/bdi/{fields[2]}/read_ahead_kb").write_text(f"{kib}\n")
    except OSError as exc:
        log.debug("%s: readahead left at the default (%s)", mountpoint, exc.strerror)
