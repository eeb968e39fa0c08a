"""Semi-supervised segmentation losses against hand-computed values, gradient routing and bounds."""

from __future__ import annotations

import math

import pytest
import torch
from monai.losses import DiceCELoss as MonaiDiceCELoss

from sonodistill.losses.base import LossOutput
from sonodistill.losses.consistency import (
    CorrelationGuidanceLoss,
    CrossPseudoSupervisionLoss,
    DiceCELoss,
    FixMatchPseudoLabelLoss,
    HDCLoss,
    MutualInformationLoss,
    PixelConsistencyLoss,
    channel_gram,
)
from sonodistill.models.segmentation import DualDecoderUNet, SegOutputs
from tests.gloo import run_two_processes

ATOL = 1e-6


def two_class_logits(p1: list[float], shape: tuple[int, ...]) -> torch.Tensor:
    """Logits `B x 2 x ...` whose class-1 softmax probability is p1 (class-0 logit 0)."""
    p = torch.tensor(p1, dtype=torch.float64).reshape(shape)
    return torch.stack([torch.zeros_like(p), torch.log(p / (1 - p))], dim=1)


# ---------------------------------------------------------------- DiceCE
def test_dicece_hand_value_2x2() -> None:
    # class-1 probabilities 0.75, 0.5, 0.25, 0.5; labels 1, 0, 0, 0.
    logits = two_class_logits([0.75, 0.5, 0.25, 0.5], (1, 2, 2))
    target = torch.tensor([[[1, 0], [0, 0]]])
    s = 1e-5
    dice1 = 1 - (2 * 0.75 + s) / (2.0 + 1.0 + s)
    dice0 = 1 - (2 * (0.5 + 0.75 + 0.5) + s) / (2.0 + 3.0 + s)
    ce = -(math.log(0.75) + math.log(0.5) + math.log(0.75) + math.log(0.5)) / 4
    loss, parts = DiceCELoss()(logits, target)
    assert loss.item() == pytest.approx((dice0 + dice1) / 2 + ce, abs=ATOL)
    assert parts["dice"].item() == pytest.approx((dice0 + dice1) / 2, abs=ATOL)
    assert parts["ce"].item() == pytest.approx(ce, abs=ATOL)
    fg_only, fg_parts = DiceCELoss(include_background=False)(logits, target)
    assert fg_only.item() == pytest.approx(dice1 + ce, abs=ATOL)  # foreground Dice only; CE unchanged
    assert fg_parts["dice"].item() == pytest.approx(dice1, abs=ATOL)


def test_foreground_dice_makes_an_empty_prediction_costlier() -> None:
    """An all-background prediction of a small structure keeps half the Dice term with the background class
    counted (background Dice ~ 0), the whole of it without: the loss that leaves empty masks cheaper."""
    target = torch.zeros(1, 8, 8, dtype=torch.long)
    target[0, :2, :2] = 1  # 1/16 foreground
    empty = torch.stack([torch.full((1, 8, 8), 6.0), torch.zeros(1, 8, 8)], dim=1)
    with_bg = DiceCELoss()(empty, target)[1]["dice"].item()
    fg_only = DiceCELoss(include_background=False)(empty, target)[1]["dice"].item()
    assert with_bg == pytest.approx(0.5, abs=0.02) and fg_only == pytest.approx(1.0, abs=0.01)


def test_dicece_matches_monai_and_accepts_channel_target() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 8, 8)
    target = torch.randint(0, 3, (2, 1, 8, 8))
    ours, _ = DiceCELoss(lambda_dice=0.7, lambda_ce=0.3)(logits, target)
    ref = MonaiDiceCELoss(to_onehot_y=True, softmax=True, lambda_dice=0.7, lambda_ce=0.3)(logits, target)
    assert ours.item() == pytest.approx(ref.item(), abs=ATOL)
    assert DiceCELoss()(logits, target[:, 0])[0].item() == pytest.approx(DiceCELoss()(logits, target)[0].item())


