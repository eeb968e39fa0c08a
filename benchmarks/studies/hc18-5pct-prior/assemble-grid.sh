#!/usr/bin/env bash
# The 5-fold x 3-seed grid at 5 % (grid.jobs), assembled and paired. Each fold of each seed was trained by its own job
# (fold 0 and fold 1 / seed 0 by the earlier jobs of this study); here the fold directories of one (method, seed) are
# copied into one run RUN/seed_<s>/ with the split every job used (folds.json must be byte-identical, else stop), their
# wall times merged into timing.json, and the run resumed with train.fold=null: every fold is finished, so nothing is
# trained and the run writes its 5-fold predictions, metrics and report. Only seeds whose 5 folds are finished for
# both methods are assembled (a missing fold would otherwise be trained here); the others are named.
# Run from the repository root: bash benchmarks/studies/hc18-5pct-prior/assemble-grid.sh
set -eu
G=${G:-runs/bench37/grid5}; OUT=${OUT:-$G/all}
declare -A NAME=([seg_supervised]=seg_supervised [hdc]=hdc-c3-prior)  # fold 0's run names (study's test.jobs)

source_of() {  # fold seed method -> the seed directory that trained that fold
  local k=$1 s=$2 m=$3
  if [ "$k" = 0 ] && [ "$s" = 0 ]; then echo "runs/bench35/test5/hc18-${NAME[$m]}-5pct/seed_0"
  elif [ "$k" = 0 ]; then echo "runs/bench36/test5/hc18-${NAME[$m]}-5pct/seed_$s"
  elif [ "$k" = 1 ] && [ "$s" = 0 ]; then echo "runs/bench36/test5-fold1/hc18-$m-5pct/seed_0"
  else echo "$G/f$k-s$s/hc18-$m-5pct/seed_$s"; fi
}

complete=()
for s in 0 1 2; do
  ok=1
  for m in seg_supervised hdc; do for k in 0 1 2 3 4; do
    d=$(source_of $k $s $m)
    if [ ! -f "$d/fold_$k/predictions.csv" ]; then echo "seed $s: $m fold $k not finished ($d)"; ok=0; fi
  done; done
  [ $ok = 1 ] && complete+=("$s")
done
[ ${#complete[@]} -gt 0 ] || { echo "no seed has all 5 folds of both methods"; exit 1; }
seeds=$(IFS=,; echo "${complete[*]}")
echo "assembling seeds $seeds into $OUT"

for m in seg_supervised hdc; do
  run=$OUT/hc18-$m-5pct
  for s in "${complete[@]}"; do
    dest=$run/seed_$s; first=$(source_of 0 $s $m)
    [ -f "$dest/predictions.csv" ] && [ "$(python -c "import pandas as p; print(p.read_csv('$dest/predictions.csv').fold.nunique())")" = 5 ] && continue
    rm -rf "$dest"; mkdir -p "$dest"
    cp "$first/config.yaml" "$first/folds.json" "$first/manifest.csv" "$dest/"
    timings=()
    for k in 0 1 2 3 4; do
      src=$(source_of $k $s $m)
      cmp -s "$src/folds.json" "$dest/folds.json" || { echo "$src/folds.json differs from $first/folds.json"; exit 1; }
      cp -r "$src/fold_$k" "$dest/fold_$k"; timings+=("$src/timing.json")
    done
    python - "$dest/timing.json" "${timings[@]}" <<'EOF'
import json, sys
merged = {}
for f in sys.argv[2:]:
    merged.update({k: v for k, v in json.loads(open(f).read()).items() if k.isdigit()})
open(sys.argv[1], "w").write(json.dumps(dict(sorted(merged.items())), indent=1))
EOF
  done
  [ -f "$run/config.yaml" ] || cp "$(dirname "$(source_of 1 0 $m)")/config.yaml" "$run/config.yaml"
done

python benchmarks/hdc_table.py --data hc18 --fractions 0.05 --config seg-hc18-imagenet-5pct --set train.fold_seed=0 \
  --threads 1 --set train.threads=1 --set train.fold=null --out "$OUT" --seeds "$seeds" --methods seg_supervised,hdc
sonodistill compare "$OUT/hc18-seg_supervised-5pct" "$OUT/hc18-hdc-5pct" --out "$OUT/compare"
python benchmarks/studies/hc18-5pct-prior/fg_drift.py "$OUT"/hc18-hdc-5pct/seed_*
python benchmarks/hc18_by_size.py "$OUT/hc18-seg_supervised-5pct" "$OUT/hc18-hdc-5pct"
