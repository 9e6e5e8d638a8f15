#!/usr/bin/env bash
# Everything a GPU machine runs, in one command, from the repository root:
#
#   bash bench/gpu_check.sh
#
# 1. installs wheels from .whl/ (when that folder exists) into /tmp/site, without the network;
# 2. builds the CUDA extension in place (a failure is logged, the Triton checks still run, the script fails);
# 3. prints the GPU summary (nvidia-smi);
# 4. runs the CUDA tests: python3 -m pytest tests/ -m cuda;
# 5. runs the benchmarks into $RESULTS/<date>_<shortcommit>.json and prints their table last.
#
# RESULTS is $MERT_FAST_RESULTS, else $OUT when set, else bench/results/<device-slug>. Logs go to
# $MERT_FAST_LOGS, else $OUT, else /tmp/mert_fast_gpu_check. Without a git checkout, MERT_FAST_COMMIT names the
# commit being measured. The exit status is non-zero when any step failed.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$PWD
failures=()

banner() { printf '\n==== %s ====\n' "$*"; }

if [[ -d .whl ]] && compgen -G ".whl/*.whl" >/dev/null; then
    banner "installing wheels from .whl/"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
# the working tree first: its mert_fast, not an installed one, is what gets measured
export PYTHONPATH=$REPO:${PYTHONPATH:-}

LOGS=${MERT_FAST_LOGS:-${OUT:-/tmp/mert_fast_gpu_check}}
mkdir -p "$LOGS"

banner "building the CUDA extension (log: $LOGS/build.log)"
if MERT_FAST_FORCE_BUILD=1 python3 setup.py build_ext --inplace >"$LOGS/build.log" 2>&1; then
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

banner "CUDA tests (log: $LOGS/tests_cuda.log)"
set +e
python3 -m pytest tests/ -m cuda -q -rs 2>&1 | tee "$LOGS/tests_cuda.log"
rc=${PIPESTATUS[0]}
set -e
if [[ $rc -eq 5 ]]; then
    echo "no CUDA tests were collected"
elif [[ $rc -ne 0 ]]; then
    failures+=("CUDA tests (exit $rc, see $LOGS/tests_cuda.log)")
fi

slug=$(python3 -c '
import re, torch
name = torch.cuda.get_device_name() if torch.cuda.is_available() else ""
print(re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "cpu")')
commit=$(git rev-parse HEAD 2>/dev/null || echo "${MERT_FAST_COMMIT:-unknown}")
RESULTS=${MERT_FAST_RESULTS:-${OUT:-bench/results/$slug}}
mkdir -p "$RESULTS"
JSON=$RESULTS/$(date -u +%Y-%m-%d)_${commit:0:7}.json

banner "benchmarks -> $JSON (log: $LOGS/bench.log)"
set +e
MERT_FAST_COMMIT=$commit python3 -m pytest bench/ -rs --device cuda --benchmark-json="$JSON" \
    --benchmark-columns=median,iqr,rounds 2>&1 | tee "$LOGS/bench.log"
rc=${PIPESTATUS[0]}
set -e
[[ $rc -eq 0 ]] || failures+=("benchmarks (exit $rc, see $LOGS/bench.log)")

banner "speed table ($JSON)"
if [[ -f $JSON ]]; then
    python3 bench/render_table.py "$JSON" || failures+=("render_table.py")
else
    echo "no result file was written"
    failures+=("no benchmark JSON")
fi

if ((${#failures[@]})); then
    banner "FAILED"
    printf '!!! %s\n' "${failures[@]}"
    exit 1
fi
banner "all steps passed"
