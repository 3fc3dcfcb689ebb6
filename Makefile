# vlmbed developer commands. Both targets create .venv on first use (no global installs).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: quickstart test lint install clean

$(BIN)/vlmbed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	@touch $(BIN)/vlmbed

install: $(BIN)/vlmbed

quickstart: install
	$(BIN)/vlmbed quickstart

test: install
	$(BIN)/pytest -q

lint: install
	$(BIN)/ruff check vlmbed tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
