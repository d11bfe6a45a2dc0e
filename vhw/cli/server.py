"""Platform operator's tools: ``vhw server init|run|wait|credential|audit|backup|restore|
rotate-master-key|openapi|issue-cert|renew-cert|export-host|import-host``."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ..errors import FileError, ImageError, StateError
from ..ids import ID_FIELDS
from ..roles import ROLES
from . import App, pass_app, show_audit, vhw
from .params import CERT_NAME, FILE, FOLDER, LISTEN, when

if TYPE_CHECKING:  # (the server's modules load only for its commands)
    import ssl

    from starlette.routing import Mount

    from ..server.home import ServerHome
    from ..server.licensing import Licensing

# (the server's modules themselves, trio, hypercorn, starlette and the stores, load only when a
# server command runs)
home_option = click.option("--home", type=FOLDER, help="The server's folder (default: $VHW_HOME/server).")


def server_home(app: App, home: Path | None) -> ServerHome:
    from ..server.home import ServerHome  # (loaded only by the commands that need it: start-up time)

    return ServerHome(home or app.home / "server")


def parse_policy(text: str) -> list[str]:
    names = [x.strip().replace("-", "_").lower() for x in text.split(",") if x.strip()]
    if not names or not set(names) <= set(ID_FIELDS):
        raise click.BadParameter(f"a comma-separated, non-empty subset of {', '.join(ID_FIELDS)}")
    return sorted(set(names))


@vhw.group()
def server() -> None:
    """The licensing server.

    `init` makes its home, `run` serves (and `wait` waits until it does), `credential` manages
    the roles' credentials, `audit` reads and verifies its audit log, `backup` and `restore` its
    database, `rotate-master-key` re-encrypts its keys at rest, `openapi` prints its API,
    `issue-cert` makes a TLS certificate for a broker and `renew-cert` the server's next one,
    `ca-rollover` replaces the platform CA; `export-host` and `import-host` make another host of
    the same service.
    """


@server.command("init")
@home_option
@click.option("--listen", default="127.0.0.1:8443", show_default=True, help="Address to serve on.")
@click.option("--url", help="The URL consoles and tools use (default: https://LISTEN).")
@click.option("--host", "hosts", multiple=True, help="Another name or address for the TLS certificate.")
@click.option("--db", "database", default="", help="Database URL (default: SQLite file vhw.db in the home).")
@click.option(
    "--identify-by",
    default=",".join(ID_FIELDS),
    show_default=True,
    help="Which device IDs identify a user: a non-empty subset of mc_id, client_id, hdd_id.",
)
@click.option(
    "--mode",
    type=click.Choice(["direct", "broker"]),
    default="direct",
    show_default=True,
    help="broker: users reach the server only through the broker (FIG. 15).",
)
@pass_app
def server_init(
    app: App,
    home: Path | None,
    listen: str,
    url: str | None,
    hosts: tuple[str, ...],
    database: str,
    identify_by: str,
    mode: str,
) -> None:
    """Create the platform's state: CA, TLS certificate, master key, database, role credentials."""
    from ..server.home import ServerHome  # (loaded only by the commands that need it: start-up time)

    h = ServerHome.init(
        server_home(app, home).root,
        listen=listen,
        url=url,
        hosts=list(hosts),
        database=database,
        identify_by=parse_policy(identify_by),
        mode=mode,
    )
    click.echo(f"server home {h.root}")
    click.echo(f"  platform CA   {h.path('ca.pem')}  (burn it into console ROMs: vhw console rom --ca)")
    for role in ROLES:
        click.echo(f"  {role:<13} credential {h.credentials.path(role)}")


DEFAULT_POOL = 20  # PostgreSQL connections per server process, unless told (SQLite: one)
RUN_KEYS = {"home", "listen", "db", "workers", "log_format", "metrics_listen", "pool_size"}


