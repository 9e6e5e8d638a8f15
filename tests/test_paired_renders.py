"""Renders of one clip (``NAME.ext``, ``NAME.r1.ext``...: the same notes on other instruments): their names, the
validation split that keeps them together, and ``paired_renders`` batches that crop them at the same offset."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from mert_fast.audio import render_group, render_suffix
from mert_fast.train.config import TrainConfig
from mert_fast.train.corpus import hold_out
from mert_fast.train.data import AudioCorpus, CropBatches, render_pairs

SR = 8000


def test_render_names_round_trip():
    for k in (0, 1, 2, 13):
        path = Path("music") / f"bach_00003{render_suffix(k)}.flac"
        assert render_group(path) == (Path("music/bach_00003.flac"), k)
    assert render_suffix(0) == "" and render_suffix(2) == ".r2"
    # names that only look like renders are their own clips
    for name in ("x.r0.flac", "x.r.flac", "x.r01.flac", "x.rb.wav", "r1.flac", ".r1.wav"):
        assert render_group(Path(name)) == (Path(name), 0)
    for bad in (-1, 1.0, True, "1"):
        with pytest.raises(ValueError, match="k must be an integer >= 0"):
            render_suffix(bad)


def _name_hash(name: str) -> float:
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big") / 2**64


def test_hold_out_keeps_renders_with_their_clip():
    clips = [Path(f"/c/clip_{i:04d}.flac") for i in range(200)]
    renders = [p.with_name(p.stem + f".r{k}.flac") for p in clips for k in (1, 2)]
    train, held = hold_out(sorted(clips + renders), 0.2)
    assert 0 < len(held) < 600 and len(held) % 3 == 0
    held_clips = {render_group(p)[0] for p in held}
    assert held_clips.isdisjoint(render_group(p)[0] for p in train)
    # the clips themselves are split by their own names' hashes, exactly as without renders
    assert held_clips == {p for p in clips if _name_hash(p.name) < 0.2}
    assert hold_out(clips, 0.2)[1] == sorted(held_clips)
    # the fallbacks move whole clips too: the first clip by hash held out, the last one kept
    few = [Path("/c/a.flac"), Path("/c/a.r1.flac"), Path("/c/b.flac"), Path("/c/b.r1.flac")]
    first, last = sorted(["a.flac", "b.flac"], key=_name_hash)
    _, held = hold_out(few, 1e-9)
    assert {render_group(p)[0].name for p in held} == {first} and len(held) == 2
    train, _ = hold_out(few, 0.999999)
    assert {render_group(p)[0].name for p in train} == {last} and len(train) == 2


@pytest.fixture(scope="module")
def renders(tmp_path_factory) -> Path:
    """Five clips of 2-3 s: a and d with one more render, b with two, c and e with none. A render is its clip's
    noise times a gain of its own, so crops of a pair at one offset are proportional."""
    root = tmp_path_factory.mktemp("renders")
    rng = np.random.default_rng(7)
    for name, seconds, n_renders in (("a", 2.0, 2), ("b", 2.5, 3), ("c", 3.0, 1), ("d", 2.2, 2), ("e", 2.4, 1)):
        x = rng.uniform(-0.4, 0.4, round(seconds * SR)).astype(np.float32)
        for k in range(n_renders):
            sf.write(root / f"{name}{render_suffix(k)}.wav", x * (1.0 + k) / 3, SR, subtype="FLOAT")
    return root


def _pairs(batch, corpus):
    names = [corpus.files[int(i)].name for i in batch.indices]
    return list(zip(names[::2], names[1::2], strict=True))


def test_paired_batches_hold_two_renders_of_a_clip_cropped_alike(renders):
    corpus = AudioCorpus(renders, SR, min_seconds=1.0)
    assert [tuple(corpus.files[i].name for i in p) for p in render_pairs(corpus, np.arange(len(corpus)))] == [
        ("a.wav", "a.r1.wav"), ("b.wav", "b.r1.wav", "b.r2.wav"), ("d.wav", "d.r1.wav")]  # fmt: skip
    loader = CropBatches(corpus, batch_size=4, crop_seconds=1.5, min_crop_seconds=1.0, seed=3, max_steps=30,
                         paired_renders=True)  # fmt: skip
    assert loader.steps_per_epoch == 1 and not loader.with_replacement
    seconds, seen, others = set(), set(), set()
    for batch in loader:
        assert batch.audio.shape == (4, round(1.5 * SR))
        for j, (first, other) in enumerate(_pairs(batch, corpus)):
            clip, k = render_group(Path(other))
            assert first == clip.name and k >= 1  # the first render, then another of the same clip
            assert batch.offsets[2 * j] == batch.offsets[2 * j + 1]
            x, y = batch.audio[2 * j], batch.audio[2 * j + 1]
            torch.testing.assert_close(y, x * (1 + k), rtol=1e-5, atol=1e-6)  # the same samples, another gain
            seconds.add(float(batch.offsets[2 * j]))
            seen.add(first)
            if first == "b.wav":
                others.add(other)
    assert seen == {"a.wav", "b.wav", "d.wav"} and others == {"b.r1.wav", "b.r2.wav"}
    assert len(seconds) > 10  # the offsets vary from step to step
    again = CropBatches(corpus, batch_size=4, crop_seconds=1.5, min_crop_seconds=1.0, seed=3, start_step=17,
                        max_steps=30, paired_renders=True)  # fmt: skip
    resumed = list(again)
    for a, b in zip(list(loader)[17:], resumed, strict=True):  # resuming gives the same batches
        assert torch.equal(a.indices, b.indices) and torch.equal(a.audio, b.audio)


def test_paired_batches_with_replacement_and_shards(renders, caplog):
    corpus = AudioCorpus(renders, SR, min_seconds=1.0)
    with caplog.at_level(logging.WARNING):
        big = CropBatches(corpus, batch_size=8, crop_seconds=1.0, min_crop_seconds=1.0, seed=0, max_steps=5,
                          paired_renders=True)  # fmt: skip
    assert big.with_replacement  # 4 pairs a step, 3 clips with renders
    assert "3 clips with two renders of >= 1 s, fewer than a step's batch_size // 2 * world_size = 4" in caplog.text
    for batch in big:
        for first, other in _pairs(batch, corpus):
            assert render_group(Path(other))[0].name == first
    ranks = [
        CropBatches(corpus, batch_size=2, crop_seconds=1.0, min_crop_seconds=1.0, seed=5, rank=r, world_size=2,
                    max_steps=1, paired_renders=True)[0]
        for r in range(2)
    ]  # fmt: skip
    assert len({_pairs(b, corpus)[0][0] for b in ranks}) == 2  # the ranks of a step read different clips


def test_a_pair_that_fails_to_decode_is_replaced_by_the_next(tmp_path, caplog):
    rng = np.random.default_rng(1)
    for name in ("a", "b", "c"):
        x = rng.uniform(-0.4, 0.4, 2 * SR).astype(np.float32)
        for k in range(2):
            sf.write(tmp_path / f"{name}{render_suffix(k)}.flac", x, SR, subtype="PCM_16")
    broken = tmp_path / "b.r1.flac"
    broken.write_bytes(broken.read_bytes()[: broken.stat().st_size // 2])  # fails only when decoded
    corpus = AudioCorpus(tmp_path, SR, min_seconds=1.0)
    loader = CropBatches(corpus, batch_size=6, crop_seconds=1.9, min_crop_seconds=1.0, seed=0, max_steps=3,
                         paired_renders=True)  # fmt: skip
    with caplog.at_level(logging.WARNING):
        batches = list(loader)
    for batch in batches:
        pairs = _pairs(batch, corpus)
        assert ("b.wav", "b.r1.flac") not in pairs and all(render_group(Path(o))[0].stem == Path(f).stem
                                                           for f, o in pairs)  # fmt: skip
    assert [b.path.name for b in corpus.bad_files] == ["b.r1.flac"]


def test_paired_renders_errors(renders, tmp_path):
    corpus = AudioCorpus(renders, SR, min_seconds=1.0)
    with pytest.raises(ValueError, match="batch_size: paired_renders takes clips in pairs"):
        CropBatches(corpus, batch_size=3, crop_seconds=1.0, min_crop_seconds=1.0, paired_renders=True)
    with pytest.raises(TypeError, match="paired_renders must be a bool"):
        CropBatches(corpus, batch_size=2, crop_seconds=1.0, min_crop_seconds=1.0, paired_renders=1)
    # renders shorter than min_crop_seconds do not count: only c (3 s, no render) and b's 2.5 s renders are left
    assert (
        len(CropBatches(corpus, batch_size=2, crop_seconds=2.4, min_crop_seconds=2.4, paired_renders=True).pairs) == 1
    )
    with pytest.raises(ValueError, match="paired_renders: .* has no clip with two renders"):
        CropBatches(corpus, batch_size=2, crop_seconds=2.8, min_crop_seconds=2.8, paired_renders=True)
    sf.write(tmp_path / "x.wav", np.zeros(SR * 2, np.float32), SR)
    sf.write(tmp_path / "x.r1.wav", np.zeros(SR * 3, np.float32), SR)  # another length: not cropped with x.wav
    with pytest.raises(ValueError, match="no clip with two renders"):
        CropBatches(
            AudioCorpus(tmp_path, SR, min_seconds=1.0),
            batch_size=2,
            crop_seconds=1.0,
            min_crop_seconds=1.0,
            paired_renders=True,
        )
    with pytest.raises(ValueError, match="batch_size: paired_renders takes clips in pairs"):
        TrainConfig(paired_renders=True, batch_size=5)
    with pytest.raises(TypeError, match="paired_renders must be a bool"):
        TrainConfig(paired_renders="yes")
