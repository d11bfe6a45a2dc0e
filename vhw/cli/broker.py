"""The broker's operator (FIG. 15): ``vhw broker init|run|audit|ledger`` and ``vhw broker account ...``."""

from __future__ import annotations

import sys
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import click

from ..errors import StateError
from . import App, columns, emit, local_time, pass_app, show_audit, vhw
from .params import FILE, FOLDER, LISTEN
from .params import password_option as asked_password

if TYPE_CHECKING:  # (the broker's modules load only for its commands)
    from starlette.routing import Mount

    from ..broker.home import BrokerHome
    from ..broker.service import Broker

FC = TypeVar("FC", bound=Callable[..., object])

home_option = click.option("--home", type=FOLDER, help="The broker's folder (default: $VHW_HOME/broker).")


def broker_home(app: App, home: Path | None) -> BrokerHome:
    from ..broker.home import (
        BrokerHome,  # (the broker's web stack loads only for broker commands)
    )

    return BrokerHome(home or app.home / "broker")


def cents(text: str) -> int:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise click.BadParameter(f"{text!r} is not an amount (like 4.99)") from None
    if value < 0 or value != value.quantize(Decimal("0.01")):
        raise click.BadParameter(f"{text!r} is not an amount in cents (like 4.99)")
    return int(value * 100)


@vhw.group()
def broker() -> None:
    """The broker between users and the licensing server (FIG. 15): it sells keys to consoles.

    `init` makes its home from the server's broker credential, `run` serves consoles (and the
    staff's web console at /console/; `wait` waits until it does), `account` keeps the users'
    accounts, `staff` the people who sign in to the web console, `ledger` checks that the books
    balance, `audit` shows its audit log, `identity` takes a new TLS identity from the platform.
    """


@broker.command("init")
@home_option
@click.option(
    "--credential", type=FILE, required=True, help="The broker's platform credential (from `vhw server init`)."
)
@click.option(
    "--tls",
    type=FOLDER,
    required=True,
    help="The broker's TLS identity, signed by the platform CA (`vhw server issue-cert`).",
)
@click.option("--server", help="The licensing server's URL (default: the credential's).")
@click.option("--listen", default="127.0.0.1:9443", show_default=True)
@click.option("--price", default="4.99", show_default=True, help="Price of one key, in --currency.")
@click.option(
    "--currency", default="EUR", show_default=True, help="What every amount is in: an ISO 4217 code (EUR, USD)."
)
@click.option(
    "--platform-share",
    type=click.IntRange(0, 100),
    default=70,
    show_default=True,
    help="Percent of each charge that goes to the platform; the rest is the broker's.",
)
@pass_app
def broker_init(
    app: App,
    home: Path | None,
    credential: Path,
    tls: Path,
    server: str | None,
    listen: str,
    price: str,
    currency: str,
    platform_share: int,
) -> None:
    """Set up a broker: its credential, TLS identity, prices and database."""
    from ..broker.config import money
    from ..broker.home import BrokerHome  # (loaded only by the commands that need it: start-up time)

    h = BrokerHome.init(
        broker_home(app, home).root,
        credential=credential,
        tls=tls,
        server=server,
        listen=listen,
        price_cents=cents(price),
        platform_share=platform_share,
        currency=currency.upper(),
    )
    cfg = h.config()
    click.echo(
        f"broker {h.root}: price {money(cfg.price_cents, cfg.currency)} per key, platform {cfg.platform_share}%,"
        f" server {cfg.server}"
    )


@broker.command("identity")
@click.option("--tls", type=FOLDER, required=True, help="The TLS identity from `vhw server issue-cert` (a folder).")
@click.option("--credential", type=FILE, help="A new broker credential from the platform (vhw server credential add).")
@home_option
@pass_app
def broker_identity(app: App, tls: Path, credential: Path | None, home: Path | None) -> None:
    """Take a new TLS identity (and credential) the platform issued: during a CA rollover, or when
    the old one nears its end. Restart the broker to serve it."""
    h = broker_home(app, home)
    h.require()
    h.take_identity(tls, credential)
    click.echo(f"{h.root}: took the identity in {tls}" + (f" and the credential {credential}" if credential else ""))
    click.echo("restart the broker to serve it")


