#!/usr/bin/env bash
# rule.txt's row: the five one-fold runs joined into one 5-fold run (nothing retrained), its metrics printed.
# R holds the runs (runs/bench44, or the kept results: R=benchmarks/studies/busi-all-labels-fixed-sampler/results).
set -eu
R=${R:-runs/bench44}; OUT=${OUT:-runs/bench44/busi-sup100}
rm -rf "$OUT"
sonodistill eval "$OUT" --join "$R"/busi-sup100-f[0-4]
python -c "import json,sys; s=json.load(open(sys.argv[1]))['summary']; print({k: (round(s[k]['mean'], 4), round(s[k]['std'], 4)) for k in ('dice', 'hd95')})" "$OUT/metrics.json"
