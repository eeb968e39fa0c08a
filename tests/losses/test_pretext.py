"""DILBERT's pretext losses, L_SD and the total objective against direct computations on hand-made cases."""

from __future__ import annotations

import math

import pytest
import torch

from sonodistill.losses.pretext import (
    IGNORE,
    AnnotationCE,
    CrossModalMatchingLoss,
    DILBERTObjective,
    MaskedEntityCategoryLoss,
    MaskedLanguageModelLoss,
    MaskedRegionClassLoss,
    MutualAnnotationDistillation,
    PretextLoss,
    TemperatureSelfDistillation,
    logit_groups,
)
from sonodistill.losses.relational import RelationalKD


def ce(logits: list[float], target: int) -> float:
    """-log softmax(logits)[target], by hand."""
    return -(logits[target] - math.log(sum(math.exp(v) for v in logits)))


def kl(p: list[float], q: list[float]) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q))


def softmax(z: list[float], t: float = 1.0) -> list[float]:
    e = [math.exp(v / t) for v in z]
    return [v / sum(e) for v in e]


def test_mlm_counts_only_masked_positions():
    logits = torch.tensor([[[2.0, 0.0, -1.0], [0.0, 0.0, 0.0], [1.0, 3.0, 0.0]]])
    labels = torch.tensor([[0, IGNORE, 1]])
    loss, parts = MaskedLanguageModelLoss()(logits, labels)
    expected = (ce([2.0, 0.0, -1.0], 0) + ce([1.0, 3.0, 0.0], 1)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert parts["mlm/n"].item() == 2


def test_nothing_masked_gives_zero_with_a_graph():
    logits = torch.randn(1, 3, 4, requires_grad=True)
    loss, _ = MaskedLanguageModelLoss()(logits, torch.full((1, 3), IGNORE))
    assert loss.item() == 0.0
    loss.backward()
    assert logits.grad is not None and (logits.grad == 0).all()


def test_mdc_is_the_entity_category_ce():
    logits = torch.tensor([[[0.5, 1.5, 0.0, -0.5], [1.0, 1.0, 1.0, 1.0]]])
    loss, _ = MaskedEntityCategoryLoss()(logits, torch.tensor([[2, IGNORE]]))
    assert loss.item() == pytest.approx(ce([0.5, 1.5, 0.0, -0.5], 2), rel=1e-6)


def test_moc_hard_and_soft_targets():
    logits = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [3.0, 1.0]]])
    loss, _ = MaskedRegionClassLoss()(logits, torch.tensor([[1, IGNORE, 0]]))
    assert loss.item() == pytest.approx((ce([1.0, 0.0], 1) + ce([3.0, 1.0], 0)) / 2, rel=1e-6)
    target = torch.tensor([[[0.25, 0.75], [0.5, 0.5], [0.9, 0.1]]])
    mask = torch.tensor([[True, False, True]])
    loss, parts = MaskedRegionClassLoss()(logits, target, mask)
    expected = (kl([0.25, 0.75], softmax([1.0, 0.0])) + kl([0.9, 0.1], softmax([3.0, 1.0]))) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-5) and parts["moc/n"].item() == 2


def test_cmm_matched_vs_mismatched():
    logits = torch.tensor([[0.0, 2.0], [1.0, -1.0], [0.5, 0.0]])
    labels = torch.tensor([1, 0, 1])
    loss, parts = CrossModalMatchingLoss()(logits, labels)
    expected = (ce([0.0, 2.0], 1) + ce([1.0, -1.0], 0) + ce([0.5, 0.0], 1)) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert parts["cmm/accuracy"].item() == pytest.approx(2 / 3)


def test_pretext_weighted_sum():
    torch.manual_seed(0)
    logits = {"mlm": torch.randn(2, 4, 7), "mdc": torch.randn(2, 4, 3), "moc": torch.randn(2, 5, 6),
              "cmm": torch.randn(3, 2)}
    targets = {"mlm": torch.tensor([[1, IGNORE, 3, IGNORE], [IGNORE, 6, IGNORE, IGNORE]]),
               "mdc": torch.tensor([[0, IGNORE, 2, IGNORE], [IGNORE, 1, IGNORE, IGNORE]]),
               "moc": torch.tensor([[IGNORE, 2, IGNORE, IGNORE, 5], [0, IGNORE, IGNORE, IGNORE, IGNORE]]),
               "cmm": torch.tensor([1, 1, 0])}
    loss, parts = PretextLoss(mlm=1.0, mdc=0.5, moc=2.0, cmm=0.0)(logits, targets)
    expected = parts["mlm"] + 0.5 * parts["mdc"] + 2.0 * parts["moc"]
    torch.testing.assert_close(loss, expected)
    assert "cmm" not in parts


def test_logit_groups_binary_as_two_class():
    b = torch.tensor([[0.0, 2.0], [-1.0, 0.5]])
    groups = logit_groups(b, [torch.zeros(2, 3)])
    assert groups[0].shape == (4, 2) and groups[1].shape == (2, 3)
    torch.testing.assert_close(torch.softmax(groups[0], -1)[:, 1], torch.sigmoid(b).reshape(-1))
    assert logit_groups(torch.zeros(2, 0), [torch.zeros(2, 3)])[0].shape == (2, 3)


def test_annotation_ce_skips_unknown_labels():
    b = torch.tensor([[1.0, -2.0], [0.5, 0.0]])
    yb = torch.tensor([[1.0, float("nan")], [0.0, 1.0]])
    c = [torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 1.0]])]
    yc = torch.tensor([[0], [-1]])
    loss, parts = AnnotationCE(pos_weight=torch.tensor([2.0, 3.0]))(b, c, yb, yc)
    sig = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    bce = (-2.0 * math.log(sig(1.0)) - math.log(1 - sig(0.5)) - 3.0 * math.log(sig(0.0))) / 3
    cat = ce([2.0, 0.0, 0.0], 0)
    assert parts["ce/binary"].item() == pytest.approx(bce, rel=1e-6)
    assert loss.item() == pytest.approx((bce + cat) / 2, rel=1e-6)


