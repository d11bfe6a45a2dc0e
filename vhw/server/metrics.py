"""What the licensing server counts, in the Prometheus text format (prometheus-client).

Served at ``GET /metrics``: over the server's TLS with the operator credential, or without one on
a separate plain-HTTP address given with ``--metrics-listen`` (for a scraper on the same host).

With ``--workers N`` every process counts into files in the multiprocess folder that the
supervisor sets in ``PROMETHEUS_MULTIPROC_DIR`` (wiped at each start), and any process answers
``/metrics`` with the sum over all of them (prometheus-client's multiprocess mode). Gauges are
summed over the live processes.

    vhw_http_requests_total{endpoint, method, status}      every request answered
    vhw_http_request_duration_seconds{endpoint}            latency histogram
    vhw_acquisitions_total{result}                         key acquisitions: flagged (a disc's first
                                                           issue), refetched (a lost answer), purchased
    vhw_keys_issued_total                                  answers that carried keys
    vhw_refusals_total{kind}                               the patent's five refusals, by code
    vhw_store_errors_total{kind}                           database failures: conflict (retried), error
    vhw_db_pool_connections{state}                         PostgreSQL pool: max (--pool-size), size,
                                                           available, waiting
    vhw_db_writable                                        1 while the database takes writes (a
                                                           primary), 0 while it does not
    vhw_audit_chain_head                                   the audit chain's last linked position
    vhw_audit_chained_timestamp_seconds                    when the chainer last ran to the end
    vhw_certificate_expiry_timestamp_seconds{certificate}  when the certificate in use (tls), the CA
                                                           and the signing certificate expire

The alert rules of deploy/prometheus/ are written over these (and Prometheus's own ``up``).
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    multiprocess,
)
from prometheus_client import generate_latest as _generate

CONTENT_TYPE = CONTENT_TYPE_LATEST
_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

REQUESTS = Counter(
    "vhw_http_requests", "Requests answered, by endpoint, method and status", ["endpoint", "method", "status"]
)
LATENCY = Histogram("vhw_http_request_duration_seconds", "Time to answer a request", ["endpoint"], buckets=_LATENCY)
ACQUISITIONS = Counter("vhw_acquisitions", "Key acquisitions that issued keys", ["result"])
KEYS_ISSUED = Counter("vhw_keys_issued", "Answers that carried a Content-Key and Content-Gen-Key")
REFUSALS = Counter("vhw_refusals", "Refusals with one of the patent's five messages", ["kind"])
STORE_ERRORS = Counter("vhw_store_errors", "Database failures", ["kind"])
POOL = Gauge("vhw_db_pool_connections", "PostgreSQL connection pool", ["state"], multiprocess_mode="livesum")
DB_WRITABLE = Gauge("vhw_db_writable", "1 while the database takes writes, else 0", multiprocess_mode="livemax")
AUDIT_HEAD = Gauge("vhw_audit_chain_head", "The audit chain's last linked position", multiprocess_mode="max")
AUDIT_CHAINED = Gauge(
    "vhw_audit_chained_timestamp_seconds", "When the audit chainer last ran to the end", multiprocess_mode="max"
)
CERT_EXPIRY = Gauge(
    "vhw_certificate_expiry_timestamp_seconds",
    "When a certificate of the platform in use expires",
    ["certificate"],
    multiprocess_mode="livemin",
)


def registry() -> CollectorRegistry:
    """The registry to answer /metrics from: this process's, or every process's in multiprocess mode."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        collected = CollectorRegistry()
        multiprocess.MultiProcessCollector(collected)  # type: ignore[no-untyped-call]  # (untyped in prometheus-client)
        return collected
    return REGISTRY


def generate() -> bytes:
    return _generate(registry())


def pool_stats(stats: dict[str, int]) -> None:
    """Record a psycopg_pool ``get_stats()`` snapshot."""
    POOL.labels("max").set(stats.get("pool_max", 0))
    POOL.labels("size").set(stats.get("pool_size", 0))
    POOL.labels("available").set(stats.get("pool_available", 0))
    POOL.labels("waiting").set(stats.get("requests_waiting", 0))


def mark_dead(pid: int, folder: str) -> None:
    """A worker ended: its live gauges no longer count (its counters do)."""
    multiprocess.mark_process_dead(pid, folder)  # type: ignore[no-untyped-call]  # (untyped in prometheus-client)
