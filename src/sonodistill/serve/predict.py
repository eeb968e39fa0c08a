"""Predictions for files: the training preprocessing, sliding windows for video classifiers, masks for
segmentation models, embeddings for self-supervised encoders, and per-clip heat maps. Registers the built-in
model kinds (classification, segmentation, features).

Video classifiers: windows of T consecutive (preprocessed) frames, starting every `stride` frames, the last
window ending at the last frame; a frame's score is the mean over the windows that contain it; the clip's
probabilities are the mean over windows (clip_mode 'windows') or the model on T frames sampled uniformly
over the whole clip, exactly the cross-validation input (clip_mode 'uniform').
"""

from __future__ import annotations

import base64
import inspect
import io
import json
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch

from sonodistill.data.preprocess import normalise, preprocess_clip, sample_frame_indices
from sonodistill.data.readers import (IMAGE_EXTENSIONS, Video, files_in_folder, is_dicom_file, is_dicomdir,
                                      read_clip, read_dicom_series, read_image)
from sonodistill.errors import ConfigError, DataError, SonoDistillError
from sonodistill.explain.occlusion import ClassProbability, EmbeddingSimilarity, RegionProbability
from sonodistill.serve.kinds import OcclusionSpec, PredictOptions, PreparedInput, get_model_kind, register_model_kind
from sonodistill.serve.loading import EmbeddingConcat, HeadCircumferenceModel, LoadedModel

if TYPE_CHECKING:
    from sonodistill.evaluation.head_circumference import Ellipse

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------- inputs
def expand_inputs(inputs: list[str | Path], folder_as_clip: bool = False, recursive: bool = False) -> list[Path]:
    """Files to predict: files as given; folders -> their supported files (`readers.files_in_folder`: sorted,
    sub-folders too with `recursive`). With folder_as_clip, a folder stays one input (its images are the frames of
    one clip)."""
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if not p.exists():
            raise DataError(p, "file not found")
        if p.is_dir() and not folder_as_clip:
            out.extend(files_in_folder(p, recursive))
        else:
            out.append(p)
    return out


def read_folder_clip(folder: Path) -> Video:
    """Images of a folder (sorted by name), or its single-frame DICOMs (a series exported one file a frame, ordered by
    InstanceNumber: `readers.read_dicom_series`), as the frames of one clip: uint8 `T x H x W`."""
    visible = [f for f in sorted(folder.iterdir()) if f.is_file() and not f.name.startswith(".")]
    dicoms = [f for f in visible if is_dicom_file(f) and not is_dicomdir(f)]
    files = [f for f in visible if f.suffix.lower() in IMAGE_EXTENSIONS]
    if dicoms and files:
        raise DataError(folder, f"holds both images ({files[0].name}) and DICOM files ({dicoms[0].name}): the frames "
                                "of one clip are one or the other")
    if dicoms:
        return read_dicom_series(dicoms)
    if not files:
        raise DataError(folder, f"no images ({', '.join(IMAGE_EXTENSIONS)}) or single-frame DICOMs to use as frames")
    frames = [read_image(f) for f in files]
    for f, a in zip(files, frames):
        if a.shape != frames[0].shape:
            raise DataError(f, f"frame size {a.shape} differs from the first frame's {frames[0].shape}")
    return Video(np.stack(frames), None, str(folder))


def read_input(path: str | Path) -> Video:
    """A file via readers.read_clip (grayscale), or a folder of images as one clip."""
    p = Path(path)
    return read_folder_clip(p) if p.is_dir() else read_clip(p, grayscale=True)


def prepare(model: LoadedModel, video: Video, name: str) -> PreparedInput:
    """Apply the run's preprocessing (crop, overlay removal, resize) to a decoded clip."""
    frames = np.ascontiguousarray(video.frames)
    clip = preprocess_clip(frames, model.preprocess)
    return PreparedInput(name, frames, clip, video.fps, video.pixel_spacing_mm)


