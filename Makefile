# The README's commands. `make demo` and `make test` each create .venv on first use.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
TORCH   ?= torch==2.13.0

.PHONY: demo test lint bench fmt

$(BIN)/amr-fast: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

demo: $(BIN)/amr-fast
	$(BIN)/amr-fast train --preset demo --outdir runs/demo
	$(BIN)/amr-fast mix $$(ls runs/demo/snapshot-*.safetensors | tail -n 1) docs/demo-ellipse.png docs/demo-square.png \
		--out runs/demo/mix.png

test: $(BIN)/amr-fast
	$(BIN)/python -m pytest -q tests

lint: $(BIN)/amr-fast
	$(BIN)/ruff check amr_fast kernels tests
	$(BIN)/ruff format --check amr_fast kernels tests

fmt: $(BIN)/amr-fast
	$(BIN)/ruff format amr_fast kernels tests
	$(BIN)/ruff check --fix amr_fast kernels tests

bench: $(BIN)/amr-fast
	$(BIN)/amr-fast bench kernels --out bench-kernels.json
	$(BIN)/amr-fast bench data --out bench-data.json
	$(BIN)/amr-fast bench train --out bench-train.json
