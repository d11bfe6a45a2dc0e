#!/usr/bin/env python3
"""The README's server tables, rendered from the benchmark files they come from.

    .venv/bin/python tools/benchtables.py            # print every table
    .venv/bin/python tools/benchtables.py cluster    # the one from bench/cluster.json

`tools/loadgen.py --out` writes the files; the README holds these renderings word for word, and
`tests/test_readme.py` checks that it still does (a figure in the README is a figure of a file).
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent.parent / "bench"


def _load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((BENCH / name).read_text())
    return data


def _median(values: list[float]) -> str:
    return f"median {statistics.median(values):.1f} s ({min(values):.1f}-{max(values):.1f} s, {len(values)} runs)"


def cluster_table(data: dict[str, Any] | None = None) -> str:
    """bench/cluster.json: one server on a single PostgreSQL against one on the cluster; outages;
    what one acquisition costs."""
    d = data or _load("cluster.json")
    lines = [
        f"From `bench/cluster.json`, {d['date']}, {d['machine']}; client, server and databases on the one"
        f" machine, {d['seconds_per_level']:.0f} s per level:",
        "",
        "| clients | single PostgreSQL acq/s | p99 ms | cluster acq/s | p99 ms | cluster / single |",
        "|---|---|---|---|---|---|",
    ]
    for level in d["levels"]:
        s, k = level["single"], level["cluster"]
        lines.append(
            f"| {level['clients']} | {s['rate']:,.0f} | {s['p99_ms']:.1f} | {k['rate']:,.0f} | {k['p99_ms']:.1f}"
            f" | {k['rate'] / s['rate']:.2f}x |"
        )
    out = d["outage_seconds"]
    lines += [
        "",
        f"Outage (the longest time without a successful acquisition, under 16 clients): failover"
        f" {_median(out['failover'])}, switchover {_median(out['switchover'])}.",
    ]
    if "settings" in d:
        t, phases = d["settings"]["patroni"], d.get("failover_phases_seconds", [])
        lines[-1] += (
            f" Patroni's ttl {t['ttl']} s, loop_wait {t['loop_wait']} s, retry_timeout {t['retry_timeout']} s"
            f" (HAProxy: {d['settings']['haproxy'].split(' on-marked-down')[0]})"
        )
        if phases:
            lines[-1] += (
                f"; from the kill to the promotion {_median([x['kill_to_promotion'] for x in phases])},"
                f" from the promotion to the first answer {_median([x['promotion_to_answer'] for x in phases])}."
            )
        else:
            lines[-1] += "."
    if "cost" in d:
        c = d["cost"]
        runs = c.get("server_cpu_ms_runs", [c["server_cpu_ms"]])
        noop = (
            f"; a no-op request {c['noop_server_cpu_ms']:.2f} ms in the same runs" if "noop_server_cpu_ms" in c else ""
        )
        lines += [
            "",
            f"One acquisition (single PostgreSQL, {c['clients']} clients, {c['acquisitions_per_s']:,.0f}/s;"
            f" medians of {len(runs)} runs of {d['seconds_per_level']:.0f} s):"
            f" {c['server_cpu_ms']:.2f} ms of the server's CPU ({min(runs):.2f}-{max(runs):.2f}{noop}),"
            f" {c['postgres_cpu_ms']:.2f} ms of PostgreSQL's,"
            f" {c['statements']:.1f} statements (round trips), {c['commits']:.2f} commits,"
            f" {c['wal_bytes']:,.0f} bytes of WAL, {c['audit_entries']:.1f} audit entries; on disk (indexes"
            f" included) a MID's row takes {c['media_row_bytes']:.0f} bytes, an audit entry"
            f" {c['audit_row_bytes']:.0f}. A one-row commit:"
            f" {c['commit_ms_single']:.2f} ms on the single PostgreSQL, {c['commit_ms_cluster']:.2f} ms on the"
            " cluster (it waits for the synchronous standby).",
        ]
    return "\n".join(lines) + "\n"


def loadgen_table(data: dict[str, Any] | None = None) -> str:
    """bench/loadgen.json: acquisitions against the no-op on each backend, medians of the runs."""
    d = data or _load("loadgen.json")
    lines = [
        f"From `bench/loadgen.json` ({d['date']}, {d['machine']}; `tools/loadgen.py --matrix --out"
        f" bench/loadgen.json`): medians of {d['repeat']} runs of {d['seconds_per_level']:.0f} s per level"
        " (min-max of the acquisitions/s); p50 and p99 are the medians of the runs'.",
        "",
        "| backend | clients | acquisitions/s | p50 ms | p99 ms | no-op/s | p50 ms | p99 ms | acq / no-op |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for config in d["configs"]:
        name = "SQLite" if config["backend"] == "sqlite" else "PostgreSQL"
        label = f"{name}, {config['workers']} process{'es' if config['workers'] > 1 else ''}"
        for i, level in enumerate(config["levels"]):
            a, n = level["acquire"], level["noop"]
            errors = f", {a['errors']} errors" if a["errors"] else ""
            lines.append(
                f"| {label if i == 0 else ''} | {level['clients']} | {a['rate']:,.0f} ({a['min']:,.0f}-{a['max']:,.0f}"
                f"{errors}) | {a['p50_ms']:.1f} | {a['p99_ms']:.1f} | {n['rate']:,.0f} | {n['p50_ms']:.1f}"
                f" | {n['p99_ms']:.1f} | {a['rate'] / n['rate']:.2f}x |"
            )
    by = {
        (c["backend"], c["workers"]): {lv["clients"]: lv["acquire"]["rate"] for lv in c["levels"]} for c in d["configs"]
    }
    one, two = by.get(("postgres", 1)), by.get(("postgres", 2))
    if one and two:
        top = max(one)
        lines += ["", f"PostgreSQL, 2 processes against 1, at {top} clients: {two[top] / one[top]:.2f}x."]
    return "\n".join(lines) + "\n"


TABLES = {"cluster": cluster_table, "loadgen": loadgen_table}


def main(argv: list[str]) -> int:
    for name in argv or list(TABLES):
        if name not in TABLES:
            print(f"benchtables: no table {name!r} (one of: {', '.join(TABLES)})", file=sys.stderr)
            return 2
        print(TABLES[name](), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
