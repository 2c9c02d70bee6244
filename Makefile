# Set-up and the everyday commands. `make train`, `make test` and `make test-all` each create the virtual
# environment on first use (torch + torchvision as a matching pair, then tvr in editable mode).
# `make test` is the fast tier (minutes: every module, no end-to-end trainings); `make test-all` adds the
# tests marked slow and is what CI (.ci/run) runs. PYTEST_ARGS passes extra options to either.
VENV ?= .venv
PYTHON ?= python3
TORCH ?= torch==2.14.1 torchvision==0.29.1
BIN := $(VENV)/bin

.PHONY: train test test-all lint install clean-venv

$(BIN)/.tvr-installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

install: $(BIN)/.tvr-installed

train: $(BIN)/.tvr-installed
	$(BIN)/tvr-train $(ARGS)

test: $(BIN)/.tvr-installed
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

test-all: $(BIN)/.tvr-installed
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Formatting and lint (ruff, configured in pyproject.toml); CI runs it before the tests.
lint: $(BIN)/.tvr-installed
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

clean-venv:
	rm -rf $(VENV)
