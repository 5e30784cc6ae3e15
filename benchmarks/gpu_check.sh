#!/usr/bin/env bash
# Check a GPU machine in one go (docs/gpu.md), from the repository root:
#
#   benchmarks/gpu_check.sh [--cpu] [--no-install] [--results DIR] [--axes 1,2]
#
#   1. install   python -m pip install -e '.[cuda12,test]'; jax.devices() must show a GPU
#   2. parity    the model parity tests: float32 logits against transformers (as a run
#                computes them, and at JAX_DEFAULT_MATMUL_PRECISION=highest, since JAX uses
#                TF32 for float32 matmuls on A100/H100/H200 by default), then the bfloat16 and
#                float16 ones (compute in bf16/f16 against float32, and exports stored in
#                bf16/f16 read by transformers)
#   3. iteration benchmarks/gpu_iteration.py (random Qwen2.5-1.5B-shaped weights, N=8,
#                64 prompts x 64 tokens, 256 new tokens, bfloat16) with model_axis 1, and 2
#                when nvidia-smi lists 2 or more GPUs; JSON per run in the results dir
#   4. summary   one table of the steps and one of the iterations (also summary.md)
#
# --cpu is the dry run on a CPU: no install, no GPU assertion, the parity tests collected (the
# suite runs them on the CPU anyway), the iteration with --tiny on 2 faked CPU devices
# (JAX_NUM_CPU_DEVICES=2), model axis 1 and 2. --no-install uses the current Python as it is.
# --axes picks the model axes of step 3 (comma-separated; the suite's dry run takes 1, the
# axis of a one-GPU machine). Results go to --results, else $OUT when set, else
# gpu_check_results/. $PYTHON names the interpreter (default: python).
# Every step runs under `timeout`; on an H200 the whole check takes a few minutes once the
# wheels are installed. Exits 1 if any step failed, after the summary.
set -euo pipefail

PY=${PYTHON:-python}
CPU=0
CPU_FLAG=""
INSTALL=1
RESULTS=${OUT:-gpu_check_results}
AXES_ARG=""
while [[ $# -gt 0 ]]; do
  case $1 in
    --cpu) CPU=1; INSTALL=0; CPU_FLAG=" --cpu" ;;
    --no-install) INSTALL=0 ;;
    --results) RESULTS=${2:?--results needs a directory}; shift ;;
    --axes) AXES_ARG=${2:?--axes needs model axes, e.g. 1,2}; shift ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown option $1 (use --cpu, --no-install, --results DIR, --axes 1,2)" >&2
       exit 2 ;;
  esac
  shift
done
if [[ -n $AXES_ARG && ! $AXES_ARG =~ ^[1-9][0-9]*(,[1-9][0-9]*)*$ ]]; then
  echo "gpu_check.sh: --axes $AXES_ARG: use positive integers, e.g. 1,2" >&2
  exit 2
fi
if [[ ! -f setup.cfg || ! -d benchmarks ]]; then
  echo "gpu_check.sh: run it from the repository root (benchmarks/gpu_check.sh)" >&2
  exit 2
fi
mkdir -p "$RESULTS"
SUMMARY=$RESULTS/summary.md
PARITY_LOG=$RESULTS/parity.log
: >"$PARITY_LOG"
STEPS=()  # "| step | status | seconds |" rows
FAILED=0

# run_step NAME LIMIT_S LOG CMD...: run CMD under `timeout`, its output also appended to LOG
# (none if LOG is -), and record its status; a failure is recorded, not fatal.
run_step() {
  local name=$1 limit=$2 log=$3 rc t0=$SECONDS status
  shift 3
  echo
  echo "== $name (limit ${limit}s): $*"
  set +e
  if [[ $log == - ]]; then
    timeout "$limit" "$@"
    rc=$?
  else
    timeout "$limit" "$@" 2>&1 | tee -a "$log"
    rc=${PIPESTATUS[0]}
  fi
  set -e
  case $rc in
    0) status=ok ;;
    124) status="TIMEOUT after ${limit}s"; FAILED=1 ;;
    *) status="FAILED (exit $rc)"; FAILED=1 ;;
  esac
  STEPS+=("| $name | $status | $((SECONDS - t0)) |")
  return 0
}