# ------------------------------------------------------------------------------------------- windows
def window_starts(n: int, length: int, stride: int) -> list[int]:
    """Starts of windows of `length` frames every `stride`, plus one ending at the last frame; [0] if n <= length."""
    if n <= length:
        return [0]
    starts = list(range(0, n - length + 1, stride))
    if starts[-1] != n - length:
        starts.append(n - length)
    return starts


def window_indices(n: int, length: int, start: int) -> np.ndarray:
    """Frame indices of one window; a clip shorter than `length` is stretched (nearest neighbour)."""
    if n < length:
        return sample_frame_indices(n, length, "uniform")
    return np.arange(start, start + length)


def _to_input(model: LoadedModel, clip: np.ndarray) -> np.ndarray:
    """uint8 `B x T x S x S` (video) or `B x S x S` (frame) -> float32 model input with C = 1."""
    return normalise(clip, model.preprocess)[:, None]


def run_batches(model: LoadedModel, items: list[np.ndarray], batch_size: int) -> np.ndarray:
    """Model outputs (probabilities, or embeddings) for uint8 inputs (`T x S x S` windows or `S x S` frames), `batch_size` per forward pass."""
    outs = []
    for i in range(0, len(items), batch_size):
        outs.append(model.probabilities(_to_input(model, np.stack(items[i : i + batch_size]))))
    return np.concatenate(outs)


