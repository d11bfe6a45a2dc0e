"""A console's folder: which ROM and HDD it has, what sits in its two card slots and its tray.

    DIR/console.json   {"rom": ..., "hdd": ..., "slots": {"1": card or null, "2": ...},
                        "tray": disc or null, "server": URL override or null}

Set up once (``vhw console setup``); afterwards the everyday commands find the console by
``--console DIR``, ``$VHW_CONSOLE`` or the current folder, and need no paths. One flow runs at a
time on a console (a lock on ``DIR/.console.lock``, like a single CPU): a second command waits.
The folder is the owner's alone (0700): it names the console's device files.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Self

from ..devices import card as card_dev
from ..devices import rom as rom_dev
from ..devices.card import CardImage
from ..devices.disc import DiscImage
from ..devices.files import atomic_write, load_json, locked
from ..devices.hdd import HddImage
from ..errors import InputError, StateError
from ..formats.card import Card
from ..formats.disc import Pressing
from ..formats.rom import Rom
from ..ids import Id
from . import decisions
from .modem import Modem

if TYPE_CHECKING:  # (httpx loads only for the flows that talk to the server)
    from ..client import Client

CONFIG = "console.json"
SLOTS = ("1", "2")
WATCH_INTERVAL = 0.2  # seconds between looks at a card slot while a mount or a title depends on it


@dataclass
class ConsoleConfig:
    rom: str
    hdd: str
    slots: dict[str, str | None] = field(default_factory=lambda: {s: None for s in SLOTS})
    tray: str | None = None
    server: str | None = None
    memory: str | None = None  # card-less: "hdd", or the path of the console's internal memory

    @classmethod
    def load(cls, path: Path) -> ConsoleConfig:
        return load_json(cls, path, "console set-up (console.json)", _check_slots)


def _check_slots(cfg: ConsoleConfig) -> None:
    if set(cfg.slots) != set(SLOTS):
        raise ValueError(f"its slots are not {', '.join(SLOTS)}")


class CardMemory:
    """Where the card's items and saves are: the memory card in a slot, or (card-less) the
    console's or the HDD's internal memory. Each of them is a card image (:mod:`vhw.devices.card`):
    a file, or a region of the HDD image."""

    def __init__(self, path: Path, *, in_hdd: bool = False, internal: bool = False):
        self.path = Path(path)
        self.in_hdd = in_hdd
        self.internal = internal or in_hdd

    @property
    def called(self) -> str:
        """What a person calls it in a sentence: a card-less console's is its memory, not a card."""
        return "the console's memory" if self.internal else "the memory card"

    def open(self, *, write: bool = False) -> CardImage:
        if not self.in_hdd:
            return CardImage.open(self.path, write=write)
        with HddImage.open(self.path) as img:  # the region is in its superblock
            region = img.volume.sb.memory
        if region is None:
            raise StateError(f"{self.path}: this HDD has no internal memory", hint="vhw hdd format --with-memory")
        return CardImage.open_region(
            self.path, region.offset, region.length, what=f"{self.path} (internal memory)", write=write
        )

    def load(self) -> Card:
        with self.open() as img:
            return img.card

    @contextlib.contextmanager
    def transaction(self) -> Iterator[CardImage]:
        """The card locked and open for writing: ``img.save_card(card)`` commits a change."""
        with self.open(write=True) as img:
            yield img