def test_dicece_rejects_out_of_range_labels() -> None:
    with pytest.raises(ValueError, match="outside the 2 classes"):
        DiceCELoss()(torch.zeros(1, 2, 2, 2), torch.full((1, 2, 2), 2))


# ---------------------------------------------------------------- correlation guidance
def test_channel_gram_is_cosine() -> None:
    f = torch.tensor([[[[1.0, 0.0]], [[3.0, 3.0]]]])  # B=1, C=2, H=1, W=2
    h = 1 / math.sqrt(2)
    assert torch.allclose(channel_gram(f), torch.tensor([[[1.0, h], [h, 1.0]]]), atol=ATOL)


def test_correlation_guidance_hand_value() -> None:
    student = [torch.tensor([[[[1.0, 0.0]], [[2.0, 2.0]]]]), torch.ones(1, 3, 2, 2)]
    teacher = [torch.tensor([[[[5.0, 0.0]], [[0.0, 1.0]]]]), 7 * torch.ones(1, 3, 2, 2)]
    # layer 0: G_s = [[1, 1/sqrt2], [1/sqrt2, 1]], G_t = I -> ||.||_F^2 = 1, / C^2 = 1/4; layer 1: 0.
    out = CorrelationGuidanceLoss()(student, teacher)
    assert isinstance(out, LossOutput)
    loss, parts = out
    assert loss.item() == pytest.approx(0.125, abs=ATOL)
    assert parts["layer0"].item() == pytest.approx(0.25, abs=ATOL)
    assert parts["layer1"].item() == pytest.approx(0.0, abs=ATOL)


def test_correlation_guidance_teacher_gets_no_grad() -> None:
    torch.manual_seed(0)
    fs = torch.randn(2, 4, 4, 4, requires_grad=True)
    ft = torch.randn(2, 4, 4, 4, requires_grad=True)
    loss, _ = CorrelationGuidanceLoss()([fs], [ft])
    loss.backward()
    assert ft.grad is None
    assert fs.grad is not None and fs.grad.abs().sum() > 0


def test_correlation_guidance_layer_mismatch() -> None:
    with pytest.raises(ValueError, match="layer 0"):
        CorrelationGuidanceLoss()([torch.zeros(1, 2, 2, 2)], [torch.zeros(1, 3, 2, 2)])


# ---------------------------------------------------------------- mutual information
def one_hot_logits(labels: torch.Tensor, k: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(labels, k).movedim(-1, 1).double() * 100.0


@pytest.mark.parametrize("k", [2, 3, 4])
def test_mi_identical_balanced_one_hot_is_log_k(k: int) -> None:
    labels = torch.arange(k * 4).remainder(k).reshape(1, 2, 2 * k)
    logits = one_hot_logits(labels, k)
    loss, parts = MutualInformationLoss()(logits, logits.clone())
    assert parts["mi"].item() == pytest.approx(math.log(k), abs=ATOL)
    assert loss.item() == pytest.approx(-math.log(k), abs=ATOL)


def test_mi_uniform_is_zero() -> None:
    loss, parts = MutualInformationLoss()(torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 4))
    assert parts["mi"].item() == pytest.approx(0.0, abs=ATOL)


def test_mi_hand_value_asymmetric() -> None:
    # two pixels: p1 = (1, 0), (0.5, 0.5); p2 = (1, 0), (1, 0).
    p1 = two_class_logits([1e-12, 0.5], (1, 1, 2))
    p2 = two_class_logits([1e-12, 1e-12], (1, 1, 2))
    # P = [[0.75, 0], [0.25, 0]] -> symmetrised [[0.75, 0.125], [0.125, 0]], marginals (0.875, 0.125).
    expected = 0.75 * math.log(0.75 / 0.875**2) + 2 * 0.125 * math.log(0.125 / (0.875 * 0.125))
    _, parts = MutualInformationLoss()(p1, p2)
    assert parts["mi"].item() == pytest.approx(expected, abs=ATOL)


