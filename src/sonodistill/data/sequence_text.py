"""Sequences (clips) paired with report text and annotation targets, as a torch Dataset for DILBERT.

Label positions that carry no target are `IGNORE` (-100, PyTorch's cross-entropy `ignore_index`); the pretext
losses (`losses.pretext`) skip them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from sonodistill.data.sequences import SequenceSet, sample_indices
from sonodistill.data.text import SPECIAL_TOKENS, TextTokenizer
from sonodistill.errors import ConfigError
from sonodistill.knowledge import KnowledgeGraph, entity_aware_mask

IGNORE = -100


class SequenceTextDataset(Dataset):
    """Sequences with their report text and annotation targets, as tensors.

    Item: `x` float `1 x T x S x S` in [0, 1]; `ids` int64 `L` (`[CLS] ... [SEP]`, padded), `pad` bool `L`;
    `y_binary` float `F` (NaN unknown), `y_categorical` int64 `C`; `has_text`, `text_key` (id of the normalised
    text, equal texts share it), `index`. With `pretext=True` also `mlm_labels`, `mdc_labels` (IGNORE where not
    masked; `ids` then holds [MASK]/random/kept tokens, BERT's 80/10/10) and `region_mask` bool `T*g*g`.
    Randomness (frames, flips, masks) comes from (seed, epoch, index): reproducible and resumable.
    """

    def __init__(self, seqs: SequenceSet, tokenizer: TextTokenizer, graph: KnowledgeGraph, num_frames: int,
                 max_len: int, train: bool, seed: int = 0, pretext: bool = False, augment: bool = True,
                 mask_rate: float = 0.15, entity_prob: float = 0.5, region_mask_rate: float = 0.15,
                 region_grid: int = 2, text_keys: dict[str, int] | None = None) -> None:
        if seqs.clips is None:
            raise ConfigError("SequenceTextDataset needs loaded clips: call SequenceSet.load_clips first")
        self.seqs, self.tok, self.graph = seqs, tokenizer, graph
        self.num_frames, self.max_len, self.train, self.seed = int(num_frames), int(max_len), train, int(seed)
        self.pretext, self.augment = pretext, augment and train
        self.mask_rate, self.entity_prob, self.region_mask_rate = mask_rate, entity_prob, region_mask_rate
        self.n_regions = self.num_frames * region_grid * region_grid
        self.epoch = 0
        self.words = [graph.words(t) for t in seqs.texts]
        self.encoded = [tokenizer.encode_words(w, self.max_len) for w in self.words]
        keys = text_keys if text_keys is not None else {}
        self.text_key = []
        for w in self.words:
            norm = " ".join(w)
            self.text_key.append(keys.setdefault(norm, len(keys)) if norm else -1)
        self.first_id = len(SPECIAL_TOKENS)  # random MLM replacements are never special tokens

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.seqs)

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, int(index), 17])

    def clip(self, index: int, rng: np.random.Generator | None) -> torch.Tensor:
        clip = self.seqs.clips[index]  # type: ignore[index]
        idx = sample_indices(len(clip), self.num_frames, rng if self.train else None)
        x = torch.from_numpy(np.asarray(clip[idx], dtype=np.float32) / 255.0)[None]  # 1 x T x S x S
        if self.augment and rng is not None:
            if rng.random() < 0.5:
                x = x.flip(-1)
            gain, bias = rng.uniform(0.8, 1.2), rng.uniform(-0.05, 0.05)
            x = (x * gain + bias).clamp(0.0, 1.0)
        return x

    def __getitem__(self, index: int) -> dict[str, Any]:
        rng = self._rng(index) if self.train else None
        enc = self.encoded[index]
        n = len(enc.ids)
        ids = np.full(self.max_len, self.tok.pad_id, dtype=np.int64)
        ids[:n] = enc.ids
        pad = np.ones(self.max_len, dtype=bool)
        pad[:n] = False
        item: dict[str, Any] = {
            "x": self.clip(index, rng), "pad": torch.from_numpy(pad), "index": index,
            "y_binary": torch.from_numpy(self.seqs.binary[index].astype(np.float32)),
            "y_categorical": torch.from_numpy(self.seqs.categorical[index].astype(np.int64)),
            "has_text": torch.tensor(self.text_key[index] >= 0), "text_key": torch.tensor(self.text_key[index]),
        }
        if self.pretext:
            mrng = rng if rng is not None else np.random.default_rng([self.seed, int(index), 29])
            mlm = np.full(self.max_len, IGNORE, dtype=np.int64)
            mdc = np.full(self.max_len, IGNORE, dtype=np.int64)
            if self.text_key[index] >= 0 and self.mask_rate > 0:
                plan = entity_aware_mask(self.graph, self.words[index], enc.word_ids, mrng, self.mask_rate,
                                         self.entity_prob)
                pos = np.flatnonzero(plan.masked)
                mlm[pos] = ids[pos]
                ent = pos[plan.category[pos] >= 0]
                mdc[ent] = plan.category[ent]
                u = mrng.random(len(pos))
                ids[pos[u < 0.8]] = self.tok.mask_id
                rand = pos[(u >= 0.8) & (u < 0.9)]
                ids[rand] = mrng.integers(self.first_id, self.tok.vocab_size, size=len(rand))
            region_mask = np.zeros(self.n_regions, dtype=bool)
            if self.region_mask_rate > 0:
                k = max(1, int(round(self.region_mask_rate * self.n_regions)))
                region_mask[mrng.choice(self.n_regions, size=k, replace=False)] = True
            item.update({"mlm_labels": torch.from_numpy(mlm), "mdc_labels": torch.from_numpy(mdc),
                         "region_mask": torch.from_numpy(region_mask)})
        item["ids"] = torch.from_numpy(ids)
        return item
