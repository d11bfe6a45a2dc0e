#!/usr/bin/env python3
"""Load generator: registered consoles acquiring keys, next to a no-op endpoint, on one server.

    .venv/bin/python tools/loadgen.py --backend sqlite   [--clients 1,16,64] [--seconds 10]
    .venv/bin/python tools/loadgen.py --backend postgres [--workers 2] [--bulk]
    .venv/bin/python tools/loadgen.py --cluster [--repeat 3]

Starts a real licensing server (SQLite file, or a throwaway PostgreSQL cluster), registers 64
consoles (card, console, HDD, user) and enough discs, then for each concurrency level runs that
many clients (trio + httpx, one keep-alive TLS connection each) for the given time: first every
client acquiring the keys of fresh discs (S11-S17: a full transaction that flags a MID), then the
same clients calling GET /v1/health (the same TLS, HTTP and app stack, no database). Prints
requests/s and p50/p99 latency for both.

``--bulk`` first fills the database with 1,000,000 memory cards (MC-Keys encrypted at rest like
real ones) and 10,000,000 MIDs, loaded in bulk (PostgreSQL COPY / one SQLite transaction), to see
the same latencies with a database of a real platform's size. The client runs in this process, on
the same machine as the server: compare the two columns, not absolute numbers with other machines.

``--cluster`` compares one server on a single PostgreSQL with one server on the Patroni cluster of
tools/vhw_cluster.py (three nodes, synchronous replication, HAProxy; with deploy/cluster's Patroni
timing and HAProxy checks unless ``--settings tests``), in the same run: acquisitions/s and p99 for
each level; then, under 16 clients, the outage (the longest time without a successful acquisition)
of a failover (the primary's PostgreSQL and Patroni killed: from the kill to the promotion, and
from the promotion to the first answer, noted apart) and of a switchover (`patronictl switchover`),
each ``--repeat`` times, median and spread.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.servers import RunningServer, make_users  # noqa: E402
from vhw import bindings, crypto  # noqa: E402
from vhw import protocol as p  # noqa: E402
from vhw.client import tls_context  # noqa: E402
from vhw.console import decisions  # noqa: E402
from vhw.ids import Id, IdKind  # noqa: E402

USERS = 64
MAX_RATE = 2000  # acquisitions/s this machine could plausibly reach; sizes the pool of fresh discs


def register_mids(srv, title: str, count: int) -> list[decisions.Medium]:
    """``count`` discs of a new title, each with its own secret, their MIDs registered."""
    digest = os.urandom(32)
    discs = [decisions.Medium(Id.random(IdKind.MEDIA), digest, crypto.signing_seed()) for _ in range(count)]
    with srv.role_client("publisher") as pub:
        pub.call("/v1/publisher/titles", p.RegisterTitle(title, title, crypto.random_key(), digest), p.Done)
        for i in range(0, count, 400):  # (a request body is at most 64 KiB)
            items = tuple(
                p.PressedDisc(d.mid, crypto.public_bytes(crypto.signing_key_from(d.secret))) for d in discs[i : i + 400]
            )
            pub.call("/v1/publisher/media", p.RegisterMedia(title, items), p.Done)
    return discs


def bulk_fill(srv, cards: int, mids: int) -> float:
    """Fill the database directly, as a platform's would be; returns seconds taken."""
    from vhw.server.store import open_store

    started = time.perf_counter()
    master = srv.home.keys.read()
    url = srv.home.database_url()
    now = int(time.time())
    title = "BULK-1"
    key_blob = crypto.wrap(master, crypto.random_key(), bindings.at_rest("titles", title))

    def card_rows():
        for _ in range(cards):
            mc = Id.random(IdKind.CARD)
            yield str(mc), crypto.wrap(master, os.urandom(32), bindings.at_rest("cards", mc)), now

    def mid_rows():
        for _ in range(mids):
            yield str(Id.random(IdKind.MEDIA)), title, now

    if url.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(url) as conn:
            conn.execute(
                "INSERT INTO titles (title_id, name, content_key, title_digest, registered)"
                " VALUES (%s, %s, %s, %s, %s)",
                (title, title, key_blob, os.urandom(32), now),
            )
            with conn.cursor().copy("COPY cards (mc_id, mc_key, registered) FROM STDIN") as copy:
                for row in card_rows():
                    copy.write_row(row)
            with conn.cursor().copy("COPY media (mid, title_id, registered) FROM STDIN") as copy:
                for row in mid_rows():
                    copy.write_row(row)
            conn.execute("ANALYZE")
    else:
        store = open_store(url)
        try:
            with store.transaction() as tx:
                cur = tx._cur
                cur.execute(
                    "INSERT INTO titles (title_id, name, content_key, title_digest, registered) VALUES (?, ?, ?, ?, ?)",
                    (title, title, key_blob, os.urandom(32), now),
                )
                cur.executemany("INSERT INTO cards (mc_id, mc_key, registered) VALUES (?, ?, ?)", card_rows())
                cur.executemany("INSERT INTO media (mid, title_id, registered) VALUES (?, ?, ?)", mid_rows())
            with store.transaction() as tx:
                tx.execute("ANALYZE")
        finally:
            store.close()
    return time.perf_counter() - started