def test_mi_conditional_only_hand_value() -> None:
    # the same two pixels: symmetrised P = [[0.75, 0.125], [0.125, 0]], marginal (0.875, 0.125)
    p1 = two_class_logits([1e-12, 0.5], (1, 1, 2))
    p2 = two_class_logits([1e-12, 1e-12], (1, 1, 2))
    h_joint = -(0.75 * math.log(0.75) + 2 * 0.125 * math.log(0.125))
    h_marginal = -(0.875 * math.log(0.875) + 0.125 * math.log(0.125))
    loss, _ = MutualInformationLoss(marginal="none")(p1, p2)
    assert loss.item() == pytest.approx(h_joint - h_marginal, abs=ATOL)  # H(Z1 | Z2)


def test_full_mi_prefers_half_foreground_and_the_conditional_term_does_not() -> None:
    """-I(D1; D2) is lower when a quarter of the pixels (a head) turns into half: it pushes the foreground
    fraction towards 1/2. The conditional term alone scores both agreeing, confident predictions equally."""
    quarter = (torch.arange(16) < 4).long().reshape(1, 4, 4)
    half = (torch.arange(16) < 8).long().reshape(1, 4, 4)
    full, cond = MutualInformationLoss(), MutualInformationLoss(marginal="none")
    lq, lh = one_hot_logits(quarter, 2), one_hot_logits(half, 2)
    assert full(lh, lh.clone())[0].item() < full(lq, lq.clone())[0].item() - 0.1
    assert cond(lh, lh.clone())[0].item() == pytest.approx(cond(lq, lq.clone())[0].item(), abs=ATOL)
    with pytest.raises(ValueError, match="marginal"):
        MutualInformationLoss(marginal="uniform")


def test_mi_prior_hand_value() -> None:
    # the same two pixels: symmetrised P = [[0.75, 0.125], [0.125, 0]], marginal m = (0.875, 0.125)
    p1 = two_class_logits([1e-12, 0.5], (1, 1, 2))
    p2 = two_class_logits([1e-12, 1e-12], (1, 1, 2))
    h_joint = -(0.75 * math.log(0.75) + 2 * 0.125 * math.log(0.125))
    h_marginal = -(0.875 * math.log(0.875) + 0.125 * math.log(0.125))
    kl = 0.875 * math.log(0.875 / 0.9) + 0.125 * math.log(0.125 / 0.1)  # KL(m || (0.9, 0.1))
    loss, parts = MutualInformationLoss(marginal="prior")(p1, p2, prior=torch.tensor([9.0, 1.0]))  # normalised
    assert loss.item() == pytest.approx(h_joint - h_marginal + kl, abs=ATOL)
    assert parts["marginal_kl"].item() == pytest.approx(kl, abs=ATOL)
    loss, parts = MutualInformationLoss(marginal="prior", prior_weight=10.0)(p1, p2, prior=torch.tensor([9.0, 1.0]))
    assert loss.item() == pytest.approx(h_joint - h_marginal + 10 * kl, abs=ATOL)  # only the KL term is weighted
    assert parts["marginal_kl"].item() == pytest.approx(kl, abs=ATOL)


@pytest.mark.parametrize("weight", [-1.0, float("nan"), float("inf")])
def test_mi_prior_weight_must_be_finite_and_non_negative(weight) -> None:
    with pytest.raises(ValueError, match="prior_weight must be a finite number >= 0"):
        MutualInformationLoss(marginal="prior", prior_weight=weight)


def test_mi_prior_uniform_equals_iic_plus_log_k() -> None:
    """-I = H(Z1 | Z2) + KL(m || uniform) - log K: the prior variant with a uniform prior is IIC shifted."""
    torch.manual_seed(1)
    a, b = torch.randn(2, 3, 4, 4).double(), torch.randn(2, 3, 4, 4).double()
    iic = MutualInformationLoss()(a, b)[0]
    prior = MutualInformationLoss(marginal="prior")(a, b, prior=torch.ones(3))[0]
    assert prior.item() == pytest.approx(iic.item() + math.log(3), abs=1e-9)


