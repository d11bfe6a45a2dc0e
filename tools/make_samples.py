#!/usr/bin/env python3
"""Make the sample media committed in images/: the album's tracks and the movie's film.

    python3 tools/make_samples.py        # needs ffmpeg (Debian: apt-get install ffmpeg)

The outputs are committed, so nobody needs ffmpeg to master, install or play the samples; run this
again only to change them. Everything comes from ffmpeg's own synthetic sources, so nothing here is
anyone else's work:

- images/music/tracks/*.wav: short chiptunes, square-wave melodies with a decaying envelope, as
  8-bit 11025 Hz mono WAV (any player plays them; the title's player reads them with the stdlib);
- images/movie/film.y4m: a five-second zoom into the Mandelbrot set, 128x72 at 12 frames per
  second, as YUV4MPEG2 (uncompressed, so the title's player decodes it without any library; mpv and
  VLC play it too).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

IMAGES = Path(__file__).resolve().parent.parent / "images"
RATE = 11025
BEAT = 0.25  # seconds per note

# Note names to frequencies (Hz), for the melodies below.
NOTES = {"G3": 196, "C4": 262, "D4": 294, "E4": 330, "F4": 349, "G4": 392, "A4": 440, "B4": 494,
         "C5": 523, "D5": 587, "E5": 659, "G5": 784, "C6": 1047, "-": 0}  # fmt: skip

TRACKS = {
    "01-boot-jingle": "C5 E5 G5 C6 G5 C6 - - C5 E5 G5 C6 G5 C6 C6 -",
    "02-install-march": "G4 G4 C5 G4 E5 D5 C5 B4 G4 G4 C5 G4 E5 D5 C5 - A4 A4 D5 A4 E5 D5 C5 B4 G4 B4 D5 G5 E5 C5 C5 -",
    "03-save-slot-waltz": "C4 E4 G4 C5 G4 E4 D4 F4 A4 D5 A4 F4 G3 B4 D5 G4 - - C4 E4 G4 C5 - -",
}


def melody_expression(melody: str) -> str:
    """An ffmpeg ``aevalsrc`` expression: each note a square wave with a short attack and decay."""
    freqs = [NOTES[n] for n in melody.split()]
    # the frequency as a function of t: nested if()s over the note index
    freq = "0"
    for i in reversed(range(len(freqs))):
        freq = f"if(lt(t,{(i + 1) * BEAT:g}),{freqs[i]},{freq})"
    into_note = f"mod(t,{BEAT:g})"
    envelope = f"min(1,{into_note}*200)*exp(-{into_note}*6)"
    return f"0.45*{envelope}*sgn(sin(2*PI*({freq})*t))"


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", *args], check=True)


def make_tracks(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.wav"):
        old.unlink()
    for name, melody in TRACKS.items():
        seconds = len(melody.split()) * BEAT
        source = f"aevalsrc='{melody_expression(melody)}':s={RATE}:d={seconds:g}"
        ffmpeg("-f", "lavfi", "-i", source, "-ac", "1", "-c:a", "pcm_u8", "-map_metadata", "-1",
               "-bitexact", str(folder / f"{name}.wav"))  # fmt: skip


def make_film(path: Path) -> None:
    source = "mandelbrot=s=128x72:rate=12:start_scale=3:end_scale=0.02:end_pts=60:maxiter=256"
    ffmpeg("-f", "lavfi", "-i", source, "-t", "5", "-pix_fmt", "yuv420p", "-bitexact", str(path))


def main() -> int:
    if shutil.which("ffmpeg") is None:
        print("make_samples: needs ffmpeg (apt-get install ffmpeg)", file=sys.stderr)
        return 1
    make_tracks(IMAGES / "music" / "tracks")
    make_film(IMAGES / "movie" / "film.y4m")
    for path in sorted((IMAGES / "music" / "tracks").glob("*.wav")) + [IMAGES / "movie" / "film.y4m"]:
        print(f"{path.relative_to(IMAGES.parent)}  {path.stat().st_size:,} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
