#!/usr/bin/env bash
# The GPU acceptance run of amr_fast in one call (README "Running the GPU check"; issue 14).
#
#   scripts/gpu-check.sh [OUTDIR]     # or `make gpu-check`; OUTDIR defaults to $OUT, else runs/gpu-check
#
# On a CUDA machine, each step under its own time limit and the whole under GPU_CHECK_BUDGET seconds (450):
#   1. install the working tree with this machine's python, no registry: the wheels in $WHEELS (`make wheels`)
#      of any distribution it lacks, then `pip install --no-index --no-deps --no-build-isolation -e .` (a copy of
#      the tree on PYTHONPATH if pip cannot); prints torch / triton / CUDA / GPU and what is missing;
#   2. the CUDA tests (`pytest -m cuda`, mostly tests/kernels/test_cuda.py: Triton against the reference forward
#      and backward over odd shapes, K = 2..8, fp32/fp16/bf16, layouts, > 2^31 elements; opcheck; torch.compile)
#      in three parallel pytest processes;
#   3. `amr-fast bench kernels --quick --backward --big-mib GPU_CHECK_BIG_MIB`: each impl's bandwidth as a
#      fraction of the device's copy bandwidth in the same run, triton and torch.compile of the reference included;
#   4. trains the 32x32 AMR preset (fashion-mnist-mixup: mixup, k = 2) and the Manifold Mixup classifier
#      (fashion-mnist-manifold) for GPU_CHECK_TRAIN_S seconds each in bf16 and in fp32, on a data set in
#      Fashion-MNIST's format drawn on the spot (the machine has no data): img/s, first / last tick losses,
#      non-finite steps (from each run's stats.jsonl);
#   5. OUTDIR/summary.json and OUTDIR/summary.txt next to every step's log. Exit status 1 when a correctness check
#      failed (a test, a crash, a timeout, a non-finite step); speed figures are reported, never asserted.
# Without CUDA: the CPU form of steps 1-2 (the install; the CUDA test file's small cases with the Triton kernels in
# the interpreter), and it says which steps it skipped. .ci/run runs it that way.
#
# Environment: PYTHON (python3), WHEELS (./wheels), GPU_CHECK_STEPS ("1 2 3 4" on CUDA, "1 2" without),
# GPU_CHECK_BUDGET (450), GPU_CHECK_TRAIN_S (30), GPU_CHECK_TICK_KIMG (4), GPU_CHECK_BIG_MIB (1024),
# GPU_CHECK_WORK (scratch folder for the data and the runs; default: a new folder under /tmp), GPU_CHECK_INSTALL=copy
# (skip pip: a copy of the tree on PYTHONPATH), GPU_CHECK_CPU_TESTS (-k of the CPU form's tests).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