if [[ $CPU == 1 ]]; then
  export JAX_NUM_CPU_DEVICES=2  # read by JAX itself, and by tests/conftest.py
  export JAX_PLATFORMS=cpu
fi

# ---- 1. install, and a GPU must be seen --------------------------------------------------
if [[ $INSTALL == 1 ]]; then
  run_step install 420 "$RESULTS/install.log" "$PY" -m pip install -q -e '.[cuda12,test]'
fi
echo
echo "== devices"
nvidia-smi -L 2>/dev/null || echo "(no nvidia-smi)"
DEVICE_CHECK='
import sys, jax
d = jax.devices()
print("jax", jax.__version__, d)
if sys.argv[1] == "gpu" and d[0].platform != "gpu":
    sys.exit(f"NO GPU: jax.devices() is {d}; install the cuda12 extra (docs/gpu.md)")
'
if ! "$PY" -c "$DEVICE_CHECK" "$([[ $CPU == 1 ]] && echo cpu || echo gpu)"; then
  echo "gpu_check.sh: JAX sees no GPU; stopping (see docs/gpu.md, Install)" >&2
  exit 1
fi

# ---- 2. model parity -----------------------------------------------------------------------
F32=(tests/test_models.py -k logits_match_transformers)
LOW=(tests/test_models.py tests/test_export.py
     -k "bfloat16_compute or float16_compute or loads_back_in_esawd_and_transformers")
PYTEST=("$PY" -m pytest -q -p no:cacheprovider)
if [[ $CPU == 1 ]]; then
  # the selections must still match tests (pytest exits 5 when none is collected)
  run_step "parity float32 (collect)" 120 "$PARITY_LOG" "${PYTEST[@]}" --collect-only "${F32[@]}"
  run_step "parity bf16/f16 (collect)" 120 "$PARITY_LOG" "${PYTEST[@]}" --collect-only "${LOW[@]}"
else
  run_step "parity float32 (default precision)" 240 "$PARITY_LOG" "${PYTEST[@]}" "${F32[@]}"
  run_step "parity float32 (precision highest)" 240 "$PARITY_LOG" \
    env JAX_DEFAULT_MATMUL_PRECISION=highest "${PYTEST[@]}" "${F32[@]}"
  run_step "parity bfloat16/float16" 300 "$PARITY_LOG" "${PYTEST[@]}" "${LOW[@]}"
fi

# ---- 3. one ES iteration per model axis ----------------------------------------------------
AXES=(1)
ITER_ARGS=()
if [[ $CPU == 1 ]]; then
  AXES=(1 2)
  ITER_ARGS=(--tiny)
elif [[ $(nvidia-smi -L 2>/dev/null | wc -l) -ge 2 ]]; then
  AXES=(1 2)
fi
if [[ -n $AXES_ARG ]]; then
  IFS=, read -r -a AXES <<<"$AXES_ARG"
fi
for m in "${AXES[@]}"; do
  json=$RESULTS/gpu_iteration_m$m.json
  rm -f "$json"  # a failed run leaves no stale figures
  run_step "iteration model_axis $m" 360 - "$PY" -m benchmarks.gpu_iteration \
    ${ITER_ARGS[@]+"${ITER_ARGS[@]}"} --model_axis "$m" --json "$json"
done

# ---- 4. summary ----------------------------------------------------------------------------
JSONS=()
for m in "${AXES[@]}"; do JSONS+=("$RESULTS/gpu_iteration_m$m.json"); done
TABLE=$("$PY" -m benchmarks.gpu_iteration --summarize "${JSONS[@]}") || FAILED=1
{
  echo
  echo "## gpu_check.sh summary ($(date -u '+%Y-%m-%d %H:%M UTC'), $(uname -n))"
  echo
  echo "command: benchmarks/gpu_check.sh${CPU_FLAG}${AXES_ARG:+ --axes $AXES_ARG}"
  echo
  echo "| step | status | seconds |"
  echo "|---|---|---|"
  printf '%s\n' "${STEPS[@]}"
  echo
  echo "$TABLE"
} | tee "$SUMMARY"
if [[ $FAILED != 0 ]]; then
  echo "gpu_check.sh: some steps failed (above); logs in $RESULTS" >&2
  exit 1
fi
