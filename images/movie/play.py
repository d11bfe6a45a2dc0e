#!/usr/bin/env python3
"""A movie player for VHWM films: reads every frame (through the mount) and checks it.

A VHWM file is a header line and then frames of FRAME bytes, each ending with its own CRC-32,
so the player notices any frame that does not arrive intact.
"""

import sys
import zlib
from pathlib import Path

FRAME = 256 * 1024
path = Path(__file__).resolve().parent / "film.vhwm"
with open(path, "rb") as f:
    header = f.readline().decode().split()
    fps = int(header[1])
    frames = bad = 0
    while block := f.read(FRAME):
        body, crc = block[:-4], block[-4:]
        if zlib.crc32(body).to_bytes(4, "big") != crc:
            bad += 1
        frames += 1
seconds = frames / fps
print(f"played {path.name}: {frames} frames, {seconds:.1f} s at {fps} fps, {bad} damaged")
sys.exit(1 if bad else 0)
