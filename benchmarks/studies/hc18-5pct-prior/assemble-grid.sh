#!/usr/bin/env bash
# The 5-fold x 3-seed grid at 5 % (grid.jobs), joined and paired. Each fold of each seed was trained by its own job
# (fold 0 at seeds 0-2 and fold 1 at seed 0 by the earlier jobs of this study, test.jobs / test-fold1.jobs);
# `sonodistill eval DEST --join RUN...` copies their finished folds into one run a method and seed, after
# checking that every run has the same config and folds.json, and writes the joined predictions and reports without
# training. A seed with unfinished folds is joined over the folds it has (its folds are listed by the join's log).
# Run from the repository root: bash benchmarks/studies/hc18-5pct-prior/assemble-grid.sh
set -eu
G=${G:-runs/bench37/grid5}; OUT=${OUT:-$G/all}
rm -rf "$OUT"  # derived copies only: the trained runs stay where their jobs wrote them
for m in seg_supervised hdc; do
  fold0=seg_supervised; [ $m = hdc ] && fold0=hdc-c3-prior  # fold 0's run names (test.jobs)
  # seed by seed (runs/bench35/test5 also holds session 23's seeds 1-2 of other fold splits: not these)
  for s in 0 1 2; do
    if [ $s = 0 ]; then first="runs/bench35/test5/hc18-$fold0-5pct/seed_0 runs/bench36/test5-fold1/hc18-$m-5pct/seed_0"
    else first=runs/bench36/test5/hc18-$fold0-5pct/seed_$s; fi
    sonodistill eval "$OUT/hc18-$m-5pct/seed_$s" --join $first "$G"/f*-s$s/hc18-$m-5pct/seed_$s \
      > "$OUT-$m-seed$s-join.log"
  done
  cp runs/bench36/test5-fold1/hc18-$m-5pct/config.yaml "$OUT/hc18-$m-5pct/config.yaml"  # the shared config
done
python - "$OUT" <<'EOF'
import sys, pandas as pd
for m in ("seg_supervised", "hdc"):
    for s in range(3):
        folds = sorted(pd.read_csv(f"{sys.argv[1]}/hc18-{m}-5pct/seed_{s}/predictions.csv")["fold"].unique())
        print(f"{m} seed {s}: test folds {folds}")
EOF
python benchmarks/hdc_table.py --data hc18 --fractions 0.05 --seeds 0,1,2 --methods seg_supervised,hdc --out "$OUT" \
  --table-only   # OUT/hc18-table.md: per seed and seed-mean rows, paired rows
sonodistill compare "$OUT/hc18-seg_supervised-5pct" "$OUT/hc18-hdc-5pct" --out "$OUT/compare"
# the same without the 244 images of the validation splits that chose c3-prior (folds 0 and 1's)
python benchmarks/studies/hc18-5pct-prior/validation_overlap.py "$OUT/validation-items.txt"
sonodistill compare "$OUT/hc18-seg_supervised-5pct" "$OUT/hc18-hdc-5pct" --exclude-items "$OUT/validation-items.txt" \
  --out "$OUT/compare-unseen"
python benchmarks/studies/hc18-5pct-prior/fg_drift.py "$OUT"/hc18-hdc-5pct/seed_*
python benchmarks/hc18_by_size.py "$OUT/hc18-seg_supervised-5pct" "$OUT/hc18-hdc-5pct"
