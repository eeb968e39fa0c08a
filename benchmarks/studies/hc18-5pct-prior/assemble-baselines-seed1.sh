#!/usr/bin/env bash
# Seed 1 at 5 % on test folds 0 and 1 (baselines-seed1.jobs: Mean Teacher and FixMatch), joined with the same seed and
# folds of supervised-only and HDC c3-prior (fold 0: session 24's runs/bench36/test5; fold 1: the grid's f1-s1) and
# paired against HDC. Run from the repository root: bash benchmarks/studies/hc18-5pct-prior/assemble-baselines-seed1.sh
set -eu
OUT=${OUT:-runs/bench39/all-s1}
rm -rf "$OUT"  # derived copies only
join_folds() {  # METHOD FOLD0_RUN FOLD1_RUN
  sonodistill eval "$OUT/hc18-$1-5pct/seed_1" --join "$2/seed_1" "$3/seed_1" > "$OUT-$1-join.log"
  cp "$3/config.yaml" "$OUT/hc18-$1-5pct/config.yaml"
}
join_folds seg_supervised runs/bench36/test5/hc18-seg_supervised-5pct runs/bench37/grid5/f1-s1/hc18-seg_supervised-5pct
join_folds hdc runs/bench36/test5/hc18-hdc-c3-prior-5pct runs/bench37/grid5/f1-s1/hc18-hdc-5pct
join_folds mean_teacher runs/bench39/f0-mt-s1/hc18-mean_teacher-5pct runs/bench39/f1-mt-s1/hc18-mean_teacher-5pct
join_folds fixmatch runs/bench39/f0-fm-s1/hc18-fixmatch-5pct runs/bench39/f1-fm-s1/hc18-fixmatch-5pct
python benchmarks/hdc_table.py --data hc18 --fractions 0.05 --seeds 1 --methods seg_supervised,mean_teacher,fixmatch,hdc \
  --out "$OUT" --table-only
sonodistill compare "$OUT"/hc18-{hdc,seg_supervised,mean_teacher,fixmatch}-5pct --metrics dice,hc_abs_err_mm \
  --out "$OUT/compare-vs-hdc"