class Bodies:
    """The acquisition requests of the next run, built and JSON-encoded before its clock starts.

    What a console computes for a request (its disc proof, the IDs it wraps) is the consoles' work,
    not the server's: built inside the timed loop, on the same two cores, it took the CPU the
    server was being measured with (1.3 ms of the load generator's CPU an acquisition against
    0.8 ms a no-op). Each body flags a fresh disc, so a run gets as many as it could use: 1.5 times
    the best rate seen so far at its level (``MAX_RATE`` for the first). Should a run use them
    all, the rest are built as they are sent (``late`` counts them, and the run says so)."""

    def __init__(self, kits: list, mids: Iterator[decisions.Medium]) -> None:
        self.kits, self.mids = kits, mids
        self.ready: collections.deque[bytes] = collections.deque()
        self.late = 0
        self._n = 0

    def _build(self) -> bytes:
        kit = self.kits[self._n % len(self.kits)]
        self._n += 1
        disc = next(self.mids, None)
        if disc is None:
            raise SystemExit("loadgen: every registered disc was acquired; register more (MAX_RATE)")
        return json.dumps(p.encode(decisions.acquisition_request(*kit, disc))).encode()

    def prepare(self, count: int) -> None:
        """Have ``count`` bodies ready (the ones left from the last run count)."""
        while len(self.ready) < count:
            self.ready.append(self._build())

    def take(self) -> bytes:
        if self.ready:
            return self.ready.popleft()
        self.late += 1
        return self._build()

    async def send(self, i: int, client: httpx.AsyncClient) -> httpx.Response:
        return await client.post(
            "/v1/console/acquire", content=self.take(), headers={"content-type": "application/json"}
        )


async def _health(i: int, client: httpx.AsyncClient) -> httpx.Response:
    return await client.get("/v1/health")


async def drive(srv, clients: int, seconds: float, make_request) -> tuple[float, float, float, int]:
    """``clients`` tasks, each with its own connection, calling ``make_request`` for ``seconds``.
    Returns (requests/s, p50 ms, p99 ms, errors)."""
    ctx = tls_context(srv.ca_der)
    latencies: list[float] = []
    errors = 0
    pool = [
        httpx.AsyncClient(base_url=srv.url, verify=ctx, timeout=60, limits=httpx.Limits(max_connections=1))
        for _ in range(clients)
    ]
    for c in pool:
        await c.get("/v1/health")  # connect and handshake before the clock starts
    deadline = trio.current_time() + seconds
    started = trio.current_time()

    async def worker(i: int, client: httpx.AsyncClient) -> None:
        nonlocal errors
        while trio.current_time() < deadline:
            t0 = time.perf_counter()
            resp = await make_request(i, client)
            latencies.append(time.perf_counter() - t0)
            errors += resp.status_code != 200

    async with trio.open_nursery() as nursery:
        for i, c in enumerate(pool):
            nursery.start_soon(worker, i, c)
    elapsed = trio.current_time() - started
    for c in pool:
        await c.aclose()
    q = statistics.quantiles(latencies, n=100)
    return len(latencies) / elapsed, q[49] * 1000, q[98] * 1000, errors


