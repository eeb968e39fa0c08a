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

    return torch.cat(all_gather(t), dim=0)
