#!/usr/bin/env python3
"""A local highly available licensing service, on 127.0.0.1, from one command:

    tools/vhw_cluster.py up DIR [--servers 2]    # start, print where everything is
    tools/vhw_cluster.py status DIR              # the cluster as Patroni sees it, and each server
    tools/vhw_cluster.py down DIR                # stop everything it started, by PID; remove DIR

`make cluster` runs `up` under build/cluster. What runs (all Debian packages, installed by
`tools/setup.sh --cluster`):

- etcd, the store Patroni elects its leader in;
- three PostgreSQL nodes, each managed by Patroni, with synchronous replication (strict: a
  commit returns only once a standby has it, so a promoted standby never lacks a commit any client
  saw);
- HAProxy, the one address the servers use: it sends connections to the node whose Patroni
  answers 200 on ``/primary`` (checked every second), and cuts the connections to a node as soon as
  it stops being that (``on-marked-down shutdown-sessions``). Why HAProxy rather than a libpq
  multi-host URL: libpq asks PostgreSQL whether it is writable, and a primary whose Patroni is
  partitioned away keeps saying yes after another node has been promoted; Patroni's own answer
  is the one that knows about the leader lock;
- ``--servers`` licensing servers (`vhw server run`), one home, each on its own port, standing for
  the servers of as many hosts.

The layout an operator adapts for real hosts is in deploy/cluster/ (README: "A highly available
cluster"). Everything here listens on 127.0.0.1 only and trusts local connections: it is for
development and tests, not for production.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vhw.client import Client

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # (vhw from this checkout, as `make cluster` runs it)
NODES = 3
TTL, LOOP_WAIT, RETRY_TIMEOUT = 6, 1, 2  # Patroni: loop_wait + 2 * retry_timeout <= ttl
DEPLOY = ROOT / "deploy" / "cluster"


def settings(kind: str) -> tuple[dict[str, int], str]:
    """Patroni's timing (ttl, loop_wait, retry_timeout) and HAProxy's health checks: the suite's,
    quick (``tests``), or deploy/cluster's as written (``deploy``: what `loadgen --cluster` measures)."""
    if kind == "tests":
        return {"ttl": TTL, "loop_wait": LOOP_WAIT, "retry_timeout": RETRY_TIMEOUT}, CHECKS
    import yaml

    dcs = yaml.safe_load((DEPLOY / "patroni.yml").read_text())["bootstrap"]["dcs"]
    [line] = [x for x in (DEPLOY / "haproxy.cfg").read_text().splitlines() if x.strip().startswith("default-server")]
    return {k: int(dcs[k]) for k in ("ttl", "loop_wait", "retry_timeout")}, line.split("default-server", 1)[1].strip()


@dataclass
class Ports:
    base: int

    @property
    def etcd(self) -> int:
        return self.base

    @property
    def etcd_peer(self) -> int:
        return self.base + 1

    def pg(self, i: int) -> int:
        return self.base + 10 + i

    def rest(self, i: int) -> int:
        return self.base + 20 + i

    @property
    def haproxy(self) -> int:
        return self.base + 30

    def server(self, i: int) -> int:
        return self.base + 40 + i


