"""Adapters: turn each supported data set layout into a validated `Manifest`.

`load_adapter("lus-blues")` finds the data under `SONODISTILL_DATA` (or `../shared/data`);
`load_adapter("csv", "my.csv")` and `load_adapter("folder", "dir/")` read user data.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from sonodistill.errors import ConfigError, DataError, ManifestError
from sonodistill.paths import dataset_root

from . import readers
from .dicom_patients import check_dicom_patients, dicom_patient_groups
from .folder_rows import FolderRowError, expand_folder_rows
from .manifest import Manifest, Modality, canonical_label, class_order, read_header
from .splits import check_duplicate_content
from .user_csv import forward_slashes, read_user_csv

log = logging.getLogger(__name__)

# the folder adapter: videos and DICOM cines are the video modality, images the image modality (data/readers.py)
VIDEO_EXTENSIONS = frozenset(readers.VIDEO_EXTENSIONS + readers.DICOM_EXTENSIONS)
IMAGE_EXTENSIONS = frozenset(readers.IMAGE_EXTENSIONS)

AdapterFn = Callable[..., Manifest]
ADAPTERS: dict[str, AdapterFn] = {}
# Adapters whose data ships in the shared data folder (root may be omitted for these).
SHARED_DATASETS = ("lus-blues", "pocus-frames", "hc18", "busi")


def register_adapter(name: str) -> Callable[[AdapterFn], AdapterFn]:
    """Decorator adding `fn(root: Path, **options) -> Manifest` to `ADAPTERS` under `name`."""

    def wrap(fn: AdapterFn) -> AdapterFn:
        ADAPTERS[name] = fn
        return fn

    return wrap


def parse_data_spec(spec: str) -> tuple[str, str | None]:
    """Split "name[:root]" (e.g. "lus-blues:../shared/data/lus-blues") into (name, root or None)."""
    name, sep, root = spec.partition(":")
    name = name.strip()
    if name not in ADAPTERS:
        raise ConfigError(f"unknown data set '{name}' in spec {spec!r}; known: {sorted(ADAPTERS)}")
    root = root.strip()
    if sep and not root:
        raise ConfigError(f"empty root after ':' in data spec {spec!r}")
    return name, (root or None)


def adapter_options(options: dict[str, Any], target: str | None = None) -> dict[str, Any]:
    """An adapter's keyword options: `options` (config `data.adapter_options`, `data inspect --option`) with
    `target` added; a target given both ways is a ConfigError."""
    if target is not None and "target" in options and options["target"] != target:
        raise ConfigError(f"data target given twice: data.target={target!r} and adapter option "
                          f"target={options['target']!r}; keep one")
    return {**options, **({"target": target} if target is not None else {})}


def load_adapter(name: str, root: str | Path | None = None, **options: object) -> Manifest:
    """Build the manifest of data set `name` from `root` (default: the shared data folder); files are checked."""
    if name not in ADAPTERS:
        raise ConfigError(f"unknown data set adapter '{name}'; known: {sorted(ADAPTERS)}")
    if root is None:
        if name not in SHARED_DATASETS:
            raise ConfigError(f"adapter '{name}' needs a root (a folder or CSV file), e.g. '{name}:/path/to/data'")
        found = dataset_root(name)
        if found is None:
            raise ConfigError(
                f"data set '{name}' not found: set SONODISTILL_DATA to the folder holding '{name}/' "
                f"or place shared/data beside the checkout, or pass a root ('{name}:/path/to/{name}')"
            )
        root = found
    root = Path(root).expanduser()
    if not root.exists():
        raise ConfigError(f"root of data set '{name}' does not exist: {root}")
    manifest = ADAPTERS[name](root.resolve(), **options)
    manifest.validate(check_files=True)
    manifest.check_classes_nonempty()
    check_duplicate_content(manifest)
    check_dicom_patients(manifest)
    return manifest


# -- helpers ----------------------------------------------------------------------------------
def _read_table(path: Path, **kwargs: object) -> pd.DataFrame:
    if not path.is_file():
        raise ManifestError(f"table not found: {path}")
    return pd.read_csv(path, **kwargs)  # type: ignore[arg-type]


def _text(values: pd.Series) -> list[str]:
    """Strings with missing values as ''."""
    return ["" if pd.isna(v) else str(v).strip() for v in values]


def _reject_options(name: str, options: dict[str, object]) -> None:
    if options:
        raise ConfigError(f"adapter '{name}' got unknown option(s) {sorted(options)}")


def connected_groups(*keys: np.ndarray | list[str]) -> np.ndarray:
    """Group name per row such that rows sharing any key value (of any key column) share a group.

    E.g. keys = (source_video, patient_id): a source video spanning two patient ids merges them.
    The name is the sorted, '+'-joined set of the last key's values in the component.
    """
    cols = [np.asarray(k).astype(str) for k in keys]
    n = len(cols[0])
    parent: dict[tuple[int, str], tuple[int, str]] = {}

    def find(x: tuple[int, str]) -> tuple[int, str]:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for r in range(n):
        nodes = [(j, c[r]) for j, c in enumerate(cols)]
        root = find(nodes[0])
        for other in nodes[1:]:
            o = find(other)
            if o != root:
                parent[o] = root
    comp_names: dict[tuple[int, str], set[str]] = {}
    for r in range(n):
        comp_names.setdefault(find((0, cols[0][r])), set()).add(cols[-1][r])
    return np.array(["+".join(sorted(comp_names[find((0, cols[0][r]))])) for r in range(n)], dtype=object)


# -- lus-blues ------------------------------------------------------------------------------------
_SEVERITY3 = {0: "0", 1: "1-2", 2: "1-2", 3: "3"}
LUS_TARGETS = {
    "severity": ["0", "1", "2", "3"],
    "severity3": ["0", "1-2", "3"],
    "b_lines": ["no", "yes"],
    "a_lines": ["no", "yes"],
    "covid": ["negative", "positive"],   # cov_test (PCR), a patient label repeated on each of its videos
}


@register_adapter("lus-blues")
def lus_blues(root: Path, target: str = "severity", **options: object) -> Manifest:
    """COVID-BLUES lung videos: label from `target` (severity | severity3 | b_lines | a_lines | covid), group =
    patient. `covid` is the patient's PCR result on each of its videos: score it per patient with
    `sonodistill eval RUN --per-group`."""
    _reject_options("lus-blues", options)
    if target not in LUS_TARGETS:
        raise ConfigError(f"lus-blues: unknown target '{target}'; choose one of {sorted(LUS_TARGETS)}")
    t = _read_table(root / "labels.csv")
    score = t["severity_score"]
    if target in ("severity", "severity3"):
        bad = np.flatnonzero(score.isna().to_numpy() | ~score.isin([0, 1, 2, 3]).to_numpy())
        if len(bad):
            raise ManifestError(f"lus-blues: severity_score {score.iloc[bad[0]]!r} not in 0..3", row=int(bad[0]))
        ints = score.astype(int)
        label = ints.astype(str) if target == "severity" else ints.map(_SEVERITY3)
    elif target == "covid":
        cov = t["cov_test"]
        bad = np.flatnonzero(~cov.isin([0, 1]).to_numpy())
        if len(bad):
            raise ManifestError(f"lus-blues: cov_test {cov.iloc[bad[0]]!r} is not 0 or 1", row=int(bad[0]))
        label = cov.astype(int).map({0: "negative", 1: "positive"})
    else:
        label = t[target].astype(str).str.strip().str.lower()
    table = pd.DataFrame(
        {
            "path": [str(root / f) for f in t["file"]],
            "group": t["patient_id"].astype(str).to_numpy(),
            "label": label.to_numpy(),
            "text": _text(t["comments"]),
        }
    )
    for col in ("patient_id", "bluepoint", "repeat", "n_frames", "fps", "comments", "a_lines", "b_lines",
                "severity_score", "cov_test"):
        if col in t.columns:
            table[col] = t[col].to_numpy()
    return Manifest(table, list(LUS_TARGETS[target]), "video", f"lus-blues/{target}")


# -- pocus-frames ---------------------------------------------------------------------------------
POCUS_CLASSES = ["covid", "pneumonia", "regular"]
_POCUS_FINDINGS = {
    "Effusion": "effusion",
    "Consolidations": "consolidations",
    "B-lines": "finding_b_lines",
    "A-lines": "finding_a_lines",
    "Pleural line irregularities": "pleural_irregularities",
    "Air bronchogram": "air_bronchogram",
    "Healthy": "healthy",
}
_POCUS_COMMENTS = ("Comments first medical doctor (MD1)", "MD2", "MD3")


def pocus_source_key(name: str) -> str:
    """sources.csv names a source without its extension: "Cov-Atlas+(44).gif" -> "Cov-Atlas+(44)"."""
    return os.path.splitext(str(name))[0].strip()


@register_adapter("pocus-frames")
def pocus_frames(root: Path, **options: object) -> Manifest:
    """POCUS lung frames: label covid/pneumonia/regular; group = patient ids merged through shared source videos."""
    _reject_options("pocus-frames", options)
    t = _read_table(root / "frames.csv", dtype={"patient_id": str, "source_video": str})
    groups = connected_groups(t["source_video"].to_numpy(), t["patient_id"].to_numpy())
    table = pd.DataFrame(
        {"path": [str(root / p) for p in t["path"]], "group": groups, "label": t["label"].astype(str).to_numpy()}
    )
    for col in ("source_video", "frame_index", "patient_id", "probe", "source_type", "license"):
        if col in t.columns:
            table[col] = t[col].to_numpy()
    table["text"] = ""
    sources_path = root / "sources.csv"
    if sources_path.is_file():
        s = _read_table(sources_path)
        s["_key"] = s["Filename"].map(pocus_source_key)
        dup = s["_key"].duplicated()
        if dup.any():
            raise ManifestError(f"{sources_path}: duplicate Filename {s['Filename'][dup].iloc[0]!r}", row=int(np.flatnonzero(dup)[0]))
        s = s.set_index("_key")
        keys = table["source_video"].map(pocus_source_key)
        matched = keys.isin(s.index)
        n_src = table["source_video"].nunique()
        n_match = table.loc[matched, "source_video"].nunique()
        log.info("pocus-frames: %d of %d source videos matched in sources.csv", n_match, n_src)
        if n_match < n_src:
            missing = sorted(set(table.loc[~matched, "source_video"]))
            log.warning("pocus-frames: no sources.csv row for %d source(s), e.g. %s", len(missing), missing[:3])
        for src, dst in _POCUS_FINDINGS.items():
            if src in s.columns:
                table[dst] = keys.map(s[src]).astype(float).to_numpy()
        comments = [c for c in _POCUS_COMMENTS if c in s.columns]
        joined = s[comments].apply(lambda r: "; ".join(v for v in _text(r) if v), axis=1) if comments else None
        if joined is not None:
            table["text"] = keys.map(joined).fillna("").astype(str).to_numpy()
        if "Comments from web site" in s.columns:
            table["web_comments"] = keys.map(s["Comments from web site"]).fillna("").astype(str).to_numpy()
        table["source_matched"] = matched.to_numpy()
    return Manifest(table, list(POCUS_CLASSES), "image", "pocus-frames")


# -- hc18 -----------------------------------------------------------------------------------------
@register_adapter("hc18")
def hc18(root: Path, **options: object) -> Manifest:
    """HC18 fetal head images with filled-ellipse masks; target = head circumference (mm); group = subject."""
    _reject_options("hc18", options)
    t = _read_table(root / "metadata.csv", dtype={"subject_id": str})
    table = pd.DataFrame(
        {
            "path": [str(root / p) for p in t["image"]],
            "group": t["subject_id"].astype(str).to_numpy(),
            "mask": [str(root / p) for p in t["mask"]],
            "target": t["hc_mm"].astype(float).to_numpy(),
            "pixel_size_mm": t["pixel_size_mm"].astype(float).to_numpy(),
        }
    )
    for col in ("subject_id", "width", "height"):
        if col in t.columns:
            table[col] = t[col].to_numpy()
    return Manifest(table, [], "image", "hc18")


# -- busi -----------------------------------------------------------------------------------------
BUSI_CLASSES = ["benign", "malignant", "normal"]


@register_adapter("busi")
def busi(root: Path, **options: object) -> Manifest:
    """BUSI breast images with lesion masks; no patient ids were released, so each image is its own group
    (identical images under two names share one group).

    Option `target="lesions"` keeps only benign + malignant images (the lesion segmentation benchmark).
    """
    target = options.pop("target", None)
    _reject_options("busi", options)
    if target not in (None, "lesions", "class"):
        raise ConfigError(f"busi: unknown target {target!r} (use 'class' or 'lesions')")
    t = _read_table(root / "metadata.csv")
    if target == "lesions":
        t = t[t["label"].astype(str).isin(["benign", "malignant"])].reset_index(drop=True)
    from .cache import file_sha1  # imports torch: only for this adapter

    paths = [str(root / p) for p in t["image"]]
    stems = [Path(p).stem for p in t["image"]]
    # BUSI holds a few identical images under two names (even two classes): such images share one group
    groups = connected_groups([file_sha1(p) for p in paths], stems)
    for g in sorted({g for g in groups if "+" in g}):
        log.warning("busi: identical images %s form one group %r (no split puts them on both sides)",
                    " and ".join(g.split("+")), g)
    table = pd.DataFrame(
        {"path": paths, "group": groups, "label": t["label"].astype(str).to_numpy(),
         "mask": [str(root / p) for p in t["mask"]]}
    )
    for col in ("original_busi_name", "n_lesion_masks"):
        if col in t.columns:
            table[col] = t[col].to_numpy()
    classes = ["benign", "malignant"] if target == "lesions" else list(BUSI_CLASSES)
    return Manifest(table, classes, "image", "busi")


# -- generic: folder per class ---------------------------------------------------------------------
def modality_of(paths: list[str]) -> Modality:
    """'video' or 'image' from file extensions; a DICOM (any name, `readers.is_supported_file`) by the frame count
    its header declares: a cine is a video, a still (one frame) an image, unless the set has videos, which it then
    joins (training names such stills in a warning). Videos with images, or an unsupported file, is an error naming
    a file."""
    kinds: dict[str, str] = {}
    stills: list[str] = []
    for p in paths:
        ext = Path(p).suffix.lower()
        if ext in IMAGE_EXTENSIONS:
            kinds.setdefault("image", p)
        elif ext in readers.VIDEO_EXTENSIONS:
            kinds.setdefault("video", p)
        elif readers.is_supported_file(Path(p)):  # a DICOM, named .dcm or not
            try:
                frames = readers.declared_frames(p)
            except DataError as exc:
                raise ManifestError(f"cannot tell a DICOM's frame count from its header: {exc}") from exc
            if frames == 1:
                stills.append(p)
            else:
                kinds.setdefault("video", p)
        else:
            raise ManifestError(f"unsupported file extension '{ext}' (and no DICOM preamble): {p}")
    if stills:
        kinds.setdefault("video" if "video" in kinds else "image", stills[0])
    if len(kinds) != 1:
        raise ManifestError(
            f"mixed videos and images (e.g. {kinds.get('video')} and {kinds.get('image')}); "
            "put them in separate data sets (folders or CSVs): a model reads either clips or images. To pretrain "
            "`dino` on both, give one as --data and the other in recipe_options.extra_data"
        )
    return next(iter(kinds))  # type: ignore[return-value]


def regex_groups(paths: list[str], group_regex: str) -> list[str]:
    """Each file's group: the first capture group (else the whole match) of `group_regex` searched in its name; a
    name it does not match is a ManifestError naming the row, a regex that does not compile a ConfigError."""
    try:
        rx = re.compile(group_regex)
    except re.error as exc:
        raise ConfigError(f"group_regex {group_regex!r} is not a valid regular expression: {exc}") from exc
    groups = []
    for i, p in enumerate(paths):
        m = rx.search(Path(p).name)
        if m is None:
            raise ManifestError(f"group_regex {group_regex!r} does not match file name {Path(p).name!r}", row=i)
        groups.append(m.group(1) if m.groups() else m.group(0))
    return groups


GROUP_BY = ("folder", "file", "dicom-patient")  # dicom-patient: the PatientID of DICOM headers, as a pseudonym


def _visible_files(root: Path) -> list[Path]:
    """Every file under `root` (sorted), less hidden ones: a name starting with '.' anywhere below `root` (`.DS_Store`,
    a `.ipynb_checkpoints/` folder of copies that would train twice and leak across folds) and an export's DICOMDIR."""
    return sorted(p for p in root.rglob("*")
                  if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
                  and not readers.is_dicomdir(p))


