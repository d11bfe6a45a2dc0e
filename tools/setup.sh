#!/usr/bin/env bash
# Install what `make demo`, `make test` and `make bench` need on a fresh Debian machine, and nothing twice:
# the FUSE runtime and headers (pyfuse3 compiles against libfuse3), PostgreSQL for the server
# suite, Chromium for the browser tests, etcd, Patroni and HAProxy for the cluster (`--cluster`, and
# the suite's failover test), a virtualenv in .venv and the package with its test extras.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(fuse3 libfuse3-dev pkg-config postgresql bubblewrap)
# `make bench` (setup.sh --bench) also needs the peers and tools it compares with
[ "${1:-}" = "--bench" ] && packages+=(gocryptfs fio time)
# `make test` (setup.sh --test) also needs a browser for the web consoles' tests: Debian's Chromium,
# driven by Playwright's Python package (which then downloads no browser of its own)
[ "${1:-}" = "--test" ] && packages+=(chromium libnss3-tools python3-venv)
# `make cluster` (setup.sh --cluster) runs PostgreSQL under Patroni with etcd, behind HAProxy; the
# suite's failover test does too, so --test installs them as well
case "${1:-}" in --cluster | --test) packages+=(patroni etcd-server etcd-client haproxy) ;; esac
need=()
for pkg in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if ((${#need[@]})); then
    echo "setup: installing Debian packages: ${need[*]}"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv"
    "$PY" -m venv .venv
fi
# Re-install only when pyproject.toml changed since the last install.
stamp=.venv/.vhw-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "setup: installing vhw and its dependencies into .venv"
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e '.[test,fuzz]'
    touch "$stamp"
fi
