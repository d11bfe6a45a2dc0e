#!/usr/bin/env python3
"""Master a large title and report speed and peak memory (GNU time -v), then check the result.

    .venv/bin/python tools/bench_master.py [--size-mib 1024] [--dir DIR]

Prints MB/s, the peak RSS of `vhw disc master` (it must stay under 100 MiB whatever the title's
size: the title is streamed one 64 KiB chunk at a time) and whether the master decrypts to the
source byte for byte (compared by SHA-256, streamed).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import MiB, measure, random_file, sha256_file, vhw_command  # noqa: E402

from vhw.devices.disc import DiscImage  # noqa: E402
from vhw.publisher.keystore import KeyStore  # noqa: E402

LIMIT = 100 * MiB


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--dir", type=Path, default=None, help="work folder (default: a temporary one)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        tmp = Path(tmp)
        src = tmp / "src"
        src.mkdir()
        size = args.size_mib * MiB
        random_file(src / "movie.bin", size)
        (src / "vhw-title.json").write_text('{"name": "Bench", "kind": "movie", "entry": "movie.bin"}')
        home = tmp / "home"
        wall, rss, _ = measure(
            [*vhw_command(), "disc", "master", str(src), "-o", str(tmp / "bench.master"), "--title-id", "BENCH-1"],
            env={"VHW_HOME": str(home)},
        )
        print(f"master {args.size_mib} MiB: {wall:.1f} s, {size / wall / 1e6:.0f} MB/s, peak RSS {rss / MiB:.1f} MiB")
        key = KeyStore(home / "publisher").title("BENCH-1").content_key
        h = hashlib.sha256()
        with DiscImage.open(tmp / "bench.master") as img:
            for _, chunk in img.decrypt(img.manifest.file("movie.bin"), key):
                h.update(chunk)
        same = h.hexdigest() == sha256_file(src / "movie.bin")
        print(f"decrypted master equals source: {'yes' if same else 'NO'}")
        ok = same and rss < LIMIT
        print("PASS" if ok else f"FAIL (limit {LIMIT // MiB} MiB)")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
