"""Sample titles for the demo and the tests: the sources in the repository's images/, as they are.

Every sample is committed whole (tools/make_samples.py made the album's tracks and the film), so
mastering ``images/game``, ``images/music`` or ``images/movie`` directly gives a title that plays.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from .errors import StateError

IMAGES = Path(__file__).resolve().parent.parent / "images"
TITLES = {"game": "VHW-GAME-1", "music": "VHW-MUSIC-1", "movie": "VHW-MOVIE-1"}


def build_samples(out: Path) -> dict[str, Path]:
    """Copy the sample sources to ``out`` (so a caller may add to them); returns kind -> folder."""
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
    return made