def repair_console(home: ServerHome, lic: Licensing) -> list[Mount]:
    """The repair center's web console, mounted at /console/ of the licensing server."""
    from starlette.routing import Mount  # (loaded only by the commands that need it: start-up time)

    from ..webconsole.repair import RepairConsole  # (loaded only by the commands that need it: start-up time)
    from ..webconsole.web import session_key  # (loaded only by the commands that need it: start-up time)

    key = session_key(home.path("console-session.key"))
    return [Mount("/console", app=RepairConsole(lic, key, home.path("console-files")).app())]


def load_config(ctx: click.Context, param: click.Parameter, path: Path | None) -> Path | None:
    """``--config FILE``: TOML whose keys are `server run`'s options (snake_case), read before the
    other options, so that a flag and then ``VHW_SERVER_...`` override it (click's default_map)."""
    if path is None:
        return None
    import tomllib  # (loaded only by the commands that need it: start-up time)

    try:
        values = tomllib.loads(path.read_text())
    except OSError as exc:
        raise FileError(path, f"cannot read the configuration: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise FileError(path, f"not a TOML configuration ({str(exc).splitlines()[0]})") from None
    section = values.get("server", values) if isinstance(values.get("server"), dict) else values
    unknown = sorted(set(section) - RUN_KEYS)
    if unknown:
        raise FileError(path, f"unknown key {unknown[0]!r} (the keys are {', '.join(sorted(RUN_KEYS))})")
    converted = {}
    for key, value in section.items():
        if key == "db":
            key = "database"
        if key in ("listen", "metrics_listen") and isinstance(value, str):
            try:
                value = LISTEN.convert(value, None, ctx)
            except click.BadParameter as exc:
                raise FileError(path, f"{key}: {exc.message}") from None
        if key == "workers" and (isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 64):
            raise FileError(path, "workers: must be a whole number from 1 to 64")
        if key == "pool_size" and (isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 200):
            raise FileError(path, "pool_size: must be a whole number from 1 to 200")
        if key == "log_format" and value not in ("text", "json"):
            raise FileError(path, 'log_format: must be "text" or "json"')
        if key == "home":
            value = (path.parent / value) if not Path(value).is_absolute() else Path(value)
        converted[key] = value
    ctx.default_map = {**(ctx.default_map or {}), **converted}
    return path


@server.command("wait")
@home_option
@click.option("--timeout", type=click.FloatRange(0.1, 3600), default=30.0, show_default=True, help="Seconds to wait.")
@pass_app
def server_wait(app: App, home: Path | None, timeout: float) -> None:
    """Wait until the server of this home answers (after `vhw server run &`), at its URL, over TLS
    with its CA (and, in broker mode, the operator's client certificate); exit 5 if it does not
    within --timeout."""
    from ..client import tls_context  # (loaded only by the commands that need it: start-up time)
    from ..server.credentials import Credential  # (loaded only by the commands that need it: start-up time)

    h = server_home(app, home)
    h.require()
    operator = h.credentials.path("operator")
    cert = Credential.load(operator).client_cert if operator.exists() else None
    wait_for(h.config().url, tls_context(h.pki.ca_der(), client_cert=cert), timeout)


def wait_for(url: str, tls: ssl.SSLContext, timeout: float) -> None:
    """Ask ``url`` for its health until it answers, or ``timeout`` seconds have passed (exit 5)."""
    import time

    from .. import protocol as proto  # (loaded only by the commands that need it: start-up time)
    from ..client import Client  # (loaded only by the commands that need it: start-up time)
    from ..errors import NetworkError  # (loaded only by the commands that need it: start-up time)

    deadline = time.monotonic() + timeout
    said = False
    while True:
        try:
            with Client(url, tls, retry_for=0) as c:  # (this loop is the retry, to its own --timeout)
                health = c.get("/v1/health", proto.Health)
            click.echo(f"{url} answers ({health.mode} mode)")
            return
        except NetworkError as exc:
            if time.monotonic() > deadline:
                raise
            if not said:  # (a wait says at once what it waits for)
                click.echo(f"waiting up to {timeout:g} s for {url} to answer (not yet: {exc.message})", err=True)
                said = True
            time.sleep(0.2)


@server.command("run")
@click.option(
    "--config",
    type=FILE,
    is_eager=True,
    expose_value=False,
    callback=load_config,
    help="Read the options from this TOML file (flags and VHW_SERVER_* win).",
)
@click.option("--home", type=FOLDER, envvar="VHW_SERVER_HOME", help="The server's folder (default: $VHW_HOME/server).")
@click.option(
    "--listen",
    type=LISTEN,
    envvar="VHW_SERVER_LISTEN",
    help="Address to serve on (default: from `server init`); port 0 picks one.",
)
@click.option("--db", "database", envvar="VHW_SERVER_DB", help="Database URL (default: from `server init`).")
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    envvar="VHW_SERVER_WORKERS",
    help="Serve with this many processes on one port (use PostgreSQL behind them).",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    envvar="VHW_SERVER_LOG_FORMAT",
    help="One line per request and event on stderr, as text or JSON.",
)
@click.option(
    "--metrics-listen",
    type=LISTEN,
    envvar="VHW_SERVER_METRICS_LISTEN",
    help="Also serve /metrics over plain HTTP here, without a credential (for a local scraper).",
)
@click.option(
    "--pool-size",
    type=click.IntRange(1, 200),
    default=DEFAULT_POOL,
    show_default=True,
    envvar="VHW_SERVER_POOL_SIZE",
    help="PostgreSQL connections each server process may hold at once (docs/scale.md: 4 for many processes).",
)
@click.option("--reuse-port", is_flag=True, hidden=True, help="Bind with SO_REUSEPORT (one of --workers).")
@pass_app
def server_run(
    app: App,
    home: Path | None,
    listen: tuple[str, int] | None,
    database: str | None,
    workers: int,
    log_format: str,
    metrics_listen: tuple[str, int] | None,
    pool_size: int,
    reuse_port: bool,
) -> None:
    """Serve the licensing API over HTTPS until Ctrl-C or SIGTERM (then stop gracefully).

    The repair center's web console is at /console/ (sign in with the operator credential's token).

    Every option may come from --config FILE (TOML, keys as the options: home, listen, db, workers,
    log_format, metrics_listen, pool_size), from VHW_SERVER_<OPTION> in the environment, or from the flag;
    the flag wins over the environment, which wins over the file.
    """
    from ..server.logs import announce, configure  # (loaded only by the commands that need it: start-up time)
    from ..server.workers import run_workers  # (loaded only by the commands that need it: start-up time)

    configure(log_format)
    h = server_home(app, home)
    h.require()

    def ready(url: str) -> None:
        message = f"vhw licensing server listening on {url}"
        click.echo(announce(log_format, "vhw.server", message, event="listening", url=url.split()[0]))
        sys.stdout.flush()

    try:
        with h.running():
            if workers > 1:
                run_workers(
                    h,
                    workers=workers,
                    listen=listen,
                    database=database,
                    ready=ready,
                    log_format=log_format,
                    metrics_listen=metrics_listen,
                    pool_size=pool_size,
                )
            else:
                _serve(h, listen, database, ready, reuse_port, metrics_listen, pool_size)
    except OSError as exc:  # (several workers: the supervisor binds the address first)
        from ..httpapi import listen_error, split_listen  # (loaded only by the commands that need it: start-up time)

        raise listen_error(listen or split_listen(h.config().listen), exc) from None
    click.echo(announce(log_format, "vhw.server", "vhw licensing server stopped", event="stopped"))