def test_mi_prior_prefers_the_prior_foreground_fraction() -> None:
    """With the labelled prior (3/4 background), agreeing confident predictions covering a quarter of the pixels
    score lower than ones covering half: the opposite of IIC's pull towards 1/2."""
    quarter = one_hot_logits((torch.arange(16) < 4).long().reshape(1, 4, 4), 2)
    half = one_hot_logits((torch.arange(16) < 8).long().reshape(1, 4, 4), 2)
    mi, prior = MutualInformationLoss(marginal="prior"), torch.tensor([0.75, 0.25])
    assert mi(quarter, quarter.clone(), prior)[0].item() < mi(half, half.clone(), prior)[0].item() - 0.1
    assert mi(quarter, quarter.clone(), prior)[0].item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("prior, match", [(None, "needs prior"), (torch.tensor([1.0, 0.0, 0.0]), "2 non-negative"),
                                          (torch.tensor([1.0, -0.5]), "non-negative"),
                                          (torch.tensor([float("nan"), 1.0]), "non-negative")])
def test_mi_prior_rejects_a_missing_or_bad_prior(prior, match) -> None:
    with pytest.raises(ValueError, match=match):
        MutualInformationLoss(marginal="prior")(torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, 2), prior)


def test_mi_bounds_and_gradients_on_random_inputs() -> None:
    torch.manual_seed(0)
    for k in (2, 5):
        a = (3 * torch.randn(2, k, 8, 8)).requires_grad_()
        b = (3 * torch.randn(2, k, 8, 8)).requires_grad_()
        loss, parts = MutualInformationLoss()(a, b)
        assert -1e-6 <= parts["mi"].item() <= math.log(k) + 1e-6
        assert 0 <= parts["marginal_entropy"].item() <= math.log(k) + 1e-6
        loss.backward()
        assert torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all()
        assert a.grad.abs().sum() > 0 and b.grad.abs().sum() > 0


# ---------------------------------------------------------------- pixel consistency
def test_pixel_consistency_hand_value_and_mask() -> None:
    student = two_class_logits([0.75, 0.5], (1, 1, 2))
    teacher = two_class_logits([0.5, 0.96], (1, 1, 2))
    # squared diffs averaged over the 2 classes: pixel 0: 0.25^2, pixel 1: 0.46^2.
    loss, parts = PixelConsistencyLoss()(student, teacher)
    assert loss.item() == pytest.approx((0.25**2 + 0.46**2) / 2, abs=ATOL)
    loss, parts = PixelConsistencyLoss(threshold=0.9)(student, teacher)
    assert loss.item() == pytest.approx(0.46**2, abs=ATOL)
    assert parts["mask_ratio"].item() == pytest.approx(0.5)
    loss, parts = PixelConsistencyLoss(threshold=0.99)(student, teacher)
    assert loss.item() == 0.0 and parts["mask_ratio"].item() == 0.0


def test_pixel_consistency_ce_is_cross_entropy_to_the_teachers_argmax() -> None:
    student = two_class_logits([0.75, 0.5, 0.2], (1, 1, 3))
    teacher = two_class_logits([0.4, 0.96, 0.7], (1, 1, 3))  # argmax 0, 1, 1; max probability 0.6, 0.96, 0.7
    # student's probability of the teacher's class: 1 - 0.75, 0.5, 0.2
    loss, parts = PixelConsistencyLoss(kind="ce")(student, teacher)
    assert loss.item() == pytest.approx(-(math.log(0.25) + math.log(0.5) + math.log(0.2)) / 3, abs=ATOL)
    assert parts["mask_ratio"].item() == 1.0
    # threshold: only pixel 1 (0.96) and pixel 2 (0.7) at 0.65; their mean
    loss, parts = PixelConsistencyLoss(threshold=0.65, kind="ce")(student, teacher)
    assert loss.item() == pytest.approx(-(math.log(0.5) + math.log(0.2)) / 2, abs=ATOL)
    assert parts["mask_ratio"].item() == pytest.approx(2 / 3)


