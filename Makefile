# The two commands of the README. Both install what is missing first (tools/setup.sh).
.PHONY: demo test check setup-test screens bench setup clean cluster cluster-down

VENV := .venv

setup:
	@bash tools/setup.sh

demo: setup
	$(VENV)/bin/vhw demo

test: setup-test check
	$(VENV)/bin/python -m pytest --durations=15 $(PYTEST_ARGS)

setup-test:
	@bash tools/setup.sh --test

# Static checks, before the suite: types (mypy --strict over vhw/), lint and formatting (ruff over
# vhw/, tests/ and tools/). Configured in pyproject.toml.
check: setup-test
	$(VENV)/bin/python -m mypy
	$(VENV)/bin/python -m ruff check vhw tests tools
	$(VENV)/bin/python -m ruff format --check vhw tests tools

# The web consoles' screenshots in docs/screens/, taken by their browser tests.
screens: setup-test
	VHW_SCREENS=docs/screens $(VENV)/bin/python -m pytest tests/test_webconsole.py

# Every data-path comparison in one sitting (as root: it drops the page cache); writes
# bench/results.json and bench/results.md, the README's performance table.
bench:
	@bash tools/setup.sh --bench
	VHW_BENCH_MAKE=1 $(VENV)/bin/python tools/bench.py $(BENCH_ARGS)

# A highly available licensing service on this machine: etcd, three PostgreSQL nodes under
# Patroni, HAProxy and two servers, under build/cluster (tools/vhw_cluster.py; README, "A highly
# available cluster"). `make cluster-down` stops everything it started.
cluster:
	@bash tools/setup.sh --cluster
	$(VENV)/bin/python tools/vhw_cluster.py up build/cluster

cluster-down:
	$(VENV)/bin/python tools/vhw_cluster.py down build/cluster

clean:
	rm -rf $(VENV) images/out .pytest_cache .hypothesis
