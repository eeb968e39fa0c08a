#!/usr/bin/env bash
# Test fold 0 at 5 %: HDC (consistency 3, and the packaged 1) − supervised-only seed by seed (seeds 1-2 ran on
# their own splits, so compare gives per-seed rows), and every finished method at seed 0 against supervised-only. Run from the repository root after test-fold0.jobs has finished.
set -eu
T=${T:-runs/bench35/test5}
sonodistill compare $T/hc18-seg_supervised-5pct $T/hc18-hdc-c3-5pct --out $T/compare-hdc-c3-3seeds
sonodistill compare $T/hc18-seg_supervised-5pct $T/hc18-hdc-5pct --out $T/compare-hdc-c1-3seeds
runs=()
for m in hdc hdc-c3 cps fixmatch mean_teacher; do
  [ -f $T/hc18-$m-5pct/seed_0/predictions.csv ] && runs+=($T/hc18-$m-5pct/seed_0)
done
sonodistill compare $T/hc18-seg_supervised-5pct/seed_0 "${runs[@]}" --out $T/compare-seed0
