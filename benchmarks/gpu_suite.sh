#!/usr/bin/env bash
# The prepared GPU run (issue 24): one call of at most 9 minutes on the lent GPU
# machine, everything it measures under $OUT.
#
#   Phase A: images/s and MFU of our train step (benchmarks/train_step.py) and
#     timm's (benchmarks/timm_step.py) for the three families, at the paper's
#     batch size and at 128, bfloat16 and float32, 300x300x1. Up to
#     SUITE_PARALLEL processes (6) compile at once; each times (warm-up included)
#     only while it holds one file lock, so timings run one at a time on a
#     quiet GPU.
#   Phase B: the five paper configs (configs/inception_v3.py, resnet.py,
#     resnet_dropaux.py, xception.py, xception_dropaux.py) trained at once on
#     FracAtlas leg (fracatlas_leg_small, built first at 300 px), each with a
#     fifth of the GPU memory (XLA_PYTHON_CLIENT_MEM_FRACTION); then their
#     validation predictions and the ensemble's evaluation
#     (python -m ankle_jax.evaluate --runs=a,b,c,d,e). With FRACATLAS_TEST_DIR
#     (a FracAtlas-layout folder), also an evaluation on all of it.
#
# Prepare once, here, in the repository root (both folders are git-ignored;
# together with the tree about 55 MiB of the 64 MiB a call may carry):
#   1. the wheels the GPU image lacks (its package list:
#      /work/.library/device/KINDS.md; it has jax 0.11 with CUDA, flax, optax,
#      orbax, torch, timm, scikit-learn, matplotlib): the two commands at the
#      top of benchmarks/gpu_wheels.txt, into .whl/ (about 18 MB);
#   2. the data: ../shared beside the checkout does not travel, so copy it in:
#      mkdir -p .carry && cp -r ../shared/fracatlas_leg_small .carry/  (33 MB)
# Then call the device tool's `run` with
#   command: bash benchmarks/gpu_suite.sh
#   carry:   [".whl", ".carry"]
#   timeout_s: 570
# What comes back (at most 8 files): $OUT/summary.md (the tables, also printed
# last), $OUT/phase_a.jsonl (one step_record.StepRecord per line),
# $OUT/suite_log.txt and $OUT/suite.tar.gz (every log, each run's
# metrics.jsonl, config.json and summary.json, the evaluations' reports,
# results and predictions; no checkpoints).
#
# CPU dry run (every phase at tiny sizes, under 10 minutes on 2 cores):
#   bash benchmarks/gpu_suite.sh --dry_run
# Peer rows are skipped, with the reason printed, where torch or timm is
# missing (pip install -e ".[peers]"); our rows always run.
#
# Knobs (environment): SUITE_PHASES ("A B"), SUITE_FAMILIES ("xception
# inception_v3 resnet101_v2"), SUITE_DTYPES, SUITE_BATCHES ("paper 128"),
# SUITE_PEERS (0 = no timm rows), SUITE_PARALLEL, SUITE_A_BUDGET_S (no new
# Phase A job after this many seconds of the suite), SUITE_B_STEPS,
# SUITE_B_CONFIGS, FRACATLAS_DIR, FRACATLAS_TEST_DIR, PYTHON.

set -uo pipefail
cd "$(dirname "$0")/.."
START=$(date +%s)
DRY_RUN=0
if [ "${1:-}" = --dry_run ]; then DRY_RUN=1; fi

OUT=${OUT:-/tmp/gpu_suite_out}
WORK=${SUITE_WORK:-$(mktemp -d /tmp/gpu_suite.XXXXXX)}
mkdir -p "$OUT" "$WORK/logs" "$WORK/runs"
LOG="$OUT/suite_log.txt"
: > "$LOG"
PY=${PYTHON:-python3}
say() { echo "[t=$(( $(date +%s) - START ))s] $*" | tee -a "$LOG"; }

