"""Loading run directories, sliding-window predictions against a direct reference, masks, the predict command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from sonodistill.data.preprocess import PreprocessConfig, preprocess_clip, sample_frame_indices
from sonodistill.data.readers import read_clip
from sonodistill.errors import CheckpointError, ConfigError, DataError, ManifestError
from sonodistill.recipes.base import build_classifier
from sonodistill.recipes.trainer import load_weights
from sonodistill.serve.kinds import register_model_kind
from sonodistill.serve.loading import load_model, member_dirs
from sonodistill.serve.predict import (
    PredictOptions,
    expand_inputs,
    frame_scores,
    predict_file,
    predict_many,
    window_indices,
    window_starts,
)

from .conftest import CLASSES, make_run, synthetic_frames, write_dicom


def test_window_starts_and_frame_scores():
    assert window_starts(20, 8, 4) == [0, 4, 8, 12]
    assert window_starts(21, 8, 4) == [0, 4, 8, 12, 13]  # the last window ends at the last frame
    assert window_starts(8, 8, 3) == [0] and window_starts(5, 8, 3) == [0]
    np.testing.assert_array_equal(window_indices(4, 8, 0), [0, 0, 1, 1, 2, 2, 3, 3])  # stretched
    probs = np.array([[1.0, 0.0], [0.0, 1.0]])
    scores = frame_scores(6, 4, [0, 2], probs)  # frames 2, 3 are in both windows
    np.testing.assert_allclose(scores, [[1, 0], [1, 0], [0.5, 0.5], [0.5, 0.5], [0, 1], [0, 1]])


def _reference_probs(run: Path, clip: np.ndarray, starts: list[int], t: int, folds: int) -> np.ndarray:
    """Window probabilities computed directly: each fold's Classifier, softmax, mean over folds."""
    from sonodistill.config import load_config

    cfg = load_config(run / "config.yaml")
    x = torch.from_numpy(np.stack([clip[s : s + t] for s in starts]).astype(np.float32) / 255.0)[:, None]
    probs = []
    for k in range(folds):
        m = load_weights(build_classifier(cfg, len(CLASSES)), run / f"fold_{k}" / "model.safetensors").eval()
        with torch.no_grad():
            probs.append(torch.softmax(m(x), dim=1).numpy())
    return np.mean(probs, axis=0)


def test_video_prediction_matches_direct_computation(tiny_run, video_file):
    model = load_model(tiny_run)
    assert model.member_names == ["fold_0", "fold_1"] and model.input_shape == (1, 8, 64, 64)
    out = predict_file(model, video_file, PredictOptions(stride=4))
    clip = preprocess_clip(read_clip(video_file).frames, PreprocessConfig(size=64))
    assert out["frames"] == 20 and out["fps"] == pytest.approx(25.0) and out["duration_s"] == pytest.approx(0.8)
    assert "input_warning" not in out  # 20 frames fill the 8-frame clips
    assert out["windows"]["starts"] == [0, 4, 8, 12]
    ref = _reference_probs(tiny_run, clip, [0, 4, 8, 12], 8, 2)
    np.testing.assert_allclose(out["windows"]["probabilities"], ref, atol=1e-5)
    np.testing.assert_allclose(list(out["probabilities"].values()), ref.mean(0), atol=1e-5)
    assert out["prediction"] == CLASSES[int(ref.mean(0).argmax())]
    assert np.asarray(out["per_frame"]).shape == (20, 3)
    np.testing.assert_allclose(out["per_frame"][0], ref[0], atol=1e-5)  # frame 0: first window only
    # 'uniform': the cross-validation input (T frames spread over the clip)
    uni = predict_file(model, video_file, PredictOptions(clip_mode="uniform"))
    idx = sample_frame_indices(20, 8, "uniform")
    ref_u = _reference_probs(tiny_run, clip[idx], [0], 8, 2)[0]
    np.testing.assert_allclose(list(uni["probabilities"].values()), ref_u, atol=1e-5)


