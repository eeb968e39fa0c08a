#!/usr/bin/env bash
# rule.txt's table: each method's five test folds joined a seed (`sonodistill eval DEST --join`, nothing retrained),
# for the seeds in SEEDS (default "0"), then the seed-mean table and HDC against each baseline. R holds the fold runs
# (runs/bench42/hc18-10/fK-sS, or the kept results: R=benchmarks/studies/hc18-10pct-five-methods/results/hc18-10).
# Run from the repository root: SEEDS="0" bash benchmarks/studies/hc18-10pct-five-methods/assemble.sh
# The 20 % grid (../hc18-20pct-five-methods) is assembled by the same script with PCT=20 (R and OUT then default to
# runs/bench43/hc18-20 and runs/bench43/hc18-20-all), the 5 % one (../hc18-5pct-fixed-sampler) with PCT=5
# (runs/bench46/hc18-5); METHODS="seg_supervised hdc" assembles a subset (HDC must be in it).
set -eu
PCT=${PCT:-10}
case "$PCT" in 5) B=bench46; FRACTION=0.05;; 10) B=bench42; FRACTION=0.1;; 20) B=bench43; FRACTION=0.2;;
  *) echo "PCT must be 5, 10 or 20" >&2; exit 2;; esac
R=${R:-runs/$B/hc18-$PCT}; OUT=${OUT:-runs/$B/hc18-$PCT-all}; SEEDS=${SEEDS:-0}
METHODS=${METHODS:-"seg_supervised mean_teacher fixmatch cps hdc"}
rm -rf "$OUT"; mkdir -p "$OUT"  # derived copies only
for m in $METHODS; do
  mkdir -p "$OUT/hc18-$m-${PCT}pct"
  cp "$R/f0-s0/hc18-$m-${PCT}pct/config.yaml" "$OUT/hc18-$m-${PCT}pct/"
  for s in $SEEDS; do
    sonodistill eval "$OUT/hc18-$m-${PCT}pct/seed_$s" --join "$R"/f[0-4]-s$s/hc18-$m-${PCT}pct/seed_$s > "$OUT/join-$m-s$s.log"
  done
done
python benchmarks/hdc_table.py --data hc18 --fractions $FRACTION --seeds "$(echo $SEEDS | tr ' ' ,)" \
  --methods "$(echo $METHODS | tr ' ' ,)" --out "$OUT" --table-only   # OUT/hc18-table.md
RUNS="$OUT/hc18-hdc-${PCT}pct"; for m in $METHODS; do [ "$m" = hdc ] || RUNS="$RUNS $OUT/hc18-$m-${PCT}pct"; done
sonodistill compare $RUNS --metrics dice,hc_abs_err_mm --out "$OUT/compare-vs-hdc"
