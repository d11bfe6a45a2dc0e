"""The sandbox a title runs in (S35): bubblewrap, seeing its own title and its save folder only.

A title is a program a publisher wrote. Run as the user, it could read everything the user can:
``console.json``, and from it the console ROM, the memory card and the HDD, which is everything
the threat model calls "holding the console". So ``vhw console play`` runs it in bubblewrap
(Debian's ``bubblewrap``), which builds it a root of its own:

* ``/title``   its own title, read-only, from the decrypting mount (no other title);
* ``/saves``   its save folder on the memory card, read-write (absent without a card);
* ``/usr``     the system's runtime, read-only (``/bin``, ``/lib*`` as on the host), and
  ``/etc/ld.so.cache`` for the dynamic linker; a fresh ``/tmp``, a private ``/proc`` and a
  minimal ``/dev`` (null, zero, random, urandom, tty: no block devices, no device files of vhw);
* the rest of the root read-only and empty: no home, no console folder, no ``/work``;
* new user, PID, IPC, UTS, cgroup and network namespaces (the network only if the title's
  authenticated metadata asks for it: ``"network": true``), all capabilities dropped, no new
  privileges, its own session (no terminal injection), and it dies with ``vhw``;
* a scrubbed environment: ``PATH``, ``HOME=/tmp``, ``LANG``, and the ``VHW_TITLE_ID``,
  ``VHW_TITLE_KIND``, ``VHW_SAVE_DIR`` and ``VHW_SAVE_ON`` a title is documented to get.

:func:`command` is pure: it builds the command line from what the caller found.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from ..errors import StateError

BWRAP = "bwrap"
TITLE_DIR = "/title"
SAVE_DIR = "/saves"
RUNTIME_LINKS = ("bin", "lib", "lib32", "lib64", "libx32", "sbin")
EXTRA_RO = ("/etc/ld.so.cache", "/etc/alternatives", "/etc/localtime")


def bwrap() -> str:
    """The bubblewrap executable, or the reason there is none."""
    found = shutil.which(BWRAP)
    if not found:
        raise StateError(
            "titles run in a sandbox, and bubblewrap is not installed",
            hint="install Debian's bubblewrap package (`make demo` and `make test` do)",
        )
    return found


def python_runtime() -> tuple[str, list[str]]:
    """The interpreter Python titles run with: the system's own (not a virtualenv's, which the
    sandbox does not show), and any folder outside /usr it needs."""
    exe = os.path.realpath(sys.executable)
    extra = [] if exe.startswith("/usr/") else [os.path.realpath(sys.base_prefix)]
    return exe, extra


def command(
    *,
    title_dir: Path,
    entry: str,
    args: Sequence[str],
    saves: Path | None,
    title_id: str,
    saves_on: str = "the memory card",
    kind: str,
    network: bool = False,
    bwrap_path: str = BWRAP,
    host_root: Path = Path("/"),
) -> list[str]:
    """The command that runs ``entry`` (a path inside ``title_dir``, already checked to be one of
    the title's files) in the sandbox."""
    cmd = [bwrap_path, "--die-with-parent", "--new-session", "--unshare-all"]
    if network:
        cmd.append("--share-net")
    cmd += ["--uid", "1000", "--gid", "1000", "--cap-drop", "ALL"]
    cmd += ["--ro-bind", "/usr", "/usr"]
    for name in RUNTIME_LINKS:
        host = host_root / name
        if host.is_symlink():
            cmd += ["--symlink", os.readlink(host), f"/{name}"]
        elif host.is_dir():
            cmd += ["--ro-bind", str(host), f"/{name}"]
    for path in EXTRA_RO:
        cmd += ["--ro-bind-try", path, path]
    interpreter, extra = python_runtime()
    for folder in extra:
        cmd += ["--ro-bind", folder, folder]
    cmd += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
    cmd += ["--ro-bind", str(title_dir), TITLE_DIR]
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": "/tmp",
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "VHW_TITLE_ID": title_id,
        "VHW_TITLE_KIND": kind,
    }
    if saves is not None:
        cmd += ["--bind", str(saves), SAVE_DIR]
        env["VHW_SAVE_DIR"] = SAVE_DIR
        env["VHW_SAVE_ON"] = saves_on
    cmd += ["--remount-ro", "/", "--chdir", str(Path(TITLE_DIR, entry).parent), "--clearenv"]
    for name, value in env.items():
        cmd += ["--setenv", name, value]
    target = f"{TITLE_DIR}/{entry}"
    program = [interpreter, "-I", target] if entry.endswith(".py") else [target]
    return cmd + ["--", *program, *args]
