"""Contract testing of the HTTP API from its OpenAPI document, with schemathesis, against a real
server on 127.0.0.1 (TLS with the platform CA), each role's endpoints with that role's credential.

Every check runs but one: ``positive_data_acceptance`` expects any schema-valid request to be
accepted, and this API refuses schema-valid requests by design: the patent's refusals (an unknown
card, a used disc), and IDs whose check character is wrong, which JSON Schema cannot express.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vhw.server.credentials import Credential

from .servers import RunningServer

GROUPS = {
    "console": (None, r"^/v1/(health|console/)"),
    "manufacturer": ("manufacturer", r"^/v1/manufacturer/"),
    "publisher": ("publisher", r"^/v1/publisher/"),
    "operator": ("operator", r"^/v1/operator/"),
    "broker": ("broker", r"^/v1/broker/"),
}


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    server = RunningServer.start(tmp_path_factory.mktemp("contract") / "home")
    yield server
    assert server.stop() == 0


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_api_contract(srv, group, tmp_path):
    exe = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or "schemathesis"
    role, paths = GROUPS[group]
    # an oversize body is refused with 413 before it is parsed: a rejection, as schemathesis's own 4xx are
    config = tmp_path / "schemathesis.toml"
    config.write_text(
        "[checks.negative_data_rejection]\nexpected-statuses = "
        '["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429"]\n'
    )
    cmd = [
        exe,
        "--config-file",
        str(config),
        "run",
        f"{srv.url}/openapi.json",
        "--tls-verify",
        str(srv.home.path("ca.pem")),
        "--checks",
        "all",
        "--exclude-checks",
        "positive_data_acceptance",
        "--max-examples",
        "6",
        "--seed",
        "7",
        "--include-path-regex",
        paths,
        "--report-dir",
        str(tmp_path),
        "--no-color",
        "--suppress-health-check",
        "filter_too_much",
    ]  # (a limit of its generator, not of the API)
    if role:
        cmd += ["--header", f"Authorization: Bearer {Credential.load(srv.credential(role)).token}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]  # no 5xx, no response violating the schema, ...
    selected = re.search(r"Selected: (\d+)/\d+\s+Tested: (\d+)", out)
    cases = re.search(r"(\d+) generated, (\d+) passed", out)
    assert selected and selected.group(1) == selected.group(2) != "0", out[-3000:]  # all its endpoints
    assert cases and cases.group(1) == cases.group(2) and int(cases.group(1)) >= 50, out[-3000:]
