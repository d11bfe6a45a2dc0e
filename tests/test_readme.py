"""The README is a test: its walkthrough, repair, saves, card-less and broker blocks run as written.

The blocks of those sections run one after the other in one bash (they share ``CRED``, ``DISC``
and the console), with ``set -euo pipefail``, in a fresh folder with its own ``HOME`` and
``VHW_HOME``, ``vhw`` on the ``PATH`` as `make demo` leaves it, and the repository's ``images``
beside them; the server the walkthrough starts in the background is stopped at the end. A step
that fails fails the test, naming the line.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = ("## Walkthrough", "### Repair center", "### Saves on the memory card", "### Card-less consoles")


def blocks(text: str) -> dict[str, list[str]]:
    """The ```sh blocks of the README, by the heading they are under."""
    out: dict[str, list[str]] = {}
    heading = ""
    inside = False
    for line in text.splitlines():
        if line.startswith("#") and not inside:
            heading = line.strip()
        elif line.startswith("```sh"):
            inside = True
            out.setdefault(heading, []).append("")
        elif line.startswith("```") and inside:
            inside = False
        elif inside:
            out[heading][-1] += line + "\n"
    return out


def section(found: dict[str, list[str]], prefix: str) -> str:
    [heading] = [h for h in found if h.startswith(prefix)]
    return "\n".join(found[heading])


def port_free(port: int) -> None:
    """Nobody listens on ``port`` (a connection of an earlier run in TIME-WAIT is no matter: the
    server binds with SO_REUSEADDR too)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            pytest.fail(f"port {port}, which the README uses, is in use on this machine")


def run_blocks(tmp_path: Path, script: str, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``script`` in bash as a reader runs it, in a fresh folder; fails the test naming the line."""
    work, home = tmp_path / "work", tmp_path / "home"
    work.mkdir()
    home.mkdir()
    (work / "images").symlink_to(ROOT / "images")
    prologue = "set -euo pipefail\ntrap 'kill $(jobs -p) 2>/dev/null; wait' EXIT\nset -x\n"
    env = {
        **os.environ,
        "HOME": str(home),
        "VHW_HOME": str(tmp_path / "vhw"),
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    for name in ("VHW_CONSOLE", "VHW_SERVER_LISTEN", "VHW_SERVER_DB"):
        env.pop(name, None)
    env.update(extra_env or {})
    r = subprocess.run(
        ["bash", "-c", prologue + script], cwd=work, env=env, capture_output=True, text=True, timeout=600
    )
    last = [line for line in r.stderr.splitlines() if line.startswith("+ ")][-1:]
    assert r.returncode == 0, f"the README failed at {last}: {r.stderr[-3000:]}"
    return r


def test_the_walkthrough_repair_and_saves_blocks_run_as_written(tmp_path):
    port_free(8443)
    found = blocks((ROOT / "README.md").read_text())
    script = "\n".join(section(found, prefix) for prefix in SECTIONS)
    assert "vhw server run &" in script and "vhw repair card" in script and "saves export" in script
    assert "--memory cl.nvram" in script
    r = run_blocks(tmp_path, script)
    assert re.search(r"VHW-GAME-1\s", r.stdout) and "You escaped the cave" in r.stdout
    assert "deleted from the console's memory" in r.stdout and "(saved on the console's memory: won" in r.stdout


def test_the_postgresql_block_runs_as_written(tmp_path, postgres):
    """The PostgreSQL section, with ``VHW_DB`` naming a fresh database of the suite's real
    PostgreSQL: a server of two worker processes on it, a title mastered and pressed against it."""
    port_free(8445)
    script = section(blocks((ROOT / "README.md").read_text()), "### PostgreSQL")
    assert '--db "$VHW_DB"' in script and "--workers 2 &" in script
    r = run_blocks(tmp_path, script, {"VHW_DB": postgres.new_database()})
    assert "(2 processes:" in r.stdout and "registered VHW-GAME-PG with the licensing server" in r.stdout
    assert len(re.findall(r"pg-discs/VHW-GAME-PG-\w+\.disc  MID MD-", r.stdout)) == 2, r.stdout[-2000:]
    intact = re.search(r"audit log intact: (\d+) entries chained, .* (\d+) entries waiting to be chained", r.stdout)
    # the four credentials init made, the title and its two discs (the chainer runs every 2 s)
    assert intact and int(intact[1]) + int(intact[2]) == 7, r.stdout[-2000:]


def test_the_broker_block_runs_as_written_on_its_own(tmp_path):
    """The broker section alone, in a fresh folder: its own server, devices and console."""
    for port in (8444, 9443):
        port_free(port)
    script = section(blocks((ROOT / "README.md").read_text()), "### Broker")
    assert "vhw broker run --home broker &" in script and "vhw console install" in script
    r = run_blocks(tmp_path, script)
    assert "VHW-GAME-B installed" in r.stdout and re.search(r"top-up\s+20\.00", r.stdout), r.stdout[-2000:]
    assert re.search(r"charge\s+-4\.99 EUR\s+balance", r.stdout), r.stdout[-2000:]


def copy_checkout(checkout: Path) -> Path:
    """The repository's tracked files, as `git clone` gives them, in ``checkout``."""
    import shutil

    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, files.decode().split("\0")):
        (checkout / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, checkout / name)
    return checkout


