"""Monitoring as deployed: deploy/prometheus's scrape configuration and alert rules checked by
promtool (Debian's prometheus package; tools/setup.sh --test installs it), the rules' unit tests
run, the Grafana dashboard's queries checked as PromQL, and every vhw metric they name one the
server exports (tests/test_operator.py checks that it does)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from vhw.server import metrics

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "vhw-dashboard.json"


def promtool(*args: str, cwd: Path = PROMETHEUS) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("promtool")
    assert tool, "promtool is missing: tools/setup.sh --test installs Debian's prometheus package"
    return subprocess.run([tool, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def exported() -> set[str]:
    """The sample names vhw's metrics have (a counter's _total, a histogram's _bucket, _sum, _count)."""
    from prometheus_client.metrics import MetricWrapperBase

    names = set()
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            for family in value.describe():
                names |= {family.name + suffix for suffix in ("", "_total", "_bucket", "_sum", "_count")}
    return names


def dashboard_queries() -> list[str]:
    data = json.loads(DASHBOARD.read_text())
    return [t["expr"] for panel in data["panels"] for t in panel["targets"]]


def test_the_scrape_configuration_and_the_rules_check():
    r = promtool("check", "config", "prometheus.yml")
    assert r.returncode == 0, r.stdout + r.stderr
    r = promtool("check", "rules", "vhw-alerts.yml")
    assert r.returncode == 0 and "7 rules found" in r.stdout, r.stdout + r.stderr


def test_each_alert_fires_when_what_it_watches_goes_wrong_and_not_before():
    r = promtool("test", "rules", "vhw-alerts.test.yml")
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr
    rules = yaml.safe_load((PROMETHEUS / "vhw-alerts.yml").read_text())["groups"][0]["rules"]
    tested = yaml.safe_load((PROMETHEUS / "vhw-alerts.test.yml").read_text())["tests"]
    fired = {
        t["alertname"]
        for group in tested
        for t in group["alert_rule_test"]
        if t["exp_alerts"]  # (a test that expects it to fire, beside one that expects it quiet)
    }
    assert fired == {rule["alert"] for rule in rules}


def test_the_unit_tests_would_catch_a_rule_that_never_fires(tmp_path):
    """The control: the same unit tests over a rule file whose server-down alert waits for ever fail."""
    for name in ("vhw-alerts.yml", "vhw-alerts.test.yml"):
        shutil.copy(PROMETHEUS / name, tmp_path / name)
    broken = (tmp_path / "vhw-alerts.yml").read_text().replace('up{job="vhw-server"} == 0', 'up{job="vhw-server"} < 0')
    (tmp_path / "vhw-alerts.yml").write_text(broken)
    r = promtool("test", "rules", "vhw-alerts.test.yml", cwd=tmp_path)
    assert r.returncode != 0 and "VhwServerDown" in r.stdout + r.stderr


def test_the_dashboard_queries_are_promql(tmp_path):
    rules = {"groups": [{"name": "dashboard", "rules": []}]}
    for i, expr in enumerate(dashboard_queries()):
        rules["groups"][0]["rules"].append({"record": f"dashboard:query{i}", "expr": expr})
    (tmp_path / "dashboard.yml").write_text(yaml.safe_dump(rules))
    r = promtool("check", "rules", "dashboard.yml", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("where", ["rules", "dashboard"])
def test_every_metric_named_is_one_the_server_exports(where):
    text = (PROMETHEUS / "vhw-alerts.yml").read_text() if where == "rules" else "\n".join(dashboard_queries())
    named = set(re.findall(r"\bvhw_[a-z_]+", text))
    assert named and named <= exported(), named - exported()
