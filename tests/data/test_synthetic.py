"""The B-mode simulator: determinism, and ground truth (masks, regions, labels, targets) that matches its images."""

from __future__ import annotations

import json
import math
import resource

import numpy as np
import pytest
from scipy.ndimage import binary_dilation, binary_erosion
from scipy.signal import find_peaks

from sonodistill.data.manifest import Manifest
from sonodistill.data.synthetic import (
    PRESET_CLASSES,
    PRESETS,
    group_for,
    label_for,
    ramanujan_perimeter,
    synthesize,
    write_dataset,
)
from sonodistill.data.synthetic_scenes import Geometry
from sonodistill.errors import ConfigError

SIZE = 96


@pytest.fixture(scope="module")
def carotid_items():
    return [synthesize("carotid", i, seed=0, frames=4, size=SIZE) for i in range(18)]


@pytest.fixture(scope="module")
def lung_items():
    return [synthesize("lung", i, seed=0, frames=8, size=SIZE) for i in range(16)]


@pytest.fixture(scope="module")
def fetal_items():
    return [synthesize("fetal-head", i, seed=0, size=128) for i in range(8)]


# -- API, determinism, labels -----------------------------------------------------------------------
def test_presets_and_classes():
    assert set(PRESETS) == {"carotid", "lung", "fetal-head"}
    assert PRESET_CLASSES["carotid"] == ["hyperechoic", "mixed", "hypoechoic"]
    assert PRESET_CLASSES["lung"] == ["0", "1", "2", "3"]
    assert PRESET_CLASSES["fetal-head"] == []


@pytest.mark.parametrize("preset", ["carotid", "lung", "fetal-head"])
def test_deterministic_and_typed(preset):
    a = synthesize(preset, 5, seed=1, frames=3, size=64)
    b = synthesize(preset, 5, seed=1, frames=3, size=64)
    c = synthesize(preset, 6, seed=1, frames=3, size=64)
    d = synthesize(preset, 5, seed=2, frames=3, size=64)
    assert np.array_equal(a.frames, b.frames) and a.findings == b.findings and a.report == b.report
    assert not np.array_equal(a.frames, c.frames) and not np.array_equal(a.frames, d.frames)
    t = 1 if preset == "fetal-head" else 3
    assert a.frames.shape == (t, 64, 64) and a.frames.dtype == np.uint8
    assert a.region.shape == (64, 64) and a.region.dtype == bool
    assert a.mask is not None and a.mask.dtype == np.uint8 and set(np.unique(a.mask)) <= {0, 1}
    assert a.label == label_for(preset, 5, 1) and a.pixel_size_mm > 0
    json.dumps(a.findings)  # findings must be JSON-serialisable for the manifest


@pytest.mark.parametrize("preset", ["carotid", "lung"])
def test_labels_balanced_per_block(preset):
    classes = PRESET_CLASSES[preset]
    labels = [label_for(preset, i, seed=4) for i in range(len(classes) * 5)]
    assert {c: labels.count(c) for c in classes} == {c: 5 for c in classes}
    assert labels != [label_for(preset, i, seed=5) for i in range(len(labels))]  # the order is seeded


def test_groups_share_subject_anatomy():
    assert group_for("carotid", 0) == group_for("carotid", 2) != group_for("carotid", 3)
    assert group_for("fetal-head", 0) != group_for("fetal-head", 1)
    a, b = synthesize("carotid", 0, frames=1, size=64), synthesize("carotid", 1, frames=1, size=64)
    assert a.pixel_size_mm == b.pixel_size_mm  # same subject: same probe depth/width setting


def test_bad_arguments():
    with pytest.raises(ConfigError, match="unknown synthetic preset"):
        synthesize("heart", 0)
    with pytest.raises(ConfigError, match="even"):
        synthesize("carotid", 0, size=63)
    with pytest.raises(ConfigError, match="frames"):
        synthesize("carotid", 0, frames=0)