def in_sandbox(checkout: Path, fresh: list[str], script: str, binds: list[str] = ()) -> subprocess.CompletedProcess:
    """``script`` in bash as root, in ``checkout``, in a sandbox whose ``fresh`` folders start
    empty (bubblewrap's tmpfs), with a Debian root shell's PATH (its python3, not the suite's)."""
    made = [d for d in fresh if not os.path.exists(d)]  # (bwrap makes the mount points)
    env = {**os.environ, "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
    env.pop("VIRTUAL_ENV", None)
    try:
        return subprocess.run(
            ["bwrap", "--dev-bind", "/", "/", *binds]
            + [arg for d in fresh for arg in ("--tmpfs", d)]
            + ["--chdir", str(checkout), "bash", "-c", "set -euo pipefail\nset -x\n" + script],
            capture_output=True,
            text=True,
            timeout=600,
            env=env,
        )
    finally:
        for d in made:
            with contextlib.suppress(OSError):
                os.rmdir(d)


SERVICE = r"""
# the unit as systemd starts it: its checks, its state directory, its environment, its user
unit=/etc/systemd/system/vhw-server.service
test -f "$unit" && test -f /etc/vhw/server.toml && test -x /opt/vhw/bin/vhw
systemd-analyze verify "$unit"
environment=$(sed -n 's/^Environment=//p' "$unit")
pre=$(sed -n 's/^ExecStartPre=//p' "$unit")
start=$(sed -n 's/^ExecStart=//p' "$unit")
signal=$(sed -n 's/^KillSignal=//p' "$unit")
install -d -m 0700 -o nobody -g nogroup /var/lib/vhw
as_service() { cd / && umask 0077 && exec setpriv --reuid=nobody --regid=nogroup --clear-groups \
    env -i PATH=/usr/bin:/bin $environment bash -c "exec $1"; }
(as_service "$pre")
as_service "$start" 2> "$PWD/service.log" &  # (every step execs: $! is the server itself)
server=$!
trap 'kill "$server" 2>/dev/null || true' EXIT
/opt/vhw/bin/vhw server wait --home /var/lib/vhw/server
grep -q '"server": "https://licensing.example.net:8443"' /var/lib/vhw/server/credentials/operator.json
stat -c '%U %a' /var/lib/vhw/server/master.key
kill -s "$signal" "$server"
wait "$server" && echo "stopped with status 0"
"""


def test_the_operator_blocks_install_and_the_unit_runs(tmp_path):
    """The operator section: its install block as written, in a sandbox with a fresh /opt,
    /etc/vhw, /etc/systemd/system and /var/lib/vhw; then the installed unit run as systemd would
    run it (no systemd runs on the suite's machine): verified, its ExecStartPre (`server init`
    with the public name) and ExecStart as an unprivileged user, answering under that name."""
    import shutil

    if not shutil.which("bwrap") or not shutil.which("systemd-analyze"):
        pytest.skip("bubblewrap and systemd-analyze are needed (tools/setup.sh installs them)")
    for port in (8443, 9464):
        port_free(port)
    found = blocks((ROOT / "README.md").read_text())
    [heading] = [h for h in found if h.startswith("### Running the server")]
    install, service = found[heading]
    assert "pip install" in install and "systemctl daemon-reload && systemctl enable --now vhw-server" in service
    checkout = copy_checkout(tmp_path / "checkout")
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost licensing.example.net\n::1 localhost\n")
    fresh = ["/opt", "/etc/vhw", "/etc/systemd/system", "/var/lib/vhw"]
    r = in_sandbox(checkout, fresh, install + SERVICE, ["--ro-bind", str(hosts), "/etc/hosts"])
    last = [line for line in r.stderr.splitlines() if line.startswith("+ ")][-1:]
    said = "\n".join(line for line in r.stderr.splitlines() if not line.startswith("WARNING: Location"))
    assert r.returncode == 0, f"the operator block failed at {last}: {said[-3000:]}"
    assert "https://licensing.example.net:8443 answers" in r.stdout and "stopped with status 0" in r.stdout
    assert "nobody 600" in r.stdout  # the server's keys belong to the service's user alone
    log = [line for line in (checkout / "service.log").read_text().splitlines() if not line.startswith("+ ")]
    assert log and all(line.startswith("{") for line in log), log[:5]  # JSON lines (server.toml)
    assert any('"path": "/v1/health", "status": 200' in line for line in log), log[-5:]


BROKER_SERVICE = r"""
# the unit as systemd starts it: its checks, its state directory (its user's), its environment
unit=/etc/systemd/system/vhw-broker.service
test -f "$unit" && test -x /opt/vhw/bin/vhw
systemd-analyze verify "$unit"
environment=$(sed -n 's/^Environment=//p' "$unit")
pre=$(sed -n 's/^ExecStartPre=//p' "$unit")
start=$(sed -n 's/^ExecStart=//p' "$unit")
signal=$(sed -n 's/^KillSignal=//p' "$unit")
chown -R nobody:nogroup /var/lib/vhw-broker && chmod 0700 /var/lib/vhw-broker
as_service() { cd / && umask 0077 && exec setpriv --reuid=nobody --regid=nogroup --clear-groups \
    env -i PATH=/usr/bin:/bin $environment bash -c "exec $1"; }
(as_service "$pre")
as_service "$start" > "$PWD/broker.out" 2> "$PWD/broker.log" &
broker=$!
trap 'kill "$broker" 2>/dev/null || true' EXIT
/opt/vhw/bin/vhw broker wait --home /var/lib/vhw-broker/broker && echo "the broker answers"
stat -c '%U %a' /var/lib/vhw-broker/broker/credential.json
kill -s "$signal" "$broker"
wait "$broker" && echo "stopped with status 0"
"""


def test_the_broker_blocks_install_and_the_unit_runs(tmp_path, cli):
    """The broker's operator section: its install block as written in a sandbox (fresh /opt,
    /etc/systemd/system and /var/lib/vhw-broker), with a credential and TLS identity from a
    server home made here; then the installed unit verified and run as systemd would run it."""
    import shutil

    if not shutil.which("bwrap") or not shutil.which("systemd-analyze"):
        pytest.skip("bubblewrap and systemd-analyze are needed (tools/setup.sh installs them)")
    port_free(9443)
    found = blocks((ROOT / "README.md").read_text())
    [heading] = [h for h in found if h.startswith("### Running the broker")]
    install, service = found[heading]
    assert "broker init" in install and "systemctl enable --now vhw-broker" in service
    checkout = copy_checkout(tmp_path / "checkout")
    srv = tmp_path / "srv"  # the platform operator's server home: the broker's credential and TLS
    assert cli("server", "init", "--home", srv, "--mode", "broker").code == 0
    assert cli("server", "issue-cert", "broker", "-o", checkout / "broker-tls", "--home", srv).code == 0
    shutil.copy2(srv / "credentials" / "broker.json", checkout / "broker.json")
    r = in_sandbox(checkout, ["/opt", "/etc/systemd/system", "/var/lib/vhw-broker"], install + BROKER_SERVICE)
    last = [line for line in r.stderr.splitlines() if line.startswith("+ ")][-1:]
    said = "\n".join(line for line in r.stderr.splitlines() if not line.startswith("WARNING: Location"))
    assert r.returncode == 0, f"the broker's block failed at {last}: {said[-3000:]}"
    assert "the broker answers" in r.stdout and "stopped with status 0" in r.stdout
    assert "nobody 600" in r.stdout  # its credential belongs to the service's user alone
    out = [json.loads(line) for line in (checkout / "broker.out").read_text().splitlines()]
    assert [line["event"] for line in out] == ["listening", "stopped"], out
    log = [line for line in (checkout / "broker.log").read_text().splitlines() if not line.startswith("+ ")]
    assert log and all(json.loads(line)["message"] for line in log), log[:5]  # JSON lines, every one


def test_the_readmes_figures_are_the_benchmarks_files():
    """Every figure table of the README is its benchmark file's, rendered: the data path's
    (bench/results.md, as `make bench` wrote it) and the servers' (tools/benchtables.py)."""
    readme = (ROOT / "README.md").read_text()
    assert (ROOT / "bench" / "results.md").read_text().strip() in readme
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import benchtables
    finally:
        sys.path.remove(str(ROOT / "tools"))
    for name, render in benchtables.TABLES.items():
        assert render().strip() in readme, f"the README's {name} table is not bench's file: tools/benchtables.py {name}"