async def outage_under_load(
    target, clients: int, seconds: float, make_request, disrupt, marks: dict[str, float] | None = None
) -> float:
    """``clients`` keep acquiring (a failed request is tried again after 0.1 s) while ``disrupt``
    runs in a thread at a quarter of the time; returns the longest time without a success after it.
    ``marks``: ``disrupt`` notes when things happened (``promoted``); the first success after each
    mark is noted beside it (``promoted_answered``)."""
    ctx = tls_context(target.ca_der)
    successes: list[float] = []
    began = [0.0]
    deadline = trio.current_time() + seconds

    async def worker(i: int) -> None:
        async with httpx.AsyncClient(base_url=target.url, verify=ctx, timeout=30) as client:
            while trio.current_time() < deadline:
                try:
                    resp = await make_request(i, client)
                    ok = resp.status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok:
                    successes.append(time.monotonic())
                else:
                    await trio.sleep(0.1)

    async def disruptor() -> None:
        await trio.sleep(seconds / 4)
        began[0] = time.monotonic()
        await trio.to_thread.run_sync(disrupt)

    async with trio.open_nursery() as nursery:
        for i in range(clients):
            nursery.start_soon(worker, i)
        nursery.start_soon(disruptor)
    points = [began[0], *sorted(t for t in successes if t >= began[0])]
    if marks is not None:
        marks["began"] = began[0]
        for name, at in list(marks.items()):
            marks[f"{name}_answered"] = min((t for t in successes if t >= at), default=float("nan"))
    return max(b - a for a, b in zip(points, points[1:], strict=False)) if len(points) > 1 else seconds


def _postgres_cpu(url: str) -> float:
    """CPU seconds used so far by the PostgreSQL at ``url`` (its postmaster and every backend)."""
    import psutil

    port = str(httpx.URL(url.replace("postgresql://", "http://")).port)
    total = 0.0
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if cmd and cmd[0].endswith("postgres") and port in cmd and "-p" in cmd:
            for q in [proc, *proc.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    t = q.cpu_times()
                    total += t.user + t.system
    return total


def commit_latency(url: str, count: int = 300) -> float:
    """Median milliseconds of a one-row INSERT and its COMMIT (one round trip each), at ``url``."""
    import psycopg

    times = []
    with psycopg.connect(url) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS loadgen_probe (n int)")
        conn.commit()
        for n in range(count):
            t0 = time.perf_counter()
            conn.execute("INSERT INTO loadgen_probe VALUES (%s)", (n,))
            conn.commit()
            times.append(time.perf_counter() - t0)
        conn.execute("DROP TABLE loadgen_probe")
        conn.commit()
    return statistics.median(times) * 1000


def acquisition_cost(srv, db_url: str, acquire, clients: int, seconds: float) -> dict[str, float]:
    """What one acquisition costs, measured under ``clients`` for ``seconds`` on one server and its
    PostgreSQL: the server's CPU ms, PostgreSQL's CPU ms, statements (each a round trip: BEGIN
    and COMMIT included) and commits. Needs pg_stat_statements (tests.pg preloads it)."""
    import psutil
    import psycopg

    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        conn.execute("SELECT pg_stat_statements_reset()")
        commits0 = conn.execute("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")
        c0 = commits0.fetchone()[0]
        wal0 = conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
        audit0 = conn.execute("SELECT count(*) FROM audit").fetchone()[0]
    server = psutil.Process(srv.proc.pid)
    cpu0, pg0 = sum(server.cpu_times()[:2]), _postgres_cpu(db_url)
    rate, _, _, _ = trio.run(drive, srv, clients, seconds, acquire)
    cpu1, pg1 = sum(server.cpu_times()[:2]), _postgres_cpu(db_url)
    with psycopg.connect(db_url, autocommit=True) as conn:
        statements = conn.execute(
            "SELECT sum(calls) FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database"
            " WHERE datname = current_database())"
        ).fetchone()[0]
        time.sleep(0.6)  # (the statistics collector's figures lag by up to half a second)
        c1 = conn.execute("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()").fetchone()[0]
        wal = conn.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s)", (wal0,)).fetchone()[0]
        audit = conn.execute("SELECT count(*) FROM audit").fetchone()[0] - audit0
        conn.execute("VACUUM ANALYZE media, audit")
        sizes = {
            table: conn.execute(f"SELECT pg_total_relation_size('{table}'), count(*) FROM {table}").fetchone()
            for table in ("media", "audit")
        }
    done = rate * seconds
    noop_rate, _, _, _ = trio.run(drive, srv, clients, seconds, _health)  # the peer, in the same run
    cpu2 = sum(server.cpu_times()[:2])
    return {
        "clients": clients,
        "acquisitions_per_s": rate,
        "server_cpu_ms": (cpu1 - cpu0) * 1000 / done,
        # this machine's cores change speed by up to 1.8x from one minute to the next (a fixed
        # Python loop: 0.36-0.63 s of CPU), so the absolute figure moves with them: the no-op's
        # CPU a request, measured right after, is its yardstick
        "noop_server_cpu_ms": (cpu2 - cpu1) * 1000 / (noop_rate * seconds),
        "postgres_cpu_ms": (pg1 - pg0) * 1000 / done,
        "statements": float(statements) / done,
        "commits": (c1 - c0) / done,
        "wal_bytes": float(wal) / done,
        "audit_entries": audit / done,
        "media_row_bytes": sizes["media"][0] / sizes["media"][1],  # (indexes included)
        "audit_row_bytes": sizes["audit"][0] / sizes["audit"][1],
    }


