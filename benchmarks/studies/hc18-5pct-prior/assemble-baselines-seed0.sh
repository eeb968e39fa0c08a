#!/usr/bin/env bash
# Seed 0 of all five methods at 5 % on the five test folds (fold seed 0), joined into one 5-fold run a method and
# paired against HDC c3-prior. Trained runs: fold 0 session 24 (runs/bench35/test5), fold 1 session 26
# (runs/bench38/test5-fold1), fold 2 MT / FixMatch session 26 (runs/bench38/test5-fold2), the rest
# baselines-seed0.jobs (runs/bench39/fK-METHOD); supervised-only and HDC: the grid's seed-0 runs (assemble-grid.sh).
# `sonodistill eval DEST --join RUN...` checks config and folds.json and retrains nothing.
# Run from the repository root: bash benchmarks/studies/hc18-5pct-prior/assemble-baselines-seed0.sh
set -eu
G=runs/bench37/grid5; B=runs/bench39; OUT=${OUT:-$B/all}
rm -rf "$OUT"  # derived copies only
for m in seg_supervised hdc mean_teacher fixmatch cps; do
  case $m in
    seg_supervised|hdc)
      fold0=$m; [ $m = hdc ] && fold0=hdc-c3-prior
      runs="runs/bench35/test5/hc18-$fold0-5pct/seed_0 runs/bench36/test5-fold1/hc18-$m-5pct/seed_0 $G/f*-s0/hc18-$m-5pct/seed_0" ;;
    cps)
      runs="runs/bench35/test5/hc18-$m-5pct/seed_0 runs/bench38/test5-fold1/hc18-$m-5pct/seed_0 $B/f[234]-$m/hc18-$m-5pct/seed_0" ;;
    *)
      short=mt; [ $m = fixmatch ] && short=fm
      runs="runs/bench35/test5/hc18-$m-5pct/seed_0 runs/bench38/test5-fold1/hc18-$m-5pct/seed_0 runs/bench38/test5-fold2/hc18-$m-5pct/seed_0 $B/f[34]-$short/hc18-$m-5pct/seed_0" ;;
  esac
  sonodistill eval "$OUT/hc18-$m-5pct/seed_0" --join $runs > "$OUT-$m-join.log"
  cp "$(dirname "$(echo $runs | cut -d' ' -f2)")/config.yaml" "$OUT/hc18-$m-5pct/config.yaml"
done
python - "$OUT" <<'PY'
import sys, pandas as pd
for m in ("seg_supervised", "hdc", "mean_teacher", "fixmatch", "cps"):
    folds = sorted(pd.read_csv(f"{sys.argv[1]}/hc18-{m}-5pct/seed_0/predictions.csv")["fold"].unique())
    print(f"{m} seed 0: test folds {folds}")
PY
python benchmarks/hdc_table.py --data hc18 --fractions 0.05 --seeds 0 --out "$OUT" --table-only
sonodistill compare "$OUT"/hc18-{hdc,seg_supervised,mean_teacher,fixmatch,cps}-5pct --metrics dice,hc_abs_err_mm \
  --out "$OUT/compare-vs-hdc"
# the same without the 244 images of the validation splits that chose HDC's c3-prior (folds 0 and 1's)
python benchmarks/studies/hc18-5pct-prior/validation_overlap.py "$OUT/validation-items.txt"
sonodistill compare "$OUT"/hc18-{hdc,seg_supervised,mean_teacher,fixmatch,cps}-5pct --metrics dice,hc_abs_err_mm \
  --exclude-items "$OUT/validation-items.txt" --out "$OUT/compare-vs-hdc-unseen"
