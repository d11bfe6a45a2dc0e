# The two commands of the README. Both install what is missing first (tools/setup.sh).
.PHONY: demo test setup clean

VENV := .venv

setup:
	@bash tools/setup.sh

demo: setup
	$(VENV)/bin/vhw demo

test: setup
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) images/out .pytest_cache .hypothesis
