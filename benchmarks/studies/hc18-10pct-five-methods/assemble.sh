#!/usr/bin/env bash
# rule.txt's table: each method's five test folds joined a seed (`sonodistill eval DEST --join`, nothing retrained),
# for the seeds in SEEDS (default "0"), then the seed-mean table and HDC against each baseline. R holds the fold runs
# (runs/bench42/hc18-10/fK-sS, or the kept results: R=benchmarks/studies/hc18-10pct-five-methods/results/hc18-10).
# Run from the repository root: SEEDS="0" bash benchmarks/studies/hc18-10pct-five-methods/assemble.sh
set -eu
R=${R:-runs/bench42/hc18-10}; OUT=${OUT:-runs/bench42/hc18-10-all}; SEEDS=${SEEDS:-0}
METHODS="seg_supervised mean_teacher fixmatch cps hdc"
rm -rf "$OUT"; mkdir -p "$OUT"  # derived copies only
for m in $METHODS; do
  mkdir -p "$OUT/hc18-$m-10pct"
  cp "$R/f0-s0/hc18-$m-10pct/config.yaml" "$OUT/hc18-$m-10pct/"
  for s in $SEEDS; do
    sonodistill eval "$OUT/hc18-$m-10pct/seed_$s" --join "$R"/f[0-4]-s$s/hc18-$m-10pct/seed_$s > "$OUT/join-$m-s$s.log"
  done
done
python benchmarks/hdc_table.py --data hc18 --fractions 0.1 --seeds "$(echo $SEEDS | tr ' ' ,)" \
  --methods "$(echo $METHODS | tr ' ' ,)" --out "$OUT" --table-only   # OUT/hc18-table.md
RUNS="$OUT/hc18-hdc-10pct"; for m in seg_supervised mean_teacher fixmatch cps; do RUNS="$RUNS $OUT/hc18-$m-10pct"; done
sonodistill compare $RUNS --metrics dice,hc_abs_err_mm --out "$OUT/compare-vs-hdc"
