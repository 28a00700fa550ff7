#!/usr/bin/env bash
# One GPU check of at most 5 minutes (issue 13): model-only images/s, the four ratios of the CPU benchmarks,
# and `lbfood pretrain`'s own images/s at batch 128 and 512 (read from its epoch lines), on one GPU.
#
# Usage (from anywhere; lbfood is imported from this checkout):
#   bash benchmarks/gpu_check.sh              # the GPU check, full sizes, ≤ 300 s in all
#   bash benchmarks/gpu_check.sh --cpu-smoke  # the same steps on the CPU at tiny sizes (tests this script)
#   BUDGET=200 bash benchmarks/gpu_check.sh   # another time limit for the whole check, in seconds
#   ONLY='compile|image' bash benchmarks/gpu_check.sh  # only the steps whose names match this regex
#
# A failing or timed-out step does not stop the check: each step runs under `timeout` with what is left
# of the budget (at most its own limit), its exit status is recorded, and a summary at the end lists every
# step's status and the figure lines it printed. Steps run in order of importance, so a short budget
# loses the last ones (reported as "skipped").
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
BUDGET=${BUDGET:-290}
SMOKE=0
for a in "$@"; do
  case "$a" in
    --cpu-smoke) SMOKE=1 ;;
    *) echo "unknown argument $a (use --cpu-smoke)" >&2; exit 2 ;;
  esac
done

if [ "$SMOKE" = 1 ]; then
  # Tiny sizes on the CPU: every step runs end to end in seconds; the figures mean nothing. (Width 0.125:
  # at 0.0625, 4-channel convolutions in channels_last crash in the backward pass of torch 2.14's CPU build.)
  DEV="--device cpu"; W=0.125; B128=32; B512=64; R50B=2; STEPS=3; IMAGES=128; EPOCHS=2; LIMIT="--limit 256"
  JPEGS=24; WORKERS=0; REPEATS=1
  # Inductor's C++ compilation takes minutes here: the --compile steps run their compiled-step code path
  # with torch.compile disabled (eagerly), which checks the wiring, not the speed-up.
  COMPILE_ENV="TORCH_COMPILE_DISABLE=1"
  SCALE=4; BUDGET=${BUDGET_SMOKE:-900}  # a shared 2-core CPU: each step's limit × 4
else
  SCALE=1; DEV="--device cuda"; W=1.0; B128=128; B512=512; R50B=128; STEPS=30; IMAGES=5000; EPOCHS=4; LIMIT=""
  JPEGS=2000; WORKERS=12; REPEATS=2; COMPILE_ENV=""
fi

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
START=$SECONDS
NAMES=(); STATUS=(); FIGS=()

# step NAME LIMIT_S GREP_PATTERN COMMAND...: run COMMAND under timeout, keep lines matching the pattern.
step() {
  local name=$1 limit=$(( $2 * SCALE )) pattern=$3; shift 3
  [[ "$name" =~ ${ONLY:-.} ]] || return 0
  local left=$(( BUDGET - (SECONDS - START) ))
  NAMES+=("$name")
  if [ "$left" -lt 5 ]; then
    STATUS+=("skipped (budget spent)"); FIGS+=(""); echo "== $name: skipped, budget spent"; return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "== $name (limit ${limit} s): $*"
  local t0=$SECONDS
  timeout --kill-after=5 "$limit" "$@" >"$TMP/out" 2>&1
  local rc=$?
  cat "$TMP/out"
  local st="rc $rc"
  [ "$rc" = 124 ] || [ "$rc" = 137 ] && st="timed out after ${limit} s (rc $rc)"
  STATUS+=("$st, $(( SECONDS - t0 )) s")
  FIGS+=("$(grep -E "$pattern" "$TMP/out" | tail -n 6)")
}

# pretrain NAME LIMIT_S BATCH [extra options]: `lbfood pretrain -q`, figures from its own epoch lines.
pretrain() {
  local name=$1 limit=$2 batch=$3; shift 3
  local envs=(env)
  [[ " $* " == *" --compile "* && -n "$COMPILE_ENV" ]] && envs+=("$COMPILE_ENV")
  step "$name" "$limit" 'img/s' "${envs[@]}" "$PY" -m lbfood pretrain --data backdrops --arch resnet18 --width "$W" \
    --epochs "$EPOCHS" --batch-size "$batch" $LIMIT $DEV --workers 0 -q --out "$TMP/run-$name" "$@"
}

nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo "(no nvidia-smi)"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"

step gpu_throughput_r18 40 'img/s' "$PY" benchmarks/gpu_throughput.py --arch resnet18 --width "$W" \
  --batch-size "$B512" --steps "$STEPS" $DEV
step gpu_throughput_r50 40 'img/s' "$PY" benchmarks/gpu_throughput.py --arch resnet50_imagenet --width "$W" \
  --batch-size "$R50B" --steps "$(( STEPS < 20 ? STEPS : 20 ))" --only bf16 $DEV
step lff_overhead 30 'ratio|step' "$PY" benchmarks/lff_overhead.py --width "$W" --batch-size "$B512" \
  --steps "$STEPS" $DEV
step trainer_vs_minimal 45 'ratio|loop' "$PY" benchmarks/trainer_vs_minimal.py --width "$W" \
  --batch-size "$B512" --images "$IMAGES" --repeats "$REPEATS" $DEV
step loader_share 25 'share|per step' "$PY" benchmarks/loader_share.py --width "$W" --batch-size "$B512" \
  --steps "$STEPS" $DEV
step report_scaling 60 'ratio|report' "$PY" benchmarks/report_scaling.py --width "$W" $LIMIT $DEV
pretrain pretrain_b128 40 "$B128"
pretrain pretrain_b512 35 "$B512"
# The 224-px input pipeline alone: PIL loader vs the pre-resized cache cropped on the device.
step image_pipeline 45 'img/s|ratio|disk' "$PY" benchmarks/image_pipeline.py --images "$JPEGS" \
  --batch-size "$R50B" --workers "$WORKERS" $DEV
# --compile: the whole step compiled, CUDA graphs on CUDA (compilation time is in epoch 1's figure).
pretrain pretrain_b512_compile 90 "$B512" --compile
pretrain pretrain_b128_compile 90 "$B128" --compile

echo
echo "== summary ($(( SECONDS - START )) s of a ${BUDGET} s budget)"
fail=0
for i in "${!NAMES[@]}"; do
  echo "-- ${NAMES[$i]}: ${STATUS[$i]}"
  [ -n "${FIGS[$i]}" ] && echo "${FIGS[$i]}" | sed 's/^/   /'
  case "${STATUS[$i]}" in "rc 0,"*) ;; *) fail=1 ;; esac
done
exit $fail
