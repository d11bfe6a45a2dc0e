"""`vhw demo`: the whole story in one run (:mod:`vhw.demo` tells it)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import click

from ..demo import Story, tell
from .params import FOLDER


@click.command("demo")
@click.option("--keep", is_flag=True, help="Keep the demo's folder instead of removing it.")
@click.option(
    "--dir",
    "folder",
    type=FOLDER,
    help="Where to run (default: a fresh folder under images/out, or a temporary one).",
)
def demo(keep: bool, folder: Path | None) -> None:
    """Tell the whole story in one run, narrating each step with the command it runs."""
    if folder is None:
        base = Path("images/out") if Path("images").is_dir() else None
        if base:
            base.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix="demo-", dir=base))
    folder = folder.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    story = Story(folder)
    started = time.monotonic()
    try:
        tell(story)
    finally:
        story.stop_server()
        for mnt in folder.glob("*/mnt"):
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
        if keep:
            click.echo(f"\nkept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)
    click.echo(f"(demo took {time.monotonic() - started:.0f} s)")