class ConsoleFolder:
    """The console's set-up and slots: its devices, what is in the slots and the tray."""

    def __init__(self, root: Path):
        self.root = Path(root).resolve()
        self.modem = Modem(self.root, lambda: self.config().server or "", self.rom)
        self.log: Callable[[str], None] = lambda msg: None

    # -- set-up -----------------------------------------------------------------------------------

    @classmethod
    def setup(cls, root: Path, *, rom: Path, hdd: Path, server: str | None = None, memory: str | None = None) -> Self:
        """``memory``: card-less, the card's items kept in "hdd" or in the console's internal
        memory (a path made by `vhw console rom --memory`)."""
        if server is not None:
            from ..client import url_problem  # (httpx: only the flows that talk to the server)

            problem = url_problem(server)
            if problem:
                raise InputError(problem, hint="a console talks to its server over TLS: --server https://HOST:PORT")
        root = Path(root)
        if (root / CONFIG).exists():
            raise StateError(f"{root}: a console is already set up here")
        rom_dev.load(rom)  # refuse a bad ROM now, not at the first flow
        with HddImage.open(hdd):
            pass
        if memory and memory != "hdd":
            card_dev.load(Path(memory))
            memory = str(Path(memory).resolve())
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(root, 0o700)  # it names the console's device files: the owner's alone
        m = cls(root)
        m.save(ConsoleConfig(rom=str(Path(rom).resolve()), hdd=str(Path(hdd).resolve()), server=server, memory=memory))
        if memory == "hdd":
            m.card().load()  # refuse an HDD without internal memory now
        return m

    @classmethod
    def find(cls, explicit: Path | None = None) -> Self:
        """The console named by ``--console``, else ``$VHW_CONSOLE``, else the current folder."""
        named = explicit or os.environ.get("VHW_CONSOLE")
        if named:
            if not (Path(named) / CONFIG).exists():
                raise StateError(f"{named}: no console set up here", hint="run `vhw console setup DIR` first")
            return cls(Path(named))
        if (Path.cwd() / CONFIG).exists():
            return cls(Path.cwd())
        raise StateError("no console here", hint="pass --console DIR, set VHW_CONSOLE, or run `vhw console setup`")

    def config(self) -> ConsoleConfig:
        return ConsoleConfig.load(self.root / CONFIG)

    def save(self, cfg: ConsoleConfig) -> None:
        atomic_write(self.root / CONFIG, json.dumps(asdict(cfg), indent=1).encode())

    @contextlib.contextmanager
    def busy(self) -> Iterator[None]:
        """One flow at a time on this console."""
        lock = self.root / ".console.lock"
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            with locked(fd, self.root, "console", wait=True, on_wait=self.log, note_at=lock):
                yield
        finally:
            os.close(fd)

    # -- slots and tray -------------------------------------------------------------------------------

    def replace_device(self, *, rom: Path | None = None, hdd: Path | None = None) -> None:
        """A repaired or exchanged console or HDD takes the old one's place in the set-up; the
        slots, tray and server stay. Each new file is checked before anything changes."""
        if rom is not None:
            rom_dev.load(rom)
        if hdd is not None:
            with HddImage.open(hdd):
                pass
        with self.busy():
            cfg = self.config()
            if rom is not None:
                cfg.rom = str(Path(rom).resolve())
            if hdd is not None:
                cfg.hdd = str(Path(hdd).resolve())
            self.save(cfg)

    def insert_card(self, path: Path, slot: str = "1") -> Card:
        card = card_dev.load(path)
        with self.busy():
            cfg = self.config()
            if cfg.slots[slot]:
                raise StateError(f"card slot {slot} holds {cfg.slots[slot]}", hint="eject it first")
            other = next((s for s, held in cfg.slots.items() if held == str(Path(path).resolve())), None)
            if other is not None:
                raise StateError(f"{path} is in card slot {other} already: one card sits in one slot")
            cfg.slots[slot] = str(Path(path).resolve())
            self.save(cfg)
        return card

    def eject_card(self, slot: str = "1") -> str | None:
        with self.busy():
            cfg = self.config()
            was, cfg.slots[slot] = cfg.slots[slot], None
            self.save(cfg)
        return was

    def insert_disc(self, path: Path) -> DiscImage:
        with DiscImage.open(path) as disc:
            if disc.disc.pressing is Pressing.MASTER:
                raise StateError(
                    f"{path} is a master image, not a pressed disc", hint="press discs with `vhw disc press`"
                )
            with self.busy():
                cfg = self.config()
                if cfg.tray:
                    raise StateError(f"the tray holds {cfg.tray}", hint="eject it first")
                cfg.tray = str(Path(path).resolve())
                self.save(cfg)
            return disc

    def eject_disc(self) -> str | None:
        with self.busy():
            cfg = self.config()
            was, cfg.tray = cfg.tray, None
            self.save(cfg)
        return was

    # -- devices ---------------------------------------------------------------------------------------

    def rom(self) -> Rom:
        return rom_dev.load(Path(self.config().rom))

    @property
    def hdd_path(self) -> Path:
        return Path(self.config().hdd)

    def hdd_id(self) -> Id:
        with HddImage.open(self.hdd_path) as img:
            return img.hdd_id

    def card_path(self, slot: str = "1") -> Path:
        path = self.config().slots[slot]
        if not path:
            raise StateError(f"no memory card in slot {slot}", hint="vhw console insert-card CARD")
        return Path(path)

    def card(self, slot: str = "1") -> CardMemory:
        """Where the card's items are: the card in ``slot``, or (card-less) the internal memory."""
        memory = self.config().memory
        if memory == "hdd":
            return CardMemory(self.hdd_path, in_hdd=True)
        if memory:
            return CardMemory(Path(memory), internal=True)
        return CardMemory(self.card_path(slot))

    def has_card(self, slot: str = "1") -> bool:
        cfg = self.config()
        return bool(cfg.memory or cfg.slots[slot])

    def disc_path(self) -> Path:
        path = self.config().tray
        if not path:
            raise StateError("no disc in the tray", hint="vhw console insert-disc DISC")
        return Path(path)

    def client(self, rom: Rom) -> Client:
        """A client of the console's server (or broker), as the flows talk to it (:class:`Modem`)."""
        return self.modem.client(rom)

    def card_view(self, slot: str = "1") -> decisions.CardView | None:
        """The card's items opened once (None: no card), for a flow that only reads them."""
        return decisions.CardView.open(self.card(slot).load()) if self.has_card(slot) else None
