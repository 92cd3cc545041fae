# The two commands of the README: `make demo` and `make test`.
# Both create .venv on first use. torch is installed first, pinned to the CPU build on this
# machine kind (torch==2.13.0); the `train` extra's range is then already satisfied, so
# nothing pulls CUDA builds. On a GPU machine install torch for its CUDA first instead.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0
export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: demo test lint install

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e '.[dev,train]'
	touch $@

install: $(BIN)/.installed

demo: $(BIN)/.installed
	$(BIN)/kohaku demo

test: $(BIN)/.installed /usr/bin/chromium
	$(BIN)/python -m pytest -q

# the UI test's browser: Debian's Chromium (Playwright's own download fails offline)
/usr/bin/chromium:
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium

lint: $(BIN)/.installed
	$(BIN)/ruff check kohaku flows tasks deployments tests bench
	$(BIN)/ruff format --check kohaku flows tasks deployments tests bench
