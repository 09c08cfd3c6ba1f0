#!/usr/bin/env bash
# Mutation testing of the method's core (README "Testing"): mutmut 3 mutates amr_fast/mixing.py, amr_fast/losses.py
# and the mixing kernels (kernels/: __init__, ops, torch_mix, layout; not triton_mix, whose tests run in the slow
# Triton interpreter) one small change at a time, and runs the tests that cover each mutated function. A mutant
# that no test fails "survived": a test is missing, or the change does not change the maths (say why in
# docs/mutation-testing.md).
#
#   .venv/bin/pip install mutmut==3.8.1                  # not a dev extra: only this script needs it
#   bash scripts/mutation-test.sh [WORKDIR [PATTERN...]]  # default runs/mutmut, every mutant (~2,520: hours)
#
# PATTERNs pick mutants by name (fnmatch), e.g. 'amr_fast.mixing.x_sample_*' or 'amr_fast.losses.*_ae_loss*'
# (methods are named MODULE.xǁCLASSǁMETHOD__mutmut_N; `mutmut results` lists the names).
#
# mutmut wants the import path of each module to match its file path, so the sources are staged in WORKDIR with
# kernels/ at amr_fast/kernels/ (its import name; pyproject's package-dir maps it in an install). Results stay in
# WORKDIR: `cd WORKDIR && ../../.venv/bin/mutmut results` lists the survivors, `mutmut show NAME` shows one.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$PWD/.venv/bin/python}
WORK=${1:-runs/mutmut}
shift || true
"$PY" -c "import mutmut" 2>/dev/null || { echo "mutmut is not installed: $PY -m pip install mutmut==3.8.1" >&2; exit 2; }
rm -rf "$WORK" && mkdir -p "$WORK"
cp -r amr_fast tests pyproject.toml "$WORK/"
cp -r kernels "$WORK/amr_fast/kernels"
find "$WORK" -name __pycache__ -prune -exec rm -rf {} +
cat >>"$WORK/pyproject.toml" <<'EOF'

[tool.mutmut]
source_paths = ["amr_fast/"]
only_mutate = [
  "amr_fast/mixing.py",
  "amr_fast/losses.py",
  "amr_fast/kernels/__init__.py",
  "amr_fast/kernels/ops.py",
  "amr_fast/kernels/torch_mix.py",
  "amr_fast/kernels/layout.py",
]
# The wording of error messages is pinned by the bad-input tests' regexes, not mutated here.
do_not_mutate_patterns = ['raise \w+\(', '^\s*f?"[^"]*"\s*$']
pytest_add_cli_args_test_selection = [
  "tests/test_mixing.py",
  "tests/test_spatial_mixing.py",
  "tests/test_losses.py",
  "tests/test_loss_gradients.py",
  "tests/test_loss_draws.py",
  "tests/kernels/test_ops.py",
]
# torch.compile cannot trace mutmut's trampolines (a graph break by construction): that test stays out; so do
# the two slowest loss tests (5 s each per mutant: every preset runs; mixup-in-D draws as mugan), so a mutant only
# they would kill shows as a survivor.
pytest_add_cli_args = ["-k", "not torch_compile and not every_preset_builds and not a_layer_per_step_as_mugan"]
process_isolation = "forkserver"
EOF
cd "$WORK"
export OMP_NUM_THREADS=1
nice -n 10 "$PY" -m mutmut run --max-children "${MAX_CHILDREN:-2}" "$@" | tr '\r' '\n' | tail -n 20
"$PY" -m mutmut results