@dataclass
class Cluster:
    """What `up` started (kept in DIR/cluster.json, so `down` and the tests find it)."""

    dir: str
    base_port: int
    servers: int
    pids: dict[str, int] = field(default_factory=dict)  # name -> PID: etcd, pg0.., haproxy, server0..
    timing: str = "tests"  # whose settings: the suite's (quick) or deploy/cluster's

    @property
    def ports(self) -> Ports:
        return Ports(self.base_port)

    @property
    def db_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.ports.haproxy}/vhw?connect_timeout=3"

    @property
    def home(self) -> Path:
        return Path(self.dir) / "server"

    def server_url(self, i: int) -> str:
        return f"https://127.0.0.1:{self.ports.server(i)}"

    def node_config(self, i: int) -> Path:
        return Path(self.dir) / f"pg{i}.yml"

    def save(self) -> None:
        tmp = Path(self.dir) / "cluster.json.tmp"
        tmp.write_text(json.dumps(asdict(self), indent=1))
        os.replace(tmp, Path(self.dir) / "cluster.json")

    @classmethod
    def load(cls, folder: Path) -> Cluster:
        try:
            return cls(**json.loads((Path(folder) / "cluster.json").read_text()))
        except (OSError, ValueError, TypeError) as exc:
            raise SystemExit(f"vhw-cluster: {folder} holds no cluster ({exc})") from None

    # -- Patroni's view ----------------------------------------------------------------------------

    def rest(self, i: int, path: str, timeout: float = 1.0) -> tuple[int, dict[str, object]]:
        """(status, JSON) of node ``i``'s Patroni REST ``path``; (0, {}) if it does not answer."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.ports.rest(i)}{path}", timeout=timeout) as r:
                return r.status, json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as exc:
            try:
                return exc.code, json.loads(exc.read() or b"{}")
            except ValueError:
                return exc.code, {}
        except (OSError, ValueError):
            return 0, {}

    def leader(self) -> int | None:
        """The node whose Patroni holds the leader lock and runs a primary (None: none now)."""
        for i in range(NODES):
            if self.rest(i, "/primary", timeout=0.5)[0] == 200:
                return i
        return None

    def members(self) -> list[dict[str, object]]:
        for i in range(NODES):
            status, body = self.rest(i, "/cluster")
            if status == 200:
                members = body.get("members", [])
                return members if isinstance(members, list) else []
        return []

    def healthy(self) -> bool:
        """A leader, every other node a running standby, and PostgreSQL's own synchronous standby
        streaming and caught up (Patroni 3.0.2 says "running" of a standby that may not stream yet,
        and right after a promotion any standby may acknowledge commits, named or not)."""
        members = self.members()
        roles = sorted(str(m.get("role")) for m in members)
        running = all(m.get("state") in ("running", "streaming") for m in members)
        if not (len(members) == NODES and running and roles.count("leader") == 1 and "sync_standby" in roles):
            return False
        return self._sync_caught_up(members)

    def _sync_caught_up(self, members: list[dict[str, object]]) -> bool:
        """Whether the leader among ``members`` has a synchronous standby (by PostgreSQL's account)
        that has replayed all it wrote, and it is the one Patroni names."""
        leader = next(str(m.get("name")) for m in members if m.get("role") == "leader")
        named = next(str(m.get("name")) for m in members if m.get("role") == "sync_standby")
        port = self.ports.pg(int(leader.removeprefix("pg")))
        psql = [str(_bindir() / "psql"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres"]
        query = (
            "SELECT application_name FROM pg_stat_replication WHERE sync_state = 'sync'"
            " AND replay_lsn >= pg_current_wal_lsn()"
        )
        r = subprocess.run([*psql, "-At", "-c", query], capture_output=True, text=True)
        return r.returncode == 0 and named in r.stdout.split()

    def wait_healthy(self, timeout: float = 120, settled: float = 3.0) -> None:
        """Until the cluster is healthy, with the same leader and synchronous standby for
        ``settled`` seconds (a node that just rejoined makes Patroni move the standby about)."""
        deadline = time.monotonic() + timeout
        stable_since, roles = time.monotonic(), None
        while True:
            now = time.monotonic()
            current = sorted((str(m.get("name")), str(m.get("role"))) for m in self.members())
            if not self.healthy() or current != roles:
                stable_since, roles = now, current
            elif now - stable_since >= settled:
                return
            if now > deadline:
                raise SystemExit(f"vhw-cluster: the cluster is not healthy after {timeout:.0f} s: {self.members()}")
            time.sleep(0.3)


def _bindir() -> Path:
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if Path(candidate, "initdb").exists():
            return Path(candidate)
    raise SystemExit("vhw-cluster: PostgreSQL is not installed (tools/setup.sh --cluster installs it)")


def _need(*programs: str) -> None:
    missing = [p for p in programs if shutil.which(p) is None]
    if missing:
        raise SystemExit(f"vhw-cluster: {', '.join(missing)} not found (tools/setup.sh --cluster installs them)")


def _as_postgres() -> tuple[list[str], tuple[int, int] | None]:
    """How to run PostgreSQL's side: as root, as the ``postgres`` user (PostgreSQL refuses root)."""
    if os.geteuid() != 0:
        return [], None
    pw = pwd.getpwnam("postgres")  # (setpriv execs: the PID recorded is the program's own)
    # etcd, Patroni and PostgreSQL ahead of everything else on the machine, as on hosts of their
    # own: a Patroni starved past its TTL loses the leader lock for nothing
    return ["nice", "-n", "-10", "setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups"], (
        pw.pw_uid,
        pw.pw_gid,
    )


def _start(c: Cluster, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
    logs = Path(c.dir) / "logs"
    with open(logs / f"{name}.log", "ab") as log:
        proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, env=env
        )
    c.pids[name] = proc.pid
    _children[proc.pid] = proc
    c.save()


_children: dict[int, subprocess.Popen[bytes]] = {}  # what this process started: reaped by polling


def _patroni_config(c: Cluster, i: int) -> str:
    ports, folder = c.ports, Path(c.dir)
    parameters = {
        "max_connections": 300,
        "shared_buffers": "128MB",
        "wal_level": "replica",
        "hot_standby": "on",
        "wal_log_hints": "on",
        "max_wal_senders": 10,
        "max_replication_slots": 10,
        # a standby whose primary changed connects again within 0.2 s, not PostgreSQL's 5 s: with
        # strict synchronous replication the new primary takes no commit until one has
        "wal_retrieve_retry_interval": "200ms",
        "wal_keep_size": "1GB",  # (no slots, below: the WAL a lagging standby may still need)
        "unix_socket_directories": str(folder),
    }
    config = {
        "scope": "vhw",
        "namespace": "/vhw/",
        "name": f"pg{i}",
        "log": {"level": "WARNING"},
        "restapi": {"listen": f"127.0.0.1:{ports.rest(i)}", "connect_address": f"127.0.0.1:{ports.rest(i)}"},
        # etcd's v2 API: Patroni's v2 client renews the leader key with compare-and-swap on its own
        # name. Its etcd3 client (Debian 12's Patroni 3.0.2) writes the key unconditionally when
        # its lease expired, so a leader whose Patroni was paused takes the lock back from the
        # node promoted meanwhile, and that node's commits are rewound away: tests/test_cluster.py
        # found it (the partition case)
        "etcd": {"hosts": [f"127.0.0.1:{ports.etcd}"]},
        "bootstrap": {
            "dcs": {
                **settings(c.timing)[0],
                "maximum_lag_on_failover": 0,
                "synchronous_mode": True,
                "synchronous_mode_strict": True,
                # No replication slots: Patroni makes a standby's slot on a new primary only in
                # its next loop, and a standby without its slot is refused: the new primary
                # would have no synchronous standby, so no commit, for a second or two longer.
                "postgresql": {"use_pg_rewind": True, "use_slots": False, "parameters": parameters},
            },
            "initdb": [{"encoding": "UTF8"}, {"auth": "trust"}],
            "pg_hba": ["host replication replicator 127.0.0.1/32 trust", "host all all 127.0.0.1/32 trust"],
        },
        "postgresql": {
            "listen": f"127.0.0.1:{ports.pg(i)}",
            "connect_address": f"127.0.0.1:{ports.pg(i)}",
            "data_dir": str(folder / f"pg{i}"),
            "bin_dir": str(_bindir()),
            "pgpass": str(folder / f"pgpass{i}"),
            "authentication": {
                "replication": {"username": "replicator", "password": "local"},
                "superuser": {"username": "postgres", "password": "local"},
                "rewind": {"username": "postgres", "password": "local"},
            },
            "parameters": {"unix_socket_directories": str(folder)},
        },
    }
    return json.dumps(config, indent=1)  # (JSON is YAML: Patroni reads it as is)


CHECKS = (
    "inter 300ms fastinter 200ms fall 2 rise 1 on-marked-down shutdown-sessions"
    " observe layer4 error-limit 1 on-error mark-down"
)


def _haproxy_config(c: Cluster) -> str:
    ports = c.ports
    servers = "\n".join(
        f"    server pg{i} 127.0.0.1:{ports.pg(i)} maxconn 300 check port {ports.rest(i)}" for i in range(NODES)
    )
    return f"""# made by tools/vhw_cluster.py: the primary, as Patroni says it is
global
    maxconn 1000
defaults
    mode tcp
    timeout connect 500ms
    timeout client 30m
    timeout server 30m
    timeout check 1s
    retries 1
listen primary
    bind 127.0.0.1:{ports.haproxy}
    option httpchk GET /primary
    http-check expect status 200
    # a node whose PostgreSQL refuses a connection is out at once (a primary shutting down for a
    # switchover, before its Patroni says so), not retried for a second
    default-server {settings(c.timing)[1]}
{servers}
"""


# the ports a cluster takes from its base: etcd +0/+1, PostgreSQL +10.., Patroni +20.., HAProxy +30,
# servers +40..
PORT_SPAN = 50


def free_ports(count: int = PORT_SPAN, *, tries: int = 200) -> int:
    """The first of ``count`` consecutive ports on 127.0.0.1 that are free now and lie below the
    kernel's ephemeral range (``ip_local_port_range``), so that no outgoing connection of this
    machine is given one of them between this look and the server binding it. (A port the kernel
    picks for a bind to 0 lies inside that range: another process's connect can take it first.)"""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768  # Linux's default
    top = min(low, 65536) - count
    if top <= 10000:
        raise SystemExit(f"vhw-cluster: no room for {count} ports below the ephemeral range (it starts at {low})")
    for _ in range(tries):
        base = random.randrange(10000, top)
        if all(_bindable(base + i) for i in range(count)):
            return base
    raise SystemExit(f"vhw-cluster: found no {count} free ports below {low} in {tries} tries")


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def up(folder: Path, servers: int, base_port: int | None = None, timing: str = "tests") -> Cluster:
    """Start a cluster in ``folder`` on ports from ``base_port`` (None: :func:`free_ports` picks them),
    with the suite's quick failover settings or deploy/cluster's (``timing``: see :func:`settings`)."""
    if base_port is None:
        base_port = free_ports()
    _need("etcd", "patroni", "haproxy")
    folder = folder.resolve()
    if (folder / "cluster.json").exists():
        raise SystemExit(f"vhw-cluster: {folder} already holds a cluster (`down` it first)")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "logs").mkdir(exist_ok=True)
    c = Cluster(str(folder), base_port, servers, timing=timing)
    c.save()
    run_as, owner = _as_postgres()
    if owner:
        for parent in folder.parents:  # PostgreSQL runs as postgres: it must reach the folder
            if not os.stat(parent).st_mode & 0o001:
                down(folder, keep=True)
                raise SystemExit(f"vhw-cluster: the postgres user cannot enter {parent}: choose a folder elsewhere")
        for path in (folder, folder / "logs"):
            os.chown(path, *owner)
    ports = c.ports
    try:
        _start(
            c,
            "etcd",
            [
                *run_as,
                "etcd",
                "--name",
                "etcd0",
                "--data-dir",
                str(folder / "etcd"),
                "--listen-client-urls",
                f"http://127.0.0.1:{ports.etcd}",
                "--advertise-client-urls",
                f"http://127.0.0.1:{ports.etcd}",
                "--listen-peer-urls",
                f"http://127.0.0.1:{ports.etcd_peer}",
                "--initial-advertise-peer-urls",
                f"http://127.0.0.1:{ports.etcd_peer}",
                "--initial-cluster",
                f"etcd0=http://127.0.0.1:{ports.etcd_peer}",
                "--enable-v2=true",
            ],
        )
        for i in range(NODES):
            cfg = c.node_config(i)
            cfg.write_text(_patroni_config(c, i))
            if owner:
                os.chown(cfg, *owner)
            _start(c, f"pg{i}", [*run_as, "patroni", str(cfg)], env={**os.environ, "HOME": str(folder)})
        c.wait_healthy()
        leader = c.leader()
        assert leader is not None
        subprocess.run(
            [str(_bindir() / "psql"), "-h", "127.0.0.1", "-p", str(ports.pg(leader)), "-U", "postgres", "-q"]
            + ["-c", "CREATE DATABASE vhw"],
            check=True,
            capture_output=True,
        )
        (folder / "haproxy.cfg").write_text(_haproxy_config(c))
        _start(c, "haproxy", ["haproxy", "-db", "-f", str(folder / "haproxy.cfg")])
        vhw = [sys.executable, "-m", "vhw"]
        subprocess.run(
            [
                *vhw,
                "server",
                "init",
                "--home",
                str(c.home),
                "--db",
                c.db_url,
                "--listen",
                f"127.0.0.1:{ports.server(0)}",
            ],
            check=True,
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        for i in range(servers):
            _start(
                c,
                f"server{i}",
                [*vhw, "server", "run", "--home", str(c.home), "--listen", f"127.0.0.1:{ports.server(i)}"],
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )
        for i in range(servers):
            _wait_server(c, i)
    except BaseException:
        down(folder, keep=True)
        raise
    return c


def kill_node(c: Cluster, i: int, sig: int = signal.SIGKILL) -> None:
    """Signal node ``i``'s Patroni and, for SIGKILL, its PostgreSQL too (a machine that died)."""
    pids = [c.pids[f"pg{i}"]]
    if sig == signal.SIGKILL:
        pids += _postmasters(Path(c.dir), only=i)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
    if sig == signal.SIGKILL:
        _wait_gone(pids, 10)


def restart_node(c: Cluster, i: int) -> None:
    """Start node ``i``'s Patroni again (it rejoins as a replica, rewound if it must be)."""
    run_as, _ = _as_postgres()
    _start(c, f"pg{i}", [*run_as, "patroni", str(c.node_config(i))], env={**os.environ, "HOME": c.dir})


def switchover(c: Cluster) -> int:
    """A planned switchover away from the present leader (`patronictl switchover`); returns it."""
    leader = c.leader()
    if leader is None:
        raise SystemExit("vhw-cluster: no leader to switch over from")
    subprocess.run(
        ["patronictl", "-c", str(c.node_config(leader)), "switchover", "--force", "vhw", "--leader", f"pg{leader}"],
        check=True,
        capture_output=True,
    )
    return leader


class Target:
    """The cluster's servers as the tests' and the load generator's helpers use one server: its
    home, a URL (server 0's), its CA, and clients with the role credentials or as a console."""

    def __init__(self, c: Cluster) -> None:
        from vhw.server.home import ServerHome

        self.c, self.home, self.url = c, ServerHome(c.home), c.server_url(0)

    @property
    def ca_der(self) -> bytes:
        return self.home.pki.ca_der()

    def role_client(self, role: str) -> Client:
        from vhw.client import Client, tls_context
        from vhw.server.credentials import Credential

        cred = Credential.load(self.home.credentials.path(role))
        return Client(self.url, tls_context(ca_pem=cred.ca, client_cert=cred.client_cert), token=cred.token)

    def console_client(self, server: int = 0) -> Client:
        """A console's client of server ``server``, with its retries (and their notice kept quiet)."""
        from vhw.client import Client, tls_context

        return Client(self.c.server_url(server), tls_context(self.ca_der), notice=lambda line: None)


def health(c: Cluster, i: int) -> str | None:
    """Server ``i``'s /v1/health status ("ok", "read-only"), or None if it does not answer."""
    from vhw import protocol as p
    from vhw.client import Client, tls_context
    from vhw.errors import VhwError

    try:
        with Client(c.server_url(i), tls_context(ca_pem=(c.home / "ca.pem").read_text()), retry_for=0) as client:
            return str(client.get("/v1/health", p.Health).status)
    except (VhwError, OSError):
        return None


def _wait_server(c: Cluster, i: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while health(c, i) != "ok":
        if time.monotonic() > deadline:
            raise SystemExit(f"vhw-cluster: server {i} at {c.server_url(i)} did not answer; see {c.dir}/logs/")
        time.sleep(0.3)


def alive(pid: int) -> bool:
    if pid in _children:
        return _children[pid].poll() is None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):  # a zombie of ours is not alive
        if Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z":
            return False
    return True


def _postmasters(folder: Path, only: int | None = None) -> list[int]:
    pids = []
    for pidfile in folder.glob("pg*/postmaster.pid" if only is None else f"pg{only}/postmaster.pid"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            pids.append(int(pidfile.read_text().split()[0]))
    return pids


def down(folder: Path, *, keep: bool = False) -> None:
    """Stop what `up` started: servers, HAProxy, Patroni (which stops its PostgreSQL), etcd;
    SIGKILL what is left after 20 s (and any PostgreSQL a killed Patroni left running)."""
    folder = folder.resolve()
    c = Cluster.load(folder)
    order = sorted(c.pids, key=lambda n: (not n.startswith("server"), n != "haproxy", not n.startswith("pg"), n))
    for name in order:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(c.pids[name], signal.SIGCONT)  # (a stopped process cannot act on SIGTERM)
            os.kill(c.pids[name], signal.SIGTERM)
        if name.startswith("server") or name == "haproxy":
            _wait_gone([c.pids[name]], 20)
    _wait_gone(list(c.pids.values()), 20)
    for pid in [*c.pids.values(), *_postmasters(folder)]:
        if alive(pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
    _wait_gone([*c.pids.values(), *_postmasters(folder)], 10)
    if not keep:
        shutil.rmtree(folder, ignore_errors=True)


def _wait_gone(pids: list[int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)


def status(folder: Path) -> int:
    c = Cluster.load(folder)
    print(f"cluster in {c.dir}: database {c.db_url}")
    for m in c.members():
        print(f"  {m.get('name')}: {m.get('role')}, {m.get('state')}, lag {m.get('lag', 0)}")
    for i in range(c.servers):
        print(f"  server {i}: {c.server_url(i)} {health(c, i) or 'does not answer'}")
    return 0 if c.healthy() else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vhw-cluster", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_up = sub.add_parser("up", help="start etcd, three PostgreSQL nodes under Patroni, HAProxy and the servers")
    p_up.add_argument("dir", type=Path)
    p_up.add_argument("--servers", type=int, default=2)
    p_up.add_argument(
        "--base-port", type=int, default=None, help="first of 50 ports (default: free ones below the ephemeral range)"
    )
    p_up.add_argument(
        "--settings",
        choices=["tests", "deploy"],
        default="tests",
        help="Patroni's timing and HAProxy's checks: the suite's quick ones, or deploy/cluster's",
    )
    for name, text in (("down", "stop everything `up` started, and remove DIR"), ("status", "show the cluster")):
        sub.add_parser(name, help=text).add_argument("dir", type=Path)
    args = parser.parse_args(argv)
    if args.command == "up":
        c = up(args.dir, args.servers, args.base_port, timing=args.settings)
        print(f"cluster up in {c.dir}: database {c.db_url}")
        for i in range(c.servers):
            print(f"  server {i}: {c.server_url(i)}")
        print(f"  credentials: {c.home / 'credentials'}; stop with: tools/vhw_cluster.py down {args.dir}")
        return 0
    if args.command == "down":
        down(args.dir)
        return 0
    return status(args.dir)


if __name__ == "__main__":
    sys.exit(main())
