"""click parameter types for what people type (IDs, sizes, title IDs, addresses, paths), the
``--json`` option, and how the commands show times and sizes."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import click

from ..errors import IdError
from ..formats.common import valid_title_id
from ..ids import Id, IdKind

FC = TypeVar("FC", bound=Callable[..., Any])


class IdType(click.ParamType[Id]):
    """An ID label of one kind, checked by its check character before anything else happens."""

    def __init__(self, kind: IdKind):
        self.kind = kind
        self.name = kind.title

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Id:
        if isinstance(value, Id):
            return value
        try:
            return Id.parse(str(value), self.kind)
        except IdError as exc:  # the documented ID exit code (4), not click's usage error (2)
            where = f"{param.human_readable_name}: " if param is not None else ""
            raise IdError(where + exc.message, hint=exc.hint) from None


_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT]?)(I?B?)", re.I)
_UNITS = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
_IUNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_size(text: str) -> int:
    """``40G`` = 40·10⁹ bytes (as disk makers count), ``64MiB`` = 64·2²⁰, ``4096`` bytes."""
    m = _SIZE.fullmatch(text.strip())
    if not m:
        raise ValueError(text)
    number, unit, binary = m.groups()
    table = _IUNITS if binary.upper().startswith("I") else _UNITS
    return int(float(number) * table[unit.upper()])


class SizeType(click.ParamType[int]):
    name = "size"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            return parse_size(str(value))
        except ValueError:
            self.fail(f"{value!r} is not a size (examples: 40G, 512M, 64MiB, 1048576)", param, ctx)


class TitleIdType(click.ParamType[str]):
    name = "title-id"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value).strip().upper()
        if not valid_title_id(text):
            self.fail(f"{value!r} is not a title ID (2-32 of A-Z 0-9 . _ -, e.g. VHW-00001)", param, ctx)
        return text


class CertNameType(click.ParamType[str]):
    """The name a certificate is issued to (its subject's common name): 1 to 64 characters,
    none of them a control character."""

    name = "name"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value)
        if not 1 <= len(text) <= 64 or not text.isprintable():
            self.fail(f"{text!r} is not a name for a certificate (1 to 64 printable characters)", param, ctx)
        return text


class ListenType(click.ParamType[tuple[str, int]]):
    name = "host:port"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[str, int]:
        if isinstance(value, tuple):
            return value
        host, sep, port = str(value).rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
            self.fail(f"{value!r} is not host:port (e.g. 127.0.0.1:8443)", param, ctx)
        return host.strip("[]"), int(port)


SIZE = SizeType()
TITLE_ID = TitleIdType()
LISTEN = ListenType()
CERT_NAME = CertNameType()
CLIENT_ID = IdType(IdKind.CLIENT)
HDD_ID = IdType(IdKind.HDD)
CARD_ID = IdType(IdKind.CARD)
MEDIA_ID = IdType(IdKind.MEDIA)
USER_ID = IdType(IdKind.USER)


class PathType(click.Path):
    """click's path, which also refuses, in its one line, a path that is there but is neither a
    regular file nor a folder: a FIFO (reading or writing one waits for another program, without
    a word), a device, a socket, a link to nothing."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        path = super().convert(value, param, ctx)
        if os.path.lexists(path) and not (os.path.isfile(path) or os.path.isdir(path)):
            what = "a link to nothing" if os.path.islink(path) else "neither a file nor a folder"
            self.fail(f"{click.format_filename(path)!r} is {what}", param, ctx)
        return path


PATH = PathType(path_type=Path)
FILE = PathType(path_type=Path, dir_okay=False)  # a file, not a folder
FOLDER = PathType(path_type=Path, file_okay=False)  # a folder, not a file


def password_option(help: str, *, confirm: bool = False) -> Callable[[FC], FC]:
    """``--password``, asked for at a terminal when not given (twice with ``confirm``), read as one
    line from standard input when that is a pipe, and refused in click's one line when there is
    neither (not a prompt that waits on nothing, nor Python's warning that it cannot hide it)."""

    def ask(ctx: click.Context, param: click.Parameter, value: str | None) -> str:
        if value is not None:
            return value
        if sys.stdin is not None and sys.stdin.isatty():
            return str(click.prompt("Password", hide_input=True, confirmation_prompt=confirm))
        line = sys.stdin.readline().rstrip("\r\n") if sys.stdin is not None else ""
        if not line:
            raise click.BadParameter("not given: give it, or type it at a terminal, or pipe it in", ctx, param)
        return line

    return click.option("--password", callback=ask, help=help)


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")


def when(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if ts else "-"


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    return str(n)


def human_binary(n: float) -> str:
    """Sizes of memory cards, in the binary units their capacity is given in (8 MiB)."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return str(n)
