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
* new user, PID, IPC, UTS, cgroup and network namespaces: no title reaches the network (the
  network namespace holds only its own loopback; a title's ``"network"`` metadata is refused
  when it is mastered and ignored when it plays), no new user namespace inside it
  (``--disable-userns``), all capabilities dropped, no new privileges, its own session (no
  terminal injection), and it dies with ``vhw``;
* a seccomp filter (:func:`seccomp_filter`) that refuses what a title never needs: tracing other
  processes and reading their memory, mounting, kernel keyrings, BPF, perf events, kernel modules,
  new namespaces, and the like (EPERM);
* nothing of the user's session: bubblewrap itself is started with only the variables a title is
  documented to get (``PATH``, ``HOME=/tmp``, ``LANG``, ``VHW_TITLE_ID``, ``VHW_TITLE_KIND``,
  ``VHW_SAVE_DIR``, ``VHW_SAVE_ON``), and takes its options, which name host paths, from a file
  descriptor, so that its ``/proc/1/environ`` and ``/proc/1/cmdline`` inside the sandbox show
  nothing more than the title's own command.

:func:`command` is pure: it builds what runs from what the caller found; :func:`start` starts it.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import StateError

BWRAP = "bwrap"
TITLE_DIR = "/title"
SAVE_DIR = "/saves"
RUNTIME_LINKS = ("bin", "lib", "lib32", "lib64", "libx32", "sbin")
EXTRA_RO = ("/etc/ld.so.cache", "/etc/alternatives", "/etc/localtime")

#: What the seccomp filter refuses (EPERM), by name: what lets a process reach outside itself or
#: into the kernel, and nothing a game, a player or an interpreter needs.
REFUSED_CALLS = (
    # other processes: trace them, read or write their memory, or pick their file descriptors
    "ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd", "kcmp",
    # mounts, old and new API, and the root
    "mount", "umount2", "pivot_root", "chroot", "move_mount", "open_tree", "fsopen", "fsconfig",
    "fsmount", "fspick", "mount_setattr",
    # namespaces (bwrap made them already)
    "unshare", "setns",
    # the kernel's key rings, BPF, perf events, modules, kexec, the system's state
    "keyctl", "add_key", "request_key", "bpf", "perf_event_open", "init_module", "finit_module",
    "delete_module", "kexec_load", "kexec_file_load", "reboot", "swapon", "swapoff", "acct",
    "quotactl", "syslog", "settimeofday", "clock_settime", "adjtimex", "clock_adjtime",
    "sethostname", "setdomainname", "iopl", "ioperm",
    # files by handle (escape a bind mount), page faults handled in user space, io_uring
    "open_by_handle_at", "name_to_handle_at", "userfaultfd", "io_uring_setup", "io_uring_enter",
    "io_uring_register",

)  # fmt: skip
ADDR_NO_RANDOMIZE = 0x0040000  # a personality flag that undoes address-space randomisation: refused
CLONE_NEW = 0x7E020080  # CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET | NEWTIME


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


@dataclass(frozen=True)
class Sandbox:
    """What runs a title: bubblewrap's options (the sandbox: they name host paths), the title's
    program and its arguments, and the environment bubblewrap and the title get."""

    options: tuple[str, ...]
    program: tuple[str, ...]
    env: dict[str, str]

    @property
    def args(self) -> tuple[str, ...]:
        """All of bubblewrap's arguments, as one command line."""
        return (*self.options, "--", *self.program)


def command(
    *,
    title_dir: Path,
    entry: str,
    args: Sequence[str],
    saves: Path | None,
    title_id: str,
    saves_on: str = "the memory card",
    kind: str,
    host_root: Path = Path("/"),
) -> Sandbox:
    """What runs ``entry`` (a path inside ``title_dir``, already checked to be one of the title's
    files) in the sandbox. The caller adds ``--seccomp FD`` (:func:`run` does)."""
    cmd = ["--die-with-parent", "--new-session", "--unshare-all", "--unshare-user", "--disable-userns"]
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
    cmd += ["--remount-ro", "/", "--chdir", str(Path(TITLE_DIR, entry).parent)]
    target = f"{TITLE_DIR}/{entry}"
    program = [interpreter, "-I", target] if entry.endswith(".py") else [target]
    return Sandbox(tuple(cmd), (*program, *args), env)


def seccomp_filter() -> bytes:
    """The compiled (BPF) seccomp filter bubblewrap installs before it runs the title: every call
    allowed but those of :data:`REFUSED_CALLS`, a ``clone`` that makes a namespace and a
    ``personality`` that turns address-space randomisation off (EPERM), and ``clone3`` (ENOSYS: its
    flags lie in memory a filter cannot read, so the C library falls back to ``clone``).
    libseccomp (Debian's libseccomp2) compiles it, through pyseccomp."""
    import pyseccomp as seccomp  # (loaded by `play` alone)

    rules = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
    refuse = seccomp.ERRNO(errno.EPERM)

    def has(flag: int) -> object:  # the call's first argument has this bit set
        return seccomp.Arg(0, seccomp.MASKED_EQ, flag, flag)

    for name in REFUSED_CALLS:
        rules.add_rule(refuse, name)
    for bit in range(32):  # any one of the namespace flags, not only all of them together
        if CLONE_NEW >> bit & 1:
            rules.add_rule(refuse, "clone", has(1 << bit))
    rules.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
    rules.add_rule(refuse, "personality", has(ADDR_NO_RANDOMIZE))
    read, write = os.pipe()
    try:
        with os.fdopen(write, "wb") as out:
            rules.export_bpf(out)
        chunks = []
        while chunk := os.read(read, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(read)


def _sealed_file(data: bytes) -> int:
    """A file descriptor to read ``data`` from, with no name anywhere (a memfd)."""
    fd = os.memfd_create("vhw-sandbox", os.MFD_CLOEXEC)
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def start(sandbox: Sandbox, *, bwrap_path: str = BWRAP) -> subprocess.Popen[bytes]:
    """Start the title in bubblewrap. bubblewrap reads its options and the seccomp filter from
    descriptors, and gets the title's environment alone. Killing it kills the title
    (``--die-with-parent``)."""
    bpf = _sealed_file(seccomp_filter())
    options = _sealed_file(b"".join(arg.encode() + b"\0" for arg in ("--seccomp", str(bpf), *sandbox.options)))
    try:
        return subprocess.Popen(
            [bwrap_path, "--args", str(options), "--", *sandbox.program],
            env=sandbox.env,
            cwd="/",
            pass_fds=(bpf, options),
            stdin=None,
        )
    finally:
        os.close(bpf)
        os.close(options)


def run(sandbox: Sandbox, *, bwrap_path: str = BWRAP) -> int:
    """Run the title in bubblewrap (:func:`start`) and wait for it; its exit status."""
    with start(sandbox, bwrap_path=bwrap_path) as proc:
        return proc.wait()
