# The two commands of the README. Both install what is missing first (tools/setup.sh).
.PHONY: demo test bench setup clean

VENV := .venv

setup:
	@bash tools/setup.sh

demo: setup
	$(VENV)/bin/vhw demo

test:
	@bash tools/setup.sh --test
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

# Every data-path comparison in one sitting (as root: it drops the page cache); writes
# bench/results.json and bench/results.md, the README's performance table.
bench:
	@bash tools/setup.sh --bench
	VHW_BENCH_MAKE=1 $(VENV)/bin/python tools/bench.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) images/out .pytest_cache .hypothesis
