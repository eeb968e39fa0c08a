"""Split a shared set by patient into 'site A' (a manifest to train on) and 'site B' (a folder of files + labels.csv)
standing in for another hospital's data (the README's walkthrough). Nothing is copied: site B's folder holds
symbolic links to the shared files. 20 % of the groups (seeded) go to site B.

    python benchmarks/make_sites.py hc18 "" runs/walk/hc18
    python benchmarks/make_sites.py lus-blues severity3 runs/walk/lus
"""
import os, sys
from pathlib import Path
import numpy as np, pandas as pd
from sonodistill.data.adapters import load_adapter

name, target, out = sys.argv[1], (sys.argv[2] or None), Path(sys.argv[3])
m = load_adapter(name, **({"target": target} if target else {}))
groups = np.array(sorted(set(m.groups)))
rng = np.random.default_rng(0)
site_b = set(rng.choice(groups, size=len(groups) // 5, replace=False))
is_b = np.array([g in site_b for g in m.groups])
out.mkdir(parents=True, exist_ok=True)
m.subset(np.flatnonzero(~is_b)).to_csv(out / "site-a.csv")
folder = out / "site-b"
folder.mkdir(exist_ok=True)
rows = []
for i in np.flatnonzero(is_b):
    src = Path(m.paths[i]); dst = folder / src.name
    if not dst.exists():
        os.symlink(src.resolve(), dst)
    row = {"path": str(dst), "group": m.groups[i]}
    t = m.table.iloc[i]
    if m.has_labels:
        row["label"] = t["label"]
    if "mask" in m.table.columns and isinstance(t.get("mask"), str):
        row["mask"] = t["mask"]
    for col in ("pixel_size_mm", "target"):
        if col in m.table.columns:
            row["hc_mm" if col == "target" else col] = t[col]
    rows.append(row)
pd.DataFrame(rows).to_csv(out / "site-b-labels.csv", index=False)
print(f"{name}: site A {int((~is_b).sum())} items of {len(groups) - len(site_b)} groups, "
      f"site B {int(is_b.sum())} items of {len(site_b)} groups -> {out}")