if ls .whl/*.whl > /dev/null 2>&1 && [ "$DRY_RUN" = 0 ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
      --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 KERAS_BACKEND=jax TF_CPP_MIN_LOG_LEVEL=2
# Phase B's evaluations reuse the trainings' compiled eval steps.
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-$WORK/jax_cache}

FAMILIES=${SUITE_FAMILIES:-"xception inception_v3 resnet101_v2"}
B_CONFIGS=${SUITE_B_CONFIGS:-"inception_v3 resnet resnet_dropaux xception xception_dropaux"}
if [ "$DRY_RUN" = 1 ]; then
  DTYPES=${SUITE_DTYPES:-float32}
  BATCHES=${SUITE_BATCHES:-paper}
  PARALLEL=${SUITE_PARALLEL:-2}
  A_BUDGET_S=${SUITE_A_BUDGET_S:-3600}  # Every row: a dry run checks them all.
  JOB_TIMEOUT_S=600
  # Tiny: width 1/16 (ours), 80 px, 2 steps, 1 round, no torch.compile (an
  # inductor build of a full-width net takes minutes on 2 cores).
  A_OURS="--image_size=80 --steps=2 --rounds=1 --warmup=1 --matmul_n=256 --config.model.width_multiplier=0.0625"
  A_TIMM="--image_size=80 --steps=2 --rounds=1 --warmup=1 --matmul_n=256 --no-compile"
  B_IMAGE=80 B_STEPS=${SUITE_B_STEPS:-4}
  B_EXTRA="--config.model.width_multiplier=0.0625"
  B_MEM=""
  BUILD_WORKERS=1
  B_WORKERS=0  # grain workers per training (five trainings on 2 cores).
else
  DTYPES=${SUITE_DTYPES:-"bfloat16 float32"}
  BATCHES=${SUITE_BATCHES:-"paper 128"}
  PARALLEL=${SUITE_PARALLEL:-6}
  A_BUDGET_S=${SUITE_A_BUDGET_S:-150}
  JOB_TIMEOUT_S=150  # Full-size compiles take 60-80 s on an H100.
  A_OURS="--steps=10 --rounds=3 --warmup=3"
  A_TIMM="--steps=10 --rounds=3 --warmup=3"
  B_IMAGE=300 B_STEPS=${SUITE_B_STEPS:-300}
  B_EXTRA=""
  B_MEM=0.18  # Five trainings (0.9 of the GPU memory in all).
  BUILD_WORKERS=4
  B_WORKERS=2
fi
# Phase B's trainings end (timeout) this many seconds into the suite at the
# latest, leaving time for the evaluations within the call's 570 s.
DEADLINE_S=${SUITE_DEADLINE_S:-$([ "$DRY_RUN" = 1 ] && echo 1500 || echo 450)}
PEERS=${SUITE_PEERS:-1}
PEER_REASON=""
if [ "$PEERS" = 1 ]; then
  if ! PEER_IMPORT=$($PY -c 'import torch, timm' 2>&1); then
    PEER_REASON=$(echo "$PEER_IMPORT" | tail -n 1)
  fi
else
  PEER_REASON="SUITE_PEERS=0"
fi
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null \
      || echo "no nvidia-smi (CPU)"
  $PY -c 'import jax; print("jax", jax.__version__, jax.devices())'
  if [ -z "$PEER_REASON" ]; then
    $PY -c 'import torch, timm; print("torch", torch.__version__, "timm", timm.__version__)'
  fi
} 2>&1 | tee -a "$LOG"
if [ -n "$PEER_REASON" ]; then say "timm rows skipped: $PEER_REASON"; fi

elapsed() { echo $(( $(date +%s) - START )); }

# One Phase A job: <impl> <family> <batch|paper> <dtype>; its StepRecord line
# goes to phase_a.jsonl.
a_job() {
  local impl=$1 family=$2 batch=$3 dtype=$4 cmd
  local name="a_${impl}_${family}_${batch}_${dtype}"
  local batch_flag=""
  if [ "$batch" != paper ]; then batch_flag="--batch_size=$batch"; fi
  if [ "$impl" = ours ]; then
    read -r config variant < <($PY benchmarks/suite_summary.py family "$family")
    cmd="$PY benchmarks/train_step.py --config=$config --variant=$variant \
        --dtype=$dtype $batch_flag $A_OURS --device_lock=$WORK/device.lock"
  else
    cmd="$PY benchmarks/timm_step.py --family=$family --dtype=$dtype \
        $batch_flag $A_TIMM --device_lock=$WORK/device.lock"
  fi
  XLA_PYTHON_CLIENT_PREALLOCATE=false timeout "$JOB_TIMEOUT_S" $cmd \
      > "$WORK/logs/$name.log" 2>&1
  local rc=$?
  if grep '^{"implementation"' "$WORK/logs/$name.log" >> "$WORK/phase_a.jsonl"; then
    say "done $name"
  else
    say "FAILED $name (exit $rc): $(tail -n 1 "$WORK/logs/$name.log")"
  fi
}

A_PIDS=()
running_a_jobs() {
  local pid count=0
  for pid in "${A_PIDS[@]}"; do
    if kill -0 "$pid" 2> /dev/null; then count=$(( count + 1 )); fi
  done
  echo "$count"
}

phase_a() {
  say "Phase A: families [$FAMILIES], batches [$BATCHES], dtypes [$DTYPES]"
  : > "$WORK/phase_a.jsonl"
  local impls="ours"
  if [ -z "$PEER_REASON" ]; then impls="ours timm"; fi
  for dtype in $DTYPES; do
    for batch in $BATCHES; do
      for family in $FAMILIES; do
        for impl in $impls; do
          if [ "$(elapsed)" -ge "$A_BUDGET_S" ]; then
            say "skipped $impl $family $batch $dtype (Phase A budget ${A_BUDGET_S}s spent)"
            continue
          fi
          while [ "$(running_a_jobs)" -ge "$PARALLEL" ]; do sleep 1; done
          a_job "$impl" "$family" "$batch" "$dtype" &
          A_PIDS+=($!)
        done
      done
    done
  done
  local pid
  for pid in "${A_PIDS[@]}"; do wait "$pid"; done
  cp "$WORK/phase_a.jsonl" "$OUT/phase_a.jsonl"
}

fracatlas_dir() {
  local candidate
  for candidate in "${FRACATLAS_DIR:-}" .carry/fracatlas_leg_small ../shared/fracatlas_leg_small; do
    if [ -n "$candidate" ] && [ -f "$candidate/dataset.csv" ]; then
      echo "$candidate"
      return
    fi
  done
}

# build <manual_dir> <data_dir> [flags...]
build() {
  local manual=$1 data=$2
  shift 2
  $PY -m ankle_jax.data.build --config=fracatlas --manual_dir="$manual" \
      --data_dir="$data" --image_size="$B_IMAGE" --no_progress "$@" \
      >> "$WORK/logs/build.log" 2>&1
}

phase_b_train() {
  local data=$1 cfg pids=() overrides
  for cfg in $B_CONFIGS; do
    overrides=$($PY benchmarks/suite_summary.py overrides "configs/$cfg.py" \
        data.worker_count="$B_WORKERS" data.on_device=true)
    # shellcheck disable=SC2086
    XLA_PYTHON_CLIENT_MEM_FRACTION=${B_MEM:-0.18} \
    XLA_PYTHON_CLIENT_PREALLOCATE=$([ -n "$B_MEM" ] && echo true || echo false) \
    timeout $(( DEADLINE_S - $(elapsed) > 30 ? DEADLINE_S - $(elapsed) : 30 )) \
    $PY launch.py --config="configs/$cfg.py" --workdir="$WORK/runs/$cfg" \
        --config.data.data_dir="$data" --config.data.dataset_config=fracatlas \
        --config.image_size="$B_IMAGE" --config.num_train_steps="$B_STEPS" \
        --config.log_every_steps=$(( B_STEPS / 4 > 0 ? B_STEPS / 4 : 1 )) \
        --config.eval_every_steps="$B_STEPS" \
        --config.checkpoint_every_steps="$B_STEPS" \
        --config.image_summary_every_steps=0 --config.progress_bar=False \
        $overrides $B_EXTRA > "$WORK/logs/b_train_$cfg.log" 2>&1 &
    pids+=($!)
  done
  local i=0
  for cfg in $B_CONFIGS; do
    if wait "${pids[$i]}"; then say "trained $cfg"; else
      say "FAILED training $cfg: $(tail -n 1 "$WORK/logs/b_train_$cfg.log")"
    fi
    i=$(( i + 1 ))
  done
}

# evaluate <name> [flags...]: the ensemble of the five runs.
evaluate() {
  local name=$1 runs
  shift
  runs=$(for cfg in $B_CONFIGS; do printf '%s,' "$WORK/runs/$cfg"; done)
  if $PY -m ankle_jax.evaluate --runs="${runs%,}" --out="$WORK/$name" \
      --nohtml --num_bootstrap=$([ "$DRY_RUN" = 1 ] && echo 50 || echo 1000) \
      "$@" > "$WORK/logs/$name.log" 2>&1; then
    say "evaluated: $name"
  else
    say "FAILED $name: $(tail -n 1 "$WORK/logs/$name.log")"
  fi
}

# The CPU-only build of Phase B's dataset, started before Phase A (it needs
# no GPU, so it does not disturb Phase A's timings).
start_build() {
  local manual
  manual=$(fracatlas_dir)
  if [ -z "$manual" ]; then
    say "Phase B skipped: no fracatlas_leg_small (set FRACATLAS_DIR or copy it to .carry/)"
    return
  fi
  say "Phase B: building $manual at ${B_IMAGE}px (in the background)"
  ( build "$manual" "$WORK/fracatlas_data" --num_workers="$BUILD_WORKERS"
    echo $? > "$WORK/build.rc" ) &
}

phase_b() {
  local data="$WORK/fracatlas_data"
  if [ -z "$(fracatlas_dir)" ]; then return; fi
  while [ ! -f "$WORK/build.rc" ]; do sleep 2; done
  if [ "$(cat "$WORK/build.rc")" != 0 ]; then
    say "FAILED build: $(tail -n 1 "$WORK/logs/build.log")"
    return
  fi
  say "Phase B: training [$B_CONFIGS] at once, $B_STEPS steps each"
  phase_b_train "$data"
  evaluate eval_validation --split=validation
  if [ -n "${FRACATLAS_TEST_DIR:-}" ]; then
    build "$FRACATLAS_TEST_DIR" "$WORK/fracatlas_test_data" --validation_fraction=1.0 \
        && evaluate eval_test_dir --split=validation \
            --data_dir="$WORK/fracatlas_test_data" --dataset_config=fracatlas
  fi
}

PHASES=${SUITE_PHASES:-A B}
if [[ " $PHASES " == *" B "* ]]; then start_build; fi
for phase in $PHASES; do
  case $phase in
    A) phase_a ;;
    B) phase_b ;;
  esac
done

{
  echo "# GPU suite ($([ "$DRY_RUN" = 1 ] && echo 'CPU dry run' || echo 'GPU'), $(date -u +%FT%TZ))"
  echo
  if [ -s "$WORK/phase_a.jsonl" ]; then
    echo "## Phase A: train step, ours vs timm"
    if [ "$DRY_RUN" = 1 ]; then
      echo "(dry run: ours at width 1/16, timm at full width without torch.compile, both"
      echo "at 80 px on a CPU: the ratios say nothing about speed)"
    fi
    $PY benchmarks/suite_summary.py phase_a "$WORK/phase_a.jsonl"
    echo
  fi
  if ls -d "$WORK"/runs/*/ > /dev/null 2>&1; then
    echo "## Phase B: five paper configs at once on FracAtlas leg"
    $PY benchmarks/suite_summary.py phase_b "$WORK"/runs/*/
    for name in eval_validation eval_test_dir; do
      if [ -f "$WORK/$name/report.md" ]; then
        echo
        echo "### $name (report.md, first 40 lines)"
        head -n 40 "$WORK/$name/report.md"
      fi
    done
  fi
  echo
  echo "wall time $(elapsed)s"
} > "$OUT/summary.md" 2>> "$LOG"
tar -C "$WORK" --exclude='checkpoints' --exclude='fracatlas_data' \
    --exclude='fracatlas_test_data' --exclude='*.lock' -czf "$OUT/suite.tar.gz" . \
    2>> "$LOG"
cat "$OUT/summary.md"