def test_members_final_and_errors(tmp_path):
    run = make_run(tmp_path, folds=2, final=True)
    assert [d.name for d in member_dirs(run)] == ["final"]
    assert [d.name for d in member_dirs(run, "folds")] == ["fold_0", "fold_1"]
    assert load_model(run).member_names == ["final"]
    with pytest.raises(ConfigError):
        member_dirs(run, "best")
    bare = make_run(tmp_path / "b", folds=1)
    (bare / "fold_0" / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="nothing to serve"):
        load_model(bare)
    other = make_run(tmp_path / "w", folds=1, width=0.25)  # weights of another width: strict loading fails
    (bare / "fold_0" / "model.safetensors").write_bytes((other / "fold_0" / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="does not match"):
        load_model(bare)
    with pytest.raises(CheckpointError, match="not a folder"):
        load_model(tmp_path / "missing")
    seeds = tmp_path / "seeds"  # a --seeds run: config.yaml and seed_<s>/ runs, no models of its own
    make_run(seeds, name="seed_0", folds=1)
    (seeds / "config.yaml").write_bytes((seeds / "seed_0" / "config.yaml").read_bytes())
    with pytest.raises(CheckpointError, match=r"is a run of several seeds \(seed_0\), each with its own models: "
                                              r"serve one of them, e\.g\. .*seed_0"):
        load_model(seeds)


def test_images_folders_dicom_and_errors(tiny_run, tmp_path):
    model = load_model(tiny_run)
    frames = synthetic_frames(6, 64, 64, seed=4)
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, f in enumerate(frames):
        Image.fromarray(f).save(folder / f"f{i:02d}.png")
    (folder / "notes.txt").write_text("ignored")
    assert [p.name for p in expand_inputs([folder])] == [f"f{i:02d}.png" for i in range(6)]
    single = predict_file(model, folder / "f00.png")  # one image into a video model: stretched to T frames
    assert single["frames"] == 1 and single["windows"]["starts"] == [0]
    assert single["input_warning"].startswith("a still image (one frame), fewer than this video model's 8-frame")
    whole = predict_many(model, [folder], folder_as_clip=True)
    as_clip = whole["results"][0]
    assert as_clip["frames"] == 6 and len(as_clip["per_frame"]) == 6
    assert as_clip["input_warning"].startswith("6 frames, fewer than")  # a 6-frame clip: short too, said so
    assert whole["warnings"][0].startswith("1 of 1 inputs have fewer frames than this video model's 8-frame clips "
                                           "(0 still image(s))")
    images = predict_many(model, [folder / f"f0{i}.png" for i in range(5)])
    assert images["warnings"] == [images["warnings"][0]] and "5 of 5 inputs" in images["warnings"][0]
    assert "(1 still image" not in images["warnings"][0] and "(5 still image(s))" in images["warnings"][0]
    assert images["warnings"][0].count(".png") == 3 and "f02.png, ..." in images["warnings"][0]
    dcm = write_dicom(tmp_path / "study.dcm", frames)
    from_dicom = predict_file(model, dcm)
    np.testing.assert_allclose(list(from_dicom["probabilities"].values()),
                               list(as_clip["probabilities"].values()), atol=1e-6)  # same pixels, same answer
    assert "Doe" not in json.dumps(from_dicom)
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 100)
    payload = predict_many(model, [folder / "f01.png", bad])
    assert "error" in payload["results"][1] and "probabilities" in payload["results"][0]


def test_frame_classifier_scores_every_frame(tmp_path, video_file):
    run = make_run(tmp_path, backbone="resnet18_2d", modality="image", folds=1)
    model = load_model(run)
    assert model.input_kind == "frame" and model.input_shape == (1, 64, 64)
    out = predict_file(model, video_file)
    per_frame = np.asarray(out["per_frame"])
    assert per_frame.shape == (20, 3) and "windows" not in out
    assert "input_warning" not in out  # a frame model reads any number of frames
    np.testing.assert_allclose(per_frame.sum(1), 1.0, atol=1e-5)
    np.testing.assert_allclose(list(out["probabilities"].values()), per_frame.mean(0), atol=1e-5)


def test_segmentation_kind_writes_masks_in_original_geometry(tmp_path, toyseg_recipe):
    run = make_run(tmp_path, recipe=toyseg_recipe, folds=1, crop_region=False, size=64)
    model = load_model(run)
    assert model.task == "segmentation" and model.input_kind == "frame"
    img = np.zeros((48, 64), dtype=np.uint8)
    img[10:30, 20:44] = 220  # bright square: the toy net's foreground
    Image.fromarray(img).save(tmp_path / "image.png")
    out = predict_file(model, tmp_path / "image.png", PredictOptions(mask_dir=tmp_path / "masks"))
    mask = np.asarray(Image.open(out["masks"][0]["png"]))
    assert mask.shape == img.shape and set(np.unique(mask)) == {0, 255}
    truth = img > 127
    iou = (truth & (mask > 0)).sum() / (truth | (mask > 0)).sum()
    assert iou > 0.9
    assert out["classes_in_mask"] == ["background", "foreground"]
    assert out["masks"][0]["area_fraction"]["foreground"] == pytest.approx(truth.mean(), abs=0.02)
    inline = predict_file(model, tmp_path / "image.png")
    assert inline["masks"][0]["png"].startswith("data:image/png;base64,")