# -- imaging region ---------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", ["carotid", "lung", "fetal-head"])
def test_region_is_the_signal_support(preset):
    item = synthesize(preset, 2, seed=0, frames=4, size=SIZE)
    signal = item.frames.max(axis=0) > 0
    iou = (signal & item.region).sum() / (signal | item.region).sum()
    assert iou >= 0.95
    assert not signal[~item.region].any()
    frac = item.region.mean()
    if preset == "carotid":  # rectangle: full rows/columns, black margins
        rows, cols = np.flatnonzero(item.region.any(1)), np.flatnonzero(item.region.any(0))
        assert item.region[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].all() and frac < 0.95
    else:  # sector: top corners empty, bottom wider than top
        assert not item.region[:SIZE // 8, :SIZE // 8].any() and not item.region[:SIZE // 8, -SIZE // 8:].any()
        widths = item.region.sum(1)
        first = np.flatnonzero(widths)[0]
        assert widths.max() > 1.3 * widths[first + 1] and np.argmax(widths) > first + 5


def test_geometry_isotropic_mapping_round_trip():
    g = Geometry("convex", 120.0, 96, 48, 64, radius_mm=50.0, half_angle_deg=30.0)
    x, z = g.display_coords()
    col, row = g.to_pixels(x, z)
    assert np.allclose(col, np.arange(64)[None, :]) and np.allclose(row, np.arange(64)[:, None])
    assert np.allclose(np.diff(x[0]), g.pixel_size_mm) and np.allclose(np.diff(z[:, 0]), g.pixel_size_mm)
    s, line, inside = g.display_to_beam()
    bx, bz = g.beam_coords()
    i, j = 40, 30
    assert inside[i, j] and not inside[0, 0]
    si, li = s[i, j], line[i, j]  # the display pixel maps to the beam sample that lies at its position
    r = 50.0 + si * g.dz
    th = -g.half_angle + li * 2 * g.half_angle / (g.n_lines - 1)
    assert math.isclose(r * math.sin(th), x[i, j], abs_tol=1e-6)
    assert math.isclose(r * math.cos(th) - 50, z[i, j], abs_tol=1e-6)
    assert math.isclose(bx[10, 5], (50 + 10 * g.dz) * math.sin(-g.half_angle + 5 * 2 * g.half_angle / 47))
    assert math.isclose(bz[0, g.n_lines // 2] if g.n_lines % 2 else bz[0, 0] + 50 - 50 * math.cos(g.half_angle), 0,
                        abs_tol=1e-9)


# -- carotid ----------------------------------------------------------------------------------------
def test_carotid_plaque_echogenicity_order(carotid_items):
    means: dict[str, list[float]] = {c: [] for c in PRESET_CLASSES["carotid"]}
    for it in carotid_items:
        assert it.mask.sum() > 10  # the plaque is visible at frame 0
        means[it.label].append(it.frames[0][it.mask.astype(bool)].mean())
    m = {k: float(np.mean(v)) for k, v in means.items()}
    assert all(len(v) == 6 for v in means.values())
    assert m["hyperechoic"] > m["mixed"] + 5 > m["hypoechoic"] + 10


def test_carotid_lumen_darker_than_tissue(carotid_items):
    for it in carotid_items:
        f = it.frames[0].astype(float)
        lumen, plaque = it.aux["lumen"].astype(bool), it.mask.astype(bool)
        vessel = binary_dilation(lumen | plaque, iterations=3)
        tissue = binary_dilation(vessel, iterations=8) & ~vessel & it.region
        assert f[lumen].mean() < 0.6 * f[tissue].mean()
        assert not (lumen & plaque).any()


def test_carotid_report_matches_findings(carotid_items):
    for it in carotid_items:
        f = it.findings
        assert f["organ"] == "carotid artery" and f["plaque"] == it.label
        assert f["location"] in ("near wall", "far wall") and f["view"] in ("transverse", "longitudinal")
        assert f"{it.label} plaque on the {f['location']}" in it.report


# -- lung -------------------------------------------------------------------------------------------
def _below_pleura_profile(it) -> tuple[np.ndarray, float]:
    """Angular intensity profile (60 bins around the apex) below the pleura, and the chest-wall mean above it."""
    img = it.frames.astype(float).mean(0)
    cx, cy = it.aux["apex_px"]
    yy, xx = np.mgrid[0:img.shape[0], 0:img.shape[1]]
    r, ang = np.hypot(xx - cx, yy - cy), np.degrees(np.arctan2(xx - cx, yy - cy))
    face, rp = r[it.region].min(), np.median(r[it.mask.astype(bool)])
    wall = img[it.region & (r < rp - 2) & (r > face + 0.3 * (rp - face))].mean()
    sel = it.region & (r > rp + 0.2 * (r[it.region].max() - rp))
    bins = np.linspace(ang[it.region].min(), ang[it.region].max(), 61)
    return np.array([img[sel & (ang >= a) & (ang < b)].mean() for a, b in zip(bins[:-1], bins[1:])]), wall


def test_lung_b_lines_detectable_and_grow_with_severity(lung_items):
    coverage: dict[str, list[float]] = {c: [] for c in PRESET_CLASSES["lung"]}
    for it in lung_items:
        prof, wall = _below_pleura_profile(it)
        coverage[it.label].append(float((prof > 0.5 * wall).mean()))  # share of the field covered by streaks
        assert it.findings["b_lines"] == len(it.aux["b_line_angles_deg"])
        if it.label in ("0", "1"):  # separated B-lines: each one is a bright radial streak
            assert abs(len(find_peaks(prof, prominence=12)[0]) - it.findings["b_lines"]) <= 1
    mean = {k: np.mean(v) for k, v in coverage.items()}
    assert mean["0"] + 0.1 < mean["1"] < mean["2"]
    assert mean["3"] > mean["0"] + 0.1


def test_lung_pleura_brighter_than_chest_wall_above(lung_items):
    diffs = []
    for it in lung_items:
        f = it.frames[0].astype(float)
        pleura = it.mask.astype(bool)
        above = np.zeros_like(pleura)
        for k in range(3, 7):
            above[:-k] |= pleura[k:]
        above &= ~binary_dilation(pleura, iterations=2) & it.region
        diffs.append(f[pleura].mean() - f[above].mean())
    assert min(diffs) > 10 and np.mean(diffs) > 25


def test_lung_findings_by_severity(lung_items):
    for it in lung_items:
        f, sev = it.findings, int(it.label)
        assert f["score"] == sev and f["consolidation"] == (sev == 3)
        assert f["b_lines"] <= 2 if sev == 0 else f["b_lines"] >= 3
        if sev >= 2:
            assert not f["a_lines"]
        if sev == 0:
            assert f["a_lines"] and not f["pleural_irregularity"]
        assert it.report.startswith("Lung ultrasound shows") and ("consolidation" in it.report)


def test_lung_a_lines_repeat_the_pleura(lung_items):
    normal = [it for it in lung_items if it.label == "0"]
    assert normal
    for it in normal:
        img = it.frames.astype(float).mean(0)
        cx, cy = it.aux["apex_px"]
        yy, xx = np.mgrid[0:SIZE, 0:SIZE]
        r, ang = np.hypot(xx - cx, yy - cy), np.degrees(np.arctan2(xx - cx, yy - cy))
        central = it.region & (np.abs(ang) < 12)
        for b in it.aux["b_line_angles_deg"]:  # look between B-lines
            central &= np.abs(ang - b) > 5
        face = r[it.region].min()  # the probe face is the sector's inner arc
        pleura = np.median(r[it.mask.astype(bool)])

        def ring(radius: float) -> float:
            return img[central & (np.abs(r - radius) < 1.0)].mean()

        d = pleura - face  # first A-line at twice the face-to-pleura distance, dark half way in between
        assert ring(face + 2 * d) > ring(face + 1.5 * d) + 15


# -- fetal head -------------------------------------------------------------------------------------
def test_fetal_mask_is_ellipse_on_bright_ring(fetal_items):
    for it in fetal_items:
        m = it.mask.astype(bool)
        ys, xs = np.nonzero(m)
        cov = np.cov(np.stack([xs, ys]).astype(float))
        lam = np.sort(np.linalg.eigvalsh(cov))[::-1]
        a_px, b_px = 2 * np.sqrt(lam)  # a filled ellipse has variance a^2/4 along its axes
        cx, cy, ea, eb, _ = it.aux["ellipse_px"]
        assert abs(xs.mean() - cx) < 0.5 and abs(ys.mean() - cy) < 0.5
        assert abs(a_px - ea) < 0.6 and abs(b_px - eb) < 0.6
        assert abs(m.sum() - math.pi * ea * eb) / (math.pi * ea * eb) < 0.03
        f = it.frames[0].astype(float)
        band = binary_dilation(m, iterations=1) & ~binary_erosion(m, iterations=2)
        assert f[band].mean() > 1.5 * f[it.region & ~band].mean()


def test_fetal_target_is_ramanujan_circumference(fetal_items):
    for it in fetal_items:
        _, _, a_px, b_px, _ = it.aux["ellipse_px"]
        assert math.isclose(it.target, ramanujan_perimeter(a_px, b_px) * it.pixel_size_mm, rel_tol=1e-9)
        assert 50 < it.target < 360 and it.label is None
        assert math.isclose(it.findings["head_circumference_mm"], it.target, abs_tol=0.05)
        assert f"{it.findings['head_circumference_mm']:.1f} mm" in it.report


def test_ramanujan_circle_and_ellipse():
    assert math.isclose(ramanujan_perimeter(2.0, 2.0), 4 * math.pi)
    assert math.isclose(ramanujan_perimeter(3.0, 1.0), 13.3649, rel_tol=1e-4)  # exact 13.36489...


# -- motion -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", ["carotid", "lung"])
def test_adjacent_frames_correlated_not_identical(preset):
    def corr(a, b, m):
        return np.corrcoef(a[m].astype(float), b[m].astype(float))[0, 1]

    for i in range(2):
        it = synthesize(preset, i, frames=12, size=64)
        other = synthesize(preset, i + 20, frames=1, size=64)
        adj = [corr(it.frames[t], it.frames[t + 1], it.region) for t in range(11)]
        rand = corr(it.frames[0], other.frames[0], it.region & other.region)
        assert np.median(adj) > rand + 0.3
        assert max(adj) < 0.999 and not any(np.array_equal(it.frames[t], it.frames[t + 1]) for t in range(11))


# -- writing data sets ------------------------------------------------------------------------------
def test_write_dataset_is_byte_reproducible(tmp_path):
    """Two syntheses of the same set give identical files (lossy libx264 output was not reproducible)."""
    a = write_dataset("carotid", tmp_path / "a", n=24, seed=0, frames=16, size=96, workers=2)
    b = write_dataset("carotid", tmp_path / "b", n=24, seed=0, frames=16, size=96, workers=2)
    for rel in sorted(p.relative_to(a.parent) for p in a.parent.rglob("*.mp4")):
        assert (a.parent / rel).read_bytes() == (b.parent / rel).read_bytes(), rel


def test_write_dataset_round_trip(tmp_path):
    from sonodistill.data.readers import read_clip, read_mask

    csv = write_dataset("carotid", tmp_path / "c", n=6, seed=2, frames=8, size=64, workers=2)
    m = Manifest.from_csv(csv)
    m.validate(check_files=True)
    assert m.modality == "video" and m.classes == PRESET_CLASSES["carotid"]
    assert m.class_counts() == {c: 2 for c in m.classes}
    assert list(m.groups) == [group_for("carotid", i) for i in range(6)]
    for i in range(6):
        item = synthesize("carotid", i, seed=2, frames=8, size=64)
        video = read_clip(m.paths[i])
        assert video.frames.shape == item.frames.shape
        assert np.array_equal(video.frames, item.frames)  # lossless: the reader sees the simulated pixels
        assert np.array_equal(read_mask(m.table["mask"][i]), item.mask)
        row = m.table.iloc[i]
        assert row["label"] == item.label and row["text"] == item.report
        assert json.loads(row["findings"]) == item.findings


def test_write_dataset_images_and_worker_independence(tmp_path):
    from sonodistill.data.readers import read_clip

    a = Manifest.from_csv(write_dataset("fetal-head", tmp_path / "a", n=4, seed=1, size=64, workers=1))
    b = Manifest.from_csv(write_dataset("fetal-head", tmp_path / "b", n=4, seed=1, size=64, workers=2))
    assert a.modality == "image" and not a.has_labels and "target" in a.table.columns
    cols = ["group", "target", "text", "findings", "pixel_size_mm"]
    assert a.table[cols].equals(b.table[cols])
    for pa, pb, i in zip(a.paths, b.paths, range(4)):
        fa = read_clip(pa).frames
        assert np.array_equal(fa, read_clip(pb).frames)
        assert np.array_equal(fa, synthesize("fetal-head", i, seed=1, size=64).frames)  # PNG is lossless


def test_write_dataset_lung_labels_are_strings(tmp_path):
    m = Manifest.from_csv(write_dataset("lung", tmp_path / "l", n=4, frames=2, size=48, workers=1))
    assert sorted(m.table["label"]) == ["0", "1", "2", "3"] and m.classes == ["0", "1", "2", "3"]
    assert all(json.loads(f)["organ"] == "lung" for f in m.table["findings"])


@pytest.mark.slow
def test_write_throughput(tmp_path):
    """60 carotid videos (32 x 128 x 128): their CPU time, spread over 2 cores, extrapolates to < 90 s for 300.

    CPU time (this process + its worker processes) rather than wall time, so a busy machine does not fail it."""
    def cpu() -> float:
        own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime

    start = cpu()
    write_dataset("carotid", tmp_path / "t", n=60, frames=32, size=128, workers=2)
    assert (cpu() - start) * 5 / 2 < 90


def test_synthetic_seed_gives_an_independent_set_and_is_cached_apart(tmp_path):
    """`data.synthetic_seed` (e.g. a set to choose settings on, apart from the demo's): another seed gives other
    clips in its own cache folder; the same seed gives the same clips again."""
    from sonodistill.config import load_config
    from sonodistill.data.readers import read_clip
    from sonodistill.recipes.data import load_manifest

    def manifest(seed: int) -> Manifest:
        cfg = load_config(None, ["data.synthetic_n=3", "data.synthetic_frames=2", "data.synthetic_size=32",
                                 f"data.synthetic_seed={seed}", f"data.cache_dir={tmp_path}"])
        return load_manifest(cfg.data)

    a, b, a2 = manifest(0), manifest(1), manifest(0)
    assert a.paths[0] != b.paths[0] and a.paths[0] == a2.paths[0]
    assert not np.array_equal(read_clip(a.paths[0]).frames, read_clip(b.paths[0]).frames)
