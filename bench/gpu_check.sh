#!/usr/bin/env bash
# Everything a GPU machine runs, in one command, from the repository root:
#
#   bash bench/gpu_check.sh              # full: every CUDA test and every benchmark (no time limit)
#   bash bench/gpu_check.sh --quick      # at most 8 minutes: build, CUDA tests, headline benchmarks
#   bash bench/gpu_check.sh --quick --dry-run   # list the steps with their time limits; run nothing
#   bash bench/gpu_check.sh --list-cases         # the benchmark cases of --quick (pytest node ids)
#
# Steps: install wheels from .whl/ (when that folder exists) into /tmp/site, without the network; build the CUDA
# extension in place (a failure is logged, the other steps still run, the script fails); print the GPU summary; run
# the CUDA tests (python3 -m pytest -m cuda, tests/test_native.py first: the C++ entries' bad-input cases run in a
# child process, so a crash is a failure, not a dead run); run the benchmarks into one JSON; check that auto lands within 10% of the
# fastest exact candidate of every headline case; write the tuning table those results give and the speed table;
# print last a short table: auto's time against the fastest exact candidate's, per headline case.
#
# --quick runs each step under its own time limit (the sum is at most 480 s) and only the headline benchmark cases:
# CQT, RVQ, attention and codebook CE at MERT's shapes, MERT-95M extraction (64 x 5 s) and the MERT-95M training
# step (8 x 5 s). Every step shares one Triton cache (TRITON_CACHE_DIR, default /tmp/mert_fast_triton_cache), so a
# kernel compiled by the tests is not compiled again by the benchmarks.
#
# Output: RESULTS is $MERT_FAST_RESULTS, else $OUT when set, else bench/results/<device-slug>; it receives the
# benchmark JSON (<date>_<shortcommit>.json), speed_table.md and tuning.json (the table bench/tune.py writes from
# these results: commit it as mert_fast/ops/tuning.json after review). Logs go to $MERT_FAST_LOGS, else $OUT, else
# /tmp/mert_fast_gpu_check: build.log and gpu_check.log (everything printed). Without a git checkout,
# MERT_FAST_COMMIT names the commit being measured. The exit status is non-zero when any step failed.
set -euo pipefail

quick=0
dry_run=0
list_cases=0
for arg in "$@"; do
    case $arg in
        --quick) quick=1 ;;
        --dry-run) dry_run=1 ;;
        --list-cases) list_cases=1 ;;
        -h | --help)
            sed -n '2,25p' "${BASH_SOURCE[0]}"
            exit 0
            ;;
        *)
            echo "unknown argument: $arg (use --quick, --dry-run, --list-cases)" >&2
            exit 2
            ;;
    esac
done

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$PWD

# ------------------------------------------------------------------------------------------- the headline cases
# pytest node ids (the GPU cases only); each group is one benchmark step of --quick
ATTN=()
for p in fwd fwd+bwd; do
    for pad in full padded; do
        for impl in sdpa-math sdpa-cudnn sdpa-flash sdpa-efficient mert_fast mert_fast-auto; do
            ATTN+=("bench/bench_attention.py::test_attention[cuda-95M 5s-$p-$pad-$impl]")
        done
    done
done
CQT=("bench/bench_cqt.py::test_cqt_nnaudio_1992v2[cuda-fp32]")
for b in torch cuda triton auto; do CQT+=("bench/bench_cqt.py::test_cqt_mert_fast[cuda-$b]"); done
RVQ=()
for c in encodec mel-rvq; do
    RVQ+=("bench/bench_rvq.py::test_rvq_torch_stage_loop[$c-cuda]")
    for b in torch cuda triton auto; do RVQ+=("bench/bench_rvq.py::test_rvq_mert_fast[$c-cuda-$b]"); done
done
CE_CASE="cuda-S4096-Q8-K1024-D64-bfloat16-fwd+bwd"
CE=("bench/bench_codebook_ce.py::test_codebook_ce_materialised[$CE_CASE]"
    "bench/bench_codebook_ce.py::test_codebook_ce_mert_fast[$CE_CASE-torch]"
    "bench/bench_codebook_ce.py::test_codebook_ce_mert_fast[$CE_CASE-triton]"
    "bench/bench_codebook_ce.py::test_codebook_ce_mert_fast[$CE_CASE-auto]")
EXTRACT=("bench/bench_model.py::test_transformers[mert-v1-95m-cuda-64x5s-eager-fp32]"
    "bench/bench_model.py::test_transformers[mert-v1-95m-cuda-64x5s-sdpa-bf16]"
    "bench/bench_model.py::test_mert_fast[mert-v1-95m-cuda-64x5s]")
TRAIN=("bench/bench_train_step.py::test_train_step[mert-v1-95m-cuda-8x5s-bf16-autocast-baseline]"
    "bench/bench_train_step.py::test_train_step[mert-v1-95m-cuda-8x5s-bf16-autocast-mert_fast]")

