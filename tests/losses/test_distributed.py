"""Collective helpers: no-ops without a process group; sums/means/gathers and Sinkhorn marginals over 2 processes."""

from __future__ import annotations

import math
import time

import pytest
import torch
import torch.distributed as dist

from sonodistill.losses import distributed as D
from sonodistill.losses.sinkhorn import sinkhorn_knopp
from tests.gloo import run_two_processes


def test_no_process_group_is_identity():
    assert not D.is_distributed()
    assert D.world_size() == 1 and D.rank() == 0
    t = torch.tensor([1.0, -2.0], requires_grad=True)
    for fn in (D.all_reduce_sum, D.all_reduce_mean, D.all_reduce_max, D.all_reduce_logsumexp,
               D.all_gather_with_grad, D.global_sum):
        assert fn(t) is t


def test_global_means_without_a_process_group_are_plain_means():
    a, b = torch.tensor(6.0, requires_grad=True), torch.tensor(5.0, requires_grad=True)
    mean_a, mean_b = D.global_means([a, b], [torch.tensor(3), 0])
    assert mean_a.item() == 2.0 and mean_b is None  # no item of the second term: left out, not 0 / 0
    empty = D.global_mean(b, 0)
    assert empty.item() == 0.0 and empty.requires_grad
    with pytest.raises(ValueError, match="2 totals and 1 counts"):
        D.global_means([a, b], [1])


def _worker(rank: int, world: int, tmp: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/rdzv", rank=rank, world_size=world)
    try:
        data = torch.load(f"{tmp}/inputs.pt")
        x = torch.tensor([1.0, 2.0]) * (rank + 1)  # rank 0: (1, 2); rank 1: (2, 4)
        out = {"ws": torch.tensor(D.world_size()), "rank": torch.tensor(D.rank()),
               "sum": D.all_reduce_sum(x), "mean": D.all_reduce_mean(x), "max": D.all_reduce_max(x), "x": x,
               "lse": D.all_reduce_logsumexp(torch.tensor([0.0, 1000.0]) + rank)}
        # gather with gradient: loss on each process = sum(w_rank * gathered); grad of my slice = sum over ranks
        e = torch.full((2, 3), float(rank), requires_grad=True)
        gathered = D.all_gather_with_grad(e)
        (gathered * (rank + 1)).sum().backward()
        out["gathered"], out["grad"] = gathered.detach(), e.grad
        try:  # batches of different sizes cannot be gathered: both processes say so (no hang)
            D.all_gather_with_grad(torch.zeros(2 + rank, 3))
        except ValueError as err:
            out["unequal"] = str(err)
        half = data["scores"].shape[0] // world
        out["q"] = sinkhorn_knopp(data["scores"][rank * half:(rank + 1) * half], epsilon=0.05, n_iters=3)
        torch.save(out, f"{tmp}/out{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_collectives_and_sinkhorn_over_two_processes(tmp_path):
    torch.manual_seed(0)
    scores = torch.randn(8, 5) * 0.5
    torch.save({"scores": scores}, tmp_path / "inputs.pt")
    start = time.perf_counter()
    run_two_processes(_worker, str(tmp_path))
    outs = [torch.load(tmp_path / f"out{r}.pt") for r in range(2)]
    for r, o in enumerate(outs):
        assert int(o["ws"]) == 2 and int(o["rank"]) == r
        torch.testing.assert_close(o["sum"], torch.tensor([3.0, 6.0]))
        torch.testing.assert_close(o["mean"], torch.tensor([1.5, 3.0]))
        torch.testing.assert_close(o["max"], torch.tensor([2.0, 4.0]))
        lse = math.log(1 + math.e)  # log(e^0 + e^1), and 1000 + that without overflow
        torch.testing.assert_close(o["lse"], torch.tensor([lse, 1000.0 + lse]))
        torch.testing.assert_close(o["x"], torch.tensor([1.0, 2.0]) * (r + 1))  # input untouched
        torch.testing.assert_close(o["gathered"], torch.cat([torch.zeros(2, 3), torch.ones(2, 3)]))
        torch.testing.assert_close(o["grad"], torch.full((2, 3), 3.0))  # weights 1 + 2 summed over ranks
        assert f"batches of different sizes (this one {2 + r} rows)" in o["unequal"]
    # Sinkhorn with marginals summed over processes equals Sinkhorn on the whole batch in one process
    q = torch.cat([outs[0]["q"], outs[1]["q"]])
    torch.testing.assert_close(q, sinkhorn_knopp(scores, epsilon=0.05, n_iters=3), rtol=1e-5, atol=1e-6)
    # and differs from running each half on its own (the test would catch a missing all-reduce)
    local = torch.cat([sinkhorn_knopp(scores[:4], 0.05, 3), sinkhorn_knopp(scores[4:], 0.05, 3)])
    assert not torch.allclose(q, local, atol=1e-3)
    assert time.perf_counter() - start < 10
