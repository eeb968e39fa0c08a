"""Data parallelism: 2 CPU processes (gloo) give the gradients of 1 process on the same global batch."""

from __future__ import annotations

import copy

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from sonodistill.config import load_config
from sonodistill.recipes.supervised import SupervisedRecipe
from sonodistill.recipes.trainer import ChannelsLast


class _Clips(Dataset):
    def __init__(self, n: int = 8) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 1, 4, 32, 32, generator=g)
        self.y = torch.arange(n) % 3

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict:
        return {"x": self.x[i], "y": self.y[i], "index": i}


class _RecordGrads(L.Callback):
    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == 0:
            torch.save(batch["index"].clone(), f"{self.out_dir}/items_rank{trainer.global_rank}.pt")

    def on_after_backward(self, trainer, pl_module):
        if trainer.global_step == 0:
            grads = {n: p.grad.detach().clone() for n, p in pl_module.named_parameters() if p.grad is not None}
            torch.save(grads, f"{self.out_dir}/grads_rank{trainer.global_rank}.pt")


def _cfg(tmp_path):
    # GroupNorm: BatchNorm statistics are per process and would differ by design.
    return load_config(None, ["model.backbone=resnet10_3d", "model.width=0.125", "model.norm=group",
                              "train.epochs=1", "optim.grad_clip=null", f"out_dir={tmp_path}"])


@pytest.mark.slow
@pytest.mark.parametrize("channels_last", [False, True], ids=["default-order", "channels-last"])
def test_ddp_two_processes_match_single_process_gradients(tmp_path, channels_last):
    """Also with `train.channels_last` (the 3D convolutions' weights in channels-last-3d order on each rank): the
    same gradients as one process in the default order."""
    cfg = _cfg(tmp_path)
    torch.manual_seed(0)
    recipe = SupervisedRecipe(cfg, num_classes=3)
    reference = copy.deepcopy(recipe)
    data = _Clips()

    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", max_steps=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[_RecordGrads(str(tmp_path))] + ([ChannelsLast()] if channels_last else []))
    trainer.fit(recipe, train_dataloaders=DataLoader(data, batch_size=2, shuffle=False))

    # The global batch is the union of what each rank saw at step 0 (two disjoint halves of equal size).
    items = [torch.load(tmp_path / f"items_rank{r}.pt") for r in (0, 1)]
    assert len(items[0]) == len(items[1]) == 2 and not set(items[0].tolist()) & set(items[1].tolist())
    idx = torch.cat(items)
    batch = {"x": data.x[idx], "y": data.y[idx]}
    loss, _ = reference.compute_loss(batch)
    loss.backward()
    expected = {n: p.grad for n, p in reference.named_parameters() if p.grad is not None}
    for rank in (0, 1):
        got = torch.load(tmp_path / f"grads_rank{rank}.pt")
        reordered = [g for g in got.values() if g.dim() == 5 and g.shape[1] > 1
                     and g.is_contiguous(memory_format=torch.channels_last_3d) and not g.is_contiguous()]
        assert bool(reordered) == channels_last  # the ranks trained in the order asked for
        assert got.keys() == expected.keys()
        for name in expected:
            torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-6,
                                       msg=lambda m, name=name: f"{name}: {m}")
