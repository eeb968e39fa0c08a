#!/usr/bin/env bash
# The rule's numbers: each run's validation Dice / HC MAE per seed and their paired differences against c = 1
# (seeds paired, `sonodistill compare`). Run from the repository root after validation.jobs has finished.
set -eu
V=${V:-runs/bench35/val5}
sonodistill compare $V/hc18-val-hdc-c1-5pct $V/hc18-val-hdc-c3-5pct $V/hc18-val-hdc-c03-5pct \
    $V/hc18-val-seg_supervised-c1-5pct --out $V/compare-consistency
# question 2 (the EMA teacher as inference model), for the c question 1 adopted (3):
python benchmarks/seg_rescore.py $V/hc18-val-hdc-c3-5pct --out $V/teacher --set recipe_options.eval_model=teacher
sonodistill compare $V/hc18-val-hdc-c3-5pct $V/teacher/hc18-val-hdc-c3-5pct --out $V/compare-teacher