def test_temperature_self_distillation_by_hand():
    t = 2.0
    final = [torch.tensor([[2.0, 0.0, -1.0]])]
    earlier = [[torch.tensor([[0.0, 1.0, 0.0]])], [torch.tensor([[1.0, 0.0, 0.0]])]]
    loss, parts = TemperatureSelfDistillation(t)(final, earlier)
    p = softmax([2.0, 0.0, -1.0], t)
    expected = t ** 2 * (kl(p, softmax([0.0, 1.0, 0.0], t)) + kl(p, softmax([1.0, 0.0, 0.0], t))) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    # the last layer teaches: no gradient flows into it
    f = torch.tensor([[2.0, 0.0, -1.0]], requires_grad=True)
    e = torch.tensor([[0.0, 1.0, 0.0]], requires_grad=True)
    TemperatureSelfDistillation(t)([f], [[e]]).loss.backward()
    assert f.grad is None and e.grad is not None
    assert TemperatureSelfDistillation(t)(final, []).loss.item() == 0.0


def test_sd_averages_over_groups():
    t = 1.0
    final = [torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 0.0, 0.0]])]
    earlier = [[torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, 0.0, 1.0]])]]
    loss, _ = TemperatureSelfDistillation(t)(final, earlier)
    expected = (kl(softmax([0.0, 1.0]), [0.5, 0.5]) + kl(softmax([1.0, 0.0, 0.0]), softmax([0.0, 0.0, 1.0]))) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def _case():
    g = torch.Generator().manual_seed(3)
    s = dict(binary=torch.randn(5, 2, generator=g), categorical=[torch.randn(5, 3, generator=g)],
             embedding=torch.randn(5, 8, generator=g))
    t = dict(binary=torch.randn(5, 2, generator=g), categorical=[torch.randn(5, 3, generator=g)],
             embedding=torch.randn(5, 12, generator=g))
    exits = [(torch.randn(5, 2, generator=g), [torch.randn(5, 3, generator=g)])]
    yb = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0], [1.0, float("nan")]])
    yc = torch.tensor([[0], [2], [1], [-1], [0]])
    return s, t, exits, yb, yc


def test_mutual_distillation_is_relational_plus_b2_kl():
    s, t, _, _, _ = _case()
    loss, parts = MutualAnnotationDistillation(b1=2.0, b2=0.5, temperature=4.0)(
        s["embedding"], t["embedding"], logit_groups(s["binary"], s["categorical"]),
        logit_groups(t["binary"], t["categorical"]))
    rd = RelationalKD(2.0)(s["embedding"], t["embedding"]).loss
    # direct KL per group, T^2 scaled, batchmean
    kls = []
    for sg, tg in zip(logit_groups(s["binary"], s["categorical"]), logit_groups(t["binary"], t["categorical"])):
        rows = [16.0 * kl(softmax(tr.tolist(), 4.0), softmax(sr.tolist(), 4.0)) for sr, tr in zip(sg, tg)]
        kls.append(sum(rows) / len(rows))
    assert loss.item() == pytest.approx(rd.item() + 0.5 * sum(kls) / 2, rel=1e-5)
    assert parts["kl"].item() == pytest.approx(sum(kls) / 2, rel=1e-5)


def test_total_objective_is_a_ce_plus_b_md_plus_c_sd():
    s, t, exits, yb, yc = _case()
    a, b, c = 0.2, 1.0, 0.6
    obj = DILBERTObjective(a, b, c, b1=2.0, b2=1.0, kd_temperature=4.0, sd_temperature=3.0)
    loss, parts = obj(s["binary"], s["categorical"], s["embedding"], yb, yc, t["binary"], t["categorical"],
                      t["embedding"], exits)
    l_ce = AnnotationCE()(s["binary"], s["categorical"], yb, yc).loss
    l_md = MutualAnnotationDistillation(2.0, 1.0, 4.0)(
        s["embedding"], t["embedding"], logit_groups(s["binary"], s["categorical"]),
        logit_groups(t["binary"], t["categorical"])).loss
    l_sd = TemperatureSelfDistillation(3.0)(logit_groups(s["binary"], s["categorical"]),
                                            [logit_groups(*exits[0])]).loss
    torch.testing.assert_close(loss, a * l_ce + b * l_md + c * l_sd)
    assert {"ce", "md", "sd", "kl", "total"} <= set(parts)
    # no partner and c = 0: plain finetuning, exactly the CE
    plain, p = DILBERTObjective(1.0, 0.0, 0.0)(s["binary"], s["categorical"], s["embedding"], yb, yc)
    torch.testing.assert_close(plain, l_ce)
    assert "md" not in p and "sd" not in p


def test_partner_is_detached_in_mutual_learning():
    s, t, exits, yb, yc = _case()
    t = {k: (v.clone().requires_grad_() if torch.is_tensor(v) else [x.clone().requires_grad_() for x in v])
         for k, v in t.items()}
    s_emb = s["embedding"].clone().requires_grad_()
    loss, _ = DILBERTObjective()(s["binary"], s["categorical"], s_emb, yb, yc, t["binary"], t["categorical"],
                                 t["embedding"], exits)
    loss.backward()
    assert s_emb.grad is not None
    assert t["binary"].grad is None and t["embedding"].grad is None
