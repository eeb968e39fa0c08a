#!/usr/bin/env bash
# Seeds 0-2 at 5 % on the five test folds (fold seed 0): supervised-only, HDC c3-prior, Mean Teacher and FixMatch,
# each seed joined into one 5-fold run a method, then the seed-mean table and the paired comparison against HDC;
# with CPS_FOLDS="0 1 ..." CPS (seed 0 on five folds, seeds CPS_SEEDS, default "1", on those folds) is also paired
# against HDC of the same seeds and folds (CPS at seeds 1 and 2: baselines-seeds12.jobs, sessions 28-29); with
# CPS_FOLDS="0 1 2 3 4" CPS_SEEDS="1 2" CPS joins the five-method table and comparison of OUT as well.
# Trained runs: supervised-only and HDC, session 25's grid joined by assemble-grid.sh (runs/bench37/grid5/all);
# seed 0 of the baselines, assemble-baselines-seed0.sh (runs/bench39/all); seed 1 of Mean Teacher and FixMatch,
# joined over five folds by `FOLDS="0 1 2 3 4" OUT=runs/bench40/all-s1 bash .../assemble-baselines-seed1.sh` (run
# that first); seed 2 of both, baselines-seeds12.jobs (runs/bench40/fK-{mt,fm}-s2), as CPS at seed 1 (fK-cps-s1).
# `sonodistill eval DEST --join RUN...` checks config and folds.json and retrains nothing.
# Run from the repository root: bash benchmarks/studies/hc18-5pct-prior/assemble-baselines-3seeds.sh
set -eu
OUT=${OUT:-runs/bench40/all3}; CPS_FOLDS=${CPS_FOLDS:-}; CPS_SEEDS=${CPS_SEEDS:-1}
rm -rf "$OUT" "$OUT-cps"  # derived copies only: the trained runs stay where their jobs wrote them
mkdir -p "$OUT"
for m in seg_supervised hdc; do  # already joined a seed by assemble-grid.sh
  cp -r runs/bench37/grid5/all/hc18-$m-5pct "$OUT/"
done
for m in mean_teacher fixmatch; do
  short=mt; [ $m = fixmatch ] && short=fm
  cp -r runs/bench39/all/hc18-$m-5pct "$OUT/"  # config.yaml and seed_0
  cp -r runs/bench40/all-s1/hc18-$m-5pct/seed_1 "$OUT/hc18-$m-5pct/"
  sonodistill eval "$OUT/hc18-$m-5pct/seed_2" --join runs/bench40/f[0-4]-$short-s2/hc18-$m-5pct/seed_2 \
    > "$OUT-$m-seed2-join.log"
done
python - "$OUT" <<'PY'
import sys, pandas as pd
for m in ("seg_supervised", "hdc", "mean_teacher", "fixmatch"):
    for s in range(3):
        folds = sorted(pd.read_csv(f"{sys.argv[1]}/hc18-{m}-5pct/seed_{s}/predictions.csv")["fold"].unique())
        print(f"{m} seed {s}: test folds {folds}")
PY
METHODS="seg_supervised mean_teacher fixmatch"
# CPS: seed 0 (five folds) and seeds CPS_SEEDS (CPS_FOLDS), against HDC's same seeds, on CPS_FOLDS
if [ -n "$CPS_FOLDS" ]; then
  C="$OUT-cps"; mkdir -p "$C/hc18-hdc-5pct"
  cp -r runs/bench39/all/hc18-cps-5pct "$C/"
  cp -r "$OUT"/hc18-hdc-5pct/{config.yaml,seed_0} "$C/hc18-hdc-5pct/"
  for s in $CPS_SEEDS; do
    cp -r "$OUT/hc18-hdc-5pct/seed_$s" "$C/hc18-hdc-5pct/"
    runs=""; for k in $CPS_FOLDS; do runs="$runs runs/bench40/f$k-cps-s$s/hc18-cps-5pct/seed_$s"; done
    sonodistill eval "$C/hc18-cps-5pct/seed_$s" --join $runs > "$C-seed$s-join.log"
  done
  sonodistill compare "$C"/hc18-{hdc,cps}-5pct --metrics dice,hc_abs_err_mm --folds "$(echo $CPS_FOLDS | tr ' ' ,)" \
    --out "$C/compare-vs-hdc"
  # every fold at every seed: CPS joins the table and comparisons below (OUT-cps stays for the CPS-only view)
  if [ "$CPS_FOLDS" = "0 1 2 3 4" ] && [ "$CPS_SEEDS" = "1 2" ]; then
    cp -r "$C/hc18-cps-5pct" "$OUT/"
    METHODS="$METHODS cps"
  fi
fi
python benchmarks/hdc_table.py --data hc18 --fractions 0.05 --seeds 0,1,2 --methods "$(echo $METHODS hdc | tr ' ' ,)" \
  --out "$OUT" --table-only   # OUT/hc18-table.md: per seed and seed-mean rows
RUNS="$OUT/hc18-hdc-5pct"; for m in $METHODS; do RUNS="$RUNS $OUT/hc18-$m-5pct"; done
sonodistill compare $RUNS --metrics dice,hc_abs_err_mm --out "$OUT/compare-vs-hdc"
# the same without the 244 images of the validation splits that chose HDC's c3-prior (folds 0 and 1's)
python benchmarks/studies/hc18-5pct-prior/validation_overlap.py "$OUT/validation-items.txt"
sonodistill compare $RUNS --metrics dice,hc_abs_err_mm --exclude-items "$OUT/validation-items.txt" \
  --out "$OUT/compare-vs-hdc-unseen"
