#!/usr/bin/env python3
"""A tiny music player: prints what it plays, track by track, with a level meter per second.

The console has no speakers here, so "playing" is reading every sample of every track (through
the decrypting mount) and showing what a speaker would have received.
"""

import array
import sys
import wave
from pathlib import Path

here = Path(__file__).resolve().parent
tracks = sorted((here / "tracks").glob("*.wav"))
print(f"{len(tracks)} tracks")
for number, path in enumerate(tracks, 1):
    with wave.open(str(path)) as w:
        rate, frames, width = w.getframerate(), w.getnframes(), w.getsampwidth()
        print(f"track {number}: {path.stem}  {frames / rate:.1f} s, {rate} Hz, {8 * width}-bit")
        meter = []
        while True:
            data = w.readframes(rate)
            if not data:
                break
            samples = array.array("h", data)
            peak = max((abs(s) for s in samples), default=0)
            meter.append("▁▂▃▄▅▆▇█"[min(7, peak * 8 // 32768)])
        print(f"  level {''.join(meter)}")
print("end of album")
sys.exit(0)
