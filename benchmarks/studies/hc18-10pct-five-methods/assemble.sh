#!/usr/bin/env bash
# rule.txt's table: each method's five test folds joined a seed (`sonodistill eval DEST --join`, nothing retrained),
# for the seeds in SEEDS (default "0"), then the seed-mean table and HDC against each baseline. R holds the fold runs
# (runs/bench42/hc18-10/fK-sS, or the kept results: R=benchmarks/studies/hc18-10pct-five-methods/results/hc18-10).
# Run from the repository root: SEEDS="0" bash benchmarks/studies/hc18-10pct-five-methods/assemble.sh
# The 20 % grid (../hc18-20pct-five-methods) is assembled by the same script with PCT=20 (R and OUT then default to
# runs/bench43/hc18-20 and runs/bench43/hc18-20-all), the 5 % one (../hc18-5pct-fixed-sampler) with PCT=5
# (runs/bench46/hc18-5), the busi 10 % one (../busi-10pct-fixed-sampler) with DATA=busi (runs/bench47/busi10; HDC
# compared on Dice and hd95, on all lesions and then per benign / malignant, `compare --by label`: descriptive, the
# rule reads the rows on all lesions), the busi 20 % one (../busi-20pct-fixed-sampler) with DATA=busi PCT=20
# (runs/bench48/busi20); METHODS="seg_supervised hdc" assembles a subset (HDC must be in it).
set -eu
DATA=${DATA:-hc18}; PCT=${PCT:-10}
case "$DATA-$PCT" in
  hc18-5) B=bench46; FRACTION=0.05; D=hc18-5;;
  hc18-10) B=bench42; FRACTION=0.1; D=hc18-10;;
  hc18-20) B=bench43; FRACTION=0.2; D=hc18-20;;
  busi-10) B=bench47; FRACTION=0.1; D=busi10;;
  busi-20) B=bench48; FRACTION=0.2; D=busi20;;
  *) echo "DATA-PCT must be hc18-5, hc18-10, hc18-20, busi-10 or busi-20" >&2; exit 2;;
esac
case "$DATA" in hc18) METRICS=dice,hc_abs_err_mm; BY="";; busi) METRICS=dice,hd95; BY="--by label";; esac
R=${R:-runs/$B/$D}; OUT=${OUT:-runs/$B/$D-all}; SEEDS=${SEEDS:-0}
METHODS=${METHODS:-"seg_supervised mean_teacher fixmatch cps hdc"}
rm -rf "$OUT"; mkdir -p "$OUT"  # derived copies only
for m in $METHODS; do
  run=$DATA-$m-${PCT}pct
  mkdir -p "$OUT/$run"
  cp "$R/f0-s0/$run/config.yaml" "$OUT/$run/"
  for s in $SEEDS; do
    sonodistill eval "$OUT/$run/seed_$s" --join "$R"/f[0-4]-s$s/$run/seed_$s > "$OUT/join-$m-s$s.log"
  done
done
python benchmarks/hdc_table.py --data $DATA --fractions $FRACTION --seeds "$(echo $SEEDS | tr ' ' ,)" \
  --methods "$(echo $METHODS | tr ' ' ,)" --out "$OUT" --table-only   # OUT/$DATA-table.md
RUNS="$OUT/$DATA-hdc-${PCT}pct"; for m in $METHODS; do [ "$m" = hdc ] || RUNS="$RUNS $OUT/$DATA-$m-${PCT}pct"; done
sonodistill compare $RUNS --metrics $METRICS $BY --out "$OUT/compare-vs-hdc"  # busi: also benign / malignant
