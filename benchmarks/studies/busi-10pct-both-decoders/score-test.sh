#!/usr/bin/env bash
# The test view of rule.txt: HDC (packaged training) scored with D1 and with both decoders, and FixMatch, busi 10 %,
# the five test folds of fold seed 0, the training seeds in SEEDS whose test.jobs have finished. Each HDC fold run is
# rescored with inference_decoders=both from its checkpoints, each method's folds joined a seed by
# `sonodistill eval DEST --join` (nothing retrained), then the seed means, empty masks and the paired comparison
# against FixMatch (seed-averaged where several seeds are in). Run from the repository root:
#   SEEDS="0" bash benchmarks/studies/busi-10pct-both-decoders/score-test.sh
set -eu
R=${R:-runs/bench42/busi10}; OUT=${OUT:-runs/bench42/busi10-all}; SEEDS=${SEEDS:-0}
HDC=busi-hdc-prior-w10-10pct; FM=busi-fixmatch-10pct
rm -rf "$OUT"  # derived copies only: the trained runs stay where their jobs wrote them
mkdir -p "$OUT/$FM" "$OUT/$HDC" "$OUT/busi-hdc-both-10pct"
cp "$R/f0-s0/$FM/config.yaml" "$OUT/$FM/"
cp "$R/f0-s0/$HDC/config.yaml" "$OUT/$HDC/"
for s in $SEEDS; do
  for k in 0 1 2 3 4; do
    [ -f "$R-both/f$k-s$s/$HDC/seed_$s/predictions.csv" ] || \
      python benchmarks/seg_rescore.py "$R/f$k-s$s/$HDC" --out "$R-both/f$k-s$s" --threads 1 \
        --set recipe_options.inference_decoders=both > "$R-both-f$k-s$s.log" 2>&1
  done
  sonodistill eval "$OUT/$FM/seed_$s" --join "$R"/f[0-4]-s$s/$FM/seed_$s > "$OUT/join-fixmatch-s$s.log"
  sonodistill eval "$OUT/$HDC/seed_$s" --join "$R"/f[0-4]-s$s/$HDC/seed_$s > "$OUT/join-hdc-s$s.log"
  sonodistill eval "$OUT/busi-hdc-both-10pct/seed_$s" --join "$R-both"/f[0-4]-s$s/$HDC/seed_$s \
    > "$OUT/join-hdc-both-s$s.log"
done
cp "$R-both/f0-s0/$HDC/config.yaml" "$OUT/busi-hdc-both-10pct/"
python - "$OUT" $SEEDS <<'PY'
import json, sys
from pathlib import Path
out, seeds = Path(sys.argv[1]), sys.argv[2:]
print("| busi 10 %, 647 test images, flip TTA | Dice per seed | mean | empty masks per seed | hd95 (px), mean |")
print("|---|:---:|:---:|:---:|:---:|")
for name, run in (("FixMatch", "busi-fixmatch-10pct"), ("HDC, D1 (packaged)", "busi-hdc-prior-w10-10pct"),
                  ("HDC, D1 + D2 averaged", "busi-hdc-both-10pct")):
    m = [json.loads((out / run / f"seed_{s}" / "metrics.json").read_text())["items"] for s in seeds]
    dice = [100 * x["dice"]["mean"] for x in m]
    print(f"| {name} | {' / '.join(f'{d:.2f}' for d in dice)} | **{sum(dice) / len(dice):.2f}** | "
          f"{' / '.join(str(x['hd95']['n_nan']) for x in m)} | {sum(x['hd95']['mean'] for x in m) / len(m):.1f} |")
PY
sonodistill compare "$OUT/$FM" "$OUT/busi-hdc-both-10pct" "$OUT/$HDC" --metrics dice,hd95 --out "$OUT/compare-vs-fixmatch"
