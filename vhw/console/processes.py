"""The console's background processes: its mounts, each a ``vhw console mount --foreground``.

A mount runs in a process of its own, started here and found again by the PID kept in
``DIR/mounts.json``; :mod:`psutil` tells a live process from an ended one (or a zombie).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import psutil

from ..devices.files import atomic_write
from ..errors import StateError


def spawn(args: list[str], console: Path, mountpoint: Path, log_path: Path) -> subprocess.Popen[bytes]:
    """Start ``vhw ARGS --console ROOT`` (a mount in the foreground) and wait for its "mounted" line."""
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "vhw", *args, "--console", str(console)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log_file,
            start_new_session=True,
        )
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    proc.stdout.close()
    if not line.startswith("mounted"):
        proc.wait()
        tail = log_path.read_text(errors="replace").strip().splitlines()[-1:] or ["no reason given"]
        raise StateError(f"{mountpoint}: the mount did not start: {tail[0]}")
    return proc


def alive(pid: int) -> bool:
    """The process runs (a zombie, ended but not reaped, does not)."""
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


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
