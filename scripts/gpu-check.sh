#!/usr/bin/env bash
# The GPU acceptance run of amr_fast in one call (README "Running the GPU check").
#
#   bash scripts/gpu-check.sh [OUTDIR]      # OUTDIR defaults to $OUT, else runs/gpu-check
#
# Built for one short GPU lease: at most 8 files come back from OUTDIR, so everything is written to a work folder
# and OUTDIR gets four files only, rewritten after every step (a check killed half-way still returns what ran):
#   summary.txt, summary.json   the result, per step, test, bench row and training run
#   bench-kernels.json          the kernel bench (written after each size)
#   logs.tar.gz                 every step's log, steps.jsonl, the env files, the pytest XMLs, and each training
#                               run's stats.jsonl / config.json / log.txt
# Steps, in this order, the whole under GPU_CHECK_BUDGET seconds (420; every limit below scales with it):
#   1. install the working tree with this machine's python, no registry, no venv: the wheels in $WHEELS (`make
#      wheels`) of any distribution it lacks, then `pip install --no-index --no-deps --no-build-isolation -e .`
#      (a copy of the tree on PYTHONPATH if pip cannot); prints torch / triton / CUDA / GPU and what is missing;
#   2. training on a Fashion-MNIST-format data set drawn on the spot (the machine has no data), each run stopped
#      GPU_CHECK_TRAIN_S seconds after its first tick: the bf16 AMR run first in a slot of its own that no budget
#      arithmetic drops, then the bf16 classifier, the AMR run with a 4x larger batch_gpu and with compile=true,
#      and, only if the training share of the budget still allows, the fp32 runs. img/s, losses, non-finite steps;
#   3. the CUDA tests (`pytest -m cuda`; pytest-xdist workers when it is installed);
#   4. `amr-fast bench kernels --quick --backward --bf16`: the 1 GiB size first, each impl's bandwidth as a
#      fraction of a device copy timed the same way in the same run (CUDA events over back-to-back calls), the
#      bytes per launch of the forward and weight-grad kernels, their registers and spills.
# Exit status 1 when a correctness check failed (a test, a crash, a timeout, a non-finite step); speed figures are
# reported, never asserted. Without CUDA: the CPU form (steps 1 and 3, the CUDA test file's small cases with the
# Triton kernels in the interpreter); .ci/run runs it that way.
#
# Environment: PYTHON (python3), WHEELS (./wheels), GPU_CHECK_STEPS ("1 2 3 4" on CUDA, "1 3" without),
# GPU_CHECK_BUDGET (420), GPU_CHECK_TRAIN_S (20), GPU_CHECK_TICK_KIMG (4), GPU_CHECK_BIG_MIB (1024),
# GPU_CHECK_WORK (work folder; default: a new folder under /tmp), GPU_CHECK_INSTALL=copy (skip pip: a copy of the
# tree on PYTHONPATH), GPU_CHECK_CPU_TESTS (-k of the CPU form's tests). For the CPU test of this script
# (tests/test_gpu_check.py): GPU_CHECK_FAKE=1 replaces every step's command by a stand-in of the same shape, and
# GPU_CHECK_SLEEP="NAME=SECONDS ..." makes those steps sleep first (a slow step).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

