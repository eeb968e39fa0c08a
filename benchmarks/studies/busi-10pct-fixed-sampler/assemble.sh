#!/usr/bin/env bash
# rule.txt's reading: each method's finished folds joined a seed (`sonodistill eval DEST --join`, nothing retrained)
# for the seeds in SEEDS (default "0"), per-fold Dice and empty masks, then HDC against every other method present.
# R holds the fold runs (runs/bench47/busi10/fK-sS, or kept results: R=benchmarks/studies/busi-10pct-fixed-sampler/
# results/busi10). Run from the repository root:
#     SEEDS="0" METHODS="hdc fixmatch" bash benchmarks/studies/busi-10pct-fixed-sampler/assemble.sh
set -eu
R=${R:-runs/bench47/busi10}; OUT=${OUT:-runs/bench47/busi10-all}; SEEDS=${SEEDS:-0}
METHODS=${METHODS:-"hdc fixmatch seg_supervised mean_teacher cps"}
rm -rf "$OUT"; mkdir -p "$OUT"  # derived copies only: the trained runs stay where their jobs wrote them
for m in $METHODS; do
  mkdir -p "$OUT/busi-$m-10pct"
  cp "$(ls -d "$R"/f*-s*/busi-$m-10pct | head -1)/config.yaml" "$OUT/busi-$m-10pct/"
  for s in $SEEDS; do
    sonodistill eval "$OUT/busi-$m-10pct/seed_$s" --join "$R"/f*-s$s/busi-$m-10pct/seed_$s > "$OUT/join-$m-s$s.log"
  done
done
python - "$OUT" "$METHODS" $SEEDS <<'PY'
import sys
import pandas as pd
out, methods, seeds = sys.argv[1], sys.argv[2].split(), sys.argv[3:]
for m in methods:
    for s in seeds:
        pred = pd.read_csv(f"{out}/busi-{m}-10pct/seed_{s}/predictions.csv")
        per_fold = pred.groupby("fold")["dice"].mean().mul(100).round(2).tolist()
        empty = pred.groupby("fold")["hd95"].apply(lambda v: int(v.isna().sum())).tolist()
        print(f"{m} seed {s}: Dice per fold {per_fold}, over the folds {100 * pred['dice'].mean():.2f}, "
              f"empty masks per fold {empty}")
PY
RUNS="$OUT/busi-hdc-10pct"; for m in $METHODS; do [ "$m" = hdc ] || RUNS="$RUNS $OUT/busi-$m-10pct"; done
sonodistill compare $RUNS --metrics dice,hd95 --out "$OUT/compare-vs-hdc"