def test_segmentation_masks_are_background_and_foreground_whatever_the_runs_image_labels(tmp_path, toyseg_recipe):
    """A BUSI-like run: two image labels (benign / malignant) beside the masks. Its masks' classes were reported as
    'benign' and 'malignant' (the background's share under 'benign'), in predict, the export and the review page."""
    from sonodistill.serve.export import export_model
    from sonodistill.serve.loading import EXPORT_META, load_export

    run = make_run(tmp_path, recipe=toyseg_recipe, classes=["benign", "malignant"], folds=1, crop_region=False)
    img = np.zeros((32, 32), np.uint8)
    img[:8] = 220  # a quarter of the image is foreground
    Image.fromarray(img).save(tmp_path / "x.png")
    model = load_model(run)
    out = predict_file(model, tmp_path / "x.png")
    assert model.classes == out["classes_in_mask"] == ["background", "foreground"]
    assert out["masks"][0]["area_fraction"]["foreground"] == pytest.approx(0.25, abs=0.02)
    folder = export_model(run, tmp_path / "export", "torchscript")
    meta = json.loads((folder / EXPORT_META).read_text())
    assert meta["classes"] == ["background", "foreground"]
    meta["classes"] = ["benign", "malignant"]  # as exports written before the fix recorded them
    (folder / EXPORT_META).write_text(json.dumps(meta))
    assert predict_file(load_export(folder), tmp_path / "x.png")["classes_in_mask"] == ["background", "foreground"]


def test_register_model_kind_for_a_new_task(tmp_path, toyseg_recipe, monkeypatch):
    from sonodistill.serve import kinds

    monkeypatch.setattr(kinds, "_KINDS", dict(kinds._KINDS))
    register_model_kind("segmentation", lambda model, item, options: {"findings": ["pleural line"],
                                                                        "description": f"{item.clip.shape[0]} frame"})
    run = make_run(tmp_path, recipe=toyseg_recipe, folds=1)
    Image.fromarray(np.full((32, 32), 200, np.uint8)).save(tmp_path / "x.png")
    out = predict_file(load_model(run), tmp_path / "x.png")
    assert out["findings"] == ["pleural line"] and out["description"] == "1 frame"


def test_predict_command_writes_json(tiny_run, video_file, tmp_path, capsys):
    from sonodistill.cli import main

    out = tmp_path / "pred.json"
    assert main(["predict", str(tiny_run), str(video_file), "--out", str(out), "--stride", "8"]) == 0
    payload = json.loads(out.read_text())
    assert payload["model"]["members"] == ["fold_0", "fold_1"]
    assert payload["results"][0]["windows"]["starts"] == [0, 8, 12]
    capsys.readouterr()
    assert main(["predict", str(tiny_run), str(video_file), str(tmp_path / "nope.mp4")]) == 1  # one input missing
    captured = capsys.readouterr()
    results = json.loads(captured.out)["results"]
    assert "probabilities" in results[0] and "file not found" in results[1]["error"]
    assert "could not be read" in captured.err


def test_predict_command_reads_sub_folders_with_recursive(tiny_run, video_file, tmp_path, capsys):
    from sonodistill.cli import main

    study = tmp_path / "study"
    (study / "series2").mkdir(parents=True)
    (study / "series2" / "clip.mp4").write_bytes(video_file.read_bytes())
    assert main(["predict", str(tiny_run), str(study)]) == 1  # the folder itself holds no file
    captured = capsys.readouterr()
    [entry] = json.loads(captured.out)["results"]
    assert entry["input"] == str(study) and "sub-folders are read with --recursive" in entry["error"]
    assert main(["predict", str(tiny_run), str(study), "--recursive"]) == 0
    [entry] = json.loads(capsys.readouterr().out)["results"]
    assert entry["input"] == str(study / "series2" / "clip.mp4") and "probabilities" in entry


