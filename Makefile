# Quick start:  make demo   (offline end-to-end job)   |   make test   (test suite)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: install demo test test-fast bench clean

$(BIN)/cram: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	# A CPU build of torch first where one is on hand (keeps CUDA wheels off CPU-only machines).
	$(BIN)/pip install "torch==2.13.0" || $(BIN)/pip install torch
	$(BIN)/pip install -e '.[dev]'
	touch $(BIN)/cram

install: $(BIN)/cram

demo: install
	$(BIN)/cram run --preset demo --out runs/demo $(if $(wildcard ../shared/data/glue),--glue-dir ../shared/data/glue)

test: install
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf runs .pytest_cache
