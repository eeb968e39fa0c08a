"""The dilbert recipe: options, data items and masks, helpers, every stage's loss and steps on simulated
sequence-text pairs (lung preset), and one tiny fold end to end."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from sonodistill.config import load_config, parse_options
from sonodistill.data.sequences import sample_indices, synthetic_sequences
from sonodistill.data.text import TextTokenizer
from sonodistill.errors import ConfigError
from sonodistill.knowledge import load_graph
from sonodistill.models.region_codebook import RegionCodebook
from sonodistill.data.sequence_text import IGNORE, SequenceTextDataset
from sonodistill.evaluation.annotation import (
    annotation_metrics,
    bank_normalised,
    bank_statistics,
    binary_metrics,
    retrieval_recall,
)
from sonodistill.protocols.dilbert import run_fold
from sonodistill.protocols.dilbert_stages import report_bank
from sonodistill.recipes.dilbert import (DILBERTOptions, DILBERTRecipe, fusion_config, negative_pairs, original_ids,
                                        trim_text)
from sonodistill.models.fusion import DILBERTModel
from sonodistill.serve.annotate import load_annotator

T, S = 4, 32
TINY = ["recipe=dilbert", "data.num_frames=4", "data.size=32", "data.batch_size=4", "train.epochs=1",
        "train.log_every_n_steps=1", "optim.lr=0.003",
        "recipe_options={teacher: {dim: 24, layers: 2, heads: 2, frame_width: 0.125, clip_width: 0.125}, "
        "student: {dim: 16, layers: 2, heads: 2}, vocab_size: 250, n_region_classes: 4, max_text_len: 32}"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pairs():
    return synthetic_sequences("lung", n=8, seed=0, frames=T, size=S)


@pytest.fixture(scope="module")
def graph():
    return load_graph("lung")


@pytest.fixture(scope="module")
def tok(pairs, graph):
    return TextTokenizer.train(pairs.texts, 250, extra_texts=graph.terms(), spelling=graph.spelling)


def dataset(pairs, tok, graph, **kw):
    opts = dict(num_frames=T, max_len=32, train=True, seed=0, pretext=True)
    return SequenceTextDataset(pairs, tok, graph, **{**opts, **kw})


def dilbert_options(cfg):
    return parse_options(DILBERTOptions, cfg.recipe_options, "dilbert")


def test_options_defaults_and_validation():
    cfg = load_config(None, TINY)
    o = dilbert_options(cfg)
    assert DILBERTRecipe.Options is DILBERTOptions
    assert (o.a, o.b, o.c) == (0.2, 1.0, 0.6)
    assert o.teacher.dim == 24 and o.teacher.clip_backbone == "resnet10_3d"  # nested merge over the teacher's
    assert o.teacher.frame_width == 0.125 and o.student.dim == 16 and o.student.frame_width == 0.125
    assert dilbert_options(load_config(None, [])).teacher.frame_width == 0.25  # the teacher's own defaults
    assert dilbert_options(load_config(None, ["recipe_options={variants: 'baseline,student'}"])).variants == [
        "baseline", "student"]
    with pytest.raises(ConfigError, match="unknown field"):
        dilbert_options(load_config(None, ["recipe_options={alpha: 1}"]))
    with pytest.raises(ConfigError, match=r"teacher: unknown field\(s\) \['width'\]"):
        dilbert_options(load_config(None, ["recipe_options={teacher: {width: 1}}"]))
    with pytest.raises(ConfigError, match=r"pretext_weights: unknown field\(s\) \['itm'\]"):
        dilbert_options(load_config(None, ["recipe_options={pretext_weights: {itm: 1}}"]))
    with pytest.raises(ConfigError, match="variants"):
        dilbert_options(load_config(None, ["recipe_options={variants: [bert]}"]))
    with pytest.raises(ConfigError, match="mask_rate must be in"):
        dilbert_options(load_config(None, ["recipe_options={mask_rate: 1.0}"]))
    with pytest.raises(ConfigError, match="pos_weight must be"):
        dilbert_options(load_config(None, ["recipe_options={pos_weight: inverse}"]))
    with pytest.raises(ConfigError, match="finetune_epochs must be >= 1"):
        dilbert_options(load_config(None, ["recipe_options={finetune_epochs: 0}"]))
    assert o.report_ranking == "raw" and o.cmm_text == "original"  # chosen on pocus validation splits
    with pytest.raises(ConfigError, match="cmm_text must be one of"):
        dilbert_options(load_config(None, ["recipe_options={cmm_text: clean}"]))
    with pytest.raises(ConfigError, match="report_ranking must be one of"):
        dilbert_options(load_config(None, ["recipe_options={report_ranking: z}"]))
    assert dilbert_options(load_config(None, ["recipe_options={run_folds: [0, 2]}"])).run_folds == [0, 2]
    with pytest.raises(ConfigError, match="passes the models"):
        DILBERTRecipe(cfg)


def test_sample_indices():
    np.testing.assert_array_equal(sample_indices(8, 4, None), [1, 3, 5, 7])
    np.testing.assert_array_equal(sample_indices(1, 4, None), [0, 0, 0, 0])
    r = sample_indices(8, 4, np.random.default_rng(0))
    assert all(2 * k <= v < 2 * k + 2 for k, v in enumerate(r))


def test_pretext_items_mask_consistently(pairs, tok, graph):
    ds = dataset(pairs, tok, graph, mask_rate=0.3)
    clean = dataset(pairs, tok, graph, pretext=False)
    for i in range(len(ds)):
        item, ref = ds[i], clean[i]
        assert item["x"].shape == (1, T, S, S) and 0 <= float(item["x"].min()) and float(item["x"].max()) <= 1
        masked = item["mlm_labels"] != IGNORE
        assert masked.any() and not masked[0] and not masked[item["pad"]].any()
        torch.testing.assert_close(item["mlm_labels"][masked], ref["ids"][masked])  # labels = original tokens
        torch.testing.assert_close(item["ids"][~masked], ref["ids"][~masked])
        assert ((item["mdc_labels"] != IGNORE) <= masked).all()
        assert int(item["region_mask"].sum()) == round(0.15 * T * 4)
    # reproducible per (seed, epoch, index); a new epoch draws new masks
    torch.testing.assert_close(ds[3]["mlm_labels"], ds[3]["mlm_labels"])
    ds.set_epoch(1)
    assert any(not torch.equal(ds[i]["region_mask"], dataset(pairs, tok, graph)[i]["region_mask"]) for i in range(8))


def test_original_ids_undo_the_mlm_mask(pairs, tok, graph):
    ds, clean = dataset(pairs, tok, graph, mask_rate=0.3), dataset(pairs, tok, graph, pretext=False)
    for i in range(len(ds)):
        item = ds[i]
        assert not torch.equal(item["ids"], clean[i]["ids"])  # masked
        torch.testing.assert_close(original_ids(item["ids"], item["mlm_labels"]), clean[i]["ids"])


@pytest.mark.parametrize("cmm_text", ["masked", "original"])
def test_cmm_pairs_read_the_text_cmm_text_names(cmm_text, pairs, tok, graph):
    """CMM logits (positives, then negatives) are the matching head on the region-masked clip fused with the masked
    ids of the MLM pass or with the original report, as `cmm_text` says."""
    cfg = load_config(None, TINY + [f"recipe_options.cmm_text={cmm_text}"])
    student, _ = _models(pairs, tok, graph, cfg)
    cb = RegionCodebook(2, 4).fit([dataset(pairs, tok, graph, train=False)[i]["x"][None] for i in range(8)])
    recipe = DILBERTRecipe(cfg, stage="pretrain", model=student, codebook=cb).eval()
    batch = trim_text(torch.utils.data.default_collate([dataset(pairs, tok, graph, mask_rate=0.3)[i] for i in range(4)]))
    neg = negative_pairs(batch["text_key"], batch["has_text"])
    calls: list[int] = []  # rows the matching head scores in the pass: no discarded masked-pass CMM with original
    hook = student.matching.register_forward_hook(lambda m, args, out: calls.append(out.shape[0]))
    with torch.no_grad():
        lg, _ = recipe._pretext_pass(student, batch, neg)
        hook.remove()
        region, clip = student.core.visual(batch["x"], batch["region_mask"])
        pos = torch.nonzero(batch["has_text"]).flatten()
        seq, txt = torch.cat([pos, neg[0]]), torch.cat([pos, neg[1]])

        def matching(ids: torch.Tensor) -> torch.Tensor:
            out = student.core.fuse(region[seq], clip[seq], ids[txt], batch["pad"][txt])
            return student.matching(out.text_cls, out.visual)

        read, other = matching(original_ids(batch["ids"], batch["mlm_labels"])), matching(batch["ids"])
    if cmm_text == "masked":
        read, other = other, read
    assert len(neg[0]) > 0 and lg["cmm"].shape == (len(seq), 2)
    assert calls == ([len(batch["ids"]), len(neg[0])] if cmm_text == "masked" else [len(seq)])
    torch.testing.assert_close(lg["cmm"], read, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(lg["cmm"], other, atol=1e-4)
    loss, parts = recipe.compute_loss(batch)
    assert torch.isfinite(loss) and parts["cmm"] > 0


def test_trim_text_drops_all_padding_columns(pairs, tok, graph):
    batch = torch.utils.data.default_collate([dataset(pairs, tok, graph)[i] for i in range(3)])
    trimmed = trim_text(batch)
    assert trimmed["ids"].shape[1] == int((~batch["pad"]).sum(1).max()) < batch["ids"].shape[1]


def test_negative_pairs_avoid_equal_texts():
    key = torch.tensor([0, 0, 1, -1, 2])
    has = key >= 0
    seq, txt = negative_pairs(key, has)
    assert seq.tolist() == [0, 1, 2, 4] and txt.tolist() == [2, 2, 4, 0]
    assert all(key[s] != key[t] for s, t in zip(seq, txt))
    assert len(negative_pairs(torch.tensor([5, 5]), torch.tensor([True, True]))[0]) == 0


def test_region_codebook_separates_distinct_patterns():
    cb = RegionCodebook(grid=2, n_classes=2, cells=2)
    x = torch.zeros(1, 1, 2, 8, 8)
    x[..., :4, :] = 1.0  # top regions bright, bottom dark
    cb.fit([x, x.clone()], seed=0)
    lab = cb.assign(x)[0].reshape(2, 2, 2)  # T x g x g
    assert (lab[:, 0] == lab[0, 0, 0]).all() and (lab[:, 1] == lab[0, 1, 0]).all() and lab[0, 0, 0] != lab[0, 1, 0]


def test_retrieval_recall_and_chance_by_hand():
    scores = np.array([[0.9, 0.1, 0.5], [0.4, 0.3, 0.1], [0.1, 0.2, 0.8]])
    relevant = np.eye(3, dtype=bool)
    r = retrieval_recall(scores, relevant, ks=(1, 2))
    assert r["R@1"] == pytest.approx(2 / 3) and r["R@2"] == pytest.approx(1.0)
    assert r["chance@1"] == pytest.approx(1 / 3) and r["chance@2"] == pytest.approx(2 / 3)
    two = np.array([[True, True, False]])
    assert retrieval_recall(np.array([[0.0, 0.1, 0.9]]), two, ks=(1,))["chance@1"] == pytest.approx(2 / 3)


def test_bank_normalised_removes_a_hub_candidates_bias_by_hand():
    """Candidate 0 is a hub: matched for every query (raw text -> sequence R@1 = 1/3, only its own query). Against a
    bank of other queries, each candidate's logits become z-scores: in logit space the bank gives candidate 0 mean
    log(0.9/0.1) and std 0, candidates 1-2 mean 0 and std log(0.9/0.1); every query finds its own candidate."""
    def p(z: float) -> float:  # the probability of logit z
        return 1.0 / (1.0 + np.exp(-z))

    l9 = np.log(9.0)
    scores = np.array([[p(l9 + 1), p(0.0), p(0.0)],   # query 0: its candidate 0 a little above the hub's usual
                       [p(l9), p(l9 / 2), p(0.0)],     # query 1: the hub at its usual, candidate 1 above its mean
                       [p(l9), p(0.0), p(l9 / 2)]])
    bank = np.array([[p(l9), p(l9), p(-l9)], [p(l9), p(-l9), p(l9)]])
    assert retrieval_recall(scores, np.eye(3, dtype=bool), ks=(1,))["R@1"] == pytest.approx(1 / 3)
    z = bank_normalised(scores, bank)
    np.testing.assert_allclose(z[:, 1:], [[0.0, 0.0], [0.5, 0.0], [0.0, 0.5]], atol=1e-9)
    assert z[0, 0] > 1e5 and abs(z[1, 0]) < 1e-3 and abs(z[2, 0]) < 1e-3  # std floored at eps: only query 0 is above
    assert retrieval_recall(z, np.eye(3, dtype=bool), ks=(1,))["R@1"] == 1.0
    np.testing.assert_array_equal(np.argsort(-z[:, 1]), np.argsort(-scores[:, 1]))  # one candidate's order kept


def test_binary_and_annotation_metrics_by_hand(pairs):
    m = binary_metrics(np.array([1, 1, 0, 0, np.nan]), np.array([0.9, 0.2, 0.7, 0.1, 0.9]), 0.5)
    assert (m["sensitivity"], m["precision"], m["f1"], m["specificity"]) == (0.5, 0.5, 0.5, 0.5)
    spec = pairs.spec
    rows = {"y_a_lines": [1, 0], "p_a_lines": [0.8, 0.1]}
    for col in spec.columns[1:]:
        rows[f"y_{col}"], rows[f"p_{col}"] = [1, 0], [0.1, 0.9]
    rows["y_severity_score"] = [2, 0]
    for c, p in zip("0123", ([0.1, 0.6], [0.1, 0.2], [0.7, 0.1], [0.1, 0.1])):
        rows[f"p_severity_score_{c}"] = p
    res = annotation_metrics(pd.DataFrame(rows), spec, 0.5)
    assert res["findings"]["a-lines"]["f1"] == 1.0 and res["findings"]["b-lines"]["f1"] == 0.0
    assert res["categorical"]["severity score"]["accuracy"] == 1.0
    # macro over 5 findings (F1 1, 0, 0, 0, 0) and the 2 severity classes present (F1 1, 1; absent ones NaN)
    assert res["macro"]["f1"] == pytest.approx(3 / 7)


def _models(pairs, tok, graph, cfg):
    o = dilbert_options(cfg)
    torch.manual_seed(0)
    return (DILBERTModel(fusion_config(o, "student", tok, graph, pairs.spec, T)),
            DILBERTModel(fusion_config(o, "teacher", tok, graph, pairs.spec, T)))


@pytest.mark.parametrize("stage", ["pretrain", "distill", "finetune", "mutual"])
def test_recipe_steps_on_simulated_pairs(stage, pairs, tok, graph):
    cfg = load_config(None, TINY)
    student, teacher = _models(pairs, tok, graph, cfg)
    ds = dataset(pairs, tok, graph, pretext=stage in ("pretrain", "distill"))
    cb = RegionCodebook(2, 4).fit([dataset(pairs, tok, graph, train=False)[i]["x"][None] for i in range(8)])
    recipe = DILBERTRecipe(cfg, stage=stage, model=student, teacher=teacher if stage in ("distill", "mutual") else None,
                           codebook=cb)
    opt = torch.optim.AdamW([p for p in recipe.parameters() if p.requires_grad], lr=3e-3)
    before_s = [p.detach().clone() for p in student.core.fusion.parameters()]
    before_t = [p.detach().clone() for p in teacher.core.fusion.parameters()]
    batch = torch.utils.data.default_collate([ds[i] for i in range(4)])
    for _ in range(2):
        loss, parts = recipe.compute_loss(batch)
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
    expected = {"pretrain": {"mlm", "mdc", "moc", "cmm"}, "distill": {"mlm", "md", "md/rd", "md/kl"},
                "finetune": {"ce", "total"}, "mutual": {"student/md", "student/sd", "teacher/md", "teacher/ce"}}[stage]
    assert expected <= set(parts)
    assert any(not torch.equal(a, b) for a, b in zip(before_s, student.core.fusion.parameters()))
    teacher_moved = any(not torch.equal(a, b) for a, b in zip(before_t, teacher.core.fusion.parameters()))
    assert teacher_moved == (stage == "mutual")  # frozen in distill, learns in mutual
    if stage == "finetune":
        assert "sd" not in parts and "md" not in parts  # plain finetuning: no distillation


def test_one_tiny_fold_end_to_end(pairs, graph, tmp_path):
    cfg = load_config(None, TINY + [f"out_dir={tmp_path}", "name=tiny"])
    res = run_fold(cfg, pairs, np.arange(6), np.arange(6, 8), 0, tmp_path / "tiny" / "fold_0", graph)
    pred = res["predictions"]
    assert set(pred["variant"]) == {"baseline", "teacher", "student", "teacher+mutual"} and len(pred) == 8
    probs = pred[[c for c in pred.columns if c.startswith("p_")]].to_numpy()
    assert ((probs >= 0) & (probs <= 1)).all()
    assert set(res["retrieval"]) == {"baseline", "teacher", "student"}
    assert set(res["retrieval"]["student"]) == {"seq2text", "text2seq", "seq2text_bank", "text2seq_bank"}
    banked = res["retrieval"]["student"]["text2seq_bank"]
    assert banked["queries"] == res["retrieval"]["student"]["text2seq"]["queries"] and 0 <= banked["R@1"] <= 1
    assert set(res["seconds"]) == {"baseline/pretrain", "baseline/finetune", "teacher/pretrain", "teacher/finetune",
                                   "student/distill", "student/mutual"}
    export = tmp_path / "tiny" / "fold_0" / "export" / "student"
    info = json.loads((export / "dilbert.json").read_text())
    assert info["role"] == "student" and info["fusion"]["dim"] == 16 and info["train_items"] == 6
    reports = json.loads((export / "reports.json").read_text())
    assert set(reports) <= set(pairs.texts[:6])  # training reports only
    # the report bank: each report's logit statistics over the training sequences, from the exported retriever
    bank = json.loads((export / "report_bank.json").read_text())
    ann = load_annotator(export)
    train = SequenceTextDataset(pairs.subset(np.arange(6)), ann.tokenizer, graph, num_frames=T, max_len=32,
                                train=False)
    rows = [i for i in range(6) if train.text_key[i] >= 0]
    ids = torch.from_numpy(ann.tokenizer.padded_ids([graph.words(r) for r in reports], 32))
    assert torch.equal(ann.report_ids, ids)  # tokenised once when the annotator loads
    scores = ann.retriever.match_scores(torch.stack([train[i]["x"] for i in rows]), ids).numpy()
    mean, std = bank_statistics(scores)
    assert bank["sequences"] == len(rows) and info["report_ranking"] == "raw"
    np.testing.assert_allclose(bank["mean"], mean, atol=2e-6)
    np.testing.assert_allclose(bank["std"], std, atol=2e-6)
    # a bank capped at 3 sequences takes evenly spaced ones, the first and the last among them
    few = report_bank(ExportedRetriever(ann.retriever), train, reports, graph, 32, max_sequences=3)
    picked = np.linspace(0, len(rows) - 1, 3).round().astype(int)
    assert few["sequences"] == 3 and len(rows) > 3
    np.testing.assert_allclose(few["mean"], bank_statistics(scores[picked])[0], atol=2e-6)
    assert not (tmp_path / "tiny" / "fold_0" / "student" / "mutual" / "checkpoints").exists()


class ExportedRetriever:
    """An exported retriever (`DILBERTInference`) where `report_bank` reads a model: `eval`, `inference_model`."""

    def __init__(self, inference: torch.nn.Module) -> None:
        self.inference = inference

    def eval(self) -> "ExportedRetriever":
        return self

    def inference_model(self) -> torch.nn.Module:
        return self.inference


def test_half_config_student_has_at_most_half_the_teachers_parameters():
    """dilbert-imagenet-half: the student (truncated ImageNet frame encoder) is <= 1/2 of the teacher in
    parameters of the deployed model (issue 18's size condition); dilbert-imagenet's is not."""
    from sonodistill.config import load_config, packaged_config
    from sonodistill.models.fusion import DILBERTModel, FusionConfig
    from sonodistill.protocols.dilbert_stages import options

    def size(config: str, role: str) -> int:
        o = options(load_config(packaged_config(config), []))
        fcfg = FusionConfig(vocab_size=o.vocab_size, n_binary=3, **{**vars(getattr(o, role)), "frame_pretrained": "none"})
        return sum(p.numel() for p in DILBERTModel(fcfg).inference_model().parameters())

    assert size("dilbert-imagenet-half", "student") <= 0.5 * size("dilbert-imagenet-half", "teacher")
    assert size("dilbert-imagenet", "student") > 0.5 * size("dilbert-imagenet", "teacher")
