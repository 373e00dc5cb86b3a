#!/usr/bin/env bash
# GPU benchmark, one prepared script for a lent GPU machine (the `device` tool).
#
# Runs benchmarks/train_step.py for the five paper configs at their own (the
# paper's) batch sizes, in bfloat16 and float32, and prints images/s, achieved
# TFLOP/s, the fraction of the measured matmul peak and MFU (against the card's
# nominal dense peak); before that, the depthwise micro-benchmark
# (lax grouped conv vs ours on this GPU); last, Xception bf16 with the lax
# grouped conv, to show what the depthwise formulation is worth on a GPU.
#
# The image there has jax (CUDA), flax, optax, orbax, absl, etils, numpy, but
# not ml_collections. Prepare ONCE here, in the repo root:
#   echo /.whl/ >> .git/info/exclude
#   .venv/bin/python -m pip download --no-deps --only-binary=:all: \
#       --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 -d .whl ml_collections==1.1.0
# Then call the device tool with
#   command: bash benchmarks/gpu.sh      carry: [".whl"]      timeout_s: 570
# Results come back in $OUT/gpu_results.jsonl (one JSON object per run) and
# $OUT/gpu_log.txt; the table at the end is also in output_tail.
#
# Knobs (environment): GPU_CONFIGS, GPU_DTYPES, GPU_STEPS (timed steps, 10),
# GPU_BUDGET_S (stop starting runs after this many seconds, 500),
# GPU_PER_RUN_S (timeout per run, 240), GPU_DEPTHWISE (1 = micro-benchmark),
# GPU_CONV (fast | layers: --depthwise of train_step.py, default fast).

set -u
START=$(date +%s)
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
RESULTS="$OUT/gpu_results.jsonl"
LOG="$OUT/gpu_log.txt"
: > "$RESULTS"

if ls .whl/*.whl > /dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
      --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 KERAS_BACKEND=jax
export TF_CPP_MIN_LOG_LEVEL=2

CONFIGS=${GPU_CONFIGS:-"xception inception_v3 resnet xception_dropaux resnet_dropaux"}
DTYPES=${GPU_DTYPES:-"bfloat16 float32"}
STEPS=${GPU_STEPS:-10}
BUDGET_S=${GPU_BUDGET_S:-500}
PER_RUN_S=${GPU_PER_RUN_S:-240}  # Full-size compiles take 60-80 s on an H100.
# Convolutions our models trace (train_step.py --depthwise): 'fast' = the fast
# depthwise + 1x1-as-matmul paths whether or not layers.py uses them yet;
# 'layers' = whatever layers.py does.
CONV=${GPU_CONV:-fast}

{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c 'import jax, flax, optax; print("jax", jax.__version__, "flax", flax.__version__, "optax", optax.__version__, jax.devices())'
} 2>&1 | tee -a "$LOG"

elapsed() { echo $(( $(date +%s) - START )); }

if [ "${GPU_DEPTHWISE:-1}" = 1 ]; then
  for dtype in bfloat16 float32; do
    timeout 120 python3 benchmarks/depthwise.py --repeats=20 --dtype=$dtype \
        2>>"$LOG" | tail -n 1 | tee -a "$RESULTS"
  done
fi

run() {  # run <config> <dtype> [extra flags...]
  local cfg=$1 dtype=$2
  shift 2
  if [ "$(elapsed)" -ge "$BUDGET_S" ]; then
    echo "skipped $cfg $dtype $* (budget ${BUDGET_S}s spent)" | tee -a "$LOG"
    return
  fi
  echo "== $cfg $dtype $* (t=$(elapsed)s)" | tee -a "$LOG"
  timeout "$PER_RUN_S" python3 benchmarks/train_step.py \
      --config="configs/$cfg.py" --dtype="$dtype" --steps="$STEPS" \
      --warmup=3 --depthwise="$CONV" "$@" 2>>"$LOG" | tee -a "$LOG" | tail -n 1 \
      | grep '^{' >> "$RESULTS" || echo "failed: $cfg $dtype $*" | tee -a "$LOG"
}

for dtype in $DTYPES; do
  for cfg in $CONFIGS; do
    run "$cfg" "$dtype"
  done
done
run xception bfloat16 --depthwise=lax

python3 - "$RESULTS" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith('{')]
print(f"{'config':28s} {'dtype':9s} {'dw':8s} {'batch':>5s} {'step ms':>8s} "
      f"{'img/s':>8s} {'TFLOP/s':>8s} {'of mm peak':>10s} {'MFU':>6s}")
for r in rows:
  if r.get('benchmark') == 'depthwise3x3':
    print(f"depthwise micro-benchmark {r['dtype']} on {r['device']}: "
          f"xception totals {r['xception_total_ms']} speedup {r.get('speedup_vs_lax')}")
    continue
  mfu = r.get('mfu')
  print(f"{r['config_file']:28s} {r['dtype']:9s} {r.get('depthwise', ''):8s} "
        f"{r['batch_size']:5d} {r['step_ms']:8.1f} {r['images_per_sec']:8.1f} "
        f"{r['gflops_per_sec'] / 1e3:8.1f} {r['fraction_of_matmul_peak']:10.3f} "
        f"{(f'{mfu:.3f}' if mfu is not None else 'n/a'):>6s}  on {r['device']}")
EOF
echo "total $(elapsed)s"
