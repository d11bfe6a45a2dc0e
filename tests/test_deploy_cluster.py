"""deploy/cluster/: what an operator adapts for real hosts is valid, and makes the choices that the
local cluster (tools/vhw_cluster.py) was measured with."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from .servers import cluster_tool

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy" / "cluster"


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed (tools/setup.sh --cluster)")
def test_the_haproxy_config_is_valid(tmp_path):
    # (its example host names resolve nowhere: HAProxy checks the rest with addresses of its own)
    text = re.sub(r"[a-z0-9]+\.example\.net", "127.0.0.1", (DEPLOY / "haproxy.cfg").read_text())
    (tmp_path / "haproxy.cfg").write_text(text)
    r = subprocess.run(["haproxy", "-c", "-f", str(tmp_path / "haproxy.cfg")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "on-marked-down shutdown-sessions" in text and "observe layer4" in text


def test_the_patroni_config_makes_the_measured_choices():
    yaml = pytest.importorskip("yaml")
    deploy = yaml.safe_load((DEPLOY / "patroni.yml").read_text())
    dcs = deploy["bootstrap"]["dcs"]
    assert dcs["synchronous_mode"] is True and dcs["synchronous_mode_strict"] is True
    assert dcs["maximum_lag_on_failover"] == 0
    assert dcs["postgresql"]["use_slots"] is False  # a standby rejoins a new primary at once
    assert dcs["ttl"] >= dcs["loop_wait"] + 2 * dcs["retry_timeout"]  # (Patroni's own rule)
    for name in ("wal_retrieve_retry_interval", "wal_keep_size"):
        assert name in dcs["postgresql"]["parameters"], name
    assert "etcd" in deploy and "etcd3" not in deploy  # the v2 API: see tools/vhw_cluster.py

    if not list(Path("/usr/lib/postgresql").glob("*/bin/initdb")):
        pytest.skip("PostgreSQL is not installed")
    vc = cluster_tool()
    local = json.loads(vc._patroni_config(vc.Cluster("/tmp/x", 30000, 2), 0))["bootstrap"]["dcs"]
    for key in ("synchronous_mode", "synchronous_mode_strict", "maximum_lag_on_failover"):
        assert local[key] == dcs[key], key
    assert local["postgresql"]["use_slots"] == dcs["postgresql"]["use_slots"]