def _serve(
    h: ServerHome,
    listen: tuple[str, int] | None,
    database: str | None,
    ready: Callable[[str], None],
    reuse_port: bool,
    metrics_listen: tuple[str, int] | None,
    pool_size: int,
) -> None:
    """One server process, on trio, until stopped."""
    import trio  # (loaded only by the commands that need it: start-up time)

    from ..server.app import serve  # (loaded only by the commands that need it: start-up time)

    consoles = partial(repair_console, h)
    trio.run(
        lambda: serve(
            h,
            listen=listen,
            database=database,
            ready=ready,
            reuse_port=reuse_port,
            metrics_listen=metrics_listen,
            consoles=consoles,
            pool_size=pool_size,
        )
    )


@server.group("credential")
def credential() -> None:
    """The credentials of the roles (manufacturer, publisher, operator, broker): `add` one, `ls`
    them, `revoke` one (its sessions end at once)."""


@credential.command("add")
@click.argument("role", type=click.Choice(ROLES))
@click.argument("name")
@click.option("-o", "--out", type=FILE, required=True)
@home_option
@pass_app
def credential_add(app: App, role: str, name: str, out: Path, home: Path | None) -> None:
    """Issue another credential for ROLE (e.g. a second repair center) into OUT."""
    h = server_home(app, home)
    h.require()
    store = h.store()
    try:
        h.credentials.add(store, role, name, out)
    finally:
        store.close()
    click.echo(f"{role} credential {name!r} written to {out}")


