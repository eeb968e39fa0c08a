"""Pairing sequences with text and findings: pocus-frames grouping, lus-blues reports, simulator presets."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from sonodistill.data.manifest import Manifest
from sonodistill.data.preprocess import PreprocessConfig
from sonodistill.data.sequences import (
    AnnotationSpec,
    load_sequence,
    lus_sequences,
    pocus_sequences,
    sequences_from_manifest,
    synthetic_sequences,
)
from sonodistill.errors import ConfigError, DataError

POCUS_COLS = ["effusion", "consolidations", "finding_b_lines", "finding_a_lines", "pleural_irregularities",
              "air_bronchogram", "healthy"]


def _frame(path, value: int, size=(40, 48)):
    img = np.full(size, value, dtype=np.uint8)
    img[5:-5, 5:-5] = np.random.default_rng(value).integers(20, 220, (size[0] - 10, size[1] - 10))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path)
    return str(path)


@pytest.fixture
def pocus_like(tmp_path) -> Manifest:
    """Two sources (frames listed out of order), one source without sources.csv row (all findings NaN)."""
    rows = []
    for src, label, group, flags, n in [("a.mp4", "covid", "p1", [1, 0, 1, 0, 0, 0, 0], 3),
                                        ("b.gif", "regular", "p2", [0, 1, 0, 1, 0, 0, 1], 2),
                                        ("c.mp4", "regular", "p3", [np.nan] * 7, 2)]:
        for k in reversed(range(n)):
            row = {"path": _frame(tmp_path / f"{src}_{k}.png", 10 * k + 1), "group": group, "label": label,
                   "source_video": src, "frame_index": k, "text": f"comment on {src}"}
            row.update(dict(zip(POCUS_COLS, flags)))
            rows.append(row)
    return Manifest(pd.DataFrame(rows), ["covid", "pneumonia", "regular"], "image", "pocus-frames")


def test_pocus_frames_grouped_by_source_in_frame_order(pocus_like):
    s = pocus_sequences(pocus_like)
    assert len(s) == 2  # c.mp4 has no findings / text: left out
    assert list(s.manifest.table["source_video"]) == ["a.mp4", "b.gif"]
    assert [p.rsplit("_", 1)[1] for p in s.sources[0]] == ["0.png", "1.png", "2.png"]
    assert s.texts == ["comment on a.mp4", "comment on b.gif"]
    # findings with no positive (or no negative) source are dropped: air bronchogram and pleural irregularities
    assert s.spec.columns == ["effusion", "consolidations", "finding_b_lines", "finding_a_lines", "healthy"]
    assert s.spec.binary == ["effusion", "consolidation", "b-lines", "a-lines", "normal lung"]
    np.testing.assert_array_equal(s.binary, [[1, 0, 1, 0, 0], [0, 1, 0, 1, 1]])
    assert s.categorical.shape == (2, 0)
    assert list(s.manifest.labels) == [0, 2]


def test_pocus_frames_are_preprocessed_together_and_cached(pocus_like, tmp_path):
    s = pocus_sequences(pocus_like)
    pre = PreprocessConfig(size=32, crop_region=False)
    clips = s.load_clips(pre, tmp_path / "cache")
    assert [c.shape for c in clips] == [(3, 32, 32), (2, 32, 32)] and clips[0].dtype == np.uint8
    assert len(list((tmp_path / "cache" / "sequences").glob("*.npy"))) == 2
    np.testing.assert_array_equal(load_sequence(s.sources[0], pre, tmp_path / "cache"), clips[0])


def test_frames_of_different_sizes_are_an_error(tmp_path):
    files = [_frame(tmp_path / "0.png", 1), _frame(tmp_path / "1.png", 2, size=(30, 30))]
    with pytest.raises(DataError, match="differs"):
        load_sequence(files, PreprocessConfig(size=32), None)


def test_lus_reports_are_composed_from_the_labels():
    t = pd.DataFrame({"path": ["v0.mp4", "v1.mp4"], "group": ["p1", "p2"], "label": ["0", "2"],
                      "text": ["", "broken pleura line"], "a_lines": ["yes", "no"], "b_lines": ["no", "yes"],
                      "severity_score": [0, 2]})
    s = lus_sequences(Manifest(t, ["0", "1", "2", "3"], "video", "lus-blues/severity"))
    assert s.texts == ["Lung ultrasound shows A-lines in the lung. No B-lines. Severity score: 0.",
                       "Lung ultrasound shows B-lines in the lung. No A-lines. Severity score: 2. broken pleura line"]
    np.testing.assert_array_equal(s.binary, [[1, 0], [0, 1]])
    np.testing.assert_array_equal(s.categorical[:, 0], [0, 2])
    assert s.spec.categorical == {"severity score": ["0", "1", "2", "3"]}


def test_synthetic_lung_pairs_in_memory():
    s = synthetic_sequences("lung", n=6, seed=0, frames=4, size=32)
    assert len(s) == 6 and s.clips is not None and s.clips[0].shape == (4, 32, 32)
    assert s.spec.binary == ["a-lines", "b-lines", "confluent b-lines", "consolidation", "pleural irregularity"]
    assert s.binary.shape == (6, 5) and s.categorical.shape == (6, 1)
    for text, b, c in zip(s.texts, s.binary, s.categorical[:, 0]):
        assert ("with A-lines" in text) == bool(b[0])
        assert ("no B-lines" in text) == (not b[1])
        assert ("subpleural consolidation" in text) == bool(b[3])
    np.testing.assert_array_equal(s.categorical[:, 0], s.manifest.labels)  # severity = the preset's class
    sub = s.subset([4, 1])
    assert sub.texts == [s.texts[4], s.texts[1]] and sub.clips[0] is s.clips[4]


def test_synthetic_manifest_from_write_dataset(tmp_path):
    from sonodistill.data.synthetic import write_dataset

    m = Manifest.from_csv(write_dataset("carotid", tmp_path, n=3, seed=0, frames=2, size=32, workers=1))
    s = sequences_from_manifest(m)
    assert s.spec.graph == "carotid" and s.spec.categorical == {"plaque": ["hyperechoic", "mixed", "hypoechoic"]}
    found = [json.loads(f)["plaque"] for f in m.table["findings"]]
    assert [s.spec.categorical["plaque"][i] for i in s.categorical[:, 0]] == found


def test_spec_validation_and_round_trip():
    spec = AnnotationSpec("lung", ["b-lines"], ["b_lines"], {"severity score": ["0", "1"]})
    assert AnnotationSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ConfigError):
        AnnotationSpec("lung", ["b-lines"], [], {})
    with pytest.raises(ConfigError, match="nothing to annotate"):
        AnnotationSpec("lung", [], [], {})


def test_unsupported_manifest_is_an_error():
    m = Manifest(pd.DataFrame({"path": ["a.mp4"], "group": ["g"]}), [], "video", "mine")
    with pytest.raises(ConfigError, match="text"):
        sequences_from_manifest(m)


def test_real_pairs(shared_data):
    from sonodistill.data.adapters import load_adapter

    pocus = sequences_from_manifest(load_adapter("pocus-frames", shared_data / "pocus-frames"))
    assert len(pocus) == 136 and "air bronchogram" not in pocus.spec.binary
    assert pocus.manifest.table["n_frames"].sum() > 1900
    assert all(len(g) == 1 for g in pocus.manifest.table.groupby("source_video")["group"].unique())
    lus = sequences_from_manifest(load_adapter("lus-blues", shared_data / "lus-blues"))
    assert len(lus) == 287 and all(t.startswith("Lung ultrasound") for t in lus.texts)
    assert set(np.unique(lus.categorical)) == {0, 1, 2, 3}
