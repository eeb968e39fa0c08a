#!/usr/bin/env bash
# Test fold 0 at 5 %, three seeds: supervised-only, HDC c1 (packaged) and HDC c3-prior (the validation choice).
# Seed 0's runs are in runs/bench35/test5 (session 23's supervised-only and c1, this study's c3-prior), seeds 1-2's in
# runs/bench36/test5; every seed tests fold 0 of fold seed 0 (the same 169 images), so compare averages the seeds.
# The three-seed runs are assembled from links (runs/bench36/test5-3seeds), then paired. Run from the repository root.
set -eu
A=${A:-runs/bench35/test5}; B=${B:-runs/bench36/test5}; M=${M:-runs/bench36/test5-3seeds}
for run in seg_supervised hdc hdc-c3-prior; do
  d=$M/hc18-$run-5pct; mkdir -p $d
  ln -sfn "$(realpath $A/hc18-$run-5pct/seed_0)" $d/seed_0
  for s in 1 2; do [ -d $B/hc18-$run-5pct/seed_$s ] && ln -sfn "$(realpath $B/hc18-$run-5pct/seed_$s)" $d/seed_$s; done
  cp $A/hc18-$run-5pct/config.yaml $d/config.yaml
done
sonodistill compare $M/hc18-seg_supervised-5pct $M/hc18-hdc-5pct $M/hc18-hdc-c3-prior-5pct --out $M/compare-vs-supervised
sonodistill compare $M/hc18-hdc-5pct $M/hc18-hdc-c3-prior-5pct --out $M/compare-c3prior-vs-c1
python benchmarks/studies/hc18-5pct-prior/fg_drift.py $M/hc18-hdc-5pct/seed_* $M/hc18-hdc-c3-prior-5pct/seed_*
python benchmarks/hc18_by_size.py $M/hc18-seg_supervised-5pct $M/hc18-hdc-5pct $M/hc18-hdc-c3-prior-5pct
