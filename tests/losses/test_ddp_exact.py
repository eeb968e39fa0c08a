"""Losses whose statistics span the batch give, over 2 gloo processes, the one-process loss on the global batch:
the same value on every process and, after DDP's averaging of the two processes' gradients, the same gradient.
The processes hold different numbers of counted items (masked tokens, known labels, confident pixels, pairs), so a
mean of per-process means would fail; each case also checks that it would."""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist

from sonodistill.data.sequence_text import IGNORE
from sonodistill.losses.consistency import PixelConsistencyLoss
from sonodistill.losses.pretext import AnnotationCE, CrossModalMatchingLoss, MaskedLanguageModelLoss, MaskedRegionClassLoss
from sonodistill.losses.relational import RelationalKD, ResponseKD
from tests.gloo import run_two_processes


def _case_inputs() -> dict[str, dict]:
    """Per case: tensors (dim 0 = items), the rows each process holds, and the names of the tensors that learn."""
    g = torch.Generator().manual_seed(0)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    labels = torch.full((2, 6), IGNORE, dtype=torch.long)
    labels[0, 2] = 3                               # process 0: one masked token
    labels[1, :5] = torch.tensor([0, 4, 1, 1, 2])  # process 1: five
    region_mask = torch.tensor([[True, False, False, False], [True, True, True, False]])
    soft = torch.softmax(randn(2, 4, 3), dim=-1)
    y_binary = torch.tensor([[1.0, math.nan], [0.0, 1.0], [math.nan, 0.0], [1.0, 1.0]])
    y_cat = torch.tensor([[-1], [-1], [2], [0]])  # process 0 holds no known categorical label
    teacher_pc = randn(2, 2, 4, 4) * 3
    teacher_pc[0] = teacher_pc[0] * 0.1            # process 0: few confident pixels
    return {
        "mlm": {"tensors": {"logits": randn(2, 6, 5), "labels": labels}, "rows": [[0], [1]], "leaves": ["logits"]},
        "moc_soft": {"tensors": {"logits": randn(2, 4, 3), "target": soft, "mask": region_mask},
                     "rows": [[0], [1]], "leaves": ["logits"]},
        "cmm": {"tensors": {"logits": randn(4, 2), "labels": torch.tensor([1, 1, 0, 0])},
                "rows": [[0], [1, 2, 3]], "leaves": ["logits"]},
        "annotation_ce": {"tensors": {"binary": randn(4, 2), "cat": randn(4, 3), "y_binary": y_binary,
                                      "y_cat": y_cat}, "rows": [[0, 1], [2, 3]], "leaves": ["binary", "cat"]},
        "response_kd": {"tensors": {"s": randn(4, 3), "t": randn(4, 3)}, "rows": [[0], [1, 2, 3]], "leaves": ["s"]},
        "relational": {"tensors": {"s": randn(6, 4), "t": randn(6, 5)}, "rows": [[0, 1, 2], [3, 4, 5]],
                       "leaves": ["s"]},
        "relational_mutual": {"tensors": {"s": randn(6, 4), "t": randn(6, 5)}, "rows": [[0, 1, 2], [3, 4, 5]],
                              "leaves": ["s", "t"]},
        "pc_threshold": {"tensors": {"s": randn(2, 2, 4, 4), "t": teacher_pc}, "rows": [[0], [1]], "leaves": ["s"]},
        "pc_ce_threshold": {"tensors": {"s": randn(2, 2, 4, 4), "t": teacher_pc}, "rows": [[0], [1]],
                            "leaves": ["s"]},
    }


def _loss(case: str, x: dict[str, torch.Tensor]) -> torch.Tensor:
    if case == "mlm":
        return MaskedLanguageModelLoss()(x["logits"], x["labels"]).loss
    if case == "moc_soft":
        return MaskedRegionClassLoss()(x["logits"], x["target"], x["mask"]).loss
    if case == "cmm":
        return CrossModalMatchingLoss()(x["logits"], x["labels"]).loss
    if case == "annotation_ce":
        return AnnotationCE()(x["binary"], [x["cat"]], x["y_binary"], x["y_cat"]).loss
    if case == "response_kd":
        return ResponseKD(temperature=2.0)(x["s"], x["t"]).loss
    if case == "relational":
        return RelationalKD(b1=2.0)(x["s"], x["t"]).loss
    if case == "relational_mutual":
        return RelationalKD(b1=2.0, detach_teacher=False)(x["s"], x["t"]).loss
    if case == "pc_threshold":
        return PixelConsistencyLoss(threshold=0.8)(x["s"], x["t"]).loss
    if case == "pc_ce_threshold":
        return PixelConsistencyLoss(threshold=0.8, kind="ce")(x["s"], x["t"]).loss
    raise KeyError(case)


def _run(case: str, spec: dict, rows: list[int]) -> dict[str, torch.Tensor]:
    """The case's loss on `rows` of its tensors and the gradients of its learning tensors."""
    x = {k: v[rows].clone() for k, v in spec["tensors"].items()}
    for k in spec["leaves"]:
        x[k].requires_grad_()
    loss = _loss(case, x)
    loss.backward()
    return {"loss": loss.detach(), **{k: x[k].grad for k in spec["leaves"]}}


def _worker(rank: int, world: int, tmp: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/rdzv", rank=rank, world_size=world)
    try:
        cases = _case_inputs()
        torch.save({c: _run(c, spec, spec["rows"][rank]) for c, spec in cases.items()}, f"{tmp}/out{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_process_results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp_exact")
    run_two_processes(_worker, str(tmp))
    return [torch.load(tmp / f"out{r}.pt") for r in range(2)]


@pytest.mark.parametrize("case", list(_case_inputs()))
def test_two_processes_give_the_global_batch_loss_and_gradient(case, two_process_results):
    spec = _case_inputs()[case]
    rows = spec["rows"]
    full = _run(case, spec, rows[0] + rows[1])
    for r, out in enumerate(two_process_results):
        o = out[case]
        torch.testing.assert_close(o["loss"], full["loss"], rtol=1e-5, atol=1e-7)  # float32 inside the losses
        for k in spec["leaves"]:
            n0 = len(rows[0])
            want = full[k][:n0] if r == 0 else full[k][n0:]
            torch.testing.assert_close(o[k] / 2, want, rtol=1e-5, atol=1e-7)  # DDP averages the 2 gradients
    # the mean of per-process losses (what a loss without collectives gives under DDP) is not the global loss
    local = [_run(case, spec, rows[r])["loss"] for r in range(2)]
    assert abs(float((local[0] + local[1]) / 2 - full["loss"])) > 1e-3
