"""Sample titles for the demo and the tests, built from the sources in the repository's images/.

The sources are small and committed; what is large or generated is made here, at build time:
the music title's WAV tracks (synthesised) and the movie's film (``movie_mib`` MiB of frames).
"""

from __future__ import annotations

import math
import os
import shutil
import struct
import wave
import zlib
from pathlib import Path

from .errors import StateError

IMAGES = Path(__file__).resolve().parent.parent / "images"
FRAME = 256 * 1024  # must match images/movie/play.py
TITLES = {"game": "VHW-GAME-1", "music": "VHW-MUSIC-1", "movie": "VHW-MOVIE-1"}


def _tone_track(path: Path, notes: list[float], *, rate: int = 22050, beat: float = 0.25) -> None:
    frames = bytearray()
    for i, freq in enumerate(notes):
        n = int(rate * beat)
        for t in range(n):
            env = min(1.0, t / 200, (n - t) / 400)
            square = 1 if math.sin(2 * math.pi * freq * t / rate) >= 0 else -1
            frames += struct.pack("<h", int(9000 * (0.6 + 0.4 * (i % 2)) * env * square))
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(bytes(frames))


def _film(path: Path, mib: int, *, fps: int = 24) -> None:
    seed = zlib.crc32(b"vhw film")
    with open(path, "wb") as f:
        f.write(f"VHWM {fps}\n".encode())
        for i in range(mib * 1024 * 1024 // FRAME):
            body = os.urandom(64) * ((FRAME - 4) // 64) + bytes((FRAME - 4) % 64)
            body = (i ^ seed).to_bytes(4, "big") + body[4:]
            f.write(body + zlib.crc32(body).to_bytes(4, "big"))


def build_samples(out: Path, *, movie_mib: int = 64) -> dict[str, Path]:
    """Copy the sample sources to ``out`` and generate their large parts; returns kind -> folder."""
    if not (IMAGES / "game").is_dir():
        raise StateError(f"{IMAGES}: the sample title sources are not here (run from a vhw checkout)")
    out = Path(out)
    made = {}
    for kind in TITLES:
        dst = out / kind
        if dst.exists():
            shutil.rmtree(dst)
        shutil.copytree(IMAGES / kind, dst, ignore=shutil.ignore_patterns("__pycache__"))
        made[kind] = dst
    (made["music"] / "tracks").mkdir()
    _tone_track(made["music"] / "tracks" / "01-boot-jingle.wav", [523, 659, 784, 1047, 784, 1047])
    _tone_track(made["music"] / "tracks" / "02-install-march.wav", [392, 392, 523, 392, 659, 587, 523, 494] * 2)
    _film(made["movie"] / "film.vhwm", movie_mib)
    return made