@broker.command("wait")
@home_option
@click.option("--timeout", type=click.FloatRange(0.1, 3600), default=30.0, show_default=True, help="Seconds to wait.")
@pass_app
def broker_wait(app: App, home: Path | None, timeout: float) -> None:
    """Wait until the broker of this home answers (after `vhw broker run &`) at its configured
    address, over TLS with the platform's CA; exit 5 if it does not within --timeout."""
    from ..client import tls_context  # (loaded only by the commands that need it: start-up time)
    from ..server.credentials import Credential  # (loaded only by the commands that need it: start-up time)
    from .server import wait_for

    h = broker_home(app, home)
    h.require()
    ca = Credential.load(h.path("credential.json")).ca
    host, _, port = h.config().listen.rpartition(":")
    host = {"0.0.0.0": "127.0.0.1", "[::]": "[::1]", "": "127.0.0.1"}.get(host, host)  # (every address: ask here)
    wait_for(f"https://{host}:{port}", tls_context(ca_pem=ca), timeout)


@broker.command("run")
@home_option
@click.option("--listen", type=LISTEN, help="Address to serve consoles on (default: from init); port 0 picks one.")
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="Log lines on stderr as text or as JSON lines: one per request, as the server's.",
)
@pass_app
def broker_run(app: App, home: Path | None, listen: tuple[str, int] | None, log_format: str) -> None:
    """Serve consoles over HTTPS until Ctrl-C or SIGTERM; the staff's web console is at /console/.

    Logs one line per request on stderr (method, path, status, time, role, request ID; never an
    account name or a User ID), as `vhw server run` does.
    """
    from ..server.logs import announce, configure  # (loaded only by the commands that need it: start-up time)

    h = broker_home(app, home)
    h.require()
    configure(log_format)

    def ready(url: str) -> None:
        click.echo(announce(log_format, "vhw.broker", f"vhw broker listening on {url}", event="listening", url=url))
        sys.stdout.flush()

    import trio  # (loaded only by the commands that need it: start-up time)

    from ..broker.app import serve  # (loaded only by the commands that need it: start-up time)

    trio.run(lambda: serve(h, listen=listen, ready=ready, consoles=partial(desk_console, h)))
    click.echo(announce(log_format, "vhw.broker", "vhw broker stopped", event="stopped"))


def desk_console(home: BrokerHome, broker: Broker, token: str) -> list[Mount]:
    """The broker staff's web console, mounted at /console/ of the broker."""
    from starlette.routing import Mount  # (loaded only by the commands that need it: start-up time)

    from ..webconsole.desk import DeskConsole  # (loaded only by the commands that need it: start-up time)
    from ..webconsole.web import session_key  # (loaded only by the commands that need it: start-up time)

    return [Mount("/console", app=DeskConsole(broker, session_key(home.path("console-session.key")), token).app())]


@broker.group("account")
def account() -> None:
    """User accounts: `add` one, put a `card` on file, `topup` its balance, show its `statement`."""


def password_option(whose: str) -> Callable[[FC], FC]:
    return asked_password(f"{whose} password (asked when not given; kept only as a scrypt hash).", confirm=True)


@account.command("add")
@click.argument("name")
@password_option("The account's")
@home_option
@pass_app
def account_add(app: App, name: str, password: str, home: Path | None) -> None:
    """Open an account NAME (its password is kept only as a scrypt hash)."""
    with broker_home(app, home).broker() as b:
        b.logins.add_account(name, password)
    click.echo(f"account {name} opened")


@account.command("card")
@click.argument("name")
@click.argument("number")
@home_option
@pass_app
def account_card(app: App, name: str, number: str, home: Path | None) -> None:
    """Put a payment card on file for NAME (the processor keeps the number; the broker a token)."""
    with broker_home(app, home).broker() as b:
        last4 = b.ledger.set_card(name, number)
    click.echo(f"card **** {last4} on file for {name}")