def test_pixel_consistency_ce_pulls_the_student_towards_the_pseudo_label() -> None:
    student = two_class_logits([0.3], (1, 1, 1)).requires_grad_()
    teacher = two_class_logits([0.9], (1, 1, 1))
    PixelConsistencyLoss(kind="ce")(student, teacher).loss.backward()
    # d CE / d logit_1 = p_1 - 1 < 0: a gradient step raises the foreground logit (MSE would too, more weakly)
    assert student.grad[0, 1].item() == pytest.approx(0.3 - 1.0, abs=ATOL)


def test_pixel_consistency_rejects_an_unknown_kind() -> None:
    with pytest.raises(ValueError, match=r"kind must be one of \('mse', 'ce'\), got 'kl'"):
        PixelConsistencyLoss(kind="kl")


def test_pixel_consistency_teacher_gets_no_grad() -> None:
    torch.manual_seed(0)
    s = torch.randn(2, 3, 4, 4, requires_grad=True)
    t = torch.randn(2, 3, 4, 4, requires_grad=True)
    PixelConsistencyLoss()(s, t)[0].backward()
    assert t.grad is None and s.grad.abs().sum() > 0


# ---------------------------------------------------------------- FixMatch / CPS
def test_fixmatch_hand_value() -> None:
    weak = two_class_logits([0.97, 0.75, 0.02, 0.5], (1, 2, 2)).requires_grad_()
    strong = two_class_logits([0.8, 0.3, 0.4, 0.9], (1, 2, 2)).requires_grad_()
    # confident pixels: 0 (label 1, p=0.97) and 2 (label 0, p=0.98); mean over all 4 pixels.
    expected = (-math.log(0.8) - math.log(0.6)) / 4
    loss, parts = FixMatchPseudoLabelLoss(threshold=0.95)(strong, weak)
    assert loss.item() == pytest.approx(expected, abs=ATOL)
    assert parts["mask_ratio"].item() == pytest.approx(0.5)
    loss.backward()
    assert weak.grad is None and strong.grad is not None


def test_cps_hand_value_and_gradient_routing() -> None:
    a = two_class_logits([0.8, 0.4], (1, 1, 2)).requires_grad_()  # argmax 1, 0
    b = two_class_logits([0.3, 0.6], (1, 1, 2)).requires_grad_()  # argmax 0, 1
    ce_a = (-math.log(1 - 0.8) - math.log(0.4)) / 2  # a against b's labels (0, 1)
    ce_b = (-math.log(0.3) - math.log(1 - 0.6)) / 2  # b against a's labels (1, 0)
    loss, parts = CrossPseudoSupervisionLoss()(a, b)
    assert loss.item() == pytest.approx(ce_a + ce_b, abs=ATOL)
    assert parts["cps_a"].item() == pytest.approx(ce_a, abs=ATOL)
    loss.backward()
    ref = a.detach().clone().requires_grad_()
    torch.nn.functional.cross_entropy(ref, torch.tensor([[[0, 1]]])).backward()
    assert torch.allclose(a.grad, ref.grad, atol=1e-12)  # labels from b carry no gradient into a


