# The README's two Quickstart commands are `make demo` and `make test`; both install what they need first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.mobiforge-installed

.PHONY: install demo test test-fast lint bench clean

install: $(STAMP)

# torch/torchvision are taken from this machine's local wheel store by plain pip (uv/poetry would download GBs).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install --quiet -e ".[all]"
	touch $(STAMP)

# The main job on built-in data: train the default model on scikit-learn's digits (about 2 minutes on 2 cores).
demo: install
	$(BIN)/mobiforge train --data digits --epochs 5 --batch-size 32

test: install
	$(BIN)/python -m pytest

test-fast: install
	$(BIN)/python -m pytest -m "not slow"

lint: install
	$(BIN)/ruff check mobiforge tests benchmarks
	$(BIN)/ruff format --check mobiforge tests benchmarks

bench: install
	$(BIN)/python benchmarks/profile_zoo.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
