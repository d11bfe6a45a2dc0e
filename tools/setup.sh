#!/usr/bin/env bash
# Install what `make demo`, `make test` and `make bench` need on a fresh Debian machine, and nothing twice:
# the FUSE runtime and headers (pyfuse3 compiles against libfuse3), PostgreSQL for the server
# suite, Chromium for the browser tests, etcd, Patroni and HAProxy for the cluster (`--cluster`, and
# the suite's failover test), a virtualenv in .venv and the package with its test extras.
set -euo pipefail
cd "$(dirname "$0")/.."

# the compiled data path (vhw/datapath, setup.py) builds against libfuse3 and OpenSSL's libcrypto;
# titles run in bubblewrap with a seccomp filter that libseccomp compiles
packages=(fuse3 libfuse3-dev libssl-dev pkg-config gcc postgresql bubblewrap libseccomp2)
# `make bench` (setup.sh --bench) also needs the peers and tools it compares with
[ "${1:-}" = "--bench" ] && packages+=(gocryptfs fio time)
# `make test` (setup.sh --test) also needs a browser for the web consoles' tests: Debian's Chromium,
# driven by Playwright's Python package (which then downloads no browser of its own); and systemd,
# whose `systemd-analyze verify` checks the deployment's unit files; and Prometheus, whose promtool
# checks the alert rules of deploy/prometheus and runs their unit tests
[ "${1:-}" = "--test" ] && packages+=(chromium libnss3-tools python3-venv systemd prometheus)
# `make cluster` (setup.sh --cluster) runs PostgreSQL under Patroni with etcd, behind HAProxy; the
# suite's failover test does too, so --test installs them as well
case "${1:-}" in --cluster | --test) packages+=(patroni etcd-server etcd-client haproxy) ;; esac
PY=${PYTHON:-python3}
# ... and against the interpreter's headers (Debian's own Python keeps them in python3-dev)
"$PY" -c 'import os, sysconfig, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_path("include"), "Python.h")))' \
    || packages+=(python3-dev)
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

if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv"
    "$PY" -m venv .venv
fi
# Re-install only when pyproject.toml, setup.py or the compiled part's sources changed since the
# last install (the editable install builds vhw/datapath/_core in place).
stamp=.venv/.vhw-installed
stale=""
[ -f "$stamp" ] && stale=$(find pyproject.toml setup.py vhw/datapath -newer "$stamp" \( -name pyproject.toml -o -name setup.py -o -name '*.[ch]' \) | head -n 1)
if [ ! -f "$stamp" ] || [ -n "$stale" ] || ! ls vhw/datapath/_core*.so >/dev/null 2>&1; then
    echo "setup: installing vhw and its dependencies into .venv"
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e '.[test,fuzz]'
    touch "$stamp"
fi