def cluster_main(args) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import vhw_cluster as vc

    from tests.pg import Cluster as SinglePostgres

    levels = [int(x) for x in args.clients.split(",")]
    single_pg = SinglePostgres.start()
    folder = Path(tempfile.mkdtemp(prefix="vhw-loadgen-cluster-"))
    folder.chmod(0o755)  # (PostgreSQL runs as postgres: it enters this folder)
    rows, outages = [], {"failover": [], "switchover": []}
    phases: list[dict[str, float]] = []  # per failover: kill to promotion, promotion to an answer
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        single_db = single_pg.new_database()
        srv = RunningServer.start(Path(tmp) / "single", init=["--db", single_db])
        c = vc.up(folder / "c", servers=1, timing=args.settings)
        ha = vc.Target(c)
        try:
            pools = {}
            for name, target in (("single", srv), ("cluster", ha)):
                kits = make_users(target, USERS)
                # fresh discs for every acquisition: 600/s at most on PostgreSQL here, and the outages
                runs = len(levels) + args.repeat  # (the cost's runs on the single one, the outages' on the cluster)
                count = 600 * int(args.seconds) * runs + (10_000 * 2 * args.repeat if name == "cluster" else 0)
                pools[name] = Bodies(kits, iter(register_mids(target, f"LOAD-{name.upper()}", count)))

            def acquiring(name, seconds=args.seconds):
                pools[name].prepare(int(600 * seconds))  # (the most PostgreSQL took here)
                return pools[name].send

            for n in levels:
                single = trio.run(drive, srv, n, args.seconds, acquiring("single"))
                cluster = trio.run(drive, ha, n, args.seconds, acquiring("cluster"))
                rows.append((n, single, cluster))
            costs = []
            for _ in range(args.repeat):  # (each run with its requests built before it)
                costs.append(acquisition_cost(srv, single_db, acquiring("single"), 16, args.seconds))
            cost = {key: statistics.median(c[key] for c in costs) for key in costs[0]}  # (each figure's)
            cost["server_cpu_ms_runs"] = [c["server_cpu_ms"] for c in costs]
            cost["acquisitions_per_s_runs"] = [c["acquisitions_per_s"] for c in costs]
            cost["commit_ms_single"] = commit_latency(single_db)
            cost["commit_ms_cluster"] = commit_latency(c.db_url)

            marks: dict[str, float] = {}

            def failover() -> None:
                leader = c.leader()
                marks["killed"] = time.monotonic()
                vc.kill_node(c, leader)
                while c.leader() in (None, leader):
                    time.sleep(0.05)
                marks["promoted"] = time.monotonic()
                vc.restart_node(c, leader)

            def switchover() -> None:
                vc.switchover(c)

            for kind, disrupt in (("failover", failover), ("switchover", switchover)):
                for _ in range(args.repeat):
                    c.wait_healthy()
                    marks.clear()
                    took = trio.run(outage_under_load, ha, 16, 30.0, acquiring("cluster", 30.0), disrupt, marks)
                    outages[kind].append(took)
                    if kind == "failover":
                        phases.append(
                            {
                                "kill_to_promotion": marks["promoted"] - marks["killed"],
                                "promotion_to_answer": marks["promoted_answered"] - marks["promoted"],
                            }
                        )
                    print(f"{kind}: outage {took:.1f} s {phases[-1] if kind == 'failover' else ''}", file=sys.stderr)
        finally:
            vc.down(folder / "c")
            folder.rmdir()
            srv.stop()
            single_pg.stop()
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{os.cpu_count()} cores, {os.uname().machine}, {os.uname().release}",
        "seconds_per_level": args.seconds,
        "levels": [
            {
                "clients": n,
                "single": {"rate": s[0], "p50_ms": s[1], "p99_ms": s[2], "errors": s[3]},
                "cluster": {"rate": k[0], "p50_ms": k[1], "p99_ms": k[2], "errors": k[3]},
            }
            for n, s, k in rows
        ],
        "settings": {"patroni": vc.settings(args.settings)[0], "haproxy": vc.settings(args.settings)[1]},
        "outage_seconds": outages,
        "failover_phases_seconds": phases,
        "cost": cost,
    }
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"\none server; single PostgreSQL against the 3-node Patroni cluster, {args.seconds:.0f} s per level\n")
    print("| clients | single acq/s | p99 ms | cluster acq/s | p99 ms | cluster / single |")
    print("|---|---|---|---|---|---|")
    for n, s, k in rows:
        print(f"| {n} | {s[0]:,.0f} | {s[2]:.1f} | {k[0]:,.0f} | {k[2]:.1f} | {k[0] / s[0]:.2f}x |")
    cpu_runs = cost["server_cpu_ms_runs"]
    print(
        f"\none acquisition (single PostgreSQL, 16 clients, medians of {args.repeat} runs): server CPU"
        f" {cost['server_cpu_ms']:.2f} ms ({min(cpu_runs):.2f}-{max(cpu_runs):.2f};"
        f" a no-op {cost['noop_server_cpu_ms']:.2f} ms),"
        f" PostgreSQL CPU {cost['postgres_cpu_ms']:.2f} ms, {cost['statements']:.1f} statements,"
        f" {cost['commits']:.2f} commits, {cost['wal_bytes']:,.0f} bytes of WAL,"
        f" {cost['audit_entries']:.1f} audit entries; a commit: {cost['commit_ms_single']:.2f} ms single,"
        f" {cost['commit_ms_cluster']:.2f} ms on the cluster (synchronous standby)"
    )
    print()
    for kind, values in outages.items():
        spread = f"{min(values):.1f}-{max(values):.1f}"
        print(f"{kind}: outage median {statistics.median(values):.1f} s (spread {spread} s, {len(values)} runs)")
    return 0


