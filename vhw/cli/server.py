"""Platform operator's tools: ``vhw server init|run|credential|audit|openapi``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from ..errors import StateError
from . import App, pass_app, show_audit, vhw
from .params import LISTEN
from ..ids import ID_FIELDS
from ..roles import ROLES

# (the server's modules themselves, trio, hypercorn, starlette and the stores, load only when a
# server command runs)
home_option = click.option(
    "--home", type=click.Path(path_type=Path, file_okay=False),
    help="The server's folder (default: $VHW_HOME/server).",
)


def server_home(app: App, home: Path | None):
    from ..serverhome import ServerHome

    return ServerHome(home or app.home / "server")


def parse_policy(text: str) -> list[str]:
    names = [x.strip().replace("-", "_").lower() for x in text.split(",") if x.strip()]
    if not names or not set(names) <= set(ID_FIELDS):
        raise click.BadParameter(f"a comma-separated, non-empty subset of {', '.join(ID_FIELDS)}")
    return sorted(set(names))


@vhw.group()
def server() -> None:
    """The licensing server: set it up, run it, read its audit log."""


@server.command("init")
@home_option
@click.option("--listen", default="127.0.0.1:8443", show_default=True, help="Address to serve on.")
@click.option("--url", help="The URL consoles and tools use (default: https://LISTEN).")
@click.option("--host", "hosts", multiple=True, help="Another name or address for the TLS certificate.")
@click.option("--db", "database", default="", help="Database URL (default: SQLite file vhw.db in the home).")
@click.option("--identify-by", default=",".join(ID_FIELDS), show_default=True,
              help="Which device IDs identify a user: a non-empty subset of mc_id, client_id, hdd_id.")
@click.option("--mode", type=click.Choice(["direct", "broker"]), default="direct", show_default=True,
              help="broker: users reach the server only through the broker (FIG. 15).")
@pass_app
def server_init(app: App, home: Path | None, listen: str, url: str | None, hosts: tuple[str, ...],
                database: str, identify_by: str, mode: str) -> None:
    """Create the platform's state: CA, TLS certificate, master key, database, role credentials."""
    from ..serverhome import ServerHome

    h = ServerHome.init(server_home(app, home).root, listen=listen, url=url, hosts=list(hosts),
                        database=database, identify_by=parse_policy(identify_by), mode=mode)
    click.echo(f"server home {h.root}")
    click.echo(f"  platform CA   {h.path('ca.pem')}  (burn it into console ROMs: vhw console rom --ca)")
    for role in ROLES:
        click.echo(f"  {role:<13} credential {h.credential_path(role)}")


@server.command("run")
@home_option
@click.option("--listen", type=LISTEN, help="Address to serve on (default: from `server init`); port 0 picks one.")
@click.option("--db", "database", help="Database URL (default: from `server init`).")
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Serve with this many processes on one port (use PostgreSQL behind them).")
@click.option("--reuse-port", is_flag=True, hidden=True, help="Bind with SO_REUSEPORT (one of --workers).")
@pass_app
def server_run(app: App, home: Path | None, listen: tuple[str, int] | None, database: str | None,
               workers: int, reuse_port: bool) -> None:
    """Serve the licensing API over HTTPS until Ctrl-C or SIGTERM (then stop gracefully)."""
    from ..server import run_workers, serve

    h = server_home(app, home)
    h.require()

    def ready(url: str) -> None:
        click.echo(f"vhw licensing server listening on {url}")
        sys.stdout.flush()

    try:
        if workers > 1:
            run_workers(h, workers=workers, listen=listen, database=database, ready=ready)
        else:
            import trio

            trio.run(lambda: serve(h, listen=listen, database=database, ready=ready, reuse_port=reuse_port))
    except OSError as exc:
        raise StateError(f"cannot serve on {listen or h.config().listen}: {exc.strerror or exc}") from None
    click.echo("vhw licensing server stopped")


@server.command("credential")
@click.argument("role", type=click.Choice(ROLES))
@click.argument("name")
@click.option("-o", "--out", type=click.Path(path_type=Path, dir_okay=False), required=True)
@home_option
@pass_app
def server_credential(app: App, role: str, name: str, out: Path, home: Path | None) -> None:
    """Issue another credential for ROLE (e.g. a second repair center) into OUT."""
    h = server_home(app, home)
    h.require()
    store = h.store()
    try:
        h.add_credential(store, role, name, out)
    finally:
        store.close()
    click.echo(f"{role} credential {name!r} written to {out}")


@server.command("audit")
@home_option
@click.option("--after", type=int, default=0, help="Only entries after this sequence number.")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def server_audit(app: App, home: Path | None, after: int, as_json: bool) -> None:
    """Print the audit log: every registration, key issue, flag, confirm, repair and reissue."""
    h = server_home(app, home)
    h.require()
    show_audit(h.store(), after=after, as_json=as_json)


@server.command("openapi")
@click.option("-o", "--out", type=click.Path(path_type=Path, dir_okay=False), help="Write here, not to stdout.")
def server_openapi(out: Path | None) -> None:
    """Print the OpenAPI document of the licensing API."""
    from ..server import openapi_document, write_openapi

    if out:
        write_openapi(out)
    else:
        click.echo(json.dumps(openapi_document(), indent=1, sort_keys=True))


@server.command("issue-cert")
@click.argument("name")
@click.option("--host", "hosts", multiple=True, help="A name or address it serves on (127.0.0.1 and localhost always).")
@click.option("-o", "--out", type=click.Path(path_type=Path, file_okay=False), required=True)
@home_option
@pass_app
def server_issue_cert(app: App, name: str, hosts: tuple[str, ...], out: Path, home: Path | None) -> None:
    """Issue a TLS identity signed by the platform CA (for a broker: consoles trust only that CA)."""
    h = server_home(app, home)
    h.require()
    h.issue_server_cert(name, list(hosts), out)
    click.echo(f"TLS identity for {name!r} in {out} (tls.pem, tls-key.pem)")
