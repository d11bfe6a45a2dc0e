"""``vhw demo``: the whole story in one run, narrated, on embedded defaults.

Every step runs the real ``vhw`` command a person would type (shown after a ``$``), in a scratch
folder: a licensing server (SQLite, TLS on 127.0.0.1) in the background, the publisher's,
manufacturer's and user's commands in the foreground. The README walks through the same steps.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import click

from .errors import StateError, TitleEnded
from .lifetime import ending_with
from .samples import TITLES, build_samples


class Story:
    def __init__(self, root: Path):
        self.root = root
        self.env = {**os.environ, "VHW_HOME": str(root / "home")}
        self.env.pop("VHW_CONSOLE", None)
        self.step = 0
        self.server: subprocess.Popen[str] | None = None

    def say(self, text: str) -> None:
        self.step += 1
        click.secho(f"\n[{self.step}] {text}", bold=True)

    def show(self, argv: list[str]) -> str:
        return " ".join(shlex.quote(a.replace(str(self.root) + "/", "")) for a in argv)

    def run(self, *args: object, expect: int = 0, quiet: bool = False) -> str:
        argv = [str(a) for a in args]
        click.secho(f"$ vhw {self.show(argv)}", fg="cyan")
        proc = subprocess.run(
            [sys.executable, "-m", "vhw", *argv], cwd=self.root, env=self.env, capture_output=True, text=True
        )
        out = (proc.stdout + proc.stderr).rstrip().replace(str(self.root) + "/", "")
        if out and not quiet:
            click.echo("  " + out.replace("\n", "\n  "))
        if proc.returncode != expect:
            raise StateError(f"demo step `vhw {self.show(argv)}` exited {proc.returncode}, expected {expect}")
        return proc.stdout

    def shell(self, *args: object) -> None:
        argv = [str(a) for a in args]
        click.secho(f"$ {self.show(argv)}", fg="cyan")
        out = subprocess.run(argv, cwd=self.root, capture_output=True, text=True, check=True).stdout.rstrip()
        if out:
            click.echo("  " + out.replace(str(self.root) + "/", "").replace("\n", "\n  "))

    def start_server(self) -> str:
        argv = ["server", "run", "--listen", "127.0.0.1:0"]
        click.secho(f"$ vhw {' '.join(argv)} &", fg="cyan")
        self.server = subprocess.Popen(
            [sys.executable, "-m", "vhw", *argv],
            cwd=self.root,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=open(self.root / "server.log", "wb"),
            text=True,
            preexec_fn=ending_with(os.getpid()),  # (a demo killed outright leaves no server listening)
        )
        assert self.server.stdout is not None
        line = self.server.stdout.readline()
        if "listening on" not in line:
            raise StateError(f"the demo's server did not start: {(self.root / 'server.log').read_text()[-500:]}")
        click.echo("  " + line.strip())
        return line.split("listening on", 1)[1].strip()

    def stop_server(self) -> None:
        if self.server and self.server.poll() is None:
            self.server.send_signal(signal.SIGTERM)
            try:
                self.server.wait(15)
            except subprocess.TimeoutExpired:
                self.server.kill()


@dataclass
class Cast:
    """What the story's chapters share: where it runs, the server, the roles' options, the discs."""

    root: Path
    url: str
    creds: Path
    discs: dict[str, list[Path]] = field(default_factory=dict)

    def console(self, who: str) -> list[object]:
        return ["--console", self.root / who / "console"]


def tell(s: Story) -> None:
    cast = platform(s)
    publish(s, cast)
    alice_at_home(s, cast)
    lending(s, cast)
    repair_center(s, cast)


def platform(s: Story) -> Cast:
    s.say(
        "The platform operator sets up the licensing server: CA, TLS certificate, master key, "
        "SQLite database, one credential per role. Then it runs it on 127.0.0.1."
    )
    s.run("server", "init")
    url = s.start_server()
    return Cast(s.root, url, s.root / "home" / "server" / "credentials")


def publish(s: Story, cast: Cast) -> None:
    """The publisher masters and presses its titles; the manufacturer makes the devices."""
    root = cast.root
    pub = ["--credential", cast.creds / "publisher.json", "--server", cast.url]
    s.say("The publisher's title sources: a terminal game, a music album and a short movie.")
    sources = build_samples(root / "images" / "src")
    for kind, src in sources.items():
        click.echo(f"  {kind:<6} {src.relative_to(root)}")
    s.say(
        "The publisher masters each title under a fresh Content-Key (kept in its key store and "
        "registered with the server, never put on the disc) and presses discs, each with its own MID."
    )
    for kind, src in sources.items():
        title, master = TITLES[kind], root / f"images/{kind}.master"
        s.run("disc", "master", src, "-o", master, "--title-id", title, *pub)
        s.run("disc", "press", master, "--count", 2 if kind == "game" else 1, "-o", root / "images/discs", *pub)
        cast.discs[kind] = sorted((root / "images/discs").glob(f"{title}-*.disc"))
    s.run("disc", "info", cast.discs["game"][0])
    s.say(
        "The manufacturer makes consoles, 40 GB HDDs (sparse files) and memory cards, and registers "
        "every ID; the console ROM trusts the platform CA."
    )
    man = ["--credential", cast.creds / "manufacturer.json", "--server", cast.url]
    for who in ("alice", "bob"):
        (root / who).mkdir()
        s.run("console", "rom", root / who / "console.rom", *man)
        s.run("hdd", "format", root / who / "console.hdd", *man)
        s.run("card", "format", root / who / "card.card", *man)


def alice_at_home(s: Story, cast: Cast) -> None:
    root, alice = cast.root, cast.console("alice")
    s.say("Alice sets up her console once: ROM, HDD, card in slot 1. She registers (S1-S7).")
    s.run(
        "console",
        "setup",
        root / "alice/console",
        "--rom",
        root / "alice/console.rom",
        "--hdd",
        root / "alice/console.hdd",
    )
    s.run("console", "insert-card", root / "alice/card.card", *alice)
    s.run("console", "register", *alice)
    s.say(
        "Alice installs her three discs (S11-S17 acquire the keys, S21-S28 copy and re-encrypt "
        "onto her HDD, confirm, and delete the Content-Key from the card)."
    )
    for kind in ("game", "music", "movie"):
        s.run("console", "insert-disc", cast.discs[kind][0], *alice)
        s.run("console", "install", *alice)
        s.run("console", "eject-disc", *alice, quiet=True)
    s.run("hdd", "ls", *alice)
    s.run("card", "info", root / "alice/card.card")
    s.say(
        "She mounts her HDD (S31-S35): the card's sealed IDs match this console and this HDD, "
        "so the titles decrypt as they are read."
    )
    mnt = root / "alice/mnt"
    mnt.mkdir()
    s.run("console", "mount", mnt, *alice)
    s.shell("ls", "-l", mnt, mnt / TITLES["game"])
    s.run("console", "unmount", mnt, *alice)
    s.say(
        "She plays the game for a while; it saves its progress on her memory card when it stops, "
        "and the card manager lists the save."
    )
    s.run("console", "play", *alice, TITLES["game"], "--moves", "dddssddd", expect=TitleEnded.exit_code)  # (unfinished)
    s.run("card", "saves", "ls", root / "alice/card.card")
    s.say("Later she continues from the save and escapes the cave; then she plays the album.")
    s.run("console", "play", *alice, TITLES["game"], "--continue", "--moves", "wwddssss")
    s.run("console", "play", *alice, TITLES["music"])


def lending(s: Story, cast: Cast) -> None:
    root, alice, bob = cast.root, cast.console("alice"), cast.console("bob")
    s.say("Alice lends the game disc she installed to Bob. The disc's MID is flagged: refused (S17).")
    s.run(
        "console", "setup", root / "bob/console", "--rom", root / "bob/console.rom", "--hdd", root / "bob/console.hdd"
    )
    s.run("console", "insert-card", root / "bob/card.card", *bob)
    s.run("console", "register", *bob)
    s.run("console", "insert-disc", cast.discs["game"][0], *bob)
    s.run("console", "install", *bob, expect=12)
    s.say("A new disc of the game (another MID) installs for Bob at once.")
    s.run("console", "eject-disc", *bob, quiet=True)
    s.run("console", "insert-disc", cast.discs["game"][1], *bob)
    s.run("console", "install", *bob)
    s.say("Alice lends her memory card to Bob's console: her titles are not Bob's console's (S33).")
    s.run("console", "eject-card", *alice, quiet=True)
    s.run("console", "eject-card", *bob, quiet=True)
    s.run("console", "insert-card", root / "alice/card.card", *bob)
    s.run("console", "play", *bob, TITLES["game"], "--moves", "d", expect=14)
    s.say("She lends card and HDD together: Bob's console is still not hers.")
    s.run(
        "console",
        "setup",
        root / "bob/console2",
        "--rom",
        root / "bob/console.rom",
        "--hdd",
        root / "alice/console.hdd",
    )
    s.run("console", "insert-card", root / "alice/card.card", "--console", root / "bob/console2")
    s.run("console", "play", "--console", root / "bob/console2", TITLES["game"], "--moves", "d", expect=14)
    s.say("Back home, everything plays again.")
    s.run("console", "eject-card", *bob, quiet=True)
    s.run("console", "insert-card", root / "alice/card.card", *alice)
    s.run("console", "play", *alice, TITLES["movie"])


def repair_center(s: Story, cast: Cast) -> None:
    root, alice = cast.root, cast.console("alice")
    s.say(
        "Alice's card is damaged. She gives the repair center her User ID; it makes her a new card "
        "(FIG. 14). Her saves are copied onto the new card of the same user; Bob's card refuses them."
    )
    user = s.run("console", "status", "--json", *alice, quiet=True).split('"user_id": "')[1].split('"')[0]
    operator = ["--credential", cast.creds / "operator.json", "--server", cast.url]
    s.run("repair", "card", "--user-id", user, "-o", root / "alice/new.card", *operator)
    s.run("card", "saves", "copy", root / "alice/card.card", root / "alice/new.card")
    s.run("card", "saves", "ls", root / "alice/new.card")
    s.run("card", "saves", "copy", root / "alice/card.card", root / "bob/card.card", expect=9)
    s.run("console", "eject-card", *alice, quiet=True)
    s.run("console", "insert-card", root / "alice/new.card", *alice)
    s.run("console", "play", *alice, TITLES["game"], "--continue", "--moves", "d", expect=TitleEnded.exit_code)
    s.say(
        "The repair center can do the same in a browser, in the web console the server serves at "
        f"{cast.url}/console/ while it runs (signed in with the token in credentials/operator.json)."
    )
    s.say("The server's audit log has every step.")
    out = s.run("server", "audit", quiet=True)
    click.echo(f"  {len(out.splitlines())} audit entries, e.g.:\n  " + "\n  ".join(out.splitlines()[-3:]))
    click.secho("\nThe story ran to its end.", fg="green", bold=True)
