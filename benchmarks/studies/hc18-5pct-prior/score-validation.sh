#!/usr/bin/env bash
# The rule's numbers and decision (score_validation.py), then the paired differences per (fold, seed): c3-prior and c1
# against each other and against supervised-only (`sonodistill compare`; each seed its own validation split, so
# per-seed rows). Run from the repository root after validation.jobs has finished.
set -eu
V=${V:-runs/bench35/val5}
python benchmarks/studies/hc18-5pct-prior/score_validation.py --val $V
sonodistill compare $V/hc18-val-hdc-c1-5pct $V/hc18-val-hdc-c3-prior-5pct $V/hc18-val-seg_supervised-c1-5pct \
    --out $V/compare-f0-c3prior
sonodistill compare $V/hc18-val-hdc-f1-c1-5pct $V/hc18-val-hdc-f1-c3-prior-5pct $V/hc18-val-seg_supervised-f1-5pct \
    --out $V/compare-f1-c3prior