@credential.command("ls")
@home_option
@pass_app
def credential_ls(app: App, home: Path | None) -> None:
    """List the credentials: role, name, when issued (never a token: the server keeps only hashes)."""
    h = server_home(app, home)
    h.require()
    store = h.store()
    try:
        rows = h.credentials.list(store)
    finally:
        store.close()
    click.echo(f"{'role':<13} {'name':<24} issued")
    for role, name, created in rows:
        click.echo(f"{role:<13} {name:<24} {when(created)}")


@credential.command("revoke")
@click.argument("role", type=click.Choice(ROLES))
@click.argument("name")
@home_option
@pass_app
def credential_revoke(app: App, role: str, name: str, home: Path | None) -> None:
    """Take a credential back: from now on it calls nothing, and the web console sessions opened
    with it end at their next request."""
    h = server_home(app, home)
    h.require()
    store = h.store()
    try:
        h.credentials.revoke(store, role, name)
    finally:
        store.close()
    click.echo(f"{role} credential {name!r} revoked")


@server.command("audit")
@home_option
@click.option("--after", type=int, default=0, help="Only entries after this sequence number.")
@click.option("--json", "as_json", is_flag=True)
@click.option(
    "--verify",
    is_flag=True,
    help="Check the hash chain and the signed heads instead of printing;"
    " exit 3 naming the first entry that breaks them.",
)
@click.option("--db", "database", help="Database URL (default: from `server init`).")
@click.option(
    "--heads",
    "others",
    type=FILE,
    multiple=True,
    help="With --verify: another host's audit-heads.jsonl, checked against the same chain (repeatable).",
)
@pass_app
def server_audit(
    app: App, home: Path | None, after: int, as_json: bool, verify: bool, database: str | None, others: tuple[Path, ...]
) -> None:
    """Print the audit log: every registration, key issue, flag, confirm, repair and reissue.

    The entries are linked in a hash chain whose head the server signs with the platform key into
    audit-heads.jsonl (outside the database): --verify finds an edited, deleted or reordered entry.
    """
    h = server_home(app, home)
    h.require()
    if not verify:
        show_audit(h.store(database), after=after, as_json=as_json)
        return
    from ..server.auditlog import verify as verify_chain  # (loaded only by the commands that need it: start-up time)

    store = h.store(database)
    try:
        verdict = verify_chain(store, [h.path("audit-heads.jsonl"), *others], h.pki.check_signature)
    finally:
        store.close()
    if not verdict.ok:
        raise ImageError(h.path("audit-heads.jsonl").parent, str(verdict))
    click.echo(str(verdict))


@server.command("backup")
@click.argument("out", type=FILE)
@home_option
@click.option("--db", "database", help="Database URL (default: from `server init`).")
@pass_app
def server_backup(app: App, out: Path, home: Path | None, database: str | None) -> None:
    """Write an online, consistent copy of the database to OUT while the server serves.

    SQLite: its backup API; PostgreSQL: pg_dump. The keys in it stay encrypted under the master
    key, which is not in it: keep master.key (and ca-key.pem) apart from the backups.
    """
    from ..server.backups import backup  # (loaded only by the commands that need it: start-up time)

    h = server_home(app, home)
    h.require()
    kind = backup(h, out, database)
    click.echo(f"backed up the {kind} database to {out}")