def default_stride(model: LoadedModel) -> int:
    return max(1, model.num_frames // 2)


def frame_scores(n: int, length: int, starts: list[int], window_probs: np.ndarray) -> np.ndarray:
    """Per-frame scores `n x K`: mean of the probabilities of every window that contains the frame."""
    total = np.zeros((n, window_probs.shape[1]), dtype=np.float64)
    count = np.zeros(n, dtype=np.float64)
    for s, p in zip(starts, window_probs):
        idx = np.unique(window_indices(n, length, s))
        total[idx] += p
        count[idx] += 1
    return total / np.maximum(count, 1)[:, None]


# ------------------------------------------------------------------------------------------- kinds
def round_list(a: Any, decimals: int) -> Any:
    """Array -> nested lists of floats rounded to `decimals` (JSON output)."""
    return np.round(np.asarray(a, dtype=np.float64), decimals).tolist()


def window_outputs(model: LoadedModel, clip: np.ndarray, options: PredictOptions) -> dict[str, Any]:
    """A video model on windows of T frames of a uint8 `n x S x S` clip.

    Returns {"length": T, "stride", "starts": [W starts], "outputs": `W x ...` model outputs, "clip": the clip's
    output (mean over windows, or the model on T uniformly sampled frames for clip_mode 'uniform')}.
    """
    n, t = clip.shape[0], model.num_frames
    stride = options.stride or default_stride(model)
    starts = window_starts(n, t, stride)
    outputs = run_batches(model, [clip[window_indices(n, t, s)] for s in starts], options.batch_size)
    if options.clip_mode == "uniform":
        whole = run_batches(model, [clip[sample_frame_indices(n, t, "uniform")]], 1)[0]
    else:
        whole = outputs.mean(axis=0)
    return {"length": t, "stride": stride, "starts": starts, "outputs": outputs, "clip": whole}


def classify(model: LoadedModel, item: PreparedInput, options: PredictOptions) -> dict[str, Any]:
    """Class probabilities of a clip (or image), per-window and per-frame scores."""
    clip = item.clip
    n, k = clip.shape[0], len(model.classes)
    out: dict[str, Any] = {}
    if model.input_kind == "video":
        w = window_outputs(model, clip, options)
        wp, probs = w["outputs"], w["clip"]
        per_frame = frame_scores(n, w["length"], w["starts"], wp)
        out["windows"] = {"length": w["length"], "stride": w["stride"], "starts": w["starts"],
                          "probabilities": round_list(wp, options.decimals)}
    else:
        per_frame = run_batches(model, list(clip), options.batch_size)
        probs = per_frame.mean(axis=0)
    if probs.shape != (k,):
        raise SonoDistillError(f"model output has shape {probs.shape}, expected {k} class probabilities")
    out.update({
        "prediction": model.classes[int(np.argmax(probs))],
        "probabilities": dict(zip(model.classes, round_list(probs, options.decimals))),
        "clip_mode": options.clip_mode if model.input_kind == "video" else "mean-of-frames",
        "per_frame": round_list(per_frame, options.decimals),
    })
    return out


def embed(model: LoadedModel, item: PreparedInput, options: PredictOptions) -> dict[str, Any]:
    """Pooled embedding `E` of a clip (or image), no class probabilities.

    Video encoders (DISCOVR): one embedding per window of T frames (`windows.embeddings`, `W x E`); the clip's is
    their mean (or T uniformly sampled frames, clip_mode 'uniform', the input the run's own evaluation embedded).
    Frame encoders (DINO): one per frame (`frame_embeddings`, `n x E`); the clip's is their mean.
    """
    clip = item.clip
    out: dict[str, Any] = {}
    if model.input_kind == "video":
        w = window_outputs(model, clip, options)
        vector = w["clip"]
        out["windows"] = {"length": w["length"], "stride": w["stride"], "starts": w["starts"],
                          "embeddings": round_list(w["outputs"], options.decimals)}
        mode = options.clip_mode
    else:
        frames = run_batches(model, list(clip), options.batch_size)
        vector = frames.mean(axis=0)
        out["frame_embeddings"] = round_list(frames, options.decimals)
        mode = "mean-of-frames"
    if vector.ndim != 1:
        raise SonoDistillError(f"features model output has shape {vector.shape} per input, expected an embedding E")
    return {"embedding": round_list(vector, options.decimals), "embedding_dim": int(vector.shape[0]),
            "embedding_members": list(model.member_names), "clip_mode": mode, **out}


def _png(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def segment(model: LoadedModel, item: PreparedInput, options: PredictOptions) -> dict[str, Any]:
    """Per-frame label masks (argmax over classes, then the model's `mask_postprocess`) in the original geometry,
    as PNG files or data URIs; with a known pixel size (`options.pixel_size_mm`, else the file's), each class's area
    in mm^2, and for a head-circumference model the HC of each frame's mask (`measure_head_circumference`) and the
    fitted ellipse in pixels (`head_ellipse_px`, also without a pixel size).

    PNG values: 0/255 for two classes (background/foreground), else the class index.
    """
    clip = item.clip
    probs = run_batches(model, list(clip), options.batch_size)  # n x K x S x S
    if probs.ndim != 4:
        raise SonoDistillError(f"segmentation model output has shape {probs.shape}, expected N x K x H x W")
    k = probs.shape[1]
    if model.mask_postprocess != "none" and k != 2:
        raise SonoDistillError(f"mask_postprocess {model.mask_postprocess!r} applies to background / foreground "
                               f"masks; this model outputs {k} classes")
    classes = mask_class_names(model.classes, k)
    from sonodistill.evaluation.head_circumference import fit_ellipse_contour, geometry_from_frames
    from sonodistill.evaluation.mask_postprocess import postprocess_mask

    geometry = geometry_from_frames(item.frames, model.preprocess)  # the CV evaluation's inverse geometry
    spacing, source = input_pixel_spacing(item, options)
    out: dict[str, Any] = {"classes_in_mask": classes}
    if spacing is not None:
        out.update({"pixel_spacing_mm": round_list(np.asarray(spacing), options.decimals),
                    "pixel_spacing_source": source})
    if model.head_circumference_unavailable is not None:
        out["head_circumference_unavailable"] = model.head_circumference_unavailable
    elif model.head_circumference is not None and spacing is None:
        out["head_circumference_unavailable"] = ("the pixel size is unknown: pass --pixel-size-mm, or a DICOM whose "
                                                 "ultrasound regions or PixelSpacing give it")
    masks = []
    for i, p in enumerate(probs):
        original = geometry.probabilities_to_original(p)  # bilinear probabilities back, then argmax
        label = original.argmax(axis=0).astype(np.uint8)
        if model.mask_postprocess != "none":
            label = postprocess_mask(label == 1, original[1], model.mask_postprocess).astype(np.uint8)
        pixels = np.bincount(label.ravel(), minlength=k)[:k]
        png = _png((label * 255).astype(np.uint8) if k == 2 else label)
        areas = dict(zip(classes, round_list(pixels / label.size, options.decimals)))
        entry: dict[str, Any] = {"frame": i, "area_fraction": areas}
        ellipse = fit_ellipse_contour(label == 1) if model.head_circumference is not None else None
        if spacing is not None:
            entry["area_mm2"] = dict(zip(classes, round_list(pixels * spacing[0] * spacing[1], options.decimals)))
            if model.head_circumference is not None:
                entry.update(measure_head_circumference(label == 1, spacing, model.head_circumference, ellipse))
        if model.head_circumference is not None:
            entry.update(head_ellipse_px(ellipse))
        if options.mask_dir is not None:
            target = Path(options.mask_dir) / f"{Path(item.name).stem}.frame{i:04d}.mask.png"
            if target.exists():
                raise SonoDistillError(f"{target} exists already (two inputs with the same name?): not overwritten")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(png)
            entry["png"] = str(target)
        else:
            entry["png"] = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
        masks.append(entry)
    return {**out, "masks": masks}


def mask_class_names(classes: list[str], k: int) -> list[str]:
    """Names of a segmentation model's K output classes: its own when it has K, else `background` / `foreground`
    for two and `0` .. `K-1` for more."""
    if len(classes) == k:
        return list(classes)
    return ["background", "foreground"] if k == 2 else [str(i) for i in range(k)]


def input_pixel_spacing(item: PreparedInput, options: PredictOptions) -> tuple[tuple[float, float] | None, str]:
    """(rows, columns) mm per original pixel and where it came from: `options.pixel_size_mm` ("option"), else the
    file's own (DICOM: "dicom"), else (None, "unknown")."""
    if options.pixel_size_mm is not None:
        return (float(options.pixel_size_mm), float(options.pixel_size_mm)), "option"
    if item.pixel_spacing_mm is not None:
        return (float(item.pixel_spacing_mm[0]), float(item.pixel_spacing_mm[1])), "dicom"
    return None, "unknown"


def head_ellipse_px(ellipse: Ellipse | None) -> dict[str, Any]:
    """`{"head_ellipse_px": {"center_xy", "semi_axes", "angle_deg"}}` of the least-squares ellipse fitted in original
    pixels to a head mask's outer contour (`fit_ellipse_contour`; x = column, y = row, the semi-axis a at `angle_deg`
    from the x axis, y down): the ellipse HC is measured on, before the outline offset (with non-square pixels HC
    fits it in mm instead). `{}` when no ellipse fits (None)."""
    if ellipse is None:
        return {}
    cy, cx = ellipse.center
    return {"head_ellipse_px": {"center_xy": [round(cx, 2), round(cy, 2)],
                                "semi_axes": [round(ellipse.a, 2), round(ellipse.b, 2)],
                                "angle_deg": round(math.degrees(ellipse.angle), 2)}}


def measure_head_circumference(head: np.ndarray, spacing: tuple[float, float], hc_model: HeadCircumferenceModel,
                               ellipse_px: Ellipse | None = None) -> dict[str, Any]:
    """`{"head_circumference_mm": HC}` of a bool H x W head mask in the original image (the CV evaluation's
    measurement: least-squares ellipse on the outer contour of the largest component, less the model's outline
    offset), with `head_circumference_warning` when HC lies outside the training data's range, or
    `{"head_circumference_mm": None, "head_circumference_failure": why}` when no head is found. `ellipse_px`: the
    mask's ellipse already fitted in pixels (`fit_ellipse_contour`), reused with square pixels."""
    from sonodistill.evaluation.head_circumference import head_circumference_mm

    hc = head_circumference_mm(head, spacing, hc_model.outline_offset_px, ellipse_px)
    if math.isfinite(hc):
        out: dict[str, Any] = {"head_circumference_mm": round(float(hc), 2)}
        low, high = hc_model.range_mm
        if not low <= hc <= high:
            out["head_circumference_warning"] = (f"outside the {low:.0f}-{high:.0f} mm of the heads the model was "
                                                 "trained on: check the mask (is a head in the image?)")
        return out
    why = "no head in the mask" if not head.any() else "no ellipse fits the mask's outline"
    return {"head_circumference_mm": None, "head_circumference_failure": why}


def _build_classifier(cfg: Any, manifest: Any) -> torch.nn.Module:
    from sonodistill.recipes.base import build_classifier

    return build_classifier(cfg, len(manifest.classes))


def segmentation_targets(model: LoadedModel, result: dict[str, Any]) -> tuple[list[str], int]:
    """(classes, the foreground class with the largest predicted area over the input's frames; class 1 when none)."""
    classes = list(result["classes_in_mask"])
    area = np.sum([[m["area_fraction"][c] for c in classes] for m in result["masks"]], axis=0)
    return classes, 1 + int(np.argmax(area[1:])) if len(classes) > 1 else 0


def embedding_target(model: LoadedModel, result: dict[str, Any]) -> tuple[list[str], int]:
    """An encoder has one score to explain: the similarity of its embedding to the un-occluded input's."""
    return ["embedding"], 0


register_model_kind("classification", classify, build=_build_classifier, heatmaps=True,
                    occlusion=OcclusionSpec(ClassProbability))
register_model_kind("segmentation", segment, build=None,  # the segmentation recipe provides the network
                    output_classes=("background", "foreground"),  # every segmentation recipe segments one structure
                    occlusion=OcclusionSpec(RegionProbability, targets=segmentation_targets),
                    no_heatmaps_because="Grad-CAM explains one class logit of a classification head; a segmentation "
                                        "network has a logit per pixel (use --method occlusion)")
register_model_kind("features", embed, build=None, combine=EmbeddingConcat, output="embedding", per_class=False,
                    output_doc="pooled embedding B x E (the members' embeddings concatenated, in member order)",
                    occlusion=OcclusionSpec(EmbeddingSimilarity, targets=embedding_target),
                    no_heatmaps_because="an encoder has no class logits to differentiate (use --method occlusion)")


# ------------------------------------------------------------------------------------------- entry points
def predict_prepared(model: LoadedModel, item: PreparedInput, options: PredictOptions) -> dict[str, Any]:
    """The model kind's prediction plus the input's frame count, fps and duration."""
    n = int(item.frames.shape[0])
    result: dict[str, Any] = {"input": item.name, "task": model.task, "frames": n, "fps": item.fps,
                              "duration_s": (n / item.fps) if item.fps else None}
    result.update(get_model_kind(model.task).predict(model, item, options))
    short = short_input_warning(model, n)
    if short:
        result["input_warning"] = short
    return result


def short_input_warning(model: LoadedModel, frames: int) -> str | None:
    """Why a video model's prediction for an input of `frames` frames may not be trusted: fewer frames than the
    model's T-frame clips (a still image is one frame) are stretched to T, an input unlike its training clips."""
    if model.input_kind != "video" or frames >= model.num_frames:
        return None
    what = "a still image (one frame)" if frames == 1 else f"{frames} frames"
    return (f"{what}, fewer than this video model's {model.num_frames}-frame clips: its frames were repeated to fill "
            "a clip, an input unlike the videos it was trained on")


def short_inputs_summary(model: LoadedModel, results: list[dict[str, Any]]) -> list[str]:
    """One payload warning when some inputs were shorter than a video model's clips (`short_input_warning`)."""
    short = [r for r in results if "input_warning" in r]
    if not short:
        return []
    stills = sum(r["frames"] == 1 for r in short)
    names = ", ".join(str(r["input"]) for r in short[:3]) + (", ..." if len(short) > 3 else "")
    return [f"{len(short)} of {len(results)} inputs have fewer frames than this video model's {model.num_frames}-frame "
            f"clips ({stills} still image(s)): their frames were repeated to fill a clip, unlike the videos it was "
            f"trained on ({names}); an image model suits still images"]


def predict_file(model: LoadedModel, path: str | Path, options: PredictOptions | None = None,
                 name: str | None = None) -> dict[str, Any]:
    """Read, preprocess and predict one file (or a folder of frames)."""
    options = options or PredictOptions()
    item = prepare(model, read_input(path), name or str(path))
    return predict_prepared(model, item, options)


def failure_message(exc: Exception) -> str:
    """The text of a per-input failure: the project's own errors as they are, anything else with its type."""
    return str(exc) if isinstance(exc, SonoDistillError) else f"{type(exc).__name__}: {exc}"


def log_failure(name: str, exc: Exception) -> None:
    """Log a per-input failure: an ERROR line for the project's errors, with the traceback for anything else."""
    if isinstance(exc, SonoDistillError):
        log.error("%s", exc)
    else:
        log.error("%s: unexpected error", name, exc_info=exc)


def ensemble_warnings(model: LoadedModel) -> list[str]:
    """Warnings about the members served: a fold ensemble that lacks some of the run's folds' weights (or the
    model kind's own, `model.extra["warnings"]`)."""
    if "warnings" in model.extra:
        return [str(w) for w in model.extra["warnings"]]
    if model.run_dir is None or model.cfg is None or not model.member_names \
            or not all(m.startswith("fold_") for m in model.member_names):
        return []
    folds_file = model.run_dir / "folds.json"
    if model.cfg.train.fold is not None:
        expected = [f"fold_{model.cfg.train.fold}"]
    elif folds_file.is_file():
        expected = [f"fold_{f['fold']}" for f in json.loads(folds_file.read_text(encoding="utf-8"))]
    else:
        expected = [f"fold_{k}" for k in range(int(model.cfg.train.folds))]
    missing = [m for m in expected if m not in model.member_names]
    if not missing:
        return []
    return [f"{model.source}: ensemble of {len(model.member_names)} of the run's {len(expected)} fold models: "
            f"no model.safetensors in {', '.join(missing)} (unfinished training?); predictions come from "
            f"{', '.join(model.member_names)} only"]


def predict_many(model: LoadedModel, inputs: list[str | Path], options: PredictOptions | None = None,
                 folder_as_clip: bool = False, recursive: bool = False, per_group: bool = False,
                 group_regex: str | None = None, by_patient: bool = False) -> dict[str, Any]:
    """{"model", "warnings", "results"}; an input that fails, whatever the exception, gives {"input", "error"}
    and the others go on. Folders are expanded by `expand_inputs`. With `per_group` (a classifier's only), each
    result also has its `group` and the payload `groups`: a patient's probabilities averaged (`serve.groups`)."""
    from sonodistill.serve.groups import group_results, input_groups

    per_group = per_group or group_regex is not None or by_patient
    if by_patient and folder_as_clip:
        raise ConfigError("group by the DICOM PatientID reads each file's header; with --folder-as-clip a folder is "
                          "one clip, its own group (--per-group)")
    if per_group and model.task != "classification":
        raise ConfigError(f"{model.source}: per-group predictions average class probabilities; this is a "
                          f"{model.task!r} model")
    options = options or PredictOptions()
    warnings = ensemble_warnings(model)
    for w in warnings:
        log.warning("%s", w)
    results = []
    for item in inputs:
        try:
            paths = expand_inputs([item], folder_as_clip, recursive)
        except Exception as exc:  # noqa: BLE001 - every failure becomes this input's error entry
            log_failure(str(item), exc)
            results.append({"input": str(item), "error": failure_message(exc)}
                           | ({"group": str(item)} if per_group else {}))
            continue
        groups = input_groups(Path(item), paths, group_regex, by_patient) if per_group else [None] * len(paths)
        for p, group in zip(paths, groups):
            try:
                result = predict_file(model, p, options)
            except Exception as exc:  # noqa: BLE001 - every failure becomes this input's error entry
                log_failure(str(p), exc)
                result = {"input": str(p), "error": failure_message(exc)}
            results.append(result | ({"group": group} if per_group else {}))
    for w in short_inputs_summary(model, results):
        log.warning("%s", w)
        warnings.append(w)
    payload = {"model": model.describe(), "warnings": warnings, "results": results}
    if per_group:
        payload["groups"] = group_results(results, model.classes, options.decimals)
    return payload


# ------------------------------------------------------------------------------------------- heat maps
def _raw_maps(explainer: Callable[..., torch.Tensor], member: torch.nn.Module, x: torch.Tensor,
              target: int) -> torch.Tensor:
    """Call an explainer, asking for unscaled maps when it supports `normalize`."""
    if "normalize" in inspect.signature(explainer).parameters:
        return explainer(member, x, target, normalize=False)
    return explainer(member, x, target)


def clip_heatmaps(model: LoadedModel, clip: np.ndarray, target: int,
                  explainer: Callable[..., torch.Tensor] | None = None, stride: int | None = None,
                  batch_size: int = 4, windows: list[np.ndarray] | None = None) -> np.ndarray:
    """Heat maps for every frame of a preprocessed uint8 `n x S x S` clip: float32 `n x S x S` in [0, 1].

    Video models: windows of T frames every `stride` (default T, i.e. non-overlapping; the last ends at the
    clip's end), or the given `windows` (frame indices of each model input; frames in none get zeros), frames in
    several windows averaged. Each member's clip map is divided by its maximum over the clip (so frames compare
    within the clip), members are averaged, and the mean is scaled to peak 1.
    """
    from sonodistill.explain.gradcam import grad_cam

    if not model.members:
        raise ConfigError(f"{model.source}: heat maps need the torch model of a run directory, not an export")
    explainer = explainer or grad_cam
    n = clip.shape[0]
    if model.input_kind == "video" and windows is None:
        t = model.num_frames
        starts = window_starts(n, t, stride or t)
        windows = [window_indices(n, t, s) for s in starts]
    elif model.input_kind == "frame":
        windows = [np.array([i]) for i in range(n)]
    maps = []
    for member in model.members:
        total = np.zeros(clip.shape, dtype=np.float64)
        count = np.zeros(n, dtype=np.float64)
        for i in range(0, len(windows), batch_size):
            idx = windows[i : i + batch_size]
            x = torch.from_numpy(_to_input(model, np.stack([clip[w] for w in idx])))
            if model.input_kind == "frame":
                x = x[:, :, 0]  # B x 1 x 1 x S x S -> B x 1 x S x S
            cam = _raw_maps(explainer, member, x, target).detach().float().numpy()  # B x T x S x S (T=1: frame)
            for w, c in zip(idx, cam):
                uniq, first = np.unique(w, return_index=True)  # stretched short clips repeat frames
                total[uniq] += c[first]
                count[uniq] += 1
        clip_map = total / np.maximum(count, 1)[:, None, None]
        peak = clip_map.max()
        maps.append(clip_map / peak if peak > 0 else clip_map)
    mean = np.mean(maps, axis=0)
    peak = mean.max()
    return (mean / peak if peak > 0 else mean).astype(np.float32)
