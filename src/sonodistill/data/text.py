"""Report text: a WordPiece tokenizer trained offline on a corpus (`tokenizers` library).

The tokenizer sees `normalise_text(text)` (`sonodistill.knowledge.normalise`, shared with the knowledge graphs'
entity forms). Because the tokenizer splits on whitespace only and its alphabet covers every character that
survives normalisation, decoding an encoding gives the normalised text back (up to truncation).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sonodistill.errors import ConfigError, DataError
from sonodistill.knowledge.normalise import ALPHABET, normalise_text

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_TOKENS = [PAD, UNK, CLS, SEP, MASK]


def text_words(text: str, spelling: Mapping[str, str] | None = None) -> list[str]:
    """The normalised text split into words (what the tokenizer pre-tokenises into)."""
    return normalise_text(text, spelling).split()


def learn_wordpiece_vocab(word_counts: Mapping[str, int], vocab_size: int, min_frequency: int = 1) -> dict[str, int]:
    """WordPiece vocabulary `{token: id}` from word frequencies by greedy pair merging (as HF's trainer).

    Start: special tokens, then every character of `ALPHABET` and of the words both as a word start ("c") and as a
    continuation ("##c"), so any word is encodable. Repeat: merge the adjacent pair with the highest frequency
    (weighted by word counts; ties broken by the lexicographically smallest pair), while the pair occurs at least
    `min_frequency` times and the vocabulary is smaller than `vocab_size`. Fully deterministic.
    """
    chars = sorted(set(ALPHABET) | {c for w in word_counts for c in w})
    base = SPECIAL_TOKENS + chars + ["##" + c for c in chars]
    if vocab_size < len(base):
        raise ConfigError(f"vocab_size {vocab_size} is smaller than the special tokens plus the alphabet "
                          f"({len(base)})")
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(base))}
    words = {w: [w[0]] + ["##" + c for c in w[1:]] for w in sorted(word_counts)}
    while len(vocab) < vocab_size:
        pairs: Counter[tuple[str, str]] = Counter()
        for w, symbols in words.items():
            for a, b in zip(symbols, symbols[1:]):
                pairs[(a, b)] += int(word_counts[w])
        if not pairs:
            break
        best_count = max(pairs.values())
        if best_count < min_frequency:
            break
        a, b = min(p for p, c in pairs.items() if c == best_count)
        merged = a + b[2:]
        for w, symbols in words.items():
            i, out = 0, []
            while i < len(symbols):
                if i + 1 < len(symbols) and symbols[i] == a and symbols[i + 1] == b:
                    out.append(merged)
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            words[w] = out
        if merged not in vocab:
            vocab[merged] = len(vocab)
    return vocab


@dataclass
class Encoded:
    """One encoded text: token ids `[CLS] ... [SEP]` and, per token, the index of its word (None for specials)."""

    ids: list[int]
    word_ids: list[int | None]
    tokens: list[str]


class TextTokenizer:
    """A WordPiece tokenizer (`tokenizers.Tokenizer`) over normalised words, with BERT's special tokens."""

    def __init__(self, tokenizer: object) -> None:
        self.tok = tokenizer
        vocab = self.tok.get_vocab()  # type: ignore[attr-defined]
        missing = [s for s in SPECIAL_TOKENS if s not in vocab]
        if missing:
            raise ConfigError(f"tokenizer lacks the special token(s) {missing}")
        self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = (vocab[s] for s in SPECIAL_TOKENS)

    # -- building -------------------------------------------------------------------------------
    @classmethod
    def train(cls, corpus: Iterable[str], vocab_size: int = 1000, min_frequency: int = 1,
              extra_texts: Iterable[str] = (), spelling: Mapping[str, str] | None = None) -> "TextTokenizer":
        """Learn a WordPiece vocabulary offline on normalised `corpus` + `extra_texts` (e.g. knowledge-graph terms).

        Merges are learned by `learn_wordpiece_vocab` (deterministic: the `tokenizers` WordPieceTrainer breaks
        ties in hash order, so two runs on the same corpus can give different vocabularies); encoding,
        decoding and the JSON format are the library's `WordPiece` model.
        """
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers

        counts: Counter[str] = Counter()
        for t in list(corpus) + list(extra_texts):
            counts.update(normalise_text(t, spelling).split())
        if not counts:
            raise ConfigError("cannot train a tokenizer on an empty corpus")
        vocab = learn_wordpiece_vocab(counts, int(vocab_size), int(min_frequency))
        tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token=UNK, max_input_chars_per_word=100))
        tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)
        tok.add_special_tokens(list(SPECIAL_TOKENS))  # already in the vocabulary: ids unchanged
        return cls(tok)

    def save(self, path: str | Path) -> Path:
        """Write the tokenizer as one JSON file (the `tokenizers` format)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.tok.save(str(path))  # type: ignore[attr-defined]
        return path

    @classmethod
    def load(cls, path: str | Path) -> "TextTokenizer":
        """Read a tokenizer JSON written by `save`; a missing or damaged file is a DataError naming it."""
        from tokenizers import Tokenizer

        path = Path(path)
        if not path.is_file():
            raise DataError(path, "tokenizer file not found")
        try:
            return cls(Tokenizer.from_file(str(path)))
        except Exception as exc:  # tokenizers raises its own exception type for malformed JSON
            raise DataError(path, f"cannot read tokenizer ({exc})") from exc

    def to_str(self) -> str:
        return self.tok.to_str()  # type: ignore[attr-defined]

    # -- use ------------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return int(self.tok.get_vocab_size())  # type: ignore[attr-defined]

    def encode_words(self, words: list[str], max_len: int) -> Encoded:
        """Encode pre-normalised words as `[CLS] tokens [SEP]`, truncated to `max_len` tokens in all."""
        if max_len < 2:
            raise ConfigError(f"max_len must be >= 2 ([CLS] and [SEP]), got {max_len}")
        if words:
            enc = self.tok.encode(words, is_pretokenized=True, add_special_tokens=False)  # type: ignore[attr-defined]
            ids, wids, toks = list(enc.ids), list(enc.word_ids), list(enc.tokens)
        else:
            ids, wids, toks = [], [], []
        keep = max_len - 2
        ids, wids, toks = ids[:keep], wids[:keep], toks[:keep]
        return Encoded([self.cls_id] + ids + [self.sep_id], [None] + wids + [None], [CLS] + toks + [SEP])

    def padded_ids(self, word_lists: list[list[str]], max_len: int) -> np.ndarray:
        """Several pre-normalised texts -> int64 token ids `M x L` (`encode_words` each, padded with `pad_id` to
        the longest, L <= max_len)."""
        enc = [self.encode_words(w, max_len).ids for w in word_lists]
        ids = np.full((len(enc), max((len(e) for e in enc), default=2)), self.pad_id, dtype=np.int64)
        for i, e in enumerate(enc):
            ids[i, : len(e)] = e
        return ids

    def encode(self, text: str, max_len: int = 64, spelling: Mapping[str, str] | None = None) -> Encoded:
        """Normalise and encode one text."""
        return self.encode_words(text_words(text, spelling), max_len)

    def decode(self, ids: Iterable[int]) -> str:
        """Token ids back to text (special tokens dropped, WordPiece pieces joined)."""
        return self.tok.decode(list(ids), skip_special_tokens=True)  # type: ignore[attr-defined]
