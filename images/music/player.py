#!/usr/bin/env python3
"""A tiny music player: plays the album's WAV tracks, one by one, showing a loudness meter per eighth of a second.

The console has no speakers here, so "playing" is decoding every sample of every track (through
the decrypting mount) and showing what a speaker would have received.
"""

import array
import sys
import wave
from pathlib import Path

METER = "▁▂▃▄▅▆▇█"

here = Path(__file__).resolve().parent
tracks = sorted((here / "tracks").glob("*.wav"))
print(f"{len(tracks)} tracks")
for number, path in enumerate(tracks, 1):
    with wave.open(str(path)) as w:
        rate, frames, width = w.getframerate(), w.getnframes(), w.getsampwidth()
        if width not in (1, 2):
            sys.exit(f"{path.name}: {8 * width}-bit samples are not ones this player decodes")
        print(f"track {number}: {path.stem}  {frames / rate:.1f} s, {rate} Hz, {8 * width}-bit")
        meter = []
        while data := w.readframes(rate // 8):  # an eighth of a second per meter step
            if width == 1:  # 8-bit WAV samples are unsigned, centred on 128
                levels = [abs(s - 128) * 256 for s in array.array("B", data)]
            else:
                levels = [abs(s) for s in array.array("h", data)]
            loudness = (sum(x * x for x in levels) / max(1, len(levels))) ** 0.5  # RMS
            meter.append(METER[min(7, int(loudness * 16 / 32768))])
        print(f"  level {''.join(meter)}")
print("end of album")