if ((list_cases)); then  # the benchmark cases of --quick, one pytest node id a line
    printf '%s\n' "${CQT[@]}" "${RVQ[@]}" "${ATTN[@]}" "${CE[@]}" "${EXTRACT[@]}" "${TRAIN[@]}"
    exit 0
fi

# ------------------------------------------------------------------------------------------------- the steps
# name | time limit in s for --quick (0: none) | what it runs
STEPS=(
    "wheels|15|pip install .whl/*.whl into /tmp/site (no network)"
    "build|100|python3 setup.py build_ext --inplace (csrc/ -> mert_fast._C, sm_90)"
    "gpu|10|nvidia-smi; torch, CUDA and triton versions"
    "tests-native|40|pytest tests/test_native.py -m cuda: the C++ entries, bad inputs in a child process"
    "tests|80|pytest tests/ -m cuda, the rest (per test at most 60 s)"
    "bench-cqt|25|${#CQT[@]} cases: CQT 64 x 5 s fp32"
    "bench-rvq|30|${#RVQ[@]} cases: RVQ EnCodec and Mel-RVQ, 64 x 5 s"
    "bench-attention|45|${#ATTN[@]} cases: attention B64 H12 T374 D64 bf16, fwd and fwd+bwd, full and padded"
    "bench-ce|25|${#CE[@]} cases: codebook CE S4096 Q8 K1024 D64 bf16 fwd+bwd"
    "bench-extract|35|${#EXTRACT[@]} cases: MERT-95M forward 64 x 5 s"
    "bench-train|45|${#TRAIN[@]} cases: MERT-95M training step 8 x 5 s"
    "report|10|merge the JSON, check auto within 10% of the fastest candidate, tuning table, speed table"
)

QUICK_DEADLINE=470 # the last step is cut at this many seconds; merging the JSON and the tables take the rest
total=0
for step in "${STEPS[@]}"; do
    IFS='|' read -r _ limit _ <<<"$step"
    total=$((total + limit))
done

if ((dry_run)); then
    mode=$([[ $quick -eq 1 ]] && echo "--quick" || echo "full (no time limits; every test and benchmark)")
    echo "gpu_check.sh $mode: the steps it would run"
    for step in "${STEPS[@]}"; do
        IFS='|' read -r name limit what <<<"$step"
        printf '  %-16s %4s s  %s\n' "$name" "$((quick ? limit : 0))" "$what"
    done
    if ((quick)); then
        printf '  %-16s %4s s  (%d min %02d s; each step stops at its limit, and any step at %d s in all)\n' \
            "total" "$total" $((total / 60)) $((total % 60)) "$QUICK_DEADLINE"
    fi
    exit 0
fi

failures=()
start=$SECONDS
banner() { printf '\n==== %s ====\n' "$*"; }
# limit SECONDS CMD...: in --quick mode, run CMD under the step's time limit, cut to what is left before the
# deadline, so that the whole run ends within QUICK_DEADLINE seconds whatever a step does
limit() {
    local seconds=$1
    shift
    if ((quick)); then
        local left=$((start + QUICK_DEADLINE - SECONDS))
        ((left < seconds)) && seconds=$left
        if ((seconds < 1)); then
            echo "!!! no time left for: $*"
            return 124
        fi
        timeout --kill-after=2 "$seconds" "$@"
    else
        "$@"
    fi
}
step_limit() {
    local want=$1 step name lim
    for step in "${STEPS[@]}"; do
        IFS='|' read -r name lim _ <<<"$step"
        [[ $name == "$want" ]] && echo "$lim" && return
    done
}

LOGS=${MERT_FAST_LOGS:-${OUT:-/tmp/mert_fast_gpu_check}}
mkdir -p "$LOGS"
exec > >(tee "$LOGS/gpu_check.log") 2>&1
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-/tmp/mert_fast_triton_cache}
mkdir -p "$TRITON_CACHE_DIR"
export PYTHONUNBUFFERED=1

if [[ -d .whl ]] && compgen -G ".whl/*.whl" >/dev/null; then
    banner "installing wheels from .whl/"
    limit "$(step_limit wheels)" python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || failures+=("wheels")
    export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
# the working tree first: its mert_fast, not an installed one, is what gets measured
export PYTHONPATH=$REPO:${PYTHONPATH:-}

banner "building the CUDA extension (log: $LOGS/build.log)"
if MERT_FAST_FORCE_BUILD=1 MAX_JOBS=${MAX_JOBS:-8} limit "$(step_limit build)" python3 setup.py build_ext --inplace \
    >"$LOGS/build.log" 2>&1; then
    echo "built: $(find mert_fast -maxdepth 1 -name '_C*.so' -printf '%f ' 2>/dev/null)"
else
    failures+=("CUDA extension build (see $LOGS/build.log)")
    echo "!!! BUILD FAILED: continuing without mert_fast._C; last lines of the log:"
    tail -n 30 "$LOGS/build.log" || true
