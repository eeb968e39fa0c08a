"""How many test images of each seed's split lie in the validation splits of the choice (seeds 0 and 1).

    python benchmarks/studies/hc18-5pct-consistency/overlap.py    # prints: seed, test images, of them in validation
"""

import pandas as pd

VALIDATION = "runs/bench35/val5/hc18-val-hdc-c1-5pct"
TEST = "runs/bench35/test5/hc18-seg_supervised-5pct"

seen = set().union(*(set(pd.read_csv(f"{VALIDATION}/seed_{s}/predictions.csv").path) for s in (0, 1)))
for seed in (0, 1, 2):
    test = set(pd.read_csv(f"{TEST}/seed_{seed}/predictions.csv").path)
    print(seed, len(test), len(test & seen))
