"""Collectives for batch-spanning loss statistics; every function is a no-op without a process group."""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True when a `torch.distributed` process group is available and initialised."""
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Number of processes in the default group (1 without a process group)."""
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    """This process's rank in the default group (0 without a process group)."""
    return dist.get_rank() if is_distributed() else 0


def _all_reduce(t: torch.Tensor, op: "dist.ReduceOp") -> torch.Tensor:
    """`op` of `t` over processes, element-wise, into a new tensor (no autograd); `t` itself without a group."""
    if not is_distributed():
        return t
    out = t.detach().clone()
    dist.all_reduce(out, op=op)
    return out


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Element-wise sum of `t` over processes; a new tensor (the input is not modified), no autograd.

    Without a process group, returns `t` itself.
    """
    return _all_reduce(t, dist.ReduceOp.SUM)


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Element-wise mean of `t` over processes (equal weight per process); no autograd.

    Without a process group, returns `t` itself.
    """
    if not is_distributed():
        return t
    return all_reduce_sum(t) / world_size()


def all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    """Element-wise maximum of `t` over processes; no autograd. Without a process group, returns `t`."""
    return _all_reduce(t, dist.ReduceOp.MAX)


def all_reduce_logsumexp(lse: torch.Tensor) -> torch.Tensor:
    """Combine per-process log-sum-exp values element-wise: `log sum_p exp(lse_p)`, max-shifted; no autograd.

    Without a process group, returns `lse` itself.
    """
    if not is_distributed():
        return lse
    m = all_reduce_max(lse)
    return m + torch.log(all_reduce_sum(torch.exp(lse.detach() - m)))


def all_gather_with_grad(t: torch.Tensor) -> torch.Tensor:
    """Concatenate `t` (`B x ...`, same shape on every process) over processes along dim 0.

    Gradients flow back to each process's own slice (`torch.distributed.nn.functional.all_gather`).
    Without a process group, returns `t` itself.
    """
    if not is_distributed():
        return t
    from torch.distributed.nn.functional import all_gather

    rows = torch.tensor([float(t.shape[0])], dtype=torch.float64, device=t.device)
    if all_reduce_max(rows).item() != -all_reduce_max(-rows).item():
        raise ValueError(f"all_gather_with_grad: the processes hold batches of different sizes (this one "
                         f"{t.shape[0]} rows); a relation over the global batch needs equal per-process batches "
                         "(e.g. drop_last or a padded distributed sampler)")
    return torch.cat(all_gather(t), dim=0)


def global_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum of `t` over processes, element-wise, whose gradient is the local term's times the world size, so that
    DDP's averaging of the processes' gradients gives the exact gradient of the global sum. A collective: every
    process must call it. Without a process group, returns `t` itself."""
    if not is_distributed():
        return t
    return all_reduce_sum(t) + (t - t.detach()) * world_size()


def global_means(totals: list[torch.Tensor], counts: list[torch.Tensor | float]) -> list[torch.Tensor | None]:
    """`sum_p total_k,p / sum_p count_k,p` for each term k: means over items the processes hold in different numbers
    (masked tokens, known labels, confident pixels), exact under DDP's gradient averaging (`global_sum`); None for a
    term that no process has items of. `totals[k]`: the local sum of term k's per-item values (a scalar with its
    graph, 0 when this process has none); `counts[k]`: the local number of items. A collective: every process
    calls it with the same number of terms, also one that holds no items."""
    if len(totals) != len(counts) or not totals:
        raise ValueError(f"global_means: {len(totals)} totals and {len(counts)} counts (need as many, at least one)")
    like = totals[0]
    n = torch.stack([torch.as_tensor(c, dtype=torch.float64, device=like.device).detach().reshape(())
                     for c in counts])
    n = all_reduce_sum(n).tolist()
    return [global_sum(t) / n_k if n_k > 0 else None for t, n_k in zip(totals, n)]


def global_mean(total: torch.Tensor, count: torch.Tensor | float) -> torch.Tensor:
    """`sum_p total_p / sum_p count_p` (`global_means` of one term); 0, with the graph kept, when no process has
    items. A collective: every process must call it."""
    (mean,) = global_means([total], [count])
    return total * 0.0 if mean is None else mean