fi

banner "GPU"
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=index,name,driver_version,memory.total,clocks.max.sm,power.limit --format=csv || true
else
    echo "nvidia-smi not found"
fi
python3 -c 'import torch, triton; print("torch", torch.__version__, "cuda", torch.version.cuda, "triton", triton.__version__, "gpu", torch.cuda.is_available())' ||
    failures+=("torch/triton import")

cuda_tests() {  # cuda_tests STEP PYTEST-ARGS...: one CUDA test step
    local name=$1
    shift
    banner "CUDA tests: $name"
    local args=(-m cuda -q -rs -p no:cacheprovider "$@")
    if ((quick)) && python3 -c 'import pytest_timeout' 2>/dev/null; then
        args+=(--timeout 60)
    fi
    set +e
    limit "$(step_limit "$name")" python3 -m pytest "${args[@]}"
    local rc=$?
    set -e
    if [[ $rc -eq 5 ]]; then
        echo "no CUDA tests were collected"
    elif [[ $rc -eq 124 || $rc -eq 137 ]]; then
        failures+=("$name: stopped at the step's time limit")
    elif [[ $rc -ne 0 ]]; then
        failures+=("$name (exit $rc)")
    fi
}
# the C++ entries' tests first, on their own: they finish whatever the Triton tests' compile times are
cuda_tests tests-native tests/test_native.py
cuda_tests tests tests/ --ignore=tests/test_native.py

slug=$(python3 -c '
import re, torch
name = torch.cuda.get_device_name() if torch.cuda.is_available() else ""
print(re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "cpu")')
commit=$(git rev-parse HEAD 2>/dev/null || echo "${MERT_FAST_COMMIT:-unknown}")
RESULTS=${MERT_FAST_RESULTS:-${OUT:-bench/results/$slug}}
mkdir -p "$RESULTS"
JSON=$RESULTS/$(date -u +%Y-%m-%d)_${commit:0:7}.json
PARTS=$(mktemp -d)

bench() {  # bench NAME PYTEST-ARGS...: one benchmark step into $PARTS/NAME.json
    local name=$1
    shift
    banner "benchmarks: $name"
    set +e
    MERT_FAST_COMMIT=$commit limit "$(step_limit "$name")" python3 -m pytest -q -rs -p no:cacheprovider \
        --device cuda --benchmark-json="$PARTS/$name.json" --benchmark-columns=median,iqr,rounds "$@"
    local rc=$?
    set -e
    if [[ $rc -eq 124 || $rc -eq 137 ]]; then
        failures+=("$name: stopped at the step's time limit")
    elif [[ $rc -ne 0 ]]; then
        failures+=("$name (exit $rc)")
    fi
}

if ((quick)); then
    bench bench-cqt "${CQT[@]}"
    bench bench-rvq "${RVQ[@]}"
    bench bench-attention "${ATTN[@]}"
    bench bench-ce "${CE[@]}"
    bench bench-extract "${EXTRACT[@]}"
    bench bench-train "${TRAIN[@]}"
else
    bench bench bench/
fi

banner "report -> $JSON"
python3 - "$JSON" "$PARTS"/*.json <<'PY' || failures+=("merging the benchmark JSON")
import json, sys
out, parts = sys.argv[1], [p for p in sys.argv[2:] if not p.endswith("*.json")]
merged = None
for path in parts:
    data = json.load(open(path))
    if merged is None:
        merged = data
    else:
        merged["benchmarks"] += data.get("benchmarks", [])
if merged is None:
    raise SystemExit("no benchmark step wrote a result file")
json.dump(merged, open(out, "w"), indent=1)
print(f"{len(merged['benchmarks'])} benchmarks from {len(parts)} steps")
PY
if [[ -f $JSON ]]; then
    python3 bench/render_table.py "$JSON" >"$RESULTS/speed_table.md" || failures+=("render_table.py")
    echo "speed table: $RESULTS/speed_table.md ($(wc -l <"$RESULTS/speed_table.md") lines)"
    cp mert_fast/ops/tuning.json "$PARTS/tuning.json"
    if python3 bench/tune.py "$JSON" --table "$PARTS/tuning.json"; then
        cp "$PARTS/tuning.json" "$RESULTS/tuning.json"
    else
        failures+=("bench/tune.py")
    fi
    banner "auto against the fastest exact candidate, per headline case"
    limit "$(step_limit report)" python3 bench/tune.py --check-auto "$JSON" ||
        failures+=("auto is more than 10% slower than the fastest exact candidate somewhere (table above)")
else
    failures+=("no benchmark JSON")
fi
rm -rf "$PARTS"

banner "done in $((SECONDS - start)) s"
if ((${#failures[@]})); then
    banner "FAILED"
    printf '!!! %s\n' "${failures[@]}"
    exit 1
fi
banner "all steps passed"
