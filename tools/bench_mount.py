#!/usr/bin/env python3
"""Read a large installed title through the decrypting mount, next to plain disk and gocryptfs.

    .venv/bin/python tools/bench_mount.py [--size-mib 1024] [--reads 20000] [--dir DIR]

In one run: a real server, a title of the given size mastered, pressed, installed; the console's
HDD mounted. For each of (plain file on disk, vhw mount, gocryptfs when installed) it measures
sequential reads with `dd bs=1M` (first read after dropping the page cache, then the re-read) and
random 4 KiB `pread`s at distinct offsets per second (cold, then warm). Prints a Markdown table.
Needs root to drop caches (`echo 3 > /proc/sys/vm/drop_caches`): without it, it stops.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench_install import installed_console, run  # noqa: E402
from benchlib import dd, drop_caches, random_reads  # noqa: E402


def measure(path: Path, reads: int) -> dict[str, float]:
    out = {}
    drop_caches()
    out["seq_cold"] = dd(path)
    out["seq_warm"] = dd(path)
    drop_caches()
    out["rand_cold"] = random_reads(path, reads, seed=1)
    out["rand_warm"] = random_reads(path, reads, seed=1)
    return out


def gocryptfs(tmp: Path, plain: Path) -> Path | None:
    if not shutil.which("gocryptfs"):
        return None
    cipher, mnt, pw = tmp / "gocrypt.cipher", tmp / "gocrypt.mnt", tmp / "gocrypt.pw"
    cipher.mkdir()
    mnt.mkdir()
    pw.write_text("benchmark password\n")
    subprocess.run(["gocryptfs", "-init", "-q", "-passfile", str(pw), str(cipher)], check=True)
    subprocess.run(["gocryptfs", "-q", "-passfile", str(pw), str(cipher), str(mnt)], check=True)
    shutil.copyfile(plain, mnt / plain.name)
    subprocess.run(["sync"], check=True)
    return mnt / plain.name


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--reads", type=int, default=20000)
    ap.add_argument("--dir", type=Path, default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        tmp = Path(tmp)
        srv, env, con, _, plain = installed_console(tmp, args.size_mib, install=True)
        mnt = tmp / "mnt"
        goc = None
        try:
            mnt.mkdir()
            run("console", "mount", mnt, *con, env=env)
            rows = {
                "plain file on ext4": measure(plain, args.reads),
                "vhw mount (AES-GCM, 64 KiB chunks)": measure(mnt / "BENCH-1" / "movie.bin", args.reads),
            }
            goc = gocryptfs(tmp, plain)
            if goc:
                rows["gocryptfs 2.3"] = measure(goc, args.reads)
        finally:
            subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True)
            if goc:
                subprocess.run(["fusermount", "-u", str(goc.parent)], capture_output=True)
            srv.stop()
    print(f"\n{args.size_mib} MiB title, {args.reads} random 4 KiB reads at distinct offsets\n")
    print("| what | seq first read GB/s | seq re-read GB/s | random 4 KiB cold reads/s | random 4 KiB warm reads/s |")
    print("|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['seq_cold']:.2f} | {r['seq_warm']:.2f} | {r['rand_cold']:,.0f} | {r['rand_warm']:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
