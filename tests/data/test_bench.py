"""`sonodistill bench data --limit 3`: runs end to end in temporary folders and writes the documented JSON."""

from __future__ import annotations

import json

from sonodistill.cli import main
from sonodistill.data.bench import markdown_table, pyav_decode


def test_bench_data_small(shared_data, tmp_path, capsys):
    out = tmp_path / "bench" / "data.json"
    cache_parent = tmp_path / "cache"
    cache_parent.mkdir()
    code = main(["bench", "data", "--root", str(shared_data / "lus-blues"), "--limit", "3", "--size", "32",
                 "--num-frames", "4", "--out", str(out), "--cache-dir", str(cache_parent), "--no-progress"])
    assert code == 0
    r = json.loads(out.read_text())
    assert r["n_videos"] == 3 and r["size"] == 32 and r["num_frames"] == 4
    for key in ("pyav_fps", "pyav_threaded_fps", "read_clip_fps", "read_preprocess_fps", "epoch_fill_s",
                "epoch_cached_s", "cache_speedup", "decode_ratio", "cache_mb"):
        assert r[key] > 0, key
    assert abs(r["decode_ratio"] - r["read_clip_fps"] / r["pyav_fps"]) < 1e-9
    assert abs(r["cache_speedup"] - r["epoch_fill_s"] / r["epoch_cached_s"]) < 1e-9
    assert isinstance(r["decode_target_met"], bool) and isinstance(r["cache_target_met"], bool)
    assert r["machine"]["cores"] >= 1
    assert list(cache_parent.iterdir()) == []  # the temporary cache is removed
    printed = capsys.readouterr().out
    assert "| `read_clip` / bare PyAV |" in printed and printed.startswith(markdown_table(r).splitlines()[0])


def test_pyav_decode_counts_frames(shared_data):
    from sonodistill.data.adapters import load_adapter

    m = load_adapter("lus-blues")
    assert pyav_decode(m.paths[0]) == int(m.table["n_frames"].iloc[0])
