"""`sonodistill predict | export | explain | serve | realtime`: using a trained model at the bedside."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

from sonodistill.errors import ConfigError

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------- predict
def _predict(args: argparse.Namespace) -> int:
    from sonodistill.serve.loading import load_model
    from sonodistill.serve.kinds import PredictOptions
    from sonodistill.serve.predict import predict_many

    model = load_model(args.model, members=args.members, threads=args.threads)
    options = PredictOptions(stride=args.stride, clip_mode=args.clip_mode, batch_size=args.batch_size,
                             mask_dir=Path(args.mask_dir) if args.mask_dir else None,
                             pixel_size_mm=args.pixel_size_mm)
    payload = predict_many(model, args.inputs, options, folder_as_clip=args.folder_as_clip,
                           recursive=args.recursive, per_group=args.per_group, group_regex=args.group_regex,
                           by_patient=args.group_by_patient)
    text = json.dumps(payload, indent=1)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n", encoding="utf-8")
        print(f"wrote {args.out} ({len(payload['results'])} result(s))", file=sys.stderr)
    elif not args.csv:
        print(text)
    if args.csv:
        from sonodistill.serve.predictions_table import write_predictions_csv

        rows = write_predictions_csv(payload["results"], args.csv)
        print(f"wrote {args.csv} ({rows} row(s))", file=sys.stderr)
        if "groups" in payload:
            groups_csv = Path(args.csv).with_name(Path(args.csv).stem + "-groups.csv")
            rows = write_predictions_csv(payload["groups"], groups_csv, first="group")
            print(f"wrote {groups_csv} ({rows} group(s))", file=sys.stderr)
    failed = [r["input"] for r in payload["results"] if "error" in r]
    if failed:
        print(f"error: {len(failed)} input(s) could not be read: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


# ------------------------------------------------------------------------------------------- export
def _export(args: argparse.Namespace) -> int:
    from sonodistill.serve.export import export_model

    folder = export_model(args.run_dir, args.out, args.format, args.opset, args.members)
    meta = json.loads((folder / "sonodistill-model.json").read_text())
    print(f"exported {args.run_dir} -> {folder}/ ({meta['file']}, sonodistill-model.json, MODEL_CARD.md); "
          f"members {meta['members']}; max |diff| vs PyTorch {meta['max_abs_diff_vs_torch']:.1e}")
    return 0


# ------------------------------------------------------------------------------------------- explain
def _target_index(names: list[str], target: str | None) -> int | None:
    """--target as an index into `names` (a name or an index), None when not given."""
    if target is None:
        return None
    if target in names:
        return names.index(target)
    if target.isdigit() and int(target) < len(names):
        return int(target)
    raise ConfigError(f"--target {target!r} is not a name or index of what this model explains: {names}")


def _explainers(args: argparse.Namespace, model, kind) -> tuple[dict, dict[str, str]]:  # noqa: ANN001
    """(name -> explainer, in the order Grad-CAM, the recipe's EXPLAINERS, occlusion; name -> why it is missing)."""
    from sonodistill.explain.gradcam import grad_cam, grad_cam_problem
    from sonodistill.explain.occlusion import occlusion_explainer
    from sonodistill.serve.loading import recipe_explainers

    available: dict = {}
    missing: dict[str, str] = {}
    problem = grad_cam_problem(model.members[0]) if kind.heatmaps else (
        kind.no_heatmaps_because or f"Grad-CAM explains classifiers, not {model.task!r} models")
    if problem is None:
        available["gradcam"] = grad_cam
    else:
        missing["gradcam"] = problem
    available.update(recipe_explainers(str(model.recipe)))
    if kind.occlusion is not None:
        available["occlusion"] = occlusion_explainer(kind.occlusion.score, args.occlusion_mask, args.occlusion_overlap)
    else:
        missing["occlusion"] = f"the {model.task!r} model kind registers no OcclusionSpec"
    return available, missing


def _chosen_methods(args: argparse.Namespace, model, available: dict, missing: dict[str, str]) -> list[str]:  # noqa: ANN001
    """--method values (default: every available explainer but occlusion, which runs the model once per patch,
    unless it is the only one); ConfigError naming unknown or missing ones and why."""
    if not available:
        raise ConfigError(f"explain: {args.run_dir} is a {model.task!r} model (recipe {model.recipe!r}) with no "
                          f"explainer: " + "; ".join(f"{k}: {v}" for k, v in missing.items()))
    methods = args.method or ([m for m in available if m != "occlusion"] or list(available))
    unknown = [m for m in methods if m not in available]
    if unknown:
        why = "".join(f" ({m}: {missing[m]})" for m in unknown if m in missing)
        raise ConfigError(f"explain method(s) {unknown} not available for recipe {model.recipe!r}{why}; available: "
                          f"{list(available)}")
    return methods


def _relations_side_by_side(args: argparse.Namespace, model, item, target: int, out: Path) -> str:  # noqa: ANN001
    """Frame-relation matrices per stage (and Grad-CAM strips) of this run and, with --compare, a baseline run."""
    import numpy as np
    import torch

    from sonodistill.explain.gradcam import grad_cam
    from sonodistill.explain.overlay import overlay, strip_indices
    from sonodistill.explain.relations import stage_relation_matrices, write_relation_comparison
    from sonodistill.serve.loading import load_run
    from sonodistill.serve.predict import _to_input, clip_heatmaps, window_indices

    runs = [(str(model.recipe), model)]
    if args.compare:
        other = load_run(args.compare, members=args.members)
        if other.classes != model.classes or other.num_frames != model.num_frames:
            raise ConfigError(f"--compare {args.compare}: classes or clip length differ from {args.run_dir}")
        runs.insert(0, (f"{other.recipe} (baseline)", other))
    window = window_indices(item.clip.shape[0], model.num_frames, 0)
    rows = []
    for name, m in runs:
        x = torch.from_numpy(_to_input(m, item.clip[window][None]))
        mats = stage_relation_matrices(m.members[0], x)
        cam = clip_heatmaps(m, item.clip, target, grad_cam, stride=args.stride)
        rgb = overlay(item.clip, cam)
        idx = strip_indices(rgb.shape[0], min(8, args.max_strip_frames))
        strip = np.concatenate(list(rgb[idx]), axis=1)
        rows.append((name, mats, strip))
        np.savez(out / f"relations_{name.split()[0]}.npz", **{f"stage{i + 1}": a for i, a in enumerate(mats)})
    path = write_relation_comparison(rows, out / "relations.png",
                                     title=f"{Path(args.input).name}: first window of {model.num_frames} frames")
    return str(path)


#: prediction fields copied into explain.json (classifiers: class and probabilities; annotators: findings)
_PREDICTION_FIELDS = ("prediction", "probabilities", "findings", "categorical", "description", "input_warning")


def _explain(args: argparse.Namespace) -> int:
    """Heat maps of one input for any run directory: Grad-CAM (classifiers), the recipe's explainers, occlusion."""
    import numpy as np

    from sonodistill.explain.overlay import overlay, write_gif, write_strip
    from sonodistill.serve.loading import load_run
    from sonodistill.serve.kinds import PredictOptions, get_model_kind
    from sonodistill.serve.predict import clip_heatmaps, predict_prepared, prepare, read_input

    model = load_run(args.run_dir, members=args.members)
    kind = get_model_kind(model.task)
    available, missing = _explainers(args, model, kind)
    methods = _chosen_methods(args, model, available, missing)
    item = prepare(model, read_input(args.input), str(args.input))
    result = predict_prepared(model, item, PredictOptions(stride=args.stride))
    spec = kind.occlusion
    if spec is not None and spec.targets is not None:
        names, default = spec.targets(model, result)
    else:  # a classifier: its classes, the predicted one by default
        names, default = list(model.classes), model.classes.index(result["prediction"])
    given = _target_index(names, args.target)
    target = default if given is None else given
    n = int(item.clip.shape[0])
    windows = spec.windows(model, n) if spec is not None and spec.windows is not None else None
    shown = np.unique(np.concatenate(windows)) if windows is not None else np.arange(n)
    out = Path(args.out) if args.out else Path(args.run_dir) / "explain" / Path(args.input).stem
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, dict[str, str]] = {}
    for name in methods:
        t0 = time.perf_counter()
        cam = clip_heatmaps(model, item.clip, target, available[name], stride=args.stride, windows=windows)[shown]
        rgb = overlay(item.clip[shown], cam)
        files[name] = {"strip": str(write_strip(rgb, out / f"{name}_strip.png", args.max_strip_frames)),
                       "gif": str(write_gif(rgb, out / f"{name}.gif", item.fps)),
                       "maps": str(out / f"{name}_maps.npy")}
        np.save(out / f"{name}_maps.npy", cam.astype(np.float16))
        log.info("%s: %d frames in %.1f s", name, cam.shape[0], time.perf_counter() - t0)
    summary = {"input": str(args.input), "model": model.describe(), "task": model.task, "target": names[target],
               "targets": names, "methods": files, "frames": n, "explained_frames": shown.tolist(),
               **{k: result[k] for k in _PREDICTION_FIELDS if k in result}}
    if kind.per_class:
        summary["target_class"] = names[target]
    if model.input_kind == "video" and "gradcam" in available and hasattr(model.members[0], "backbone"):
        # frame relations of a staged video backbone (+ Grad-CAM)
        summary["relations"] = _relations_side_by_side(args, model, item, target, out)
    (out / "explain.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    if "input_warning" in result:
        log.warning("%s: %s", args.input, result["input_warning"])
    print(f"{model.task} model: maps of {names[target]!r} in {out}/: "
          + ", ".join(f"{m}_strip.png, {m}.gif" for m in files))
    return 0


# ------------------------------------------------------------------------------------------- serve
def _serve(args: argparse.Namespace) -> int:
    from sonodistill.serve.app import make_server
    from sonodistill.serve.loading import load_model

    model = load_model(args.model, members=args.members, threads=args.threads)
    server = make_server(model, args.host, args.port, int(args.max_upload_mb * 1024 * 1024),
                         explain=not args.no_heatmaps, read_timeout=args.read_timeout, max_uploads=args.max_uploads)
    host, port = server.server_address[:2]
    print(f"review page: http://{host}:{port}/  (Ctrl+C to stop)", file=sys.stderr)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
    finally:
        server.server_close()
    return 0


# ------------------------------------------------------------------------------------------- realtime
def random_run(config: str, num_classes: int, out: Path) -> Path:
    """A run directory with a randomly initialised model of `config` (for timing only: same speed as trained)."""
    import pandas as pd
    import torch

    from sonodistill.config import load_config, packaged_config
    from sonodistill.data.manifest import Manifest
    from sonodistill.recipes.base import build_classifier
    from sonodistill.recipes.trainer import save_weights

    path = Path(config) if Path(config).suffix in (".yaml", ".yml") else packaged_config(config)
    cfg = load_config(path, [f"name={out.name}", f"out_dir={out.parent}"])
    classes = [f"class{i}" for i in range(num_classes)]
    table = pd.DataFrame({"path": [f"untrained/{c}" for c in classes], "group": classes, "label": classes})
    cfg.save(out / "config.yaml")
    Manifest(table, classes, "video", "untrained").to_csv(out / "manifest.csv")
    torch.manual_seed(0)
    save_weights(build_classifier(cfg, num_classes), out / "fold_0" / "model.safetensors")
    return out


def _realtime(args: argparse.Namespace) -> int:
    import os
    import platform

    import torch

    from sonodistill.serve.export import export_model
    from sonodistill.serve.loading import EXPORT_META, load_export, load_run, read_export_meta
    from sonodistill.serve.stream import benchmark

    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    bad = [b for b in backends if b not in ("onnx", "torch")]
    if bad or not backends:
        raise ConfigError(f"--backends: choose from onnx,torch; got {args.backends!r}")
    with tempfile.TemporaryDirectory(prefix="sonodistill-realtime-") as tmp:
        source = Path(args.model)
        if args.random_init:
            source = random_run(args.model, args.num_classes, Path(tmp) / "untrained")
        models = {}
        if (source / EXPORT_META).is_file():
            meta = read_export_meta(source)
            if "onnx" in backends:
                models["onnx"] = load_export(source, threads=args.threads, spinning=args.spinning)
            run_dir = Path(meta.get("source_run") or "")
            if "torch" in backends and (run_dir / "config.yaml").is_file():
                torch.set_num_threads(args.threads)
                models["torch"] = load_run(run_dir, members=args.members)
            elif "torch" in backends:
                log.warning("torch backend skipped: the export's source run %s is not available", run_dir)
        else:
            if "onnx" in backends:
                folder = export_model(source, Path(tmp) / "onnx", "onnx", members=args.members)
                models["onnx"] = load_export(folder, threads=args.threads, spinning=args.spinning)
            if "torch" in backends:
                torch.set_num_threads(args.threads)
                models["torch"] = load_run(source, members=args.members)
        load_before = os.getloadavg()[0]
        report = benchmark(models, args.video, repeats=args.repeats, stride=args.stride)
    report["machine"] = {"processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
                         "load_average_1min": [load_before, os.getloadavg()[0]], "python": platform.python_version(),
                         "torch": torch.__version__, "threads": args.threads, "ort_spinning": args.spinning,
                         "random_init": args.random_init,
                         "model": args.model}
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    for name, r in report["backends"].items():
        print(f"{name:6s} {r['frames']} frames ({r['video_duration_s']:.2f} s of video), {r['windows']} windows: "
              f"{r['processing_s_median']:.3f} s end to end (median of {args.repeats}), real-time factor "
              f"{r['real_time_factor']:.3f}, first result after {r['first_result_s_median']:.3f} s, "
              f"{r['window_ms_median']:.1f} ms per window")
    return 0


# ------------------------------------------------------------------------------------------- parsers
def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="predict files (video, DICOM, images, folders) with a run or an export")
    p.add_argument("model", metavar="RUN_OR_MODEL", help="run directory or export folder")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="mp4/avi/DICOM/PNG/JPEG files or folders of them")
    p.add_argument("--out", help="write the JSON here (default: stdout, unless --csv)")
    p.add_argument("--csv", metavar="FILE", help="also write the predictions as one table: a row an input (a frame "
                                                 "of each input for segmentation), nested values as dotted columns")
    p.add_argument("--stride", type=int, help="window step in frames for video models (default T/2)")
    p.add_argument("--clip-mode", choices=["windows", "uniform"], default="windows",
                   help="clip probabilities: mean over windows, or T frames sampled uniformly (as in CV evaluation)")
    p.add_argument("--batch-size", type=int, default=8, help="windows or frames per forward pass")
    p.add_argument("--members", choices=["auto", "final", "folds"], default="auto",
                   help="run directory: final/ model, fold ensemble, or final when present (auto)")
    p.add_argument("--mask-dir", help="segmentation models: write mask PNGs here (default: inline in the JSON)")
    p.add_argument("--pixel-size-mm", type=float, metavar="MM",
                   help="segmentation models: the inputs' pixel size in mm, for mask areas and head circumferences "
                        "(default: a DICOM's own ultrasound-region spacing; other files have none)")
    p.add_argument("--folder-as-clip", action="store_true",
                   help="a folder of images, or of single-frame DICOMs (a series exported one file a frame, ordered "
                        "by InstanceNumber), is the frames of one clip")
    p.add_argument("-r", "--recursive", action="store_true",
                   help="a folder stands for the supported files of its sub-folders too (default: its own only)")
    p.add_argument("--per-group", action="store_true",
                   help="classifiers: also one prediction a group (patient), its inputs' probabilities averaged: a "
                        "folder INPUT is a group (with -r each of its sub-folders), a file its own (JSON 'groups'; "
                        "with --csv also CSV-groups.csv)")
    p.add_argument("--group-regex", metavar="REGEX",
                   help="with or without --per-group: a file's group is this regex's first capture group in its "
                        "name, e.g. '^(patient_\\d+)_'")
    p.add_argument("--group-by-patient", action="store_true",
                   help="with or without --per-group: a DICOM's group is its header's PatientID, as a pseudonym "
                        "(patient-<12 hex digits of its SHA-256>; the ID is written nowhere): a flat export of "
                        "several patients")
    p.add_argument("--threads", type=int, help="CPU threads for inference")
    p.set_defaults(func=_predict)

    e = sub.add_parser("export", help="export a run's inference model to ONNX or TorchScript (+ model card)")
    e.add_argument("run_dir")
    e.add_argument("--format", choices=["onnx", "torchscript"], default="onnx")
    e.add_argument("--out", help="export folder (default RUN_DIR/export-FORMAT)")
    e.add_argument("--opset", type=int, default=17, help="ONNX opset")
    e.add_argument("--members", choices=["auto", "final", "folds"], default="auto")
    e.set_defaults(func=_export)

    x = sub.add_parser("explain", help="heat maps of one input: Grad-CAM, the recipe's explainers, occlusion")
    x.add_argument("run_dir")
    x.add_argument("input")
    x.add_argument("--out", help="output folder (default RUN_DIR/explain/INPUT_STEM)")
    x.add_argument("--target", help="what to explain, a name or index: a class (default: the predicted one; "
                                    "segmentation: the largest foreground class), a finding (annotators: the most "
                                    "probable one); encoders explain their embedding")
    x.add_argument("--method", action="append",
                   help="gradcam, a recipe's explainer, occlusion (repeatable; default: all available but occlusion, "
                        "which is used when it is the only one)")
    x.add_argument("--occlusion-mask", type=int, metavar="PX",
                   help="occlusion patch side in pixels (default: the input size / 8, at least 4)")
    x.add_argument("--occlusion-overlap", type=float, default=0.5,
                   help="overlap of neighbouring occlusion patches, in [0, 1) (default 0.5)")
    x.add_argument("--stride", type=int, help="window step in frames (default T: non-overlapping windows)")
    x.add_argument("--max-strip-frames", type=int, default=16, help="frames in the PNG strip")
    x.add_argument("--members", choices=["auto", "final", "folds"], default="auto")
    x.add_argument("--compare", metavar="BASELINE_RUN_DIR",
                   help="also explain this run (e.g. the supervised baseline) and draw both side by side")
    x.set_defaults(func=_explain)

    s = sub.add_parser("serve", help="local browser review page: upload a clip, see prediction and heat map")
    s.add_argument("model", metavar="RUN_OR_MODEL")
    s.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    s.add_argument("--port", type=int, default=8765)
    s.add_argument("--max-upload-mb", type=float, default=200.0)
    s.add_argument("--read-timeout", type=float, default=30.0, metavar="SECONDS",
                   help="a client silent this long mid-request is answered 408 and dropped")
    s.add_argument("--max-uploads", type=int, default=4, help="uploads in progress at once; more get 503")
    s.add_argument("--no-heatmaps", action="store_true", help="skip Grad-CAM (faster answers)")
    s.add_argument("--members", choices=["auto", "final", "folds"], default="auto")
    s.add_argument("--threads", type=int, help="CPU threads for inference")
    s.set_defaults(func=_serve)

    r = sub.add_parser("realtime", help="streaming benchmark: ONNX Runtime vs PyTorch eager on a video file")
    r.add_argument("model", metavar="RUN_OR_MODEL",
                   help="run directory or export folder (with --random-init: a config name or YAML)")
    r.add_argument("video")
    r.add_argument("--json", help="write the timing report here")
    r.add_argument("--threads", type=int, default=2, help="intra-op threads (ONNX Runtime and torch)")
    r.add_argument("--stride", type=int, help="window step in frames (default T/2)")
    r.add_argument("--repeats", type=int, default=3)
    r.add_argument("--backends", default="onnx,torch")
    r.add_argument("--members", choices=["auto", "final", "folds"], default="auto")
    r.add_argument("--random-init", action="store_true",
                   help="time an untrained model built from the config named by RUN_OR_MODEL (speed only)")
    r.add_argument("--num-classes", type=int, default=4, help="with --random-init")
    r.add_argument("--spinning", action="store_true",
                   help="let ONNX Runtime's worker threads spin between windows (default: they sleep)")
    r.set_defaults(func=_realtime)