def test_any_per_file_failure_is_an_entry_and_the_others_are_kept(tiny_run, video_file, tmp_path, monkeypatch,
                                                                    caplog):
    """Issue 16 item 1: a hostile AVI (2^31-1 frames declared) and an unexpected exception lose nothing else."""
    from sonodistill.serve import predict as predict_module
    from tests.data.hostile import failing_for, write_huge_frame_count_avi

    huge = write_huge_frame_count_avi(tmp_path / "huge.avi")
    odd = tmp_path / "odd.mp4"
    odd.write_bytes(video_file.read_bytes())
    monkeypatch.setattr(predict_module, "read_input", failing_for("odd.mp4", predict_module.read_input,
                                                                  RuntimeError("decoder exploded")))
    payload = predict_many(load_model(tiny_run), [video_file, huge, odd, tmp_path / "gone.mp4", video_file])
    r = payload["results"]
    assert [("error" in x) for x in r] == [False, True, True, True, False]
    assert r[1]["input"] == str(huge) and "2147483647 frames" in r[1]["error"]
    assert r[2]["error"] == "RuntimeError: decoder exploded" and "decoder exploded" in caplog.text
    assert "file not found" in r[3]["error"]
    json.dumps(payload)  # the answer is still valid JSON


def test_missing_fold_weights_warn_in_the_output(tmp_path, video_file, caplog):
    """Issue 16 item 10: a fold without weights shrinks the ensemble: a WARNING and a warning in the JSON."""
    run = make_run(tmp_path, folds=3)
    (run / "fold_1" / "model.safetensors").unlink()
    model = load_model(run)
    payload = predict_many(model, [video_file])
    assert payload["model"]["members"] == ["fold_0", "fold_2"]
    assert len(payload["warnings"]) == 1 and "2 of the run's 3 fold models" in payload["warnings"][0]
    assert "fold_1" in payload["warnings"][0]
    assert any(rec.levelname == "WARNING" and "fold_1" in rec.getMessage() for rec in caplog.records)
    assert predict_many(load_model(make_run(tmp_path / "whole", folds=2)), [video_file])["warnings"] == []


def test_per_group_averages_each_patients_inputs(tiny_run, tmp_path, capsys):
    """An export with one sub-folder a patient: with -r each sub-folder is a group whose probabilities are the mean
    of its inputs' (a failed input listed, not averaged); files given directly are their own groups; a regex on the
    file name groups across folders; the CSV gets a groups table."""
    from sonodistill.cli import main
    from tests.serve.conftest import write_video

    export = tmp_path / "export"
    for i, rel in enumerate(("p1/a.mp4", "p1/b.mp4", "p2/c.mp4", "loose.mp4")):
        write_video(export / rel, synthetic_frames(t=10, h=48, w=64, seed=i))
    (export / "p2" / "broken.mp4").write_bytes(b"not a video")
    payload = predict_many(load_model(tiny_run), [export], recursive=True, per_group=True)
    by_input = {Path(r["input"]).name: r for r in payload["results"]}
    assert {k: r["group"] for k, r in by_input.items()} == {
        "a.mp4": str(export / "p1"), "b.mp4": str(export / "p1"), "broken.mp4": str(export / "p2"),
        "c.mp4": str(export / "p2"), "loose.mp4": str(export)}
    groups = {g["group"]: g for g in payload["groups"]}
    assert list(groups) == [str(export), str(export / "p1"), str(export / "p2")]  # order of first appearance
    p1 = groups[str(export / "p1")]
    expected = np.mean([[by_input[n]["probabilities"][c] for c in CLASSES] for n in ("a.mp4", "b.mp4")], axis=0)
    assert [p1["probabilities"][c] for c in CLASSES] == pytest.approx(expected, abs=1e-4)
    assert p1["prediction"] == CLASSES[int(np.argmax(expected))] and p1["n_predicted"] == 2 and p1["failed"] == []
    p2 = groups[str(export / "p2")]
    assert p2["n_predicted"] == 1 and p2["failed"] == [str(export / "p2" / "broken.mp4")]
    assert p2["probabilities"] == by_input["c.mp4"]["probabilities"]

    files = predict_many(load_model(tiny_run), [export / "p1" / "a.mp4", export / "loose.mp4"], per_group=True)
    assert [g["inputs"] for g in files["groups"]] == [[str(export / "p1" / "a.mp4")], [str(export / "loose.mp4")]]
    regex = predict_many(load_model(tiny_run), [export / "p1", export / "p2" / "c.mp4"], group_regex=r"^([ab]|c)")
    assert [g["group"] for g in regex["groups"]] == ["a", "b", "c"]
    with pytest.raises(ManifestError, match=r"group_regex '\^z' does not match file name 'a.mp4'"):
        predict_many(load_model(tiny_run), [export / "p1"], group_regex="^z")

    csv = tmp_path / "preds.csv"
    assert main(["predict", str(tiny_run), str(export), "-r", "--per-group", "--csv", str(csv)]) == 1  # broken.mp4
    assert f"wrote {tmp_path / 'preds-groups.csv'} (3 group(s))" in capsys.readouterr().err
    table = pd.read_csv(tmp_path / "preds-groups.csv")
    assert list(table.columns[:2]) == ["group", "error"] and f"probabilities.{CLASSES[0]}" in table.columns
    assert table["failed"].fillna("").tolist() == ["", "", str(export / "p2" / "broken.mp4")]


