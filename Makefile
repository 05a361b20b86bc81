# Two commands on a fresh machine with Python 3.11: `make demo` and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test test-fast bench clean chromium

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.installed
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

demo: $(VENV)/.installed
	$(BIN)/fedgrove demo

# Two workers, one test module each at a time: most tests wait on servers, so two share the 2 cores well.
test: $(VENV)/.installed-test chromium
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -n 2 --dist loadfile

# Debian's headless chromium, for tests/test_prefect_ui.py (installed once; as root, or through sudo).
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
		sudo=$$([ "$$(id -u)" -eq 0 ] || echo sudo); \
		$$sudo apt-get update -qq && \
		$$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

test-fast: $(VENV)/.installed-test
	$(BIN)/python -m pytest -m "not slow"

# PEERS_ARGS: options of bench/peers/run.py, e.g. PEERS_ARGS="--deployment-rounds 3" on a loaded machine.
bench: $(VENV)/.installed-test
	$(BIN)/python bench/aggregator.py
	$(BIN)/python bench/client_floor.py
	$(BIN)/python bench/end_to_end.py
	$(BIN)/python bench/round_budget.py
	$(BIN)/python bench/peers/run.py $(PEERS_ARGS)

clean:
	rm -rf $(VENV) .fedgrove runs