@server.command("restore")
@click.argument("source", metavar="IN", type=FILE)
@home_option
@click.option("--db", "database", help="Database URL (default: from `server init`).")
@click.option(
    "--from-home",
    "old",
    type=FOLDER,
    help="A copy of the old home's folder: make the home from its keys, certificates, credentials "
    "and config first (the home must not exist yet).",
)
@pass_app
def server_restore(app: App, source: Path, home: Path | None, database: str | None, old: Path | None) -> None:
    """Restore the backup IN as this home's database: a new one only, never over a live one.

    The home must hold the master key the backup's keys are encrypted under, and the old home's
    CA, TLS and signing keys for its consoles to trust it: on a new machine, give a copy of the
    old home's folder with --from-home and the home is made from it.
    """
    from ..server.backups import restore  # (loaded only by the commands that need it: start-up time)
    from ..server.home import ServerHome

    h = server_home(app, home)
    made = False
    if old is not None:
        h = ServerHome.from_files(h.root, old)
        made = True
    elif not h.exists:
        raise StateError(
            f"{h.root}: no server home here to restore into",
            hint="give a copy of the old home's folder with --from-home: its master key opens the backup's keys"
            " (`vhw server init` would make a new master key, which does not)",
        )
    h.require()
    try:
        reached = restore(h, source, database)
    except BaseException:
        if made:  # the home made for this restore goes with it: run the same command again
            shutil.rmtree(h.root, ignore_errors=True)
        raise
    click.echo(f"restored {source}: the audit chain reaches position {reached}")


@server.command("rotate-master-key")
@home_option
@click.option("--db", "database", help="Database URL (default: from `server init`).")
@pass_app
def server_rotate(app: App, home: Path | None, database: str | None) -> None:
    """Re-encrypt every key at rest under a new master key, in one transaction; the old key is
    then gone. Stop the server first. A rotation killed half way is finished, or undone, when the
    server next starts: every key stays readable under exactly one of the two keys."""
    h = server_home(app, home)
    h.require()
    with h.stopped("rotating its master key"):
        store = h.store(database)
        try:
            count = h.keys.rotate(store)
        finally:
            store.close()
    click.echo(f"re-encrypted {count} keys under a new master key; the old one is gone")


@server.command("openapi")
@click.option("-o", "--out", type=FILE, help="Write here, not to stdout.")
def server_openapi(out: Path | None) -> None:
    """Print the OpenAPI document of the licensing API."""
    from ..server.endpoints import (
        openapi_document,
        write_openapi,
    )  # (loaded only by the commands that need it: start-up time)

    if out:
        write_openapi(out)
    else:
        click.echo(json.dumps(openapi_document(), indent=1, sort_keys=True))


@server.command("issue-cert")
@click.argument("name", type=CERT_NAME)
@click.option("--host", "hosts", multiple=True, help="A name or address it serves on (127.0.0.1 and localhost always).")
@click.option("-o", "--out", type=FOLDER, required=True)
@home_option
@pass_app
def server_issue_cert(app: App, name: str, hosts: tuple[str, ...], out: Path, home: Path | None) -> None:
    """Issue a TLS identity signed by the platform CA (for a broker: consoles trust only that CA)."""
    h = server_home(app, home)
    h.require()
    h.pki.issue_server_cert(name, list(hosts), out)
    click.echo(f"TLS identity for {name!r} in {out} (tls.pem, tls-key.pem)")


@server.command("renew-cert")
@home_option
@pass_app
def server_renew_cert(app: App, home: Path | None) -> None:
    """Issue the server's next TLS certificate (a fresh key, the same names, valid 397 days) in place
    of the one in use; restart the server to serve it. /metrics says when the one in use expires
    (vhw_certificate_expiry_timestamp_seconds{certificate="tls"}), and deploy/prometheus warns 30
    days ahead. Consoles and credentials need nothing new: they trust the CA, which stays."""
    import datetime

    h = server_home(app, home)
    h.require()
    names, expires = h.pki.renew_tls()
    until = datetime.datetime.fromtimestamp(expires, datetime.UTC).strftime("%Y-%m-%d")
    click.echo(f"renewed {h.path('server.pem')} for {', '.join(names)} until {until}; restart the server to serve it")


