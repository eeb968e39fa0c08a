"""What `train.threads=auto` / `train.parallel_folds=auto` choose for packaged configs on this machine.

    python benchmarks/auto_threads.py pocus-finetune-imagenet lus-blues-cpu seg-hc18-imagenet [--folds 5]

Measures the candidates (protocols/tuning.py) into a fresh temporary cache, so nothing stored is reused, and prints
each config's timed candidates, the choice and the seconds the measurement took.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time

from sonodistill.config import load_config, packaged_config
from sonodistill.protocols.tuning import resolve_parallelism


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("configs", nargs="+", help="packaged config names")
    p.add_argument("--folds", type=int, default=5, help="folds the run would train (default 5)")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    with tempfile.TemporaryDirectory(prefix="sonodistill-auto-") as cache:
        for name in args.configs:
            cfg = load_config(packaged_config(name), ["train.threads=auto", "train.parallel_folds=auto",
                                                      f"data.cache_dir={cache}"])
            t0 = time.perf_counter()
            _, info = resolve_parallelism(cfg, folds=args.folds)
            timed = [f"{c['processes']} x {c['threads']}: {c['items_per_s']:.1f}" for c in info["candidates"]]
            print(json.dumps({"config": name, "chosen": f"{info['parallel_folds']} x {info['threads']}",
                              "candidates (processes x threads: items/s)": timed,
                              "seconds": round(time.perf_counter() - t0)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