OUTDIR=${1:-${OUT:-runs/gpu-check}}
mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
PY=${PYTHON:-python3}
case "$PY" in */*) PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")" ;; esac # absolute: we cd later
WHEELS=${WHEELS:-$ROOT/wheels}
BUDGET=${GPU_CHECK_BUDGET:-450}
TRAIN_S=${GPU_CHECK_TRAIN_S:-30}
TICK_KIMG=${GPU_CHECK_TICK_KIMG:-4}
BIG_MIB=${GPU_CHECK_BIG_MIB:-1024}
WORK=${GPU_CHECK_WORK:-$(mktemp -d /tmp/amr-gpu-check.XXXXXX)}
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
HELPER="$ROOT/scripts/gpu_check.py"
export PY HELPER OUTDIR WHEELS WORK ROOT
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 PYTHONUNBUFFERED=1
: >"$OUTDIR/steps.jsonl"
rm -f "$OUTDIR"/pytest-*.xml "$OUTDIR/bench-kernels.json" "$OUTDIR/summary.json" "$OUTDIR/summary.txt"
START=$SECONDS
FAILED=0

say() { echo "[gpu-check $((SECONDS - START))s] $*"; }

# last_line FILE: its last line, safe inside a JSON string (no quotes, backslashes or control characters).
last_line() { tail -n 1 "$1" 2>/dev/null | tr -d '"\\' | tr -c '[:print:]' ' ' | cut -c1-100; }

# record STEP NAME STATUS RC SECONDS NOTE [RUN]: one line of OUTDIR/steps.jsonl (the notes hold no quotes).
record() {
    local run=""
    [ -n "${7:-}" ] && run=", \"run\": \"$7\""
    printf '{"step": %s, "name": "%s", "status": "%s", "rc": %s, "seconds": %s, "note": "%s"%s}\n' \
        "$1" "$2" "$3" "$4" "$5" "$6" "$run" >>"$OUTDIR/steps.jsonl"
    if [ "$3" = failed ] || [ "$3" = timeout ]; then FAILED=1; fi
    say "step $1 $2: $3${6:+ - $6}"
    # The summary so far, rewritten after every step: if the whole command is killed, what ran is still reported.
    "$PY" "$HELPER" report "$OUTDIR" >/dev/null 2>&1
}

# left SECONDS: the smaller of SECONDS and what the budget still allows (0 once it is spent).
left() {
    local rest=$((BUDGET - (SECONDS - START)))
    [ "$rest" -lt 0 ] && rest=0
    echo $(($1 < rest ? $1 : rest))
}

# run_step STEP NAME LIMIT CMD...: CMD under `timeout`, its output in OUTDIR/NAME.log; true when it succeeded.
run_step() {
    local step=$1 name=$2 limit t0=$SECONDS rc status
    limit=$(left "$3")
    shift 3
    if [ "$limit" -lt 5 ]; then
        record "$step" "$name" skipped null 0 "time budget spent"
        return 1
    fi
    say "step $step $name (limit ${limit}s)"
    timeout -k 15 "$limit" "$@" >"$OUTDIR/$name.log" 2>&1
    rc=$?
    status=ok
    [ "$rc" -ne 0 ] && status=failed
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then status=timeout; fi
    record "$step" "$name" "$status" "$rc" $((SECONDS - t0)) "$(last_line "$OUTDIR/$name.log")"
    [ "$status" = ok ]
}

# ---------------------------------------------------------------------------------------------------------------
# Step 1: install. A function run by `bash -c` (timeout cannot run a shell function).
step_install() {
    set -x
    "$PY" "$HELPER" env --out "$OUTDIR/env-before.json" || return 1
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
    PYTHONPATH="$pp${PYTHONPATH:+:$PYTHONPATH}" "$PY" "$HELPER" env --out "$OUTDIR/env.json" || return 1
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
export -f step_install

run_step 1 install 120 bash -c step_install
if [ -f "$WORK/pythonpath" ]; then
    PYTHONPATH="$(cat "$WORK/pythonpath")${PYTHONPATH:+:$PYTHONPATH}"
    export PYTHONPATH
fi
if [ -f "$OUTDIR/env.json" ]; then
    sed -n '/env --out .*env.json/,$p' "$OUTDIR/install.log" | grep -E "^(python |torch |GPU|amr_fast|missing modules)"
else
    tail -n 20 "$OUTDIR/install.log"
fi
# Every later command runs in $WORK: in the tree's root `python -m` would put ./amr_fast (no kernels/ in it) first.
cd "$WORK" || exit 1
HAS_CUDA=$("$PY" -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)
if [ "$HAS_CUDA" = 1 ]; then
    STEPS=${GPU_CHECK_STEPS:-1 2 3 4}
else
    STEPS=${GPU_CHECK_STEPS:-1 2}
    say "no CUDA GPU: the CPU form (steps $STEPS; on a GPU machine: 1 2 3 4)"
fi
want() { [[ " $STEPS " == *" $1 "* ]]; }

# ---------------------------------------------------------------------------------------------------------------
# Step 2: the CUDA tests.
PYTEST=("$PY" -m pytest -q -p no:cacheprovider -o addopts= -rfEs)
BIG_TESTS=(test_triton_matches_ref_odd_shapes test_triton_matches_ref_dtypes_layouts)
if want 2 && [ "$HAS_CUDA" = 1 ] && [ "$(left 200)" -lt 5 ]; then
    record 2 cuda-tests skipped null 0 "time budget spent"
elif want 2 && [ "$HAS_CUDA" = 1 ]; then
    limit=$(left 200)
    say "step 2 cuda-tests: 3 pytest processes (limit ${limit}s)"
    t0=$SECONDS
    # The two big parametrised tests in processes of their own: compiling each Triton kernel variant on first
    # use dominates, and the processes share Triton's on-disk cache.
    pids=()
    for t in "${BIG_TESTS[@]}"; do
        timeout -k 15 "$limit" "${PYTEST[@]}" "$ROOT/tests/kernels/test_cuda.py::$t" --junitxml="$OUTDIR/pytest-$t.xml" \
            >"$OUTDIR/cuda-tests-$t.log" 2>&1 &
        pids+=($!)
    done
    # Only the files that hold `cuda` tests: a test module elsewhere may import what this machine lacks (scipy).
    mapfile -t cuda_files < <(grep -rl --include="test_*.py" "pytest.mark.cuda" "$ROOT/tests" | sort)
    timeout -k 15 "$limit" "${PYTEST[@]}" -m cuda "${cuda_files[@]}" -k "not ${BIG_TESTS[0]} and not ${BIG_TESTS[1]}" \
        --junitxml="$OUTDIR/pytest-other-cuda-tests.xml" >"$OUTDIR/cuda-tests-other.log" 2>&1 &
    pids+=($!)
    status=ok rcs=""
    for p in "${pids[@]}"; do
        wait "$p"
        rc=$?
        rcs="$rcs $rc"
        [ "$rc" -ne 0 ] && [ "$status" = ok ] && status=failed
        if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then status=timeout; fi
    done
    record 2 cuda-tests "$status" "$([ "$status" = ok ] && echo 0 || echo 1)" $((SECONDS - t0)) "pytest exit codes$rcs"
    for f in "$OUTDIR"/cuda-tests-*.log; do echo "$(basename "$f"): $(last_line "$f")"; done
elif want 2; then
    # The CPU form: the CUDA test file's small cases with the Triton kernels in the interpreter (TRITON_INTERPRET=1
    # is read when triton is imported: a fresh process). The GPU-only cases skip and say so.
    run_step 2 cuda-tests-cpu-interpreter 200 env TRITON_INTERPRET=1 "${PYTEST[@]}" "$ROOT/tests/kernels/test_cuda.py" \
        -k "${GPU_CHECK_CPU_TESTS:-not dtypes_layouts}" --junitxml="$OUTDIR/pytest-cpu-interpreter.xml"
else
    record 2 cuda-tests skipped null 0 "not in GPU_CHECK_STEPS"
fi

# ---------------------------------------------------------------------------------------------------------------
# Step 3: the kernels' bandwidth.
if want 3; then
    run_step 3 bench-kernels 150 "$PY" -m amr_fast.cli bench kernels --quick --backward --big-mib "$BIG_MIB" \
        --out "$OUTDIR/bench-kernels.json"
    grep -E "^(op |simplex_mix|mask_mix)" "$OUTDIR/bench-kernels.log" | awk '$1 == "op" || $5 >= 8' || true
else
    record 3 bench-kernels skipped null 0 "needs CUDA (or GPU_CHECK_STEPS listing 3)"
fi

# ---------------------------------------------------------------------------------------------------------------
# Step 4: training.

# train_run NAME COMMAND PRESET PRECISION RUNS_LEFT [OVERRIDES...]
train_run() {
    local name=$1 cmd=$2 preset=$3 precision=$4 runs_left=$5 t0=$SECONDS rc status secs share
    shift 5
    local run="$WORK/runs/$name"
    rm -rf "$run"
    # GPU_CHECK_TRAIN_S seconds after the first tick, or the budget left shared by the runs still to do (their
    # start-up and stop take ~25 s each).
    secs=$(left "$TRAIN_S")
    share=$(((BUDGET - (SECONDS - START)) / runs_left - 25))
    [ "$share" -lt "$secs" ] && secs=$share
    if [ "$secs" -lt 5 ]; then
        record 4 "$name" skipped null 0 "time budget spent" "$run"
        return
    fi
    say "step 4 $name: amr-fast $cmd --preset $preset precision=$precision, ${secs}s after the first tick"
    # The first tick may take long (Triton and data workers start); the whole run stays within the budget + 55 s.
    "$PY" "$HELPER" train-for "$secs" "$run" --log "$OUTDIR/$name.log" --startup "$(left 90)" --grace 40 -- \
        "$PY" -m amr_fast.cli "$cmd" --preset "$preset" --data "$WORK/data/fm32" --outdir "$run" \
        precision="$precision" total_kimg=1000000 tick_kimg="$TICK_KIMG" snapshot_kimg=1000000 \
        state_kimg=1000000 workers=4 "$@"
    rc=$?
    status=ok
    [ "$rc" -ne 0 ] && status=failed
    [ "$rc" -eq 137 ] && status=timeout
    mkdir -p "$OUTDIR/runs/$name"
    cp "$run"/stats.jsonl "$run"/config.json "$run"/log.txt "$OUTDIR/runs/$name/" 2>/dev/null
    record 4 "$name" "$status" "$rc" $((SECONDS - t0)) "$(last_line "$OUTDIR/$name.log")" "$run"
}

make_data() { # Fashion-MNIST's format (IDX files, 10 classes; 32x32: no resize), sharded like the real one
    "$PY" "$HELPER" synth-idx "$WORK/data/idx" &&
        "$PY" -m amr_fast.cli shard fashion-mnist --src "$WORK/data/idx" --out "$WORK/data/fm32"
}
export -f make_data

if want 4; then
    if run_step 4 make-data 60 bash -c make_data; then
        train_run amr-bf16 train fashion-mnist-mixup bf16 4 probe_kimg=1000000
        train_run amr-fp32 train fashion-mnist-mixup fp32 3 probe_kimg=1000000
        train_run classify-bf16 classify fashion-mnist-manifold bf16 2 eval_kimg=1000000
        train_run classify-fp32 classify fashion-mnist-manifold fp32 1 eval_kimg=1000000
    fi
else
    record 4 train skipped null 0 "needs CUDA (or GPU_CHECK_STEPS listing 4)"
fi

# ---------------------------------------------------------------------------------------------------------------
# Step 5: the summary.
say "step 5 summary: $OUTDIR/summary.txt and summary.json"
echo
"$PY" "$HELPER" report "$OUTDIR"
rc=$?
[ "$FAILED" = 1 ] && rc=1
say "done in $((SECONDS - START))s, exit status $rc"
exit $rc
