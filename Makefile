# Set-up and the two everyday commands. `make train` and `make test` each create the virtual
# environment on first use (torch + torchvision as a matching pair, then tvr in editable mode).
VENV ?= .venv
PYTHON ?= python3
TORCH ?= torch==2.14.1 torchvision==0.29.1
BIN := $(VENV)/bin

.PHONY: train test install clean-venv

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
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