CONFIGS = (("sqlite", 1), ("postgres", 1), ("postgres", 2))  # --matrix: (backend, server processes)


def run_levels(backend: str, workers: int, levels: list[int], seconds: float, repeat: int, bulk=None, folder=None):
    """One server (``workers`` processes) on ``backend``: for each level, acquisitions then the
    no-op, ``repeat`` times. Returns {level: (acquisition runs, no-op runs)}, each run
    (requests/s, p50 ms, p99 ms, errors); and a note on the database."""
    cluster = None
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        init = []
        if backend == "postgres":
            from tests.pg import Cluster

            cluster = Cluster.start()
            init = ["--db", cluster.new_database()]
        srv = RunningServer.start(Path(tmp) / "home", init=init, run=["--workers", str(workers)] if workers > 1 else [])
        try:
            note = ""
            if bulk:
                took = bulk_fill(srv, *bulk)
                note = f", database filled with {bulk[0]:,} cards and {bulk[1]:,} MIDs in {took:.0f} s"
            kits = make_users(srv, USERS)
            # every acquisition flags a fresh disc: enough of them for 2,000 acquisitions/s
            bodies = Bodies(kits, iter(register_mids(srv, "LOAD-1", int(MAX_RATE * seconds * len(levels) * repeat))))

            rows: dict[int, tuple[list, list]] = {n: ([], []) for n in levels}
            for _ in range(repeat):
                for n in levels:
                    best = max((run[0] for run in rows[n][0]), default=MAX_RATE / 1.5)
                    bodies.prepare(int(1.5 * best * seconds))
                    rows[n][0].append(trio.run(drive, srv, n, seconds, bodies.send))
                    rows[n][1].append(trio.run(drive, srv, n, seconds, _health))
            if bodies.late:
                note += f", {bodies.late:,} acquisition requests built while sent (more than were ready)"
        finally:
            srv.stop()
            if cluster:
                cluster.stop()
    return rows, note


