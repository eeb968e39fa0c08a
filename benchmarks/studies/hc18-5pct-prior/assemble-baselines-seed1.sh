#!/usr/bin/env bash
# Seed 1 at 5 % on test folds 0-3 (baselines-seed1.jobs: Mean Teacher and FixMatch), joined with the same seed and
# folds of supervised-only and HDC c3-prior (fold 0: session 24's runs/bench36/test5; folds 1-3: the grid's fK-s1) and
# paired against HDC. Run from the repository root: bash benchmarks/studies/hc18-5pct-prior/assemble-baselines-seed1.sh
# FOLDS="0 1" OUT=runs/bench39/all-s1-f01 bash ... joins the first two folds only (docs/hdc.md's first seed-1 table);
# FOLDS="0 1 2 3 4" OUT=runs/bench40/all-s1 bash ... all five (session 28; fold 4's baselines: baselines-seeds12.jobs).
set -eu
FOLDS=${FOLDS:-0 1 2 3}; OUT=${OUT:-runs/bench39/all-s1}
rm -rf "$OUT"  # derived copies only
run_of() {  # METHOD FOLD -> the run directory that trained that method's fold at seed 1
  case $1 in
    seg_supervised|hdc)
      if [ "$2" = 0 ]; then name=$1; [ $1 = hdc ] && name=hdc-c3-prior; echo runs/bench36/test5/hc18-$name-5pct
      else echo runs/bench37/grid5/f$2-s1/hc18-$1-5pct; fi ;;
    mean_teacher|fixmatch)
      short=mt; [ $1 = fixmatch ] && short=fm
      b=runs/bench39; [ "$2" = 4 ] && b=runs/bench40  # fold 4: baselines-seeds12.jobs (session 28)
      echo $b/f$2-$short-s1/hc18-$1-5pct ;;
  esac
}
for m in seg_supervised hdc mean_teacher fixmatch; do
  runs=""; for k in $FOLDS; do runs="$runs $(run_of $m $k)/seed_1"; done
  sonodistill eval "$OUT/hc18-$m-5pct/seed_1" --join $runs > "$OUT-$m-join.log"
  cp "$(run_of $m 1)/config.yaml" "$OUT/hc18-$m-5pct/config.yaml"
done
python benchmarks/hdc_table.py --data hc18 --fractions 0.05 --seeds 1 --methods seg_supervised,mean_teacher,fixmatch,hdc \
  --out "$OUT" --table-only
sonodistill compare "$OUT"/hc18-{hdc,seg_supervised,mean_teacher,fixmatch}-5pct --metrics dice,hc_abs_err_mm \
  --out "$OUT/compare-vs-hdc"
