# The README's commands. `make demo` and `make test` each create .venv on first use.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
TORCH   ?= torch==2.13.0
# Without an NVIDIA GPU (no nvidia-smi) torch comes from PyTorch's CPU wheel index (+cpu builds, ~200 MB) instead
# of PyPI's CUDA build (several GB); TORCH_INDEX= (empty) turns this off, or names another index.
TORCH_INDEX ?= $(if $(shell command -v nvidia-smi 2>/dev/null),,https://download.pytorch.org/whl/cpu)

.PHONY: demo test lint bench fmt gpu-check wheels

$(BIN)/amr-fast: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)" $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX))
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

# Ctrl-C stops the run with a saved state and exit status 130, which stops make too: `make demo` again resumes.
demo: $(BIN)/amr-fast
	$(BIN)/amr-fast train --preset demo --outdir runs/demo
	$(BIN)/amr-fast mix runs/demo docs/demo-ellipse.png docs/demo-square.png --out runs/demo/mix.png

test: $(BIN)/amr-fast
	$(BIN)/python -m pytest -q tests

lint: $(BIN)/amr-fast
	$(BIN)/ruff check amr_fast kernels tests scripts
	$(BIN)/ruff format --check amr_fast kernels tests scripts

fmt: $(BIN)/amr-fast
	$(BIN)/ruff format amr_fast kernels tests scripts
	$(BIN)/ruff check --fix amr_fast kernels tests scripts

bench: $(BIN)/amr-fast
	$(BIN)/amr-fast bench kernels --out bench-kernels.json
	$(BIN)/amr-fast bench data --out bench-data.json
	$(BIN)/amr-fast bench train --out bench-train.json

# The GPU acceptance run (README "Running the GPU check"), a wrapper of `bash scripts/gpu-check.sh` for CI: on a CUDA
# machine every step, here the CPU form (steps 1 and 3). Needs no registry and builds no venv: it uses .venv/bin/python
# when there is one, else the machine's python3 (PYTHON=... to choose). Writes $(OUT)/summary.{txt,json},
# bench-kernels.json and logs.tar.gz (OUT defaults to runs/gpu-check).
OUT ?= runs/gpu-check
gpu-check:
	PYTHON="$${PYTHON:-$(if $(wildcard $(BIN)/python),$(BIN)/python,python3)}" bash scripts/gpu-check.sh "$(OUT)"

# wheels/ for a GPU machine without a registry (git-ignored; the device tool's `carry` takes it along): the
# pure-Python dependencies it may lack, setuptools + wheel (+ packaging) for the editable install, and Pillow (binary: one wheel
# per Python version in WHEEL_PYS, Linux x86_64). scripts/gpu-check.sh installs the ones that machine lacks.
WHEEL_DISTS ?= webdataset braceexpand einops tqdm pytest-timeout setuptools wheel packaging
WHEEL_PYS   ?= 3.10 3.11 3.12 3.13
wheels: $(BIN)/amr-fast
	rm -rf wheels && mkdir -p wheels
	$(BIN)/pip wheel -q --no-deps -w wheels $(WHEEL_DISTS)
	for v in $(WHEEL_PYS); do \
	  $(BIN)/pip download -q --no-deps --only-binary=:all: --platform manylinux_2_28_x86_64 --python-version $$v \
	    -d wheels pillow || exit 1; \
	done
	ls -l wheels
