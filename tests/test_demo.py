"""`sonodistill demo`: both recipes trained on the same folds (in parallel processes), one comparison report."""

from __future__ import annotations

import re

import pandas as pd

from sonodistill.commands.demo import run_demo

TINY = ["data.synthetic_n=18", "data.synthetic_frames=4", "data.synthetic_size=32", "data.size=32",
        "data.num_frames=4", "train.epochs=1"]


def test_demo_compares_recipes_on_the_same_folds(tmp_path) -> None:
    out = tmp_path / "demo"
    report = run_demo(out, ["supervised", "dualdistill"], TINY + [f"data.cache_dir={tmp_path / 'cache'}"], jobs=2)
    text = report.read_text()
    assert "| supervised |" in text and "| dualdistill |" in text
    assert "2 parallel job(s) x" in text and "sum over folds" in text
    again = run_demo(out, ["supervised", "dualdistill"], TINY + [f"data.cache_dir={tmp_path / 'cache'}"], jobs=1)
    assert again.read_text().split("## supervised")[0] == text.split("## supervised")[0]  # finished folds reused
    assert (out / "confusion_matrix_supervised.png").is_file() and (out / "roc_dualdistill.png").is_file()
    sup = pd.read_csv(out / "supervised" / "predictions.csv")
    dd = pd.read_csv(out / "dualdistill" / "predictions.csv")
    assert len(sup) == len(dd) == 18
    key = ["fold", "index"]
    assert sup.sort_values(key)[key].values.tolist() == dd.sort_values(key)[key].values.tolist()
    assert (out / "supervised" / "folds.json").read_text() == (out / "dualdistill" / "folds.json").read_text()
    # the report ends with the paired comparison and a plain verdict on accuracy
    assert "## Paired comparison with supervised (baseline)" in text and (out / "compare" / "comparison.csv").is_file()
    assert re.search(r"\*\*dualdistill (is more accurate than|is less accurate than|is not shown to differ in "
                     r"accuracy from) supervised on this set\*\* \(difference [+-]\d", text)