def _folder_group(relative: Path, group_by: str = "folder") -> str:
    """A file's group from its path under its class (or images) folder: with `group_by="folder"` the sub-folder it
    is in (`patient_3/IM0001` -> `patient_3`: one patient's or study's files stay together), or its stem when it
    lies in that folder itself; with `"file"` always its path without the extension (each file its own group)."""
    if group_by == "file":
        return _without_extension(relative).as_posix()
    return relative.parts[0] if len(relative.parts) > 1 else _without_extension(relative).name


def _without_extension(path: Path) -> Path:
    """`path` less its file-format suffix; a DICOM named by its UID (`1.2.840.10008.7`) keeps every digit."""
    known = VIDEO_EXTENSIONS | IMAGE_EXTENSIONS
    return path.with_suffix("") if path.suffix.lower() in known else path


def _check_group_by(adapter: str, group_by: str, allowed: tuple[str, ...] = GROUP_BY) -> None:
    if group_by not in allowed:
        raise ConfigError(f"{adapter} adapter: group_by must be one of {list(allowed)}, got {group_by!r}")


def _file_groups(paths: list[str], relative: list[Path], group_by: str, group_regex: str | None) -> list[str]:
    """Each file's group: `group_regex`'s on its name, else by `group_by` (`_folder_group` on its path relative to
    its class folder or root; dicom-patient: its DICOM header's PatientID as a pseudonym, `dicom_patients`)."""
    if group_regex is not None:
        return regex_groups(paths, group_regex)
    if group_by == "dicom-patient":
        return dicom_patient_groups(paths)
    return [_folder_group(r, group_by) for r in relative]