def test_per_group_is_for_classifiers(tmp_path, toyseg_recipe, video_file):
    run = make_run(tmp_path, recipe=toyseg_recipe, folds=1, crop_region=False, size=64)
    with pytest.raises(ConfigError, match="per-group predictions average class probabilities; this is a "
                                          "'segmentation' model"):
        predict_many(load_model(run), [video_file], per_group=True)


def test_group_by_patient_reads_each_dicoms_patient_id(tiny_run, tmp_path, capsys):
    """A flat export of two patients (IM0001.. named as scanners do): one prediction a patient, named by a pseudonym
    of its PatientID, never the ID; the JSON holds neither the ID nor the patient's name."""
    import pydicom

    from sonodistill.cli import main
    from sonodistill.data.dicom_patients import pseudonym

    export = tmp_path / "export"
    for k, pid in enumerate(["P-71", "P-72", "P-71"]):
        path = write_dicom(export / f"IM000{k}", synthetic_frames(10, 48, 64, seed=k))
        ds = pydicom.dcmread(str(path))
        ds.PatientID = pid
        ds.save_as(str(path))
    out = tmp_path / "p.json"
    assert main(["predict", str(tiny_run), str(export), "--group-by-patient", "--out", str(out)]) == 0
    payload = json.loads(out.read_text())
    groups = {g["group"]: [Path(i).name for i in g["inputs"]] for g in payload["groups"]}
    assert groups == {pseudonym("P-71"): ["IM0000", "IM0002"], pseudonym("P-72"): ["IM0001"]}
    assert "P-7" not in out.read_text() and "Doe" not in out.read_text()
    assert main(["predict", str(tiny_run), str(export), "--group-by-patient", "--group-regex", "IM"]) == 2
    assert "group by a regex or by the DICOM PatientID, not both" in capsys.readouterr().err
    assert main(["predict", str(tiny_run), str(export), "--group-by-patient", "--folder-as-clip"]) == 2
    assert "with --folder-as-clip a folder is one clip, its own group" in capsys.readouterr().err
    (export / "notes.png").write_bytes(b"\x89PNG")  # not a DICOM: whose it is cannot be read
    assert main(["predict", str(tiny_run), str(export), "--group-by-patient"]) == 2
    assert "notes.png: group_by dicom-patient reads the PatientID of DICOM files" in capsys.readouterr().err


def test_folder_as_clip_joins_a_series_of_single_frame_dicoms_in_instance_order(tiny_run, tmp_path):
    """Some scanners export a cine one file a frame: --folder-as-clip orders the files by InstanceNumber, not name."""
    import pydicom

    from sonodistill.serve.predict import read_folder_clip

    frames = synthetic_frames(10, 48, 64, seed=5)
    series = tmp_path / "series"
    for k in range(10):  # names in reverse order of the frames
        path = write_dicom(series / f"IM{9 - k:04d}", frames[k:k + 1])
        ds = pydicom.dcmread(str(path))
        ds.InstanceNumber = k + 1
        ds.save_as(str(path))
    clip = read_folder_clip(series)
    np.testing.assert_array_equal(clip.frames, frames)
    joined = predict_many(load_model(tiny_run), [series], folder_as_clip=True)["results"][0]
    one = predict_file(load_model(tiny_run), write_dicom(tmp_path / "cine.dcm", frames))
    assert joined["frames"] == 10 and "input_warning" not in joined
    np.testing.assert_allclose(list(joined["probabilities"].values()), list(one["probabilities"].values()), atol=1e-6)
    write_dicom(series / "IM0100", synthetic_frames(3, 48, 64))  # a multi-frame file among them
    with pytest.raises(DataError, match="IM0100: holds 3 frames: a series read as one clip joins single-frame"):
        read_folder_clip(series)
    (series / "IM0100").unlink()
    Image.fromarray(frames[0]).save(series / "f.png")
    with pytest.raises(DataError, match="holds both images .* and DICOM files"):
        read_folder_clip(series)