OUTDIR=${1:-${OUT:-runs/gpu-check}}
mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
PY=${PYTHON:-python3}
case "$PY" in */*) PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")" ;; esac # absolute: we cd later
WHEELS=${WHEELS:-$ROOT/wheels}
BUDGET=${GPU_CHECK_BUDGET:-420}
TICK_KIMG=${GPU_CHECK_TICK_KIMG:-4}
BIG_MIB=${GPU_CHECK_BIG_MIB:-1024}
FAKE=${GPU_CHECK_FAKE:-0}
WORK=${GPU_CHECK_WORK:-$(mktemp -d /tmp/amr-gpu-check.XXXXXX)}
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
LOGS=$WORK/logs # everything but the four files of OUTDIR; logs.tar.gz is this folder
rm -rf "$LOGS" "$WORK/runs"
mkdir -p "$LOGS"
HELPER="$ROOT/scripts/gpu_check.py"
export PY HELPER OUTDIR LOGS WHEELS WORK ROOT
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 PYTHONUNBUFFERED=1
rm -f "$OUTDIR"/summary.json "$OUTDIR"/summary.txt "$OUTDIR"/bench-kernels.json "$OUTDIR"/logs.tar.gz
: >"$LOGS/steps.jsonl"
T0=$(date +%s.%N)
echo "$T0" >"$LOGS/start" # the summary's elapsed_s counts from here
START=$SECONDS
FAILED=0
# The budget's arithmetic (gpu_check.py `plan`): how long STEP may take now, or 0 to skip it.
PLAN=("$PY" "$HELPER" plan --budget "$BUDGET" --start "$T0" --train-s "${GPU_CHECK_TRAIN_S:-0}")

say() { echo "[gpu-check $((SECONDS - START))s] $*"; }

# last_line FILE: its last line, safe inside a JSON string (no quotes, backslashes or control characters).
last_line() { tail -n 1 "$1" 2>/dev/null | tr -d '"\\' | tr -c '[:print:]' ' ' | cut -c1-100; }

# record STEP NAME STATUS RC SECONDS NOTE [RUN]: one line of LOGS/steps.jsonl (the notes hold no quotes), then the
# summary and logs.tar.gz in OUTDIR rewritten: if the whole command is killed, what ran is still reported.
record() {
    local run=""
    [ -n "${7:-}" ] && run=", \"run\": \"$7\""
    printf '{"step": %s, "name": "%s", "status": "%s", "rc": %s, "seconds": %s, "note": "%s"%s}\n' \
        "$1" "$2" "$3" "$4" "$5" "$6" "$run" >>"$LOGS/steps.jsonl"
    if [ "$3" = failed ] || [ "$3" = timeout ]; then FAILED=1; fi
    say "step $1 $2: $3${6:+ - $6}"
    "$PY" "$HELPER" report "$LOGS" --out "$OUTDIR" >/dev/null 2>>"$LOGS/report-errors.log"
}

# slow NAME: the seconds GPU_CHECK_SLEEP asks step NAME to sleep first (0 by default).
slow() {
    local pair
    for pair in ${GPU_CHECK_SLEEP:-}; do [ "${pair%%=*}" = "$1" ] && echo "${pair#*=}" && return; done
    echo 0
}

# run_step STEP NAME CMD...: CMD under `timeout` (the plan's limit for NAME), its output in LOGS/NAME.log.
run_step() {
    local step=$1 name=$2 limit t0=$SECONDS rc status
    shift 2
    limit=$("${PLAN[@]}" "$name")
    if [ "$limit" = 0 ]; then
        record "$step" "$name" skipped null 0 "time budget spent"
        return 1
    fi
    say "step $step $name (limit ${limit}s)"
    # SIGINT first: pytest then still writes its XML of the tests that ran, the bench keeps its JSON.
    timeout -s INT -k 10 "$limit" bash -c 'trap "kill \$! 2>/dev/null; exit 130" INT; sleep "$1" & wait $!; shift
        exec "$@"' _ "$(slow "$name")" "$@" >"$LOGS/$name.log" 2>&1
    rc=$?
    status=ok
    [ "$rc" -ne 0 ] && status=failed
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then status=timeout; fi
    record "$step" "$name" "$status" "$rc" $((SECONDS - t0)) "$(last_line "$LOGS/$name.log")"
    [ "$status" = ok ]
}

# ---------------------------------------------------------------------------------------------------------------
# Step 1: install. A function run by `bash -c` (timeout cannot run a shell function).
step_install() {
    set -x
    if command -v nvidia-smi >/dev/null; then nvidia-smi >"$LOGS/nvidia-smi.txt" 2>&1; fi # clocks, power, memory
    "$PY" "$HELPER" env --out "$LOGS/env-before.json" || return 1
    local missing pp=""
    missing=$("$PY" "$HELPER" missing-wheels "$WHEELS") || return 1
    if [ -n "$missing" ]; then # pip picks the wheel that fits this python
        # shellcheck disable=SC2086
        "$PY" -m pip install --upgrade --no-index --no-deps --find-links "$WHEELS" $missing ||
            "$PY" -m pip install --upgrade --no-index --no-deps --find-links "$WHEELS" --break-system-packages $missing ||
            echo "could not install the wheels of: $missing"
    fi
    if [ "${GPU_CHECK_INSTALL:-pip}" = copy ] ||
        ! { "$PY" -m pip install --no-index --no-deps --no-build-isolation -e . ||
            "$PY" -m pip install --no-index --no-deps --no-build-isolation --break-system-packages -e .; }; then
        # No pip, no setuptools, a read-only site-packages: a copy of the tree laid out as pyproject.toml installs
        # it (kernels/ as amr_fast.kernels) on PYTHONPATH; every command runs as `python -m`.
        echo "pip could not install the tree (or GPU_CHECK_INSTALL=copy): using a copy of it on PYTHONPATH"
        rm -rf "$WORK/shim" && mkdir -p "$WORK/shim" || return 1
        cp -r amr_fast "$WORK/shim/amr_fast" && cp -r kernels "$WORK/shim/amr_fast/kernels" || return 1
        echo "$WORK/shim" >"$WORK/pythonpath"
    fi
    set +x
    [ -f "$WORK/pythonpath" ] && pp=$(cat "$WORK/pythonpath")
    cd "$WORK" || return 1 # not the tree's root, where ./amr_fast (without kernels/) would shadow the copy
    PYTHONPATH="$pp${PYTHONPATH:+:$PYTHONPATH}" "$PY" "$HELPER" env --out "$LOGS/env.json" || return 1
    PYTHONPATH="$pp${PYTHONPATH:+:$PYTHONPATH}" "$PY" -c '
import sys
from pathlib import Path
import amr_fast, amr_fast.kernels
where = Path(amr_fast.__file__).resolve().parent
print(f"amr_fast {amr_fast.__version__} imports from {where}")
if not any(Path(d).resolve() in where.parents for d in sys.argv[1:]):
    sys.exit(f"amr_fast imports from {where}, not from this tree ({sys.argv[1]})")
' "$ROOT" "$WORK"
}
fake_install() { "$PY" "$HELPER" env --out "$LOGS/env.json" --fake-cuda; }
export -f step_install fake_install

rm -f "$WORK/pythonpath"
if [ "$FAKE" = 1 ]; then run_step 1 install bash -c fake_install; else run_step 1 install bash -c step_install; fi
if [ -f "$WORK/pythonpath" ]; then
    PYTHONPATH="$(cat "$WORK/pythonpath")${PYTHONPATH:+:$PYTHONPATH}"
    export PYTHONPATH
fi
if [ -f "$LOGS/env.json" ]; then
    sed -n '/env --out .*env.json/,$p' "$LOGS/install.log" | grep -E "^(python |torch |GPU|amr_fast|missing modules)"
else
    tail -n 20 "$LOGS/install.log"
fi
# Every later command runs in $WORK: in the tree's root `python -m` would put ./amr_fast (no kernels/) first.
cd "$WORK" || exit 1
if [ "$FAKE" = 1 ]; then
    HAS_CUDA=1
else
    HAS_CUDA=$("$PY" -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)
fi
if [ "$HAS_CUDA" = 1 ]; then
    STEPS=${GPU_CHECK_STEPS:-1 2 3 4}
else
    STEPS=${GPU_CHECK_STEPS:-1 3}
    say "no CUDA GPU: the CPU form (steps $STEPS; on a GPU machine: 1 2 3 4)"
fi
want() { [[ " $STEPS " == *" $1 "* ]]; }

# ---------------------------------------------------------------------------------------------------------------
# Step 2: training.

# train_run NAME COMMAND PRESET PRECISION [OVERRIDES...]: one run, stopped the plan's seconds after its first tick.
train_run() {
    local name=$1 cmd=$2 preset=$3 precision=$4 t0=$SECONDS rc status slot secs startup grace
    shift 4
    local run="$WORK/runs/$name"
    rm -rf "$run"
    # "SECONDS STARTUP GRACE" (STARTUP: the longest wait for the first tick), or 0: no room left for this run.
    slot=$("${PLAN[@]}" "$name" --first-startup-file "$LOGS/runs/amr-bf16/startup.json")
    if [ "$slot" = 0 ]; then
        record 2 "$name" skipped null 0 "time budget spent" "$run"
        return
    fi
    read -r secs startup grace <<<"$slot"
    say "step 2 $name: amr-fast $cmd --preset $preset precision=$precision $*: ${secs}s after the first tick"
    mkdir -p "$LOGS/runs/$name"
    local train=("$PY" -m amr_fast.cli "$cmd" --preset "$preset" --data "$WORK/data/fm32" --outdir "$run"
        precision="$precision" total_kimg=1000000 tick_kimg="$TICK_KIMG" snapshot_kimg=1000000
        state_kimg=1000000 workers=4 "$@")
    [ "$FAKE" = 1 ] && train=("$PY" "$HELPER" fake-train "$run")
    "$PY" "$HELPER" train-for "$secs" "$run" --log "$LOGS/$name.log" --startup "$startup" --grace "$grace" \
        --sleep "$(slow "$name")" --meta "$LOGS/runs/$name/startup.json" -- "${train[@]}"
    rc=$?
    status=ok
    [ "$rc" -ne 0 ] && status=failed
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then status=timeout; fi
    # compile=true without a first tick in its limit: a cold compile slower than the budget, a speed figure
    [ "$rc" -eq 124 ] && [[ "$name" == *-compile ]] && status=slow
    cp "$run"/stats.jsonl "$run"/config.json "$run"/log.txt "$LOGS/runs/$name/" 2>/dev/null
    record 2 "$name" "$status" "$rc" $((SECONDS - t0)) "$(last_line "$LOGS/$name.log")" "$run"
}

make_data() { # Fashion-MNIST's format (IDX files, 10 classes; 32x32: no resize), sharded like the real one
    if [ "$GPU_CHECK_FAKE" = 1 ]; then mkdir -p "$WORK/data/fm32" && return; fi
    "$PY" "$HELPER" synth-idx "$WORK/data/idx" &&
        "$PY" -m amr_fast.cli shard fashion-mnist --src "$WORK/data/idx" --out "$WORK/data/fm32"
}
export -f make_data
export GPU_CHECK_FAKE=$FAKE

if want 2; then
    if run_step 2 make-data bash -c make_data; then
        # The order is the priority: the first run has a reserved slot, the fp32 runs come only if time is left.
        train_run amr-bf16 train fashion-mnist-mixup bf16 probe_kimg=1000000
        train_run classify-bf16 classify fashion-mnist-manifold bf16 eval_kimg=1000000
        train_run amr-bf16-batch256 train fashion-mnist-mixup bf16 probe_kimg=1000000 batch=256 batch_gpu=256
        train_run amr-bf16-compile train fashion-mnist-mixup bf16 probe_kimg=1000000 compile=true
        train_run amr-fp32 train fashion-mnist-mixup fp32 probe_kimg=1000000
        train_run classify-fp32 classify fashion-mnist-manifold fp32 eval_kimg=1000000
    fi
else
    record 2 train skipped null 0 "needs CUDA (or GPU_CHECK_STEPS listing 2)"
fi

# ---------------------------------------------------------------------------------------------------------------
# Step 3: the CUDA tests.
PYTEST=("$PY" -m pytest -q -p no:cacheprovider -o addopts= -rfEs)
if want 3 && [ "$FAKE" = 1 ]; then
    run_step 3 cuda-tests "$PY" "$HELPER" fake-junit "$LOGS/pytest-cuda.xml"
elif want 3 && [ "$HAS_CUDA" = 1 ]; then
    # Only the files that hold `cuda` tests: a test module elsewhere may import what this machine lacks.
    mapfile -t cuda_files < <(grep -rl --include="test_*.py" "pytest.mark.cuda" "$ROOT/tests" | sort)
    # Workers share Triton's on-disk compile cache; compiling each kernel variant on first use dominates. A test
    # that hangs fails on its own (pytest-timeout) instead of taking the step's whole limit.
    extra=()
    "$PY" -c "import xdist" 2>/dev/null && extra+=(-n 8)
    "$PY" -c "import pytest_timeout" 2>/dev/null && extra+=(--timeout 75)
    run_step 3 cuda-tests "${PYTEST[@]}" "${extra[@]}" -m cuda "${cuda_files[@]}" --junitxml="$LOGS/pytest-cuda.xml"
elif want 3; then
    # The CPU form: the CUDA test file's small cases with the Triton kernels in the interpreter (TRITON_INTERPRET=1
    # is read when triton is imported: a fresh process). The GPU-only cases skip and say so.
    run_step 3 cuda-tests-cpu-interpreter env TRITON_INTERPRET=1 "${PYTEST[@]}" "$ROOT/tests/kernels/test_cuda.py" \
        -k "${GPU_CHECK_CPU_TESTS:-not dtypes_layouts}" --junitxml="$LOGS/pytest-cpu-interpreter.xml"
else
    record 3 cuda-tests skipped null 0 "not in GPU_CHECK_STEPS"
fi

# ---------------------------------------------------------------------------------------------------------------
# Step 4: the kernels' bandwidth (bench-kernels.json rewritten after each size: a timeout keeps the sizes done).
if want 4 && [ "$FAKE" = 1 ]; then
    run_step 4 bench-kernels "$PY" "$HELPER" fake-bench "$LOGS/bench-kernels.json"
elif want 4 && [ "$HAS_CUDA" = 1 ]; then
    run_step 4 bench-kernels "$PY" -m amr_fast.cli bench kernels --quick --backward --bf16 --big-mib "$BIG_MIB" \
        --out "$LOGS/bench-kernels.json"
    grep -E "^(op |simplex_mix|mask_mix|kernel )" "$LOGS/bench-kernels.log" | awk '$1 != "simplex_mix" && $1 != "mask_mix" || $5 >= 8' || true
else
    record 4 bench-kernels skipped null 0 "needs CUDA (or GPU_CHECK_STEPS listing 4)"
fi

# ---------------------------------------------------------------------------------------------------------------
# The summary (already in OUTDIR after the last step; printed here).
echo
"$PY" "$HELPER" report "$LOGS" --out "$OUTDIR"
rc=$?
[ "$FAILED" = 1 ] && rc=1
say "done in $((SECONDS - START))s, exit status $rc; $OUTDIR: $(cd "$OUTDIR" && echo *)"
exit $rc
