"""The console's background processes: its mounts, each a ``vhw console mount --foreground``.

A mount runs in a process of its own, started here and found again by the PID kept in
``DIR/mounts.json``; :mod:`psutil` tells a live process from an ended one (or a zombie).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from ..devices.files import atomic_write
from ..devices.holders import alive
from ..errors import StateError
from ..lifetime import parent_death_signal

__all__ = ["SPAWNED_BY", "die_with_parent", "outlive_parent"]


SPAWNED_BY = "VHW_SPAWNED_BY"  # the PID of the vhw process a mount was started by, in its environment


def spawn(
    args: list[str], console: Path, mountpoint: Path, log_path: Path, *, tell: Callable[[str], None] | None = None
) -> subprocess.Popen[bytes]:
    """Start ``vhw ARGS --console ROOT`` (a mount in the foreground) and wait for its "mounted"
    line; every line it says before it (a lock it waits for, and who holds it) goes to ``tell`` at
    once. If this process is interrupted or killed meanwhile, the mount ends too: it dies with its
    parent until it has mounted (:func:`die_with_parent`), and only then stays on its own."""
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "vhw", *args, "--console", str(console)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log_file,
            start_new_session=True,
            env={**os.environ, SPAWNED_BY: str(os.getpid())},
        )
    assert proc.stdout is not None
    try:
        for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            if line.startswith("mounted"):
                return proc
            if tell:
                tell(line)
        proc.wait()
        tail = log_path.read_text(errors="replace").strip().splitlines()[-1:] or ["no reason given"]
        raise StateError(f"{mountpoint}: the mount did not start: {tail[0]}")
    except BaseException:
        if proc.poll() is None:  # (interrupted while it waited: it must not stay behind)
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        raise
    finally:
        proc.stdout.close()


def die_with_parent() -> None:
    """In a mount started by :func:`spawn`: until it has mounted, end with the process that started
    it (the kernel sends SIGTERM when that process ends); gone already, end now."""
    parent = os.environ.get(SPAWNED_BY)
    if not parent:
        return
    parent_death_signal(signal.SIGTERM)
    if str(os.getppid()) != parent:  # (it ended before the line above)
        raise SystemExit(1)


def outlive_parent() -> None:
    """Mounted: from now on the mount stays whatever becomes of the process that started it."""
    if os.environ.get(SPAWNED_BY):
        parent_death_signal(0)


def wait_gone(pid: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)


class MountTable:
    """``DIR/mounts.json``: where this console's mounts are, and the PID serving each."""

    def __init__(self, path: Path):
        self.path = path

    def load(self) -> dict[str, int]:
        try:
            data = json.loads(self.path.read_text())
            return {str(k): int(v) for k, v in data.items()}
        except (OSError, ValueError, TypeError, AttributeError):
            return {}

    def save(self, mounts: dict[str, int]) -> None:
        live = {k: v for k, v in mounts.items() if alive(v)}
        atomic_write(self.path, json.dumps(live).encode())

    def add(self, where: Path, pid: int) -> None:
        mounts = self.load()
        mounts[str(where)] = pid
        self.save(mounts)

    def remove(self, where: Path) -> int | None:
        mounts = self.load()
        pid = mounts.pop(str(where), None)
        self.save(mounts)
        return pid
