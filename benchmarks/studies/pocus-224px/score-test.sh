#!/usr/bin/env bash
# rule.txt's test, only if D was adopted: D and A's five test folds joined (nothing retrained) and paired.
# Run from the repository root: bash benchmarks/studies/pocus-224px/score-test.sh
set -eu
R=runs/bench42/pocus-test; OUT=runs/bench42/pocus-test/all
rm -rf "$OUT"; mkdir -p "$OUT"
for s in A D; do
  sonodistill eval "$OUT/pocus-test-$s" --join "$R"/f[0-4]/pocus-test-$s > "$OUT/join-$s.log"
done
sonodistill compare "$OUT/pocus-test-A" "$OUT/pocus-test-D" --out "$OUT/compare-A-D"
