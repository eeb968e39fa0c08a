"""Image sequences paired with report text and named findings (DILBERT's data).

Three sources, one `SequenceSet` (one row per sequence):
- `pocus-frames`: the frames of one `source_video`, in `frame_index` order, are one sequence; text = the
  clinicians' comments (MD1..MD3, joined by the adapter); findings = the `sources.csv` flags. Sources without
  a `sources.csv` row (no text, no findings) are left out, with a log line saying how many.
- `lus-blues`: each video is a sequence; binary findings A-lines and B-lines, categorical severity score 0..3;
  only 25 of 287 videos have a comment, so the report is composed from the labels through the knowledge graph
  ("Lung ultrasound shows B-lines in the lung. No A-lines. Severity score: 2.") followed by the comment.
- simulator presets (`synth-lung`, `synth-carotid` manifests from `write_dataset`, or `synthetic_sequences`
  in memory): the simulated findings and the templated report.
Any other manifest with a `text` column pairs its items with their text, the class label as the finding.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from sonodistill.data.manifest import Manifest
from sonodistill.errors import ConfigError, DataError

log = logging.getLogger(__name__)

#: pocus-frames finding columns (adapter names) -> lung graph entities
POCUS_FINDINGS = {
    "effusion": "effusion",
    "consolidations": "consolidation",
    "finding_b_lines": "b-lines",
    "finding_a_lines": "a-lines",
    "pleural_irregularities": "pleural irregularity",
    "air_bronchogram": "air bronchogram",
    "healthy": "normal lung",
}
LUS_FINDINGS = {"a_lines": "a-lines", "b_lines": "b-lines"}
LUS_SEVERITY = ("severity score", "severity_score", ["0", "1", "2", "3"])
#: simulator findings (keys of SynthItem.findings) -> (graph entity, how to read it as 0/1)
SYNTH_BINARY: dict[str, dict[str, tuple[str, Callable[[Any], bool]]]] = {
    "lung": {
        "a_lines": ("a-lines", bool),
        "b_lines": ("b-lines", lambda v: int(v) > 0),
        "confluent_b_lines": ("confluent b-lines", bool),
        "consolidation": ("consolidation", bool),
        "pleural_irregularity": ("pleural irregularity", bool),
    },
    "carotid": {"acoustic_shadow": ("acoustic shadow", bool)},
}
SYNTH_CATEGORICAL: dict[str, dict[str, tuple[str, list[str]]]] = {
    "lung": {"severity score": ("score", ["0", "1", "2", "3"])},
    "carotid": {"plaque": ("plaque", ["hyperechoic", "mixed", "hypoechoic"])},
}


@dataclass
class AnnotationSpec:
    """What is annotated: binary findings (graph entities, with their source columns) and categorical targets."""

    graph: str
    binary: list[str]
    columns: list[str]
    categorical: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.binary) != len(self.columns):
            raise ConfigError(f"AnnotationSpec: {len(self.binary)} findings but {len(self.columns)} columns")
        if not self.binary and not self.categorical:
            raise ConfigError("AnnotationSpec: nothing to annotate (no binary finding, no categorical target)")
        for name, classes in self.categorical.items():
            if len(classes) < 2:
                raise ConfigError(f"AnnotationSpec: categorical target {name!r} needs >= 2 classes, got {classes}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "AnnotationSpec":
        return cls(str(d["graph"]), list(d["binary"]), list(d["columns"]),
                   {str(k): [str(c) for c in v] for k, v in (d.get("categorical") or {}).items()})


@dataclass
class SequenceSet:
    """Sequences with text and findings. `binary` `N x F` float32 (NaN: unknown), `categorical` `N x C` int64
    (-1: unknown, columns in `spec.categorical` order); `sources[i]`: ordered frame files or one video file;
    `clips[i]` (after `load_clips`, or given): uint8 `T_i x S x S`. `manifest` has one row per sequence (path =
    first file, group, label = the stratification class) and is what the folds are made from."""

    manifest: Manifest
    sources: list[list[str]]
    texts: list[str]
    binary: np.ndarray
    categorical: np.ndarray
    spec: AnnotationSpec
    clips: list[np.ndarray] | None = None

    def __post_init__(self) -> None:
        n = len(self.manifest)
        for name, size in (("sources", len(self.sources)), ("texts", len(self.texts)),
                           ("binary", self.binary.shape[0]), ("categorical", self.categorical.shape[0])):
            if size != n:
                raise ConfigError(f"SequenceSet: {name} has {size} rows, the manifest {n}")
        if self.binary.shape[1] != len(self.spec.binary) or self.categorical.shape[1] != len(self.spec.categorical):
            raise ConfigError("SequenceSet: target columns do not match the AnnotationSpec")

    def __len__(self) -> int:
        return len(self.manifest)

    @property
    def groups(self) -> np.ndarray:
        return self.manifest.groups

    def subset(self, rows: np.ndarray | list[int]) -> "SequenceSet":
        rows = np.asarray(rows, dtype=np.int64)
        clips = [self.clips[i] for i in rows] if self.clips is not None else None
        return SequenceSet(self.manifest.subset(rows), [self.sources[i] for i in rows], [self.texts[i] for i in rows],
                           self.binary[rows], self.categorical[rows], self.spec, clips)

    def load_clips(self, preprocess: Any, cache_dir: str | Path | None = None) -> list[np.ndarray]:
        """Decode and preprocess every sequence once (uint8 `T_i x S x S`), cached under `cache_dir`."""
        if self.clips is None:
            self.clips = [load_sequence(src, preprocess, cache_dir) for src in self.sources]
        return self.clips


# ------------------------------------------------------------------------------------------------ loading
def sample_indices(n: int, t: int, rng: np.random.Generator | None) -> np.ndarray:
    """`t` frame indices of an `n`-frame sequence: segment centres (rng None) or a random frame per segment."""
    k = np.arange(t)
    if rng is None:
        return np.minimum(np.floor((k + 0.5) * n / t).astype(np.int64), n - 1)
    lo = np.floor(k * n / t).astype(np.int64)
    hi = np.maximum(lo + 1, np.floor((k + 1) * n / t).astype(np.int64))
    return np.minimum(rng.integers(lo, hi), n - 1)


def load_sequence(files: list[str], preprocess: Any, cache_dir: str | Path | None = None) -> np.ndarray:
    """One sequence as uint8 `T x S x S`: a video/DICOM file, or image files preprocessed together as one clip
    (region detection then sees the frames' motion). Image stacks are cached as .npy keyed by files + settings."""
    from sonodistill.data.preprocess import preprocess_clip
    from sonodistill.data.readers import read_clip, read_image

    if not files:
        raise ConfigError("a sequence needs at least one file")
    if len(files) == 1 and not _is_image(files[0]):
        if cache_dir is not None:
            from sonodistill.data.cache import ClipCache

            return np.asarray(ClipCache(Path(cache_dir) / "clips").get(files[0], preprocess))
        return preprocess_clip(read_clip(files[0]).frames, preprocess)
    entry = None
    if cache_dir is not None:
        key = hashlib.sha1(json.dumps([files, preprocess.key()]).encode()).hexdigest()[:16]
        entry = Path(cache_dir) / "sequences" / f"{key}.npy"
        if entry.is_file():
            return np.load(entry)
    frames = [read_image(f) for f in files]
    shape = frames[0].shape
    for f, a in zip(files, frames):
        if a.shape != shape:
            raise DataError(f, f"frame size {a.shape} differs from the sequence's first frame {files[0]} {shape}")
    clip = np.ascontiguousarray(preprocess_clip(np.stack(frames), preprocess), dtype=np.uint8)
    if entry is not None:
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = entry.with_suffix(".tmp.npy")
        np.save(tmp, clip)
        tmp.replace(entry)
    return clip


def _is_image(path: str) -> bool:
    from sonodistill.data.readers import IMAGE_EXTENSIONS

    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


# ------------------------------------------------------------------------------------------------ pairing
def sequences_from_manifest(manifest: Manifest, graph: str | None = None) -> SequenceSet:
    """Pair a manifest's items (or pocus-frames' frames) with text and findings; see the module docstring."""
    name = manifest.name
    if name == "pocus-frames":
        return pocus_sequences(manifest)
    if name.startswith("lus-blues"):
        return lus_sequences(manifest)
    if name.startswith("synth-"):
        return synthetic_manifest_sequences(manifest, name.split("-", 1)[1])
    return generic_sequences(manifest, graph or "lung")


def pocus_sequences(manifest: Manifest, min_count: int = 1) -> SequenceSet:
    """pocus-frames frames grouped by source video. Findings with fewer than `min_count` positives or negatives
    among the matched sources cannot be learned or scored and are dropped (logged)."""
    t = manifest.table
    need = ["source_video", "frame_index", "text"] + list(POCUS_FINDINGS)
    missing = [c for c in need if c not in t.columns]
    if missing:
        raise ConfigError(f"pocus-frames manifest lacks column(s) {missing}: is sources.csv next to frames.csv?")
    rows, sources, texts, flags = [], [], [], []
    skipped = 0
    for src, part in t.groupby("source_video", sort=True):
        part = part.sort_values("frame_index")
        first = part.iloc[0]
        values = part[list(POCUS_FINDINGS)].iloc[0].to_numpy(dtype=np.float64)
        if np.isnan(values).all():
            skipped += 1
            continue
        if part["group"].nunique() != 1 or part["label"].nunique() != 1:
            raise ConfigError(f"pocus-frames: source {src!r} spans several groups or labels")
        rows.append({"path": str(first["path"]), "group": str(first["group"]), "label": str(first["label"]),
                     "text": str(first["text"]), "source_video": str(src), "n_frames": int(len(part)),
                     "patient_id": str(first.get("patient_id", ""))})
        sources.append([str(p) for p in part["path"]])
        texts.append(str(first["text"]))
        flags.append(values)
    if skipped:
        log.info("pocus-frames: %d source(s) without a sources.csv row (no text, no findings) left out", skipped)
    binary = np.asarray(flags, dtype=np.float32)
    keep = []
    for j, col in enumerate(POCUS_FINDINGS):
        v = binary[:, j][~np.isnan(binary[:, j])]
        pos, neg = int((v == 1).sum()), int((v == 0).sum())
        if pos < min_count or neg < min_count:
            log.info("pocus-frames: finding %r has %d positive / %d negative sources: not annotated", col, pos, neg)
        else:
            keep.append(j)
    cols = [list(POCUS_FINDINGS)[j] for j in keep]
    spec = AnnotationSpec("lung", [POCUS_FINDINGS[c] for c in cols], cols, {})
    table = pd.DataFrame(rows)
    seq_manifest = Manifest(table, list(manifest.classes), "image", "pocus-sequences")
    return SequenceSet(seq_manifest, sources, texts, binary[:, keep], np.zeros((len(rows), 0), np.int64), spec)


def lus_sequences(manifest: Manifest) -> SequenceSet:
    """lus-blues videos with A-lines, B-lines, severity score and a report composed from them (+ comment)."""
    from sonodistill.knowledge import load_graph

    t = manifest.table
    missing = [c for c in list(LUS_FINDINGS) + [LUS_SEVERITY[1]] if c not in t.columns]
    if missing:
        raise ConfigError(f"lus-blues manifest lacks column(s) {missing}")
    graph = load_graph("lung")
    binary = np.stack([_yes_no(t[c], c) for c in LUS_FINDINGS], axis=1).astype(np.float32)
    score = t[LUS_SEVERITY[1]]
    sev = np.array([-1 if pd.isna(v) else int(v) for v in score], dtype=np.int64)
    texts = []
    for i in range(len(t)):
        present = [e for j, e in enumerate(LUS_FINDINGS.values()) if binary[i, j] == 1]
        absent = [e for j, e in enumerate(LUS_FINDINGS.values()) if binary[i, j] == 0]
        extras = {"severity score": str(sev[i])} if sev[i] >= 0 else {}
        text = graph.describe(present, extras=extras, absent=absent)
        comment = "" if pd.isna(t["text"].iloc[i]) else str(t["text"].iloc[i]).strip()
        texts.append(f"{text} {comment}".strip())
    spec = AnnotationSpec("lung", list(LUS_FINDINGS.values()), list(LUS_FINDINGS),
                          {LUS_SEVERITY[0]: list(LUS_SEVERITY[2])})
    table = t.copy()
    table["text"] = texts
    seq_manifest = Manifest(table, list(manifest.classes), manifest.modality, manifest.name)
    return SequenceSet(seq_manifest, [[p] for p in manifest.paths], texts, binary, sev[:, None], spec)


def _yes_no(values: pd.Series, column: str) -> np.ndarray:
    out = np.full(len(values), np.nan)
    for i, v in enumerate(values):
        s = "" if pd.isna(v) else str(v).strip().lower()
        if s in ("yes", "1", "true", "1.0"):
            out[i] = 1.0
        elif s in ("no", "0", "false", "0.0"):
            out[i] = 0.0
        elif s:
            raise ConfigError(f"column {column!r} row {i}: expected yes/no, got {v!r}")
    return out


def _synth_targets(preset: str, findings: list[dict]) -> tuple[AnnotationSpec, np.ndarray, np.ndarray]:
    if preset not in SYNTH_BINARY:
        raise ConfigError(f"simulator preset {preset!r} has no categorical findings to annotate "
                          f"(use one of {sorted(SYNTH_BINARY)})")
    bmap, cmap = SYNTH_BINARY[preset], SYNTH_CATEGORICAL[preset]
    binary = np.array([[float(read(f[k])) for k, (_, read) in bmap.items()] for f in findings], dtype=np.float32)
    cat = np.array([[classes.index(str(f[key])) for key, classes in cmap.values()] for f in findings], dtype=np.int64)
    spec = AnnotationSpec(preset, [e for e, _ in bmap.values()], list(bmap),
                          {name: list(classes) for name, (_, classes) in cmap.items()})
    return spec, binary, cat.reshape(len(findings), len(cmap))


def synthetic_manifest_sequences(manifest: Manifest, preset: str) -> SequenceSet:
    """Simulator data written by `write_dataset` (columns `text` and `findings` JSON)."""
    t = manifest.table
    if "findings" not in t.columns or "text" not in t.columns:
        raise ConfigError(f"simulator manifest {manifest.name} lacks the 'findings' / 'text' columns")
    findings = [json.loads(v) for v in t["findings"]]
    spec, binary, cat = _synth_targets(preset, findings)
    texts = [str(v) for v in t["text"]]
    return SequenceSet(manifest, [[p] for p in manifest.paths], texts, binary, cat, spec)


def synthetic_sequences(preset: str = "lung", n: int = 12, seed: int = 0, frames: int = 8,
                        size: int = 64) -> SequenceSet:
    """Simulated sequence-text pairs in memory (clips filled, no files): for tests and demos."""
    from sonodistill.data.synthetic import group_for, synthesize

    items = [synthesize(preset, i, seed, frames, size) for i in range(n)]
    table = pd.DataFrame({"path": [f"synthetic://{preset}/{i:05d}" for i in range(n)],
                          "group": [group_for(preset, i) for i in range(n)],
                          "label": [str(it.label) for it in items], "text": [it.report for it in items]})
    from sonodistill.data.synthetic import PRESET_CLASSES

    manifest = Manifest(table, list(PRESET_CLASSES[preset]), "video", f"synth-{preset}")
    spec, binary, cat = _synth_targets(preset, [it.findings for it in items])
    return SequenceSet(manifest, [[p] for p in manifest.paths], [it.report for it in items], binary, cat, spec,
                       clips=[it.frames for it in items])


def generic_sequences(manifest: Manifest, graph: str = "lung") -> SequenceSet:
    """Any labelled manifest with a `text` column: each item is a sequence, its class the categorical target."""
    if "text" not in manifest.table.columns or not manifest.has_labels:
        raise ConfigError(f"manifest {manifest.name!r} needs a 'text' column and labels to be paired for DILBERT")
    texts = ["" if pd.isna(v) else str(v) for v in manifest.table["text"]]
    spec = AnnotationSpec(graph, [], [], {"label": list(manifest.classes)})
    return SequenceSet(manifest, [[p] for p in manifest.paths], texts, np.zeros((len(manifest), 0), np.float32),
                       manifest.labels[:, None].astype(np.int64), spec)
