"""``vhw demo``: the whole story in one run, narrated, on embedded defaults.

Every step runs the real ``vhw`` command a person would type (shown with a ``$``), in a scratch
folder, so the demo doubles as a walkthrough of the README.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import click

from .errors import StateError
from .samples import build_samples


class Story:
    def __init__(self, root: Path):
        self.root = root
        self.env = {**os.environ, "VHW_HOME": str(root / "home")}
        self.step = 0

    def say(self, text: str) -> None:
        self.step += 1
        click.secho(f"\n[{self.step}] {text}", bold=True)

    def run(self, *args: object, expect: int = 0, show: bool = True) -> str:
        argv = [str(a) for a in args]
        shown = " ".join(shlex.quote(a.replace(str(self.root) + "/", "")) for a in argv)
        click.secho(f"$ vhw {shown}", fg="cyan")
        proc = subprocess.run(
            [sys.executable, "-m", "vhw", *argv], cwd=self.root, env=self.env,
            capture_output=True, text=True,
        )
        out = (proc.stdout + proc.stderr).rstrip().replace(str(self.root) + "/", "")
        if show and out:
            click.echo("  " + out.replace("\n", "\n  "))
        if proc.returncode != expect:
            raise StateError(f"demo step `vhw {shown}` exited {proc.returncode}, expected {expect}")
        return proc.stdout


def tell(root: Path) -> None:
    s = Story(root)
    images = root / "images"
    s.say("The publisher's title sources: a game, a music album and a movie.")
    sources = build_samples(images / "src", movie_mib=4)
    for src in sources.values():
        click.echo(f"  {src.relative_to(root)}")

    s.say("The publisher masters the game: its files are encrypted under a fresh Content-Key.")
    s.run("disc", "master", sources["game"], "-o", images / "game.master", "--title-id", "VHW-GAME-1")
    s.say("...and presses two discs: identical but for each disc's own MID.")
    s.run("disc", "press", images / "game.master", "--count", "2", "-o", images / "discs")
    discs = sorted((images / "discs").iterdir())
    s.run("disc", "info", discs[0])

    s.say("The manufacturer makes a console ROM, a 40 GB HDD (a sparse file) and a memory card.")
    s.run("console", "rom", root / "console.rom")
    s.run("hdd", "format", root / "console.hdd")
    s.run("card", "format", root / "card-1.card")
    s.run("card", "info", root / "card-1.card")

    s.say("A damaged disc is refused with one line naming the file and the problem.")
    bad = root / "damaged.disc"
    data = bytearray(discs[1].read_bytes())
    data[5000] ^= 1
    bad.write_bytes(bytes(data))
    s.run("disc", "info", bad, expect=3)
    click.secho("\nThe story so far ran to its end.", fg="green", bold=True)


@click.command("demo")
@click.option("--keep", is_flag=True, help="Keep the demo's folder instead of removing it.")
@click.option("--dir", "folder", type=click.Path(path_type=Path, file_okay=False),
              help="Where to run (default: a fresh folder under images/out, or a temporary one).")
def demo(keep: bool, folder: Path | None) -> None:
    """Tell the whole story in one run, narrating each step with the command it runs."""
    if folder is None:
        base = Path("images/out") if Path("images").is_dir() else None
        if base:
            base.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix="demo-", dir=base))
    folder = folder.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        tell(folder)
    finally:
        if keep:
            click.echo(f"\nkept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)