@server.group("ca-rollover")
def ca_rollover() -> None:
    """Replace the platform CA without stranding a console: `begin` makes the next CA, vouched for
    by the current one; consoles take it at their next contact; `finish` retires the old one."""


@ca_rollover.command("begin")
@home_option
@pass_app
def ca_rollover_begin(app: App, home: Path | None) -> None:
    """Make the next CA, and a cross-certificate by which the current CA vouches for it. Servers
    announce both (restart them); consoles take the next one at their next contact. Credentials
    issued from now on come from the next CA and trust both."""
    h = server_home(app, home)
    h.require()
    name = h.pki.begin_rollover()
    click.echo(f"began a CA rollover: the next CA is {name}; restart the server to announce it to consoles")
    click.echo(
        "next: issue each role's credential again (vhw server credential add) and each broker's identity"
        " (vhw server issue-cert, vhw broker identity); on several hosts copy ca-next*.pem into each home;"
        " when the consoles have followed: vhw server ca-rollover finish, then the brokers' identities again"
    )


@ca_rollover.command("finish")
@click.option("--anyway", is_flag=True, help="Finish though credentials issued before the rollover remain.")
@home_option
@pass_app
def ca_rollover_finish(app: App, anyway: bool, home: Path | None) -> None:
    """Retire the old CA: the next one becomes the platform CA, the old one's key is deleted, and
    the server's TLS certificate comes from the new CA (restart the server to serve it). Refused
    while credentials issued before the rollover, which trust the old CA alone, remain."""
    from .. import pki  # (loaded only by the commands that need it: start-up time)

    h = server_home(app, home)
    h.require()
    if not h.pki.rolling:
        raise StateError("no CA rollover is under way", hint="begin one: vhw server ca-rollover begin")
    store = h.store()
    try:
        stale = h.credentials.issued_before(store, h.pki.rollover_begun())
    finally:
        store.close()
    if stale and not anyway:
        raise StateError(
            f"{len(stale)} credential(s) were issued before the rollover and stop working when it ends: "
            + ", ".join(f"{role}:{name}" for role, name in stale),
            hint="issue each again (vhw server credential add ROLE NAME -o FILE) and hand it out, or pass --anyway",
        )
    retired = h.pki.finish_rollover()
    click.echo(
        f"finished the CA rollover: the platform CA is {pki.common_name(h.pki.ca_der())}; the old one's"
        f" certificate is kept as {retired}, its key deleted; restart the server to serve its new certificate"
    )


@server.command("export-host")
@click.argument("out", type=FOLDER)
@home_option
@pass_app
def server_export_host(app: App, out: Path, home: Path | None) -> None:
    """Write what another licensing host of this service needs into the new folder OUT: its keys,
    certificates, credentials and configuration (owner only: it holds the master key and the CA's
    key; carry it to the new host as such). The home must be on PostgreSQL, which hosts share."""
    from ..server.hosts import export_host  # (loaded only by the commands that need it: start-up time)

    names = export_host(server_home(app, home), out)
    click.echo(f"{out}: {', '.join(names)}; on the new host: vhw server import-host {out} --home HOME")


@server.command("import-host")
@click.argument("source", metavar="IN", type=FOLDER)
@home_option
@click.option("--listen", type=LISTEN, help="This host's address to serve on (default: the exporting host's).")
@pass_app
def server_import_host(app: App, source: Path, home: Path | None, listen: tuple[str, int] | None) -> None:
    """Make this host's home from IN (`vhw server export-host`): the same service, its own audit
    heads; checked against the shared database before it is kept."""
    from ..server.hosts import import_host  # (loaded only by the commands that need it: start-up time)

    address = (
        None if listen is None else (f"[{listen[0]}]:{listen[1]}" if ":" in listen[0] else f"{listen[0]}:{listen[1]}")
    )
    h = import_host(server_home(app, home).root, source, listen=address)
    click.echo(f"{h.root}: another host of {h.config().url}, on the shared database; `vhw server run` serves it")
