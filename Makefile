# The two commands a user needs: `make run` (serve the default model) and `make test`.
# Everything else is a step of those two, shared with docker/Dockerfile.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA_DIR ?= data
# torch/torchvision releases this project is tested with (the pins in pyproject admit them)
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
EXTRAS ?= dev

.PHONY: run test lint typecheck pytest install bench system-deps clean help

help:
	@echo "make run    - train the default model if needed, build the gallery index, serve on http://127.0.0.1:8000"
	@echo "make test   - create .venv, install, run ruff, mypy and the whole test suite"
	@echo "make bench  - run the benchmarks and print their figures"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Re-install when pyproject.toml changes.
$(VENV)/.installed-$(EXTRAS): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --disable-pip-version-check -q $(TORCH_PINS)
	$(BIN)/pip install --disable-pip-version-check -q -e '.$(if $(EXTRAS),[$(EXTRAS)])'
	touch $@

install: $(VENV)/.installed-$(EXTRAS)

# Debian packages the tests use (headless Chromium for the web page test, docker-compose
# for `docker-compose config`); installed only when running as root with apt, skipped otherwise.
system-deps:
	@bash docker/system-deps.sh test

lint: install
	$(BIN)/ruff check app model training index tests bench

typecheck: install
	$(BIN)/mypy

pytest: install system-deps
	$(BIN)/python -m pytest -q -p no:cacheprovider --timeout=900

test: lint typecheck pytest

bench: install
	$(BIN)/python -m bench

run:
	@bash docker/entrypoint.sh run

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache
