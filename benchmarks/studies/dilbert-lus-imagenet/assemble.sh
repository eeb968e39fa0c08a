#!/usr/bin/env bash
# rule.txt's test reading: the five fold runs of test.jobs joined (`sonodistill eval --join`, nothing retrained), the
# benchmark's tables (macro F1, retrieval, time, parameters) and the paired comparisons on macro F1 (bootstrap over
# patients). T holds the fold runs (runs/bench45/dilbert-lus-test/fK/lus). Run from the repository root:
#     bash benchmarks/studies/dilbert-lus-imagenet/assemble.sh
set -eu
T=${T:-runs/bench45/dilbert-lus-test}; OUT=${OUT:-$T/all}
rm -rf "$OUT"; mkdir -p "$OUT"  # derived copies only
sonodistill eval "$OUT/lus" --join "$T"/f[0-4]/lus > "$OUT/join.log"
python - "$OUT" <<'PY'
import json, sys
from pathlib import Path
sys.path.insert(0, "benchmarks")
from dilbert_pocus import parameter_lines, summary_tables
out = Path(sys.argv[1])
lines = summary_tables("lus", json.loads((out / "lus" / "metrics.json").read_text())) + parameter_lines(out / "lus")
(out / "summary-lus.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PY
sonodistill compare "$OUT/lus:baseline" "$OUT/lus:teacher" "$OUT/lus:student" --out "$OUT/compare"
sonodistill compare "$OUT/lus:teacher" "$OUT/lus:student" --out "$OUT/compare-student-vs-teacher"