def _summary(runs: list[tuple[float, float, float, int]]) -> dict:
    rates = [r[0] for r in runs]
    return {
        "rate": statistics.median(rates),
        "min": min(rates),
        "max": max(rates),
        "p50_ms": statistics.median(r[1] for r in runs),
        "p99_ms": statistics.median(r[2] for r in runs),
        "errors": sum(r[3] for r in runs),
        "runs": rates,
    }


def matrix_main(args) -> int:
    """Every configuration of CONFIGS in one sitting, ``--repeat`` runs of each level; writes
    ``--out`` (bench/loadgen.json), which tools/benchtables.py renders into the README."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import benchtables

    levels = [int(x) for x in args.clients.split(",")]
    result: dict = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{os.cpu_count()} cores, {os.uname().machine}, {os.uname().release}",
        "seconds_per_level": args.seconds,
        "repeat": args.repeat,
        "configs": [],
    }
    for backend, workers in CONFIGS:
        print(f"{backend}, {workers} process(es) ...", file=sys.stderr, flush=True)
        rows, note = run_levels(backend, workers, levels, args.seconds, args.repeat, folder=args.dir)
        if note:
            print(f"{backend}, {workers} process(es){note}", file=sys.stderr, flush=True)
        result["configs"].append(
            {
                "backend": backend,
                "workers": workers,
                "levels": [
                    {"clients": n, "acquire": _summary(acq), "noop": _summary(noop)} for n, (acq, noop) in rows.items()
                ],
            }
        )
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(benchtables.loadgen_table(result))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    ap.add_argument("--clients", default="1,16,64")
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--workers", type=int, default=1, help="server processes (PostgreSQL)")
    ap.add_argument("--bulk", action="store_true", help="first load 1,000,000 cards and 10,000,000 MIDs")
    ap.add_argument("--cards", type=int, default=1_000_000)
    ap.add_argument("--mids", type=int, default=10_000_000)
    ap.add_argument("--dir", type=Path, default=None)
    ap.add_argument("--cluster", action="store_true", help="single PostgreSQL against the Patroni cluster")
    ap.add_argument(
        "--settings",
        choices=["deploy", "tests"],
        default="deploy",
        help="--cluster: Patroni's and HAProxy's settings, deploy/cluster's (default) or the suite's quick ones",
    )
    ap.add_argument(
        "--repeat", type=int, default=3, help="runs of each level (--matrix); failovers and switchovers (--cluster)"
    )
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON (--cluster, --matrix)")
    ap.add_argument("--matrix", action="store_true", help="SQLite, PostgreSQL and PostgreSQL with 2 processes")
    args = ap.parse_args()
    if args.cluster:
        return cluster_main(args)
    if args.matrix:
        return matrix_main(args)
    levels = [int(x) for x in args.clients.split(",")]
    if args.dir:
        os.makedirs(args.dir, exist_ok=True)
    bulk = (args.cards, args.mids) if args.bulk else None
    runs, note = run_levels(args.backend, args.workers, levels, args.seconds, 1, bulk=bulk, folder=args.dir)
    rows = [(n, acq[0], noop[0]) for n, (acq, noop) in runs.items()]
    print(f"\nbackend {args.backend}, {args.workers} server process(es), {args.seconds:.0f} s per level{note}\n")
    print("| clients | acquisitions/s | p50 ms | p99 ms | no-op GET/s | p50 ms | p99 ms |")
    print("|---|---|---|---|---|---|---|")
    for n, (a_rate, a50, a99, a_err), (h_rate, h50, h99, _) in rows:
        flag = f" ({a_err} errors)" if a_err else ""
        print(f"| {n} | {a_rate:,.0f}{flag} | {a50:.1f} | {a99:.1f} | {h_rate:,.0f} | {h50:.1f} | {h99:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
