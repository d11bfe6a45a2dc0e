"""Helpers the benchmark scripts share: big random files, peak RSS of a command, sha256 of a file,
`vhw` as a child process, and the two readers (dd, random preads)."""

from __future__ import annotations

import hashlib
import os
import random
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

MiB = 1024 * 1024


def drop_caches() -> None:
    """Empty the page cache (after writing back what is dirty), or end the run: a figure labelled
    "cold" that was measured warm is worse than none. Needs root."""
    subprocess.run(["sync"], check=True)
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError as exc:
        raise SystemExit(
            f"cannot drop the page cache ({exc.strerror}): run as root; no cold figure without it"
        ) from None


def prime(path: Path) -> None:
    """Read ``path`` once through, so that the storage below the machine holds it alike for every
    contender that reads it next. Here that storage is a network volume with a cache of its own,
    which dropping the page cache does not empty: of two programs reading the same file after
    ``drop_caches``, the second read it 1.4-2x as fast as the first (`cp` + `sync` of a 1 GiB disc
    image: 0.92, 1.69, 1.35 s run before the install, 0.93, 0.98, 0.81 s after it). Each timed run
    then drops the page cache, so both still read from the disk."""
    with open(path, "rb") as f:
        while f.read(8 * MiB):
            pass


def random_file(path: Path, size: int) -> None:
    """``size`` incompressible bytes, fast (AES-CTR keystream), written 4 MiB at a time."""
    enc = Cipher(algorithms.AES(os.urandom(32)), modes.CTR(os.urandom(16))).encryptor()
    zeros = bytes(4 * MiB)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, len(zeros))
            f.write(enc.update(zeros[:n]))
            left -= n


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(4 * MiB):
            h.update(block)
    return h.hexdigest()


def vhw_command() -> list[str]:
    exe = Path(sys.executable).with_name("vhw")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "vhw"]


def measure(cmd: list[str], *, env: dict | None = None) -> tuple[float, int, subprocess.CompletedProcess]:
    """Run ``cmd``; return (wall seconds, peak RSS in bytes, process). Uses GNU time -v if present."""
    gnu_time = shutil.which("time") or ("/usr/bin/time" if os.path.exists("/usr/bin/time") else None)
    full = [gnu_time, "-v", *cmd] if gnu_time else cmd
    start = time.perf_counter()
    proc = subprocess.run(full, capture_output=True, text=True, env={**os.environ, **(env or {})})
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    if gnu_time:
        m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
        rss = int(m.group(1)) * 1024 if m else 0
    else:
        rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    return wall, rss, proc


def vhw(*args: object, env: dict) -> str:
    """Run `vhw ARGS`; its output, or exit naming the command that failed."""
    proc = subprocess.run([*vhw_command(), *map(str, args)], capture_output=True, text=True, env=env)
    if proc.returncode:
        raise SystemExit(f"vhw {' '.join(map(str, args))} failed: {proc.stderr.strip()}")
    return proc.stdout


def dd(path: Path) -> float:
    """Sequential read with dd bs=1M; GB/s."""
    proc = subprocess.run(["dd", f"if={path}", "of=/dev/null", "bs=1M"], capture_output=True, text=True, check=True)
    m = re.search(r"copied, ([\d.]+) s", proc.stderr)
    return os.path.getsize(path) / float(m.group(1)) / 1e9


def random_reads(path: Path, count: int, seed: int) -> float:
    """``count`` 4 KiB preads at distinct random 4 KiB-aligned offsets; reads per second."""
    blocks = os.path.getsize(path) // 4096
    offsets = [b * 4096 for b in random.Random(seed).sample(range(blocks), min(count, blocks))]
    fd = os.open(path, os.O_RDONLY)
    try:
        start = time.perf_counter()
        for off in offsets:
            os.pread(fd, 4096, off)
        return len(offsets) / (time.perf_counter() - start)
    finally:
        os.close(fd)
