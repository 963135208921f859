# The two commands a user needs: `make run` (serve the default model) and `make test`.
# Everything else is a step of those two, shared with docker/Dockerfile.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA_DIR ?= data
# torch/torchvision releases this project is tested with (the pins in pyproject admit them)
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
EXTRAS ?= dev

.PHONY: run test lint typecheck pytest install bench bench-peers system-deps clean help docker-smoke smoke fuzz

help:
	@echo "make run    - train the default model if needed, build the gallery index, serve on http://127.0.0.1:8000"
	@echo "make test   - create .venv, install, run ruff, mypy and the whole test suite"
	@echo "make bench  - run the benchmarks and print their figures (BENCH_ARGS=--quick: under 10 minutes)"
	@echo "make bench-peers - ONNX Runtime at its best, then TorchServe, Triton and LitServe on the same weights (PEERS_ARGS)"
	@echo "make docker-smoke - build the image and prove docker compose up end to end (root, Docker engine)"
	@echo "make fuzz   - fuzz the decoder and the multipart parser with atheris (FUZZ_SECONDS each, default 300)"

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

# the container smoke test runs before pytest (~10 min as root here; skipped, saying why, without root or Docker)
test: lint typecheck smoke pytest

smoke:
	bash docker/smoke.sh --if-possible

# the benchmarks' peers and photographs (ONNX Runtime, scikit-image) come with the `bench` extra
bench:
	$(MAKE) install EXTRAS=dev,bench
	$(BIN)/python -m bench $(BENCH_ARGS)

# the peer servers live in their own virtual environment, never in the service's dependencies; it sees the project's
# (torch and the model code) through a .pth file, so that every server runs the same PyTorch
PEERS_VENV ?= .venv-peers
bench-peers:
	$(MAKE) install EXTRAS=dev,bench
	@bash docker/system-deps.sh peers
	@bash bench/peers/setup.sh $(PEERS_VENV) $(BIN)/python
	$(BIN)/python -m bench.peers.onnx_best
	$(BIN)/python -m bench.peers --peer-python $(PEERS_VENV)/bin/python $(PEERS_ARGS)

# coverage-guided fuzzing (atheris, the `fuzz` extra): new inputs land in tests/fuzz/corpus, which `make test` replays
FUZZ_SECONDS ?= 300
fuzz:
	$(MAKE) install EXTRAS=dev,fuzz
	$(BIN)/python -m tests.fuzz.seeds
	for target in decode multipart; do \
	  $(BIN)/python -m tests.fuzz.run $$target -max_total_time=$(FUZZ_SECONDS) -max_len=262144 -timeout=10 -rss_limit_mb=4096 || exit 1; \
	done

run:
	@bash docker/entrypoint.sh run

docker-smoke:
	bash docker/smoke.sh

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache
