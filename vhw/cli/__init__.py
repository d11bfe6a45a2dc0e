"""The ``vhw`` command: one click group per role's tools, and the one place errors meet people.

Every :class:`~vhw.errors.VhwError` ends the command with one line on stderr and its exit code
(listed in ``vhw --help``); the patent's refusals print their exact text and nothing else.
Anything else that escapes is a bug: it is reported in one line as well, with its traceback only
when ``VHW_DEBUG=1``.

A module per group: :mod:`.card` (and :mod:`.saves`, its ``saves``), :mod:`.hdd`, :mod:`.console`,
:mod:`.disc`, :mod:`.server`, :mod:`.repair`, :mod:`.broker`, and :mod:`.demo` (the story
:mod:`vhw.demo` tells); what they share: :mod:`.params`
(what people type, and how times and sizes are shown) and :mod:`.roles` (calling the server as
a role).
"""

from __future__ import annotations

import datetime
import errno
import importlib
import json
import logging
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ..devices import holders
from ..errors import EXIT_CODES, InputError, Refusal, VhwError

if TYPE_CHECKING:  # (the server's modules load only for the commands that use them)
    from ..server.store import Store

__all__ = ["main"]


EXIT_HELP = "\b\nExit codes:\n" + "\n".join(f"  {code:>2}  {text}" for code, text in EXIT_CODES)


@dataclass
class App:
    """What every command shares: where vhw keeps its state (``$VHW_HOME``, default ~/.vhw)."""

    home: Path = field(default_factory=lambda: Path(os.environ.get("VHW_HOME", "~/.vhw")).expanduser())

    @property
    def keystore_dir(self) -> Path:
        return self.home / "publisher"


pass_app = click.make_pass_decorator(App, ensure=True)


def emit(data: dict[str, Any], *, as_json: bool, lines: list[str] | None = None) -> None:
    """Print ``data`` as JSON, or as the given human-readable lines."""
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))
    else:
        for line in lines if lines is not None else [f"{k}: {v}" for k, v in data.items()]:
            click.echo(line)


def show_audit(store: Store, *, after: int = 0, as_json: bool = False) -> None:
    """Print an audit log (the server's or the broker's: the same table)."""
    try:
        from ..server import records  # (loaded only by the commands that need it: start-up time)

        with store.transaction() as tx:
            rows = records.audit_after(tx, after)
    finally:
        store.close()
    entries = [
        {
            "seq": seq,
            "at": at,
            "time": local_time(at),
            "actor": actor,
            "action": action,
            "subject": subject,
            "detail": _detail(detail),
        }
        for seq, at, actor, action, subject, detail in rows
    ]
    emit({"entries": entries}, as_json=as_json, lines=audit_lines(entries))


def local_time(at: int) -> str:
    """A moment as a person reads it here: local time, ISO 8601 with its UTC offset."""
    return datetime.datetime.fromtimestamp(at).astimezone().isoformat(timespec="seconds")


def columns(heads: tuple[str, ...], rows: list[list[str]]) -> list[str]:
    """Rows in aligned columns, each as wide as its widest value, with a header line."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(heads)]
    return ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in [list(heads), *rows]]


def _detail(text: str) -> Any:
    """An audit entry's detail as the object it was written as (text if it is not JSON)."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def audit_lines(entries: list[dict[str, Any]]) -> list[str]:
    """Audit entries in aligned columns (each as wide as its widest value), local ISO times."""
    if not entries:
        return ["(no entries)"]
    heads = ("seq", "time", "actor", "action", "subject", "detail")

    def shown(detail: Any) -> str:
        return " ".join(f"{k}={v}" for k, v in detail.items()) if isinstance(detail, dict) else str(detail)

    return columns(heads, [[*(str(e[h]) for h in heads[:-1]), shown(e["detail"])] for e in entries])


class ProgressBar:
    """A progress bar with bytes, rate and time left, on stderr (so stdout stays parseable); silent
    when stderr is not a terminal (logs, pipes, tests). ``update(n)``: n more bytes done."""

    def __init__(self, length: int, label: str) -> None:
        self.done = 0
        self._start = time.monotonic()
        self._length = length
        self._bar: Any = None
        if sys.stderr.isatty():
            self._bar = click.progressbar(
                length=length,
                label=label,
                file=sys.stderr,
                show_eta=True,
                show_percent=True,
                item_show_func=self._show,
                width=24,
            )

    def _show(self, _item: object) -> str:
        elapsed = max(time.monotonic() - self._start, 1e-6)
        return f"{self.done / 1e6:,.0f}/{self._length / 1e6:,.0f} MB  {self.done / elapsed / 1e6:,.0f} MB/s"

    def __enter__(self) -> ProgressBar:
        if self._bar is not None:
            self._bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)

    def update(self, n: int) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n, current_item=True)


def progress_bar(length: int, label: str) -> ProgressBar:
    return ProgressBar(length, label)