# ---------------------------------------------------------------- HDC total
def test_hdc_loss_combines_terms_and_routes_gradients() -> None:
    torch.manual_seed(0)
    student_net = DualDecoderUNet(channels=(4, 8, 16, 32, 64)).train()
    teacher_net = DualDecoderUNet(channels=(4, 8, 16, 32, 64)).train()
    x = torch.randn(2, 1, 32, 32)
    s = student_net(x)
    t = teacher_net(x, dual=False)
    hdc = HDCLoss(lambda_cg=0.5, lambda_mi=0.2, lambda_pc=3.0)
    loss, parts = hdc(s, t, weight=0.4)
    cg = CorrelationGuidanceLoss()(s.features, t.features)[0]
    neg_mi = MutualInformationLoss()(s.logits1, s.logits2)[0]
    pc = PixelConsistencyLoss()(s.logits1, t.logits1)[0]
    assert loss.item() == pytest.approx(0.4 * (0.5 * cg + 0.2 * neg_mi + 3.0 * pc).item(), abs=ATOL)
    assert parts["mi"].item() == pytest.approx(-neg_mi.item(), abs=ATOL)
    assert parts["weight"].item() == pytest.approx(0.4)
    assert {"cg", "mi", "pc", "cg/layer4", "mi/marginal_entropy", "pc/mask_ratio", "unsup"} <= set(parts)
    assert all(not v.requires_grad for v in parts.values())
    loss.backward()
    assert all(p.grad is None for p in teacher_net.parameters())
    assert any(p.grad is not None for p in student_net.decoder2.parameters())


def test_hdc_loss_layer_selection_and_missing_d2() -> None:
    f = [torch.randn(1, 2, 4, 4) for _ in range(3)]
    logits = torch.randn(1, 2, 4, 4)
    s = SegOutputs(logits, logits.clone(), f)
    t = SegOutputs(logits.clone(), None, [g.clone() for g in f[:2]] + [torch.randn(1, 2, 4, 4)])
    _, parts = HDCLoss(cg_layers=[0, 1])(s, t)
    assert parts["cg"].item() == pytest.approx(0.0, abs=ATOL)
    with pytest.raises(ValueError, match="logits2 is None"):
        HDCLoss()(SegOutputs(logits, None, f), t)


# ---------------------------------------------------------------- MI under DDP
def _mi_worker(rank: int, world: int, tmp: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/rdzv", rank=rank, world_size=world)
    try:
        data = torch.load(f"{tmp}/inputs.pt")
        a = data["a"][rank : rank + 1].clone().requires_grad_()
        b = data["b"][rank : rank + 1].clone().requires_grad_()
        loss, parts = MutualInformationLoss(marginal=data["marginal"])(a, b, data["prior"])
        loss.backward()
        torch.save({"mi": parts["mi"], "loss": loss.detach(), "grad_a": a.grad}, f"{tmp}/out{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("marginal", ["entropy", "prior"])
def test_mi_joint_is_global_under_ddp(tmp_path, marginal) -> None:
    torch.manual_seed(0)
    a = (2 * torch.randn(2, 3, 4, 4)).double()
    b = (2 * torch.randn(2, 3, 4, 4)).double()
    prior = torch.tensor([0.6, 0.3, 0.1]) if marginal == "prior" else None
    torch.save({"a": a, "b": b, "marginal": marginal, "prior": prior}, tmp_path / "inputs.pt")
    run_two_processes(_mi_worker, str(tmp_path))
    outs = [torch.load(tmp_path / f"out{r}.pt") for r in range(2)]
    full_a = a.clone().requires_grad_()
    loss, parts = MutualInformationLoss(marginal=marginal)(full_a, b, prior)
    loss.backward()
    local_mi = MutualInformationLoss()(a[:1], b[:1])[1]["mi"]
    for r, o in enumerate(outs):
        assert o["mi"].item() == pytest.approx(parts["mi"].item(), abs=1e-9)
        assert o["loss"].item() == pytest.approx(loss.item(), abs=1e-6)
        # DDP averages gradients over the 2 processes: (1/2) * local grad == exact grad of the global MI.
        torch.testing.assert_close(o["grad_a"] / 2, full_a.grad[r : r + 1])
    assert abs(local_mi.item() - parts["mi"].item()) > 1e-3  # a missing all-reduce would be caught
