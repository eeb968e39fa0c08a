"""Report normalisation and the offline WordPiece tokenizer: hand cases, round trip, determinism, files."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from sonodistill.data.text import SPECIAL_TOKENS, TextTokenizer, learn_wordpiece_vocab
from sonodistill.errors import ConfigError, DataError
from sonodistill.knowledge.normalise import ALPHABET, normalise_text

CORPUS = [
    "Small sub pleural consolidation, high compression --> low quality images; B-lines 1-2 (can occur)",
    "Pleural irregularties, lots of B-lines",
    "normal lung sliding, A-lines,  healthy",
    ">95% of the image is about liver",
    "Minimal to moderate effusion, pleural thickening, probably some underlying consolidation",
    "Épanchement pleural: effusion!",
]


@pytest.mark.parametrize("raw, expected", [
    ("Normal lung, single B line; B-line", "normal lung , single b line ; b-line"),
    ("high compression --> low", "high compression > low"),
    ("  B-lines 1-2 (can occur)  ", "b-lines 1-2 ( can occur )"),
    ("Épanchement — «pleural»", "epanchement pleural"),
    (">95%", "> 95 %"),
    ("a\nb\tc", "a b c"),
])
def test_normalise_hand_cases(raw, expected):
    assert normalise_text(raw) == expected


def test_normalise_spelling_corrections_word_by_word():
    assert normalise_text("Pleural irregularties, effucion", {"irregularties": "irregularities",
                                                              "effucion": "effusion"}) \
        == "pleural irregularities , effusion"
    assert normalise_text("effucions", {"effucion": "effusion"}) == "effucions"  # whole words only


def test_learn_wordpiece_vocab_merges_most_frequent_pair_first():
    counts = {"ab": 3, "abc": 1}
    base = len(SPECIAL_TOKENS) + 2 * len(set(ALPHABET))
    vocab = learn_wordpiece_vocab(counts, base + 2)
    tokens = sorted(vocab, key=vocab.get)
    assert tokens[:len(SPECIAL_TOKENS)] == SPECIAL_TOKENS
    # pair (a, ##b) occurs 3 + 1 = 4 times -> "ab"; then (ab, ##c) once -> "abc"
    assert tokens[-2:] == ["ab", "abc"]
    assert learn_wordpiece_vocab(counts, base + 1)["ab"] == base  # stops at vocab_size
    with pytest.raises(ConfigError, match="vocab_size"):
        learn_wordpiece_vocab(counts, 10)


def test_tie_break_is_lexicographic():
    vocab = learn_wordpiece_vocab({"xy": 1, "ab": 1}, len(SPECIAL_TOKENS) + 2 * len(set(ALPHABET)) + 1)
    assert "ab" in vocab and "xy" not in vocab


@pytest.fixture(scope="module")
def tok() -> TextTokenizer:
    return TextTokenizer.train(CORPUS, vocab_size=300)


def test_round_trip_of_training_texts(tok):
    for text in CORPUS:
        enc = tok.encode(text, max_len=64)
        assert enc.tokens[0] == "[CLS]" and enc.tokens[-1] == "[SEP]"
        assert tok.decode(enc.ids) == normalise_text(text)


def test_unseen_words_decompose_into_pieces_not_unk(tok):
    enc = tok.encode("zebra crossings", max_len=64)
    assert tok.unk_id not in enc.ids
    assert tok.decode(enc.ids) == "zebra crossings"


def test_word_ids_and_truncation(tok):
    enc = tok.encode("pleural zebra", max_len=64)
    assert enc.word_ids[0] is None and enc.word_ids[-1] is None
    assert set(w for w in enc.word_ids if w is not None) == {0, 1}
    assert enc.word_ids[1] == 0 and enc.word_ids[-2] == 1  # "pleural" is one token, "zebra" several
    short = tok.encode(CORPUS[0], max_len=5)
    assert len(short.ids) == 5 and short.tokens[-1] == "[SEP]"
    assert tok.encode("", max_len=8).tokens == ["[CLS]", "[SEP]"]


def test_training_is_deterministic_and_order_independent(tok):
    again = TextTokenizer.train(list(reversed(CORPUS)), vocab_size=300)
    assert again.to_str() == tok.to_str()


def test_training_is_identical_in_another_process(tok):
    code = ("import sys, json; from sonodistill.data.text import TextTokenizer; "
            "print(TextTokenizer.train(json.loads(sys.argv[1]), vocab_size=300).to_str())")
    out = subprocess.run([sys.executable, "-c", code, json.dumps(CORPUS)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == tok.to_str()


def test_save_load_round_trip(tok, tmp_path):
    path = tok.save(tmp_path / "run" / "tokenizer.json")
    loaded = TextTokenizer.load(path)
    assert loaded.to_str() == tok.to_str()
    assert (loaded.pad_id, loaded.unk_id, loaded.cls_id, loaded.sep_id, loaded.mask_id) == (0, 1, 2, 3, 4)
    text = CORPUS[4]
    assert loaded.encode(text).ids == tok.encode(text).ids


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        TextTokenizer.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="bad.json"):
        TextTokenizer.load(bad)


def test_empty_corpus_is_an_error():
    with pytest.raises(ConfigError, match="empty corpus"):
        TextTokenizer.train(["", "  "], vocab_size=300)
