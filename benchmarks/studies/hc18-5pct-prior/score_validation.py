"""The rule's numbers (rule.txt): each validation run's Dice / HC MAE / heads not found / drift guard, the means over
the four (fold, seed) runs, and the decision. Run from the repository root after validation.jobs has finished.

    python benchmarks/studies/hc18-5pct-prior/score_validation.py [--val runs/bench35/val5]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from fg_drift import epoch_shares, guard_ratio  # noqa: E402

RUNS = {  # setting -> {(fold, seed): run directory name under --val}
    "supervised-only": {(0, 0): "hc18-val-seg_supervised-c1-5pct", (0, 1): "hc18-val-seg_supervised-c1-5pct",
                        (1, 0): "hc18-val-seg_supervised-f1-5pct", (1, 1): "hc18-val-seg_supervised-f1-5pct"},
    "c1": {(0, 0): "hc18-val-hdc-c1-5pct", (0, 1): "hc18-val-hdc-c1-5pct",
           (1, 0): "hc18-val-hdc-f1-c1-5pct", (1, 1): "hc18-val-hdc-f1-c1-5pct"},
    "c3-prior": {(0, 0): "hc18-val-hdc-c3-prior-5pct", (0, 1): "hc18-val-hdc-c3-prior-5pct",
                 (1, 0): "hc18-val-hdc-f1-c3-prior-5pct", (1, 1): "hc18-val-hdc-f1-c3-prior-5pct"},
}


def run_numbers(seed_dir: Path) -> dict[str, float]:
    items = json.loads((seed_dir / "metrics.json").read_text())["items"]
    out = {"dice": 100 * items["dice"]["mean"], "hc": items["hc_abs_err_mm"]["mean"],
           "no_head": items["hc_abs_err_mm"]["n_nan"], "n": items["dice"]["n"]}
    logs = sorted(seed_dir.glob("fold_*/logs/metrics.csv"))
    if logs and "seg_supervised" not in seed_dir.parent.name:
        out["guard"] = guard_ratio(*epoch_shares(logs[0]))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--val", type=Path, default=Path("runs/bench35/val5"))
    args = p.parse_args(argv)
    table = {s: {k: run_numbers(args.val / name / f"seed_{k[1]}") for k, name in runs.items()}
             for s, runs in RUNS.items()}
    print("| validation (fold, seed) | " + " | ".join(f"f{f} s{s}" for f, s in RUNS["c1"]) + " | mean |")
    print("|---|" + ":---:|" * 5)
    for setting, runs in table.items():
        dice = [r["dice"] for r in runs.values()]
        hc = [r["hc"] for r in runs.values()]
        cells = [f"{r['dice']:.2f} / {r['hc']:.2f} mm / {r['no_head']} no head"
                 + (f" / guard {r['guard']:.2f}" if "guard" in r else "") + f" (n {r['n']})" for r in runs.values()]
        print(f"| {setting} | " + " | ".join(cells) + f" | **{np.mean(dice):.2f}** / {np.mean(hc):.2f} mm |")
    c1, cand = table["c1"], table["c3-prior"]
    d_dice = np.mean([r["dice"] for r in cand.values()]) - np.mean([r["dice"] for r in c1.values()])
    d_hc = np.mean([r["hc"] for r in cand.values()]) - np.mean([r["hc"] for r in c1.values()])
    heads = all(cand[k]["no_head"] <= c1[k]["no_head"] for k in c1)
    guard = all(r["guard"] >= 0.80 for r in cand.values())
    checks = {"(a) Dice >= +0.10": d_dice >= 0.10, "(b) HC MAE not higher by > 0.05 mm": d_hc <= 0.05,
              "(c) no run loses a head c1 finds": heads, "(d) drift guard >= 0.80 in all runs": guard}
    print(f"\nc3-prior - c1: Dice {d_dice:+.2f} points, HC MAE {d_hc:+.2f} mm")
    for name, ok in checks.items():
        print(f"{name}: {'pass' if ok else 'FAIL'}")
    print("decision:", "adopt c3-prior at 5 %" if all(checks.values()) else "the packaged c1 / none stays")
    return 0


if __name__ == "__main__":
    sys.exit(main())
