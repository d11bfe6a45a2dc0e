#!/usr/bin/env python3
"""A movie player for YUV4MPEG2 films: decodes every frame (through the mount) and shows one
frame a second as a small picture in characters (the console has no screen here).

A Y4M file is a header line, then frames: a line starting with FRAME, then the luma plane and
the two chroma planes. The player checks every frame's marker and size, so a film that does not
arrive whole is noticed, and exits non-zero.
"""

import sys
from pathlib import Path

SHADES = " .:-=+*#%@"
COLUMNS, ROWS = 48, 12

path = Path(__file__).resolve().parent / "film.y4m"
with open(path, "rb") as f:
    header = f.readline().split()
    if not header or header[0] != b"YUV4MPEG2":
        sys.exit(f"{path.name}: not a YUV4MPEG2 film")
    fields = {h[:1]: h[1:].decode() for h in header[1:]}
    width, height = int(fields[b"W"]), int(fields[b"H"])
    num, den = (int(x) for x in fields.get(b"F", "25:1").split(":"))
    fps = num / den
    chroma = fields.get(b"C", "420")
    if not chroma.startswith("420"):
        sys.exit(f"{path.name}: chroma {chroma} is not one this player decodes")
    frame_size = width * height + 2 * ((width + 1) // 2) * ((height + 1) // 2)
    print(f"{path.name}: {width}x{height} at {fps:g} fps")
    frames = 0
    while marker := f.readline():
        if not marker.startswith(b"FRAME"):
            sys.exit(f"{path.name}: frame {frames + 1} has no FRAME marker: the film is damaged")
        planes = f.read(frame_size)
        if len(planes) != frame_size:
            sys.exit(f"{path.name}: frame {frames + 1} is cut short: the film is damaged")
        if frames % round(fps) == 0:  # one picture a second, from the luma plane
            print(f"  {frames / fps:4.1f} s")
            for row in range(ROWS):
                y = row * height // ROWS
                line = planes[y * width : (y + 1) * width]
                print("  " + "".join(SHADES[line[c * width // COLUMNS] * len(SHADES) // 256] for c in range(COLUMNS)))
        frames += 1
print(f"played {path.name}: {frames} frames, {frames / fps:.1f} s")
sys.exit(0 if frames else 1)
