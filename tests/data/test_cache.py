"""Clip cache: round trip, memory map, damaged entries rebuilt, concurrent writers, content keying."""

from __future__ import annotations

import hashlib
import logging
import multiprocessing as mp
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sonodistill.data import cache as cache_mod
from sonodistill.data.cache import ClipCache, default_cache_dir, file_sha1, produce_clip, read_entry_header, write_entry
from sonodistill.data.preprocess import PreprocessConfig

CFG = PreprocessConfig(size=32)


def _image(path: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    arr = np.zeros((60, 80), np.uint8)
    arr[10:50, 10:70] = rng.integers(40, 220, (40, 60))
    Image.fromarray(arr).save(path)
    return path


def _forget_verified() -> None:
    """Simulate a new process: entries are checksum-verified again on first open."""
    cache_mod._ENTRY_MEMO.clear()


def test_round_trip_and_memmap(tmp_path):
    src = _image(tmp_path / "a.png")
    c = ClipCache(tmp_path / "cache")
    a = c.get(src, CFG)
    assert isinstance(a, np.memmap) and a.dtype == np.uint8 and a.shape == (1, 32, 32)
    np.testing.assert_array_equal(a, produce_clip(src, CFG))
    b = c.get(src, CFG)
    assert c.builds == 1 and c.hits == 1
    np.testing.assert_array_equal(a, b)
    assert not b.flags.writeable
    # another config is another entry
    c.get(src, PreprocessConfig(size=16))
    assert c.builds == 2


def test_keyed_by_content_not_name(tmp_path):
    src = _image(tmp_path / "a.png")
    copy = tmp_path / "b.png"
    copy.write_bytes(src.read_bytes())
    c = ClipCache(tmp_path / "cache")
    assert c.entry_path(src, CFG) == c.entry_path(copy, CFG)
    assert file_sha1(src) == hashlib.sha1(src.read_bytes()).hexdigest()
    _image(src, seed=1)  # new content (and size/mtime) -> new hash
    os.utime(src, ns=(1, 1))
    assert file_sha1(src) != file_sha1(copy)


def test_default_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("SONODISTILL_CACHE", str(tmp_path / "cc"))
    assert default_cache_dir() == tmp_path / "cc"
    monkeypatch.delenv("SONODISTILL_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "sonodistill"


def test_truncated_entry_is_rebuilt(tmp_path, caplog):
    src = _image(tmp_path / "a.png")
    c = ClipCache(tmp_path / "cache")
    good = np.array(c.get(src, CFG))
    entry = c.entry_path(src, CFG)
    with open(entry, "r+b") as f:
        f.truncate(entry.stat().st_size - 100)
    with caplog.at_level(logging.WARNING, logger="sonodistill.data.cache"):
        again = c.get(src, CFG)
    assert c.builds == 2
    assert str(entry) in caplog.text and "truncated" in caplog.text
    np.testing.assert_array_equal(again, good)


def test_bad_checksum_and_wrong_shape_rebuilt(tmp_path, caplog):
    src = _image(tmp_path / "a.png")
    c = ClipCache(tmp_path / "cache")
    good = np.array(c.get(src, CFG))
    entry = c.entry_path(src, CFG)
    raw = bytearray(entry.read_bytes())
    raw[-1] ^= 0xFF  # flip one pixel: same size, wrong checksum
    entry.write_bytes(bytes(raw))
    _forget_verified()
    with caplog.at_level(logging.WARNING, logger="sonodistill.data.cache"):
        np.testing.assert_array_equal(c.get(src, CFG), good)
    assert "checksum mismatch" in caplog.text and c.builds == 2
    write_entry(entry, np.zeros((2, 8, 8), np.uint8))  # a valid file of the wrong shape
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sonodistill.data.cache"):
        np.testing.assert_array_equal(c.get(src, CFG), good)
    assert "wrong shape" in caplog.text and c.builds == 3


def test_garbage_entry_rebuilt(tmp_path):
    src = _image(tmp_path / "a.png")
    c = ClipCache(tmp_path / "cache")
    entry = c.entry_path(src, CFG)
    entry.parent.mkdir(parents=True)
    entry.write_bytes(b"not a cache entry")
    assert c.get(src, CFG).shape == (1, 32, 32) and c.builds == 1


def _run(cache_dir: str, src: str, barrier, q) -> None:
    barrier.wait()  # both processes look up the same missing entry at the same time
    c = ClipCache(cache_dir)
    arr = c.get(src, CFG)
    q.put((hashlib.sha1(np.ascontiguousarray(arr).tobytes()).hexdigest(), c.builds))


def test_concurrent_writers_give_a_valid_entry(tmp_path, monkeypatch):
    src = _image(tmp_path / "a.png")
    real = cache_mod.produce_clip

    def slow(*args, **kwargs):  # long enough that both workers miss the entry and both write it
        import time

        time.sleep(0.3)
        return real(*args, **kwargs)

    monkeypatch.setattr(cache_mod, "produce_clip", slow)  # inherited by the forked workers
    cache_dir = tmp_path / "cache"
    ctx = mp.get_context("fork")
    barrier, q = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_run, args=(str(cache_dir), str(src), barrier, q)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [q.get(timeout=60) for _ in procs]
    digests = [d for d, _ in results]
    assert [b for _, b in results] == [1, 1]  # both really built and wrote the entry
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    expected = hashlib.sha1(real(src, CFG).tobytes()).hexdigest()
    assert digests == [expected, expected]
    c = ClipCache(cache_dir)
    entry = c.entry_path(src, CFG)
    header, offset = read_entry_header(entry)
    assert header["shape"] == [1, 32, 32] and entry.stat().st_size == offset + 32 * 32
    assert [p.name for p in entry.parent.iterdir()] == [entry.name]  # no temporary files left behind
    _forget_verified()
    c.get(src, CFG)
    assert c.builds == 0 and c.hits == 1


def test_grayscale_required(tmp_path):
    from sonodistill.errors import ConfigError

    with pytest.raises(ConfigError, match="grayscale"):
        ClipCache(tmp_path).get(_image(tmp_path / "a.png"), PreprocessConfig(grayscale=False))


def test_real_video_cached(shared_data, tmp_path):
    from sonodistill.data.adapters import load_adapter

    path = load_adapter("lus-blues").paths[0]
    cfg = PreprocessConfig(size=64)
    c = ClipCache(tmp_path)
    a = c.get(path, cfg)
    assert a.shape[1:] == (64, 64) and a.shape[0] == 100  # labels.csv: n_frames 100 for the first video
    np.testing.assert_array_equal(c.get(path, cfg), a)