@register_adapter("folder")
def folder(root: Path, group_regex: str | None = None, group_by: str = "folder", **options: object) -> Manifest:
    """One sub-folder per class holding videos or images (DICOMs of any name; an export's DICOMDIR skipped).
    Group: the sub-folder of the class folder a file is in, else the file's stem (`_folder_group`; `group_by="file"`:
    each file its own; `group_by="dicom-patient"`: the PatientID of each DICOM's header, as a pseudonym); or
    `group_regex`'s first group, matched on the file name.

    Example: group_regex=r"^(patient_\\d+)_" groups "patient_3_L1.mp4" and "patient_3_R2.mp4" together.
    """
    _reject_options("folder", options)
    _check_group_by("folder", group_by)
    if not root.is_dir():
        raise ConfigError(f"folder adapter: root must be a folder with one sub-folder per class: {root}")
    classes = class_order(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise ManifestError(f"folder adapter: no class sub-folders in {root}")
    rows: list[tuple[str, str]] = []
    for c in classes:
        files = _visible_files(root / c)
        if not files:
            raise ManifestError(f"folder adapter: class folder '{c}' is empty: {root / c}")
        rows += [(str(p), c) for p in files]
    paths = [p for p, _ in rows]
    modality = modality_of(paths)
    groups = _file_groups(paths, [Path(p).relative_to(root / c) for p, c in rows], group_by, group_regex)
    table = pd.DataFrame({"path": paths, "group": groups, "label": [c for _, c in rows]})
    return Manifest(table, classes, modality, root.name)


# -- generic: a folder of unlabelled files ---------------------------------------------------------
@register_adapter("unlabelled")
def unlabelled(root: Path, group_regex: str | None = None, group_by: str = "folder",
               **options: object) -> Manifest:
    """Every video or image under `root` (its sub-folders too; DICOMs of any name, an export's DICOMDIR skipped),
    without labels: the pretraining set of `dino` (also in its `recipe_options.extra_data`) and of `discovr
    --final-only`. Group: the sub-folder of `root` a file is in (a patient), else its stem (`group_by="file"`: each
    file its own; `"dicom-patient"`: its DICOM header's PatientID, as a pseudonym); or `group_regex`'s first group,
    matched on the file name. One modality a set: videos and images in one folder are
    an error naming one of each (give them as two sets, one in `extra_data`)."""
    _reject_options("unlabelled", options)
    _check_group_by("unlabelled", group_by)
    if not root.is_dir():
        raise ConfigError(f"unlabelled adapter: root must be a folder of videos or images: {root}")
    files = _visible_files(root)
    if not files:
        raise ManifestError(f"unlabelled adapter: no files in {root}")
    paths = [str(p) for p in files]
    modality = modality_of(paths)
    groups = _file_groups(paths, [p.relative_to(root) for p in files], group_by, group_regex)
    return Manifest(pd.DataFrame({"path": paths, "group": groups}), [], modality, root.name)


# -- generic: images and their masks ---------------------------------------------------------------
#: the mask-name endings tried after an image's stem (`x.png` -> `x.png`, `x_mask.png`, ...), unless `mask_suffix`
MASK_SUFFIXES = ("", "_mask", "-mask", "_Annotation", "_seg", "_label")


def _mask_index(masks_dir: Path) -> dict[tuple[str, ...], list[Path]]:
    """Every image file under `masks_dir` by its path relative to it, without the extension (lower-cased)."""
    index: dict[tuple[str, ...], list[Path]] = {}
    for m in _visible_files(masks_dir):
        if m.suffix.lower() in IMAGE_EXTENSIONS:
            rel = m.relative_to(masks_dir)
            index.setdefault(tuple(rel.parent.parts) + (rel.stem.lower(),), []).append(m)
    return index


@register_adapter("image-masks")
def image_masks(root: Path, mask_suffix: str | None = None, group_regex: str | None = None,
                group_by: str = "folder", unmasked: str = "error", **options: object) -> Manifest:
    """Images in `ROOT/images/` and their masks in `ROOT/masks/` (the same sub-folders), one mask an image: named
    as the image, or its stem plus one of `MASK_SUFFIXES` (or exactly `mask_suffix`), any image format; mask pixels
    > 0 are the structure. Group: the sub-folder of `images/` an image is in (a patient), else its stem
    (`group_by="file"`: each image its own, for sub-folders that are not patients); or `group_regex`'s first group,
    matched on the file name. An image without a mask is an error naming it, or with `unmasked="unlabelled"` a row
    with an empty mask (unlabelled: `recipe_options.labelled_rows=masks` trains on it without a mask); a mask
    without an image and a mask that two names could claim are errors naming the files."""
    _reject_options("image-masks", options)
    _check_group_by("image-masks", group_by, ("folder", "file"))  # PNG / JPEG images: no DICOM header
    if unmasked not in ("error", "unlabelled"):
        raise ConfigError(f"image-masks adapter: unmasked must be 'error' or 'unlabelled', got {unmasked!r}")
    images_dir, masks_dir = root / "images", root / "masks"
    for d in (images_dir, masks_dir):
        if not d.is_dir():
            raise ConfigError(f"image-masks adapter: {d} is not a folder (expected ROOT/images/ and ROOT/masks/)")
    images = [p for p in _visible_files(images_dir) if p.suffix.lower() in IMAGE_EXTENSIONS]
    if not images:
        raise ManifestError(f"image-masks adapter: no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) in {images_dir}")
    index = _mask_index(masks_dir)
    suffixes = (mask_suffix,) if mask_suffix is not None else MASK_SUFFIXES
    used: set[Path] = set()
    rows: list[tuple[str, str, str]] = []
    missing: list[str] = []
    for img in images:
        rel = img.relative_to(images_dir)
        found = [m for s in suffixes for m in index.get(tuple(rel.parent.parts) + ((rel.stem + s).lower(),), [])]
        if not found:
            missing.append(str(rel))
            if unmasked == "unlabelled":
                rows.append((str(img), _folder_group(rel, group_by), ""))
            continue
        if len(found) > 1:
            raise ManifestError(f"image-masks adapter: image {img} has {len(found)} masks: "
                                f"{', '.join(str(m) for m in found)}; keep one (or set mask_suffix)")
        if found[0] in used:  # e.g. images x.png and x_mask.png, one mask x_mask.png
            raise ManifestError(f"image-masks adapter: mask {found[0]} matches two images, {img} and another; "
                                "rename one (or set mask_suffix)")
        used.add(found[0])
        rows.append((str(img), _folder_group(rel, group_by), str(found[0])))
    if missing and unmasked == "error":
        raise ManifestError(f"image-masks adapter: {len(missing)} image(s) without a mask in {masks_dir} (tried the "
                            f"endings {list(suffixes)}), e.g. {', '.join(missing[:3])}; option unmasked=unlabelled "
                            "keeps them as unlabelled images")
    if len(missing) == len(images):
        raise ManifestError(f"image-masks adapter: none of the {len(images)} images in {images_dir} has a mask in "
                            f"{masks_dir} (tried the endings {list(suffixes)})")
    unused = [str(m) for ms in index.values() for m in ms if m not in used]
    if unused:
        raise ManifestError(f"image-masks adapter: {len(unused)} mask(s) belong to no image in {images_dir}, "
                            f"e.g. {', '.join(unused[:3])}")
    table = pd.DataFrame(rows, columns=["path", "group", "mask"])
    if group_regex is not None:
        table["group"] = regex_groups(list(table["path"]), group_regex)
    return Manifest(table, [], "image", root.name)


# -- generic: user CSV ------------------------------------------------------------------------------
WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:[\\/]")


def _resolve(base: Path, value: object, row: int, col: str) -> str:
    """A CSV cell's path, absolute, relative ones against the CSV's folder. A path written on Windows
    (`exports\\p3\\IM1`) reads with `/` where no file has the name as written; a drive letter (`C:\\...`) is
    refused with what to write instead."""
    if pd.isna(value) or str(value).strip() == "":  # type: ignore[arg-type]
        raise ManifestError(f"empty {col}", row=row)
    text = str(value).strip()
    if os.sep == "/" and WINDOWS_DRIVE.match(text):
        raise ManifestError(f"{col} '{text}' is a Windows path with a drive letter, which this machine cannot open: "
                            "write paths relative to the CSV's folder (e.g. exports/p3/IM1)", row=row)
    p = Path(text).expanduser()
    resolved = p if p.is_absolute() else (base / p).resolve()
    if forward_slashes(text) != text and not resolved.exists():
        forward = Path(forward_slashes(text)).expanduser()
        resolved = forward if forward.is_absolute() else (base / forward).resolve()
    return str(resolved)


def _expand_folder_rows(out: pd.DataFrame, given: pd.Series, path_col: str, group_from_folder: bool) -> pd.DataFrame:
    """Rows whose path is a folder (a patient's export) become one row a supported file below it
    (`expand_folder_rows`), each with the row's label, group and other columns; with `group_from_folder` (no group
    column) their group is the folder's name. A folder without a supported file, or with a `mask`, is a
    ManifestError naming the CSV row."""
    folders = [Path(p) if Path(p).is_dir() else None for p in out["path"]]
    for i, folder in enumerate(folders):
        if folder is not None and "mask" in out.columns and str(out["mask"].iloc[i]):
            raise ManifestError(f"{path_col} '{given.iloc[i]}' is a folder: a mask belongs to one image", row=i)
    try:
        return expand_folder_rows(out, "path", folders, folder_group="group" if group_from_folder else None)
    except FolderRowError as exc:
        raise ManifestError(f"{path_col} '{given.iloc[exc.row]}' is a folder without a video or image: {exc}",
                            row=exc.row) from exc


@register_adapter("csv")
def csv_manifest(
    root: Path,
    path_col: str = "path",
    label_col: str | None = "label",
    group_col: str | None = "group",
    mask_col: str | None = None,
    text_col: str | None = None,
    target_col: str | None = None,
    classes: list[str] | str | None = None,
    modality: str | None = None,
    **options: object,
) -> Manifest:
    """A user CSV (or a file from `Manifest.to_csv`): declared columns, relative paths against the CSV's folder. A
    path that is a folder (a patient's export) stands for every video or image below it, each with the row's label
    and group (`_expand_folder_rows`): one row a patient labels a whole export.

    `group_col=None` makes every row its own group (only correct when rows are independent patients; a folder row's
    files share the folder's group);
    `classes` (list or "a|b|c") fixes the class order, else the header comment or the sorted labels.
    A whole number written as a decimal label ('1.0') is the class '1' (`canonical_label`).
    """
    _reject_options("csv", options)
    if not root.is_file():
        raise ConfigError(f"csv adapter: root must be a CSV file: {root}")
    meta = read_header(root)
    t = read_user_csv(root, skip_lines=1 if meta else 0, dtype=str, keep_default_na=False, na_values=[""])
    if len(t) == 0:
        raise ManifestError(f"{root}: no rows")

    def need(col: str | None, what: str) -> None:
        if col is not None and col not in t.columns:
            raise ManifestError(f"{root}: {what} column '{col}' not found (columns: {list(t.columns)})")

    need(path_col, "path")
    if group_col is not None and group_col not in t.columns:
        raise ManifestError(f"{root}: group column '{group_col}' not found (columns: {list(t.columns)}); name the "
                            "column holding each row's patient (option group_col=COLUMN), or, only if every row is "
                            "an independent patient, group_col=null (each row its own group; a row naming a "
                            "folder: its files one group)")
    need(mask_col, "mask")
    need(text_col, "text")
    need(target_col, "target")
    mask_col = mask_col or ("mask" if meta and "mask" in t.columns else None)
    text_col = text_col or ("text" if meta and "text" in t.columns else None)
    target_col = target_col or ("target" if meta and "target" in t.columns else None)
    if label_col is not None and label_col not in t.columns:
        if label_col != "label" or classes:
            need(label_col, "label")
        label_col = None  # default 'label' absent: an unlabelled set

    base = root.parent
    out = pd.DataFrame({"path": [_resolve(base, v, i, path_col) for i, v in enumerate(t[path_col])]})
    if group_col is None:
        out["group"] = [Path(p).stem for p in out["path"]]
    else:
        for i, g in enumerate(t[group_col]):
            if pd.isna(g) or str(g).strip() == "":
                raise ManifestError(f"empty group ('{group_col}') for {out['path'].iloc[i]}", row=i)
        out["group"] = t[group_col].astype(str).str.strip().to_numpy()
    declared: list[str] = []
    if label_col is not None:
        for i, v in enumerate(t[label_col]):
            if pd.isna(v) or str(v).strip() == "":
                raise ManifestError(f"empty label ('{label_col}') for {out['path'].iloc[i]}", row=i)
        out["label"] = [canonical_label(v) for v in t[label_col].astype(str).str.strip()]
        if isinstance(classes, str):
            declared = [canonical_label(c) for c in classes.split("|") if c]
        elif classes:
            declared = [canonical_label(str(c)) for c in classes]
        else:
            declared = [canonical_label(c) for c in meta.get("classes", [])] or class_order(out["label"])
    if mask_col is not None:
        out["mask"] = ["" if pd.isna(v) or str(v).strip() == "" else _resolve(base, v, i, mask_col)
                       for i, v in enumerate(t[mask_col])]
    if text_col is not None:
        out["text"] = _text(t[text_col])
    if target_col is not None:
        try:
            out["target"] = pd.to_numeric(t[target_col]).astype(float).to_numpy()
        except ValueError as exc:
            raise ManifestError(f"{root}: target column '{target_col}' is not numeric: {exc}") from exc
    used = {path_col, label_col, group_col, mask_col, text_col, target_col}
    for col in t.columns:
        if col not in used and col not in out.columns:
            out[col] = t[col].to_numpy()
    out = _expand_folder_rows(out, t[path_col], path_col, group_from_folder=group_col is None)
    mod = modality or meta.get("modality") or modality_of(list(out["path"]))
    if mod not in ("video", "image"):
        raise ConfigError(f"csv adapter: modality must be 'video' or 'image', got {mod!r}")
    return Manifest(out, declared, mod, meta.get("name", root.stem))  # type: ignore[arg-type]