@account.command("topup")
@click.argument("name")
@click.argument("amount")
@click.option("--card", "number", help="Pay with this card instead of the one on file.")
@home_option
@pass_app
def account_topup(app: App, name: str, amount: str, number: str | None, home: Path | None) -> None:
    """Pay AMOUNT into NAME's prepaid balance."""
    with broker_home(app, home).broker() as b:
        txn, balance = b.ledger.topup(name, cents(amount), number)
    click.echo(f"{name}: added {b.ledger.money(cents(amount))} ({txn}), balance {b.ledger.money(balance)}")


@account.command("statement")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
@home_option
@pass_app
def account_statement(app: App, name: str, as_json: bool, home: Path | None) -> None:
    """Show NAME's balance, card on file, and every top-up and charge with its date (local time)."""
    with broker_home(app, home).broker() as b:
        d = b.ledger.statement(name)
    money = b.ledger.money
    moves = [(e["at"], "top-up", money(e["cents"]), "card", e["memo"]) for e in d["prepaid_entries"] if e["cents"] > 0]
    moves += [
        (c["at"], "charge", money(-c["cents"]), "balance" if c["method"] == "prepaid" else "card", c["what"])
        for c in d["charges"]
    ]
    rows = [
        [local_time(at), kind, amount, paid, what] for at, kind, amount, paid, what in sorted(moves, key=lambda m: m[0])
    ]
    lines = [
        f"account {name}: balance {money(d['balance_cents'])}, card {d['card_on_file'] or 'none'}",
        *(columns(("time", "what", "amount", "paid by", "for"), rows) if rows else ["(no top-ups or charges yet)"]),
    ]
    emit(d, as_json=as_json, lines=lines)


@broker.group("staff")
def staff() -> None:
    """The broker's staff, who sign in to its web console (https://BROKER/console/): `add`, `ls`, `rm`."""


@staff.command("add")
@click.argument("name")
@password_option("The staff member's")
@home_option
@pass_app
def staff_add(app: App, name: str, password: str, home: Path | None) -> None:
    """Add a staff account NAME (its password is kept only as a scrypt hash)."""
    with broker_home(app, home).broker() as b:
        b.logins.add_staff(name, password)
    click.echo(f"staff account {name} added; it signs in at /console/")


@staff.command("ls")
@click.option("--json", "as_json", is_flag=True)
@home_option
@pass_app
def staff_ls(app: App, as_json: bool, home: Path | None) -> None:
    """List the staff accounts (names and when they were added; never a password)."""
    with broker_home(app, home).broker() as b:
        rows = b.logins.staff()
    lines = (
        columns(("name", "added"), [[r["name"], local_time(r["created"])] for r in rows]) if rows else ["(no staff)"]
    )
    emit({"staff": rows}, as_json=as_json, lines=lines)


@staff.command("rm")
@click.argument("name")
@home_option
@pass_app
def staff_rm(app: App, name: str, home: Path | None) -> None:
    """Remove a staff account NAME: it signs in no more, and its open sessions end at once."""
    with broker_home(app, home).broker() as b:
        b.logins.remove_staff(name)
    click.echo(f"staff account {name} removed")


@broker.command("ledger")
@click.option("--json", "as_json", is_flag=True)
@home_option
@pass_app
def broker_ledger(app: App, as_json: bool, home: Path | None) -> None:
    """Check the ledger: every transaction balanced, the shares adding up to the charges."""
    with broker_home(app, home).broker() as b:
        t = b.ledger.totals()
    ok, money = t["balanced"], b.ledger.money
    emit(
        t,
        as_json=as_json,
        lines=[
            f"charges {money(t['charges'])} = platform {money(t['platform'])} + broker {money(t['broker'])}",
            f"sum of all entries {money(t['sum_of_entries'])}; " + ("balanced" if ok else "NOT BALANCED"),
        ],
    )
    if not ok:
        raise StateError("the ledger does not balance")


@broker.command("audit")
@home_option
@click.option("--json", "as_json", is_flag=True)
@pass_app
def broker_audit(app: App, home: Path | None, as_json: bool) -> None:
    """Print the broker's audit log: accounts, cards on file, top-ups, relayed requests, charges."""
    h = broker_home(app, home)
    h.require()
    show_audit(h.store(), as_json=as_json)
