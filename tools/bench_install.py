#!/usr/bin/env python3
"""Install a large title onto an HDD image and compare with copying the disc image, in one run.

    .venv/bin/python tools/bench_install.py [--size-mib 1024] [--dir DIR]

Sets up a real licensing server (TLS on 127.0.0.1), masters and presses a title of the given size,
makes a console, HDD and card, registers, then times `vhw console install` (decrypt every chunk of
the disc, re-encrypt it onto the HDD, fsync at each commit) under GNU time -v for its peak RSS,
and, for reference, `cp` + `sync` of the same disc image. Prints MB/s for both and the peak RSS,
which must stay under 100 MiB (the title is streamed, one 64 KiB chunk at a time).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchlib import MiB, drop_caches, measure, random_file, vhw_command  # noqa: E402
from benchlib import vhw as run  # noqa: E402

from tests.servers import RunningServer  # noqa: E402  (the same helper the tests use)

LIMIT = 100 * MiB


def installed_console(tmp: Path, size_mib: int, *, install: bool) -> tuple[RunningServer, dict, list, Path, Path]:
    """A server, a title of ``size_mib`` MiB mastered and pressed, a registered console with the
    disc in its tray (installed when ``install``). Returns (server, env, --console args, disc,
    source file)."""
    env = {**os.environ, "VHW_HOME": str(tmp / "home")}
    srv = RunningServer.start(tmp / "server", env=env)
    man = ["--credential", srv.credential("manufacturer"), "--server", srv.url]
    pub = ["--credential", srv.credential("publisher"), "--server", srv.url]
    src = tmp / "src"
    src.mkdir()
    random_file(src / "movie.bin", size_mib * MiB)
    run("disc", "master", src, "-o", tmp / "m.master", "--title-id", "BENCH-1", *pub, env=env)
    run("disc", "press", tmp / "m.master", "-o", tmp / "discs", *pub, env=env)
    [disc] = list((tmp / "discs").iterdir())
    run("console", "rom", tmp / "r.rom", *man, env=env)
    run("hdd", "format", tmp / "h.hdd", *man, env=env)
    run("card", "format", tmp / "c.card", *man, env=env)
    run("console", "setup", tmp / "con", "--rom", tmp / "r.rom", "--hdd", tmp / "h.hdd", env=env)
    con = ["--console", tmp / "con"]
    run("console", "insert-card", tmp / "c.card", *con, env=env)
    run("console", "insert-disc", disc, *con, env=env)
    run("console", "register", *con, env=env)
    if install:
        run("console", "install", *con, env=env)
    return srv, env, con, disc, src / "movie.bin"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--dir", type=Path, default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        tmp = Path(tmp)
        srv, env, con, disc, _ = installed_console(tmp, args.size_mib, install=False)
        size = args.size_mib * MiB
        try:
            drop_caches()
            wall, rss, _ = measure([*vhw_command(), "console", "install", *map(str, con)], env=env)
            drop_caches()
            start = time.perf_counter()
            subprocess.run(["cp", disc, tmp / "copy.disc"], check=True)
            subprocess.run(["sync"], check=True)
            cp_wall = time.perf_counter() - start
        finally:
            srv.stop()
        print(f"title {args.size_mib} MiB, cold cache")
        print(f"vhw console install: {wall:.2f} s, {size / wall / 1e6:.0f} MB/s, peak RSS {rss / MiB:.1f} MiB")
        print(f"cp + sync of the disc image: {cp_wall:.2f} s, {size / cp_wall / 1e6:.0f} MB/s")
        ok = rss < LIMIT
        print("PASS" if ok else f"FAIL: peak RSS over {LIMIT // MiB} MiB")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
