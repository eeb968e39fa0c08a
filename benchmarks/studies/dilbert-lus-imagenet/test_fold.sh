#!/usr/bin/env bash
# Test fold K of rule.txt with the `a` chosen on validation: waits (polling each minute) until score_validation.py
# decides, then trains all four variants on fold K into runs/bench45/dilbert-lus-test/fK.
#     bash benchmarks/studies/dilbert-lus-imagenet/test_fold.sh K [LOGS]   # LOGS: the queue's log folder
set -euo pipefail
K=$1
LOGS=${2:-runs/bench45/logs}
HERE=benchmarks/studies/dilbert-lus-imagenet
until A=$(python "$HERE/score_validation.py" --logs "$LOGS" --decide); do
  [ $? -eq 3 ] || exit 1   # 3: a validation run is still going; anything else is an error
  sleep 60
done
echo "test fold $K with recipe_options.a=$A (chosen on validation)"
python benchmarks/dilbert_pocus.py --out "runs/bench45/dilbert-lus-test/f$K" --parts lus --config dilbert-imagenet-half \
  --epochs 10 --threads 1 --set "train.fold=$K" --set "recipe_options.a=$A"