class LazyGroup(click.Group):
    """The top group: each command's module loads when that command runs (or when help lists
    them all), so a command pays for its own imports only: `vhw console install` does not load
    the server, the broker, the web consoles or mastering (a cold start is a large part of a
    small install, where `cp` starts at once)."""

    def __init__(self, *args: Any, modules: dict[str, tuple[str, ...]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.modules = modules  # command -> the modules that define it and add to it, in order

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *self.modules})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        for name in self.modules.get(cmd_name, ()):
            module = importlib.import_module(name, __name__)
            if cmd_name not in self.commands and isinstance(getattr(module, cmd_name, None), click.Command):
                self.add_command(getattr(module, cmd_name))  # (a command defined outside vhw.cli)
        return super().get_command(ctx, cmd_name)

    def load_all(self) -> None:
        """Every command (for code that walks ``commands``)."""
        for name in self.modules:
            self.get_command(click.Context(self), name)


# (each group is defined in the module of its name; `.saves` adds `card saves` to `card`)
COMMANDS = {
    "broker": (".broker",),
    "card": (".card", ".saves"),
    "console": (".console",),
    "demo": (".demo",),
    "disc": (".disc",),
    "hdd": (".hdd",),
    "repair": (".repair",),
    "server": (".server",),
}


@click.group(
    cls=LazyGroup,
    modules=COMMANDS,
    epilog=EXIT_HELP,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.option("-v", "--verbose", count=True, help="Log more (twice for debug output).")
@click.version_option(package_name="vhw")
def vhw(verbose: int) -> None:
    """vhw: a virtual game console whose devices are files, and its licensing service.

    Publishers master and press discs, manufacturers make consoles, HDDs and memory cards, users
    register, install titles from discs onto the HDD and play them; the licensing server makes
    sure each disc is installed once, by its owner, and plays only on the owner's console and HDD.

    The devices: `disc`, `console`, `hdd` and `card`. The services: the licensing `server`, the
    `repair` center and the `broker`. `demo` runs the whole story in a temporary folder.
    """
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def _person_error(exc: BaseException) -> VhwError | None:
    """The error meant for a person, alone or inside a group of them (trio's nurseries gather what
    their tasks raised): the first one, or None when there are only bugs. A path the system refuses
    (too long, through a file, a folder where a file is meant, read-only, not permitted) is the
    person's, wherever in a command it was first used."""
    if isinstance(exc, VhwError):
        return exc
    if isinstance(exc, OSError) and exc.filename is not None and exc.errno in _PATH_REFUSED:
        return _path_refused(exc)
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _person_error(inner)
            if found is not None:
                return found
    return None


_PATH_REFUSED = {  # (errno: why, in the line; a name too long says more, below)
    errno.ENAMETOOLONG: "too long",
    errno.ENOTDIR: "a part of it is a file, not a folder",
    errno.EEXIST: "a file is in the way of a folder",
    errno.EISDIR: "a folder, where a file is meant",
    errno.EROFS: "on a read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "not permitted",
}


def _path_refused(exc: OSError) -> InputError:
    """A path given (or made from one given) that this system refuses, in one line."""
    name = os.fsencode(exc.filename)
    shown = (name if len(name) <= 60 else name[:28] + b"..." + name[-28:]).decode(errors="replace")
    if exc.errno == errno.ENAMETOOLONG:
        return InputError(
            f"a path is too long: {shown!r} ({len(name):,} bytes;"
            f" a name of a folder or file may have {os.pathconf('/', 'PC_NAME_MAX')} bytes at most,"
            f" a whole path {os.pathconf('/', 'PC_PATH_MAX') - 1:,})"
        )
    if exc.errno == errno.EEXIST and os.path.isdir(exc.filename):
        return InputError(f"{shown}: exists already")
    return InputError(f"{shown}: {_PATH_REFUSED[exc.errno or 0]}")


def run(args: list[str] | None = None) -> int:
    """Run one command; turn every failure into one line on stderr. Returns the exit code."""
    holders.act_for(
        None, " ".join(["vhw", *(args if args is not None else sys.argv[1:])[:2]])
    )  # (until a console says)
    try:
        try:
            rv = vhw.main(args, standalone_mode=False, prog_name="vhw")
        except (BaseExceptionGroup, OSError) as exc:
            found = _person_error(exc)
            if found is None:
                raise
            raise found from None
    except click.exceptions.Abort as exc:  # (click's word for Ctrl-C, and for an answer not given)
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, KeyboardInterrupt):
            click.echo("vhw: interrupted" + (f": {cause.args[0]}" if cause.args else ""), err=True)
        else:
            click.echo("vhw: aborted", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except Refusal as exc:
        click.echo(exc.text, err=True)
        if exc.hint:
            click.echo(f"vhw: {exc.hint}", err=True)
        return exc.exit_code
    except VhwError as exc:
        click.echo(f"vhw: {exc.message}" + (f" ({exc.hint})" if exc.hint else ""), err=True)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        click.echo("vhw: interrupted" + (f": {exc.args[0]}" if exc.args else ""), err=True)
        return 130
    except BrokenPipeError:
        return 141
    except Exception as exc:  # a bug: say so in one line
        if os.environ.get("VHW_DEBUG"):
            traceback.print_exc()
        click.echo(f"vhw: internal error: {type(exc).__name__}: {exc} (VHW_DEBUG=1 shows more)", err=True)
        return 1
    return rv if isinstance(rv, int) else 0


def main() -> None:
    """Console-script entry point."""
    sys.exit(run())
