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

# transformers 4 beside the environment, for the test that native exports load there (crammer itself needs 5).
$(VENV)/transformers4: $(BIN)/cram
	$(BIN)/pip install --no-deps --target $(VENV)/transformers4 "transformers==4.57.*" "huggingface_hub>=0.34,<1.0" \
		"tokenizers>=0.22,<=0.23.0" requests charset-normalizer idna urllib3 certifi

install: $(BIN)/cram $(VENV)/transformers4

demo: install
	$(BIN)/cram run --preset demo --out runs/demo $(if $(wildcard ../shared/data/glue),--glue-dir ../shared/data/glue)

test: install
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf runs .pytest_cache
