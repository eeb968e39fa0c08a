#!/usr/bin/env bash
# The test runs of test.jobs joined and paired: each (method, fold, seed) was trained by its own job into
# runs/bench38/busi10/fK-sS; `sonodistill eval DEST --join RUN...` copies a seed's finished folds into one run (after
# checking that the runs share config and folds.json) and scores it without training. A seed is joined over the
# folds it has; `compare` pairs HDC w 30 with FixMatch image by image over the seeds both have.
# Run from the repository root: bash benchmarks/studies/busi-10pct-prior-weight/score-test.sh [SEEDS]
set -eu
G=${G:-runs/bench38/busi10}; OUT=${OUT:-$G/all}; SEEDS=${1:-"0 1 2"}
rm -rf "$OUT"  # derived copies only: the trained runs stay where their jobs wrote them
for m in hdc-prior-w30 fixmatch; do
  for s in $SEEDS; do
    sonodistill eval "$OUT/busi-$m-10pct/seed_$s" --join "$G"/f*-s$s/busi-$m-10pct/seed_$s > "$OUT-$m-seed$s-join.log"
  done
  cp "$(ls -d "$G"/f*-s*/busi-$m-10pct | head -1)/config.yaml" "$OUT/busi-$m-10pct/config.yaml"
done
python - "$OUT" $SEEDS <<'PY'
import json, sys
import pandas as pd
out, seeds = sys.argv[1], sys.argv[2:]
for m in ("fixmatch", "hdc-prior-w30"):
    for s in seeds:
        run = f"{out}/busi-{m}-10pct/seed_{s}"
        pred = pd.read_csv(f"{run}/predictions.csv")
        per_fold = pred.groupby("fold")["dice"].mean().mul(100).round(2).tolist()
        empty = pred.groupby("fold")["hd95"].apply(lambda v: int(v.isna().sum())).tolist()
        print(f"{m} seed {s}: Dice per fold {per_fold}, 5-fold {100 * pred['dice'].mean():.2f}, empty per fold {empty}, "
              f"hd95 {pred['hd95'].mean():.1f} px")
PY
sonodistill compare "$OUT/busi-fixmatch-10pct" "$OUT/busi-hdc-prior-w30-10pct" --metrics dice,hd95 --out "$OUT/compare"
python benchmarks/seg_train_shares.py "$OUT/busi-hdc-prior-w30-10pct"
