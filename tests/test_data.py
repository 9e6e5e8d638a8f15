"""Pre-training data: file listing, the corpus and its bad files, deterministic crops, resume, workers, shards."""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from mert_fast.audio import load_audio
from mert_fast.train import data
from mert_fast.train.data import AudioCorpus, Batch, CropBatches, list_audio, seed_for

SR = 24000
# seconds of the clips of the shared corpus: five shorter than the 5 s crop, two shorter than 3.5 s
LENGTHS = (3.2, 7.0, 4.0, 5.5, 3.05, 6.0, 8.0, 4.7, 5.0, 3.6, 6.6, 9.1)


def _write(path: Path, x: np.ndarray, rate: int = SR, subtype: str = "FLOAT") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, x, rate, subtype=subtype)
    return path


def _truncated_flac(path: Path, seconds: float, rng: np.random.Generator) -> Path:
    """A FLAC whose header promises ``seconds`` but whose second half is missing: it fails only when decoded."""
    _write(path, rng.uniform(-0.5, 0.5, round(seconds * SR)).astype(np.float32), subtype="PCM_16")
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    return path


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> tuple[Path, dict[Path, np.ndarray]]:
    """Twelve clips of white noise in two sub-folders (24 kHz float WAV: a crop must equal a slice exactly)."""
    root = tmp_path_factory.mktemp("clips")
    rng = np.random.default_rng(20240611)
    out = {}
    for k, seconds in enumerate(LENGTHS):
        x = rng.uniform(-0.5, 0.5, round(seconds * SR)).astype(np.float32)
        out[_write(root / ("odd" if k % 2 else "even") / f"clip{k:02d}.wav", x)] = x
    return root, out


def _batches(loader) -> list[Batch]:
    return list(loader)


def _assert_same(a: list[Batch], b: list[Batch]) -> None:
    assert [x.step for x in a] == [y.step for y in b]
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x.indices, y.indices) and torch.equal(x.offsets, y.offsets)
        assert torch.equal(x.audio, y.audio)


# ------------------------------------------------------------------------------------------------ seeds


def test_seed_for_is_a_stable_hash_of_every_argument():
    base = seed_for(0, 0, 0)
    assert base == seed_for(0, 0, 0, 0, "") == 6588196851807043643  # pinned: resumed runs depend on it
    variants = [
        seed_for(1, 0, 0),
        seed_for(0, 1, 0),
        seed_for(0, 0, 1),
        seed_for(0, 0, 0, 1),
        seed_for(0, 0, 0, 0, "m"),
    ]
    assert len({base, *variants}) == 6
    assert seed_for(np.int64(3), 2, 1, 0, "crop") == seed_for(3, 2, 1, 0, "crop")
    values = np.array([seed_for(7, s, r, i, "x") for s in range(40) for r in range(5) for i in range(10)], np.uint64)
    assert len(set(values.tolist())) == len(values) and int(values.max()) < 2**63
    top = (values >> np.uint64(62)) & np.uint64(1)
    assert 0.45 < top.mean() < 0.55
    torch.Generator().manual_seed(int(values.max()))  # usable as a torch seed
    with pytest.raises(TypeError, match="step"):
        seed_for(0, 1.5, 0)
    with pytest.raises(TypeError, match="rank"):
        seed_for(0, 0, True)
    with pytest.raises(TypeError, match="purpose"):
        seed_for(0, 0, 0, 0, 3)


def test_permutation_is_uniform_and_keyed():
    for n in (1, 7, 1000):
        assert np.array_equal(np.sort(data._permutation(n, 5)), np.arange(n))
    assert not np.array_equal(data._permutation(1000, 1), data._permutation(1000, 2))
    assert np.array_equal(data._permutation(1000, 2), data._permutation(1000, 2))
    first = np.bincount([int(data._permutation(8, seed_for(k, 0, 0))[0]) for k in range(4000)], minlength=8)
    assert first.min() > 400 and first.max() < 600  # 500 expected for each of 8 elements


# ------------------------------------------------------------------------------------------------ listing


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def test_list_audio_folder(tmp_path):
    wanted = [_touch(tmp_path / p) for p in ("b.wav", "a/x.FLAC", "a/deep/y.ogg", "z.mp3", "m.aiff")]
    for p in (".hidden.wav", ".git/z.wav", "notes.txt", "cover.png", "a/readme.md"):
        _touch(tmp_path / p)
    got = list_audio(tmp_path)
    assert got == sorted((p.resolve() for p in wanted), key=str)
    assert list_audio(str(tmp_path)) == got


def test_list_audio_manifests_and_lists(tmp_path, monkeypatch):
    files = [_touch(tmp_path / "audio" / f"{name}.wav") for name in ("c", "a", "b")]
    elsewhere = _touch(tmp_path / "other" / "d.flac")
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "with_header.csv").write_text(f"seconds,path\n1.0,../audio/c.wav\n2.0,../audio/a.wav\n3,{elsewhere}\n")
    (lists / "first_column.csv").write_text("../audio/b.wav,4.0\n../audio/a.wav,1.0\n\n")
    (lists / "header_first_column.csv").write_text("file,seconds\n../audio/c.wav,1\n")
    (lists / "paths.txt").write_text("# a comment\n../audio/b.wav\n\n  ../audio/c.wav  \n../audio/b.wav\n")
    monkeypatch.chdir(tmp_path / "other")  # relative paths follow the manifest, not the working directory
    audio = tmp_path / "audio"
    assert list_audio(lists / "with_header.csv") == [audio / "a.wav", audio / "c.wav", elsewhere]
    assert list_audio(lists / "first_column.csv") == [audio / "a.wav", audio / "b.wav"]
    assert list_audio(lists / "header_first_column.csv") == [audio / "c.wav"]
    assert list_audio(lists / "paths.txt") == [audio / "b.wav", audio / "c.wav"]
    mixed = list_audio([str(lists / "paths.txt"), files[1], tmp_path / "other", tmp_path / "missing.wav"])
    expected = [audio / "a.wav", audio / "b.wav", audio / "c.wav", elsewhere, tmp_path / "missing.wav"]
    assert mixed == sorted(expected, key=str)


def test_list_audio_errors(tmp_path):
    with pytest.raises(ValueError, match="not found.*nowhere"):
        list_audio(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    _touch(tmp_path / "empty" / "notes.txt")
    with pytest.raises(ValueError, match=r"no audio files found in .*empty"):
        list_audio(tmp_path / "empty")
    (tmp_path / "blank.txt").write_text("# nothing\n\n")
    with pytest.raises(ValueError, match="no audio files found"):
        list_audio(tmp_path / "blank.txt")
    with pytest.raises(ValueError, match="no audio files found"):
        list_audio([])
    with pytest.raises(TypeError, match="source"):
        list_audio(42)


# ------------------------------------------------------------------------------------------------ the corpus


def test_bad_files_are_skipped_counted_and_named(tmp_path, caplog):
    rng = np.random.default_rng(3)
    good = [_write(tmp_path / f"good{k}.flac", rng.uniform(-0.5, 0.5, 4 * SR), subtype="PCM_16") for k in range(3)]
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF\x00\x00not really a wave file" + rng.bytes(3000))
    _write(tmp_path / "empty.wav", np.zeros(0, np.float32))
    _write(tmp_path / "short.wav", rng.uniform(-0.5, 0.5, 2 * SR).astype(np.float32))
    names = [p.name for p in tmp_path.iterdir()] + ["missing.wav"]
    (tmp_path / "list.txt").write_text("\n".join(names))
    with caplog.at_level(logging.WARNING, logger="mert_fast.train.corpus"):
        corpus = AudioCorpus(tmp_path / "list.txt", SR)
    assert corpus.files == good and len(corpus) == 3
    assert corpus.frames == [4 * SR] * 3 and corpus.seconds == [4.0] * 3
    reasons = {b.path.name: b.reason for b in corpus.bad_files}
    assert sorted(reasons) == ["corrupt.wav", "empty.wav", "missing.wav", "short.wav"]
    assert reasons["corrupt.wav"].startswith("cannot decode")
    assert reasons["empty.wav"].startswith("empty")
    assert reasons["missing.wav"] == "file not found"
    assert reasons["short.wav"].startswith("too short: 2.000 s")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 4 and all(any(n in w for w in warnings) for n in reasons)
    # min_seconds decides what is too short
    assert len(AudioCorpus(tmp_path, SR, min_seconds=1.5)) == 4
    np.testing.assert_array_equal(corpus[1].numpy(), load_audio(good[1], SR).numpy())


def test_no_usable_audio_is_a_clear_error(tmp_path):
    _write(tmp_path / "short.wav", np.zeros(SR, np.float32))
    (tmp_path / "bad.flac").write_bytes(b"fLaC garbage")
    with pytest.raises(ValueError, match=r"no usable audio in .*" + tmp_path.name + r".*2 files.*too short"):
        AudioCorpus(tmp_path, SR)
    with pytest.raises(ValueError, match="sample_rate"):
        AudioCorpus(tmp_path, 0)
    with pytest.raises(ValueError, match="min_seconds"):
        AudioCorpus(tmp_path, SR, min_seconds=-1)


def test_verify_and_getitem_catch_bad_samples(tmp_path, caplog):
    rng = np.random.default_rng(4)
    a = _write(tmp_path / "a.wav", rng.uniform(-0.5, 0.5, 4 * SR).astype(np.float32))
    nan = np.full(4 * SR, np.nan, np.float32)
    _write(tmp_path / "b_nan.wav", nan)
    c = _write(tmp_path / "c.wav", rng.uniform(-0.5, 0.5, 5 * SR).astype(np.float32))
    plain = AudioCorpus(tmp_path, SR)
    assert len(plain) == 3 and not plain.bad_files  # headers look fine
    with caplog.at_level(logging.WARNING, logger="mert_fast.train.corpus"):
        got = plain[1]  # the NaN file is replaced by the next good one
        plain[1]
    np.testing.assert_array_equal(got.numpy(), load_audio(c, SR).numpy())
    np.testing.assert_array_equal(plain.load(0).numpy(), load_audio(a, SR).numpy())
    assert [b.path.name for b in plain.bad_files] == ["b_nan.wav"] and "NaN" in plain.bad_files[0].reason
    assert sum("b_nan.wav" in r.getMessage() for r in caplog.records) == 1  # one warning, however often it fails
    checked = AudioCorpus(tmp_path, SR, verify=True)
    assert checked.files == [a, c] and [b.path.name for b in checked.bad_files] == ["b_nan.wav"]
    with pytest.raises(IndexError):
        checked[2]


# ------------------------------------------------------------------------------------------------ crops


def test_crops_are_slices_cut_to_the_batch_shortest(clips):
    root, audio = clips
    corpus = AudioCorpus(root, SR)
    assert len(corpus) == len(LENGTHS)
    loader = CropBatches(corpus, batch_size=4, seed=5, max_steps=9)
    assert len(loader) == 9
    lengths = set()
    for step, batch in enumerate(loader):
        assert batch.step == step
        assert batch.audio.dtype == torch.float32 and batch.audio.is_contiguous()
        assert batch.indices.dtype == torch.int64 and batch.indices.shape == (4,)
        assert batch.offsets.dtype == torch.float64 and batch.offsets.shape == (4,)
        clip_lengths = [len(audio[corpus.files[i]]) for i in batch.indices.tolist()]
        length = min(5 * SR, *clip_lengths)
        assert batch.audio.shape == (4, length)
        lengths.add(length)
        for row, i, offset_s in zip(batch.audio, batch.indices.tolist(), batch.offsets.tolist(), strict=True):
            offset = round(offset_s * SR)
            assert abs(offset - offset_s * SR) < 1e-6 and 0 <= offset <= len(audio[corpus.files[i]]) - length
            np.testing.assert_array_equal(row.numpy(), audio[corpus.files[i]][offset : offset + length])
    assert 5 * SR in lengths and min(lengths) < 4 * SR  # full crops and crops cut to a short clip
    offsets = [b.offsets for b in CropBatches(corpus, batch_size=4, seed=5, max_steps=9)]
    assert len({round(float(o), 6) for o in torch.cat(offsets)}) > 20  # crops start all over the clips


def test_min_crop_seconds_excludes_short_clips(clips):
    root, _ = clips
    corpus = AudioCorpus(root, SR)
    loader = CropBatches(corpus, batch_size=2, crop_seconds=5.12, min_crop_seconds=3.5, seed=1, max_steps=10)
    short = {i for i, s in enumerate(corpus.seconds) if s < 3.5}
    assert len(short) == 2 and len(loader.eligible) == len(LENGTHS) - 2
    for batch in loader:
        assert not short & set(batch.indices.tolist())
        assert 3.5 * SR <= batch.audio.shape[1] <= round(5.12 * SR)


def test_resampled_stereo_crops_follow_the_signal(tmp_path):
    """48 kHz and 16 kHz stereo files: a crop at 24 kHz is the channel mean of the signal from its offset on."""

    def signal(t: np.ndarray) -> np.ndarray:
        left = 0.3 * np.sin(2 * np.pi * 220.0 * t) + 0.2 * np.sin(2 * np.pi * 1234.0 * t + 1.0)
        right = 0.25 * np.sin(2 * np.pi * 330.0 * t + 0.5)
        return np.stack([left, right], axis=1)

    for rate, seconds in ((48000, 6.0), (16000, 4.5)):
        _write(tmp_path / f"r{rate}.wav", signal(np.arange(round(seconds * rate)) / rate).astype(np.float32), rate)
    corpus = AudioCorpus(tmp_path, SR)
    assert corpus.rates == [16000, 48000] and [corpus.num_samples(i) for i in (0, 1)] == [108000, 144000]
    for batch in CropBatches(corpus, batch_size=2, seed=3, max_steps=4):
        assert batch.audio.shape == (2, 108000)  # the 4.5 s clip, whole
        for row, offset in zip(batch.audio.numpy(), batch.offsets.tolist(), strict=True):
            expected = signal(offset + np.arange(row.shape[0]) / SR).mean(axis=1)
            np.testing.assert_allclose(row[200:-200], expected[200:-200], rtol=0, atol=2e-3)


# ------------------------------------------------------------------------------------------------ determinism


def test_determinism_resume_and_epochs(clips):
    root, _ = clips
    corpus = AudioCorpus(root, SR)
    kwargs = {"batch_size": 3, "crop_seconds": 2.0, "min_crop_seconds": 1.0, "seed": 9}
    full = _batches(CropBatches(corpus, max_steps=11, **kwargs))
    loader = CropBatches(corpus, max_steps=11, **kwargs)
    assert loader.steps_per_epoch == 4
    _assert_same(full, _batches(loader))  # the same run twice
    for start in (1, 4, 7):
        resumed = _batches(CropBatches(corpus, start_step=start, max_steps=11, **kwargs))
        _assert_same(full[start:], resumed)
    # one epoch is every clip once; the next one is another order
    epochs = [torch.cat([b.indices for b in full[e * 4 : e * 4 + 4]]).tolist() for e in (0, 1)]
    assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(len(LENGTHS)))
    assert epochs[0] != epochs[1]
    other = _batches(CropBatches(corpus, max_steps=11, **(kwargs | {"seed": 10})))
    assert [b.indices.tolist() for b in other] != [b.indices.tolist() for b in full]


def test_endless_loader_and_errors(clips):
    root, _ = clips
    corpus = AudioCorpus(root, SR)
    endless = CropBatches(corpus, batch_size=2, crop_seconds=1.0, min_crop_seconds=1.0, start_step=5)
    got = list(itertools.islice(iter(endless), 3))
    assert [b.step for b in got] == [5, 6, 7]
    with pytest.raises(TypeError, match="no length"):
        len(endless)
    moved = got[0].to("cpu")
    assert isinstance(moved, Batch) and torch.equal(moved.audio, got[0].audio)
    for kwargs, name in (
        ({"batch_size": 2, "crop_seconds": 10.0, "min_crop_seconds": 9.5}, "no clip of >= min_crop_seconds = 9.5 s"),
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 2, "rank": 2, "world_size": 2}, "rank"),
        ({"batch_size": 2, "min_crop_seconds": 6.0}, "min_crop_seconds"),
        ({"batch_size": 2, "crop_seconds": 0}, "crop_seconds"),
        ({"batch_size": 2, "start_step": -1}, "start_step"),
        ({"batch_size": 2, "max_steps": 1.5}, "max_steps"),
        ({"batch_size": 2, "num_workers": -1}, "num_workers"),
    ):
        with pytest.raises(ValueError, match=name):
            CropBatches(corpus, **kwargs)
    with pytest.raises(TypeError, match="AudioCorpus"):
        CropBatches([root], batch_size=2)


@pytest.fixture
def corpus_with_runtime_failures(clips, tmp_path) -> Path:
    """The shared clips plus a NaN file and a truncated FLAC (both with good headers), in a manifest."""
    root, audio = clips
    rng = np.random.default_rng(8)
    nan = _write(tmp_path / "nan.wav", np.where(np.arange(6 * SR) % 1000 == 0, np.nan, 0.1).astype(np.float32))
    truncated = _truncated_flac(tmp_path / "truncated.flac", 4.5, rng)
    manifest = tmp_path / "all.txt"
    manifest.write_text("\n".join(str(p) for p in [*audio, nan, truncated]))
    return manifest


def test_workers_give_the_same_batches_and_report_bad_files(corpus_with_runtime_failures, caplog):
    kwargs = {"batch_size": 2, "seed": 4, "max_steps": 7}  # one epoch: every clip, the two bad ones included
    runs = {}
    for workers in (0, 2):
        corpus = AudioCorpus(corpus_with_runtime_failures, SR)
        assert len(corpus) == len(LENGTHS) + 2 and not corpus.bad_files
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="mert_fast.train.corpus"):
            loader = CropBatches(corpus, num_workers=workers, **kwargs)
            runs[workers] = _batches(loader)
        bad = {b.path.name: b.reason for b in corpus.bad_files}
        assert sorted(bad) == ["nan.wav", "truncated.flac"], workers  # seen from the main process
        assert "NaN" in bad["nan.wav"] and "cannot decode" in bad["truncated.flac"]
        warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warned) == 2, warned
        # a failed clip is replaced by the next eligible good clip, deterministically
        bad_index = {corpus.files.index(b.path) for b in corpus.bad_files}
        replaced = 0
        for batch in runs[workers]:
            planned = loader.indices_for(batch.step).tolist()
            assert not bad_index & set(batch.indices.tolist())
            for want, got in zip(planned, batch.indices.tolist(), strict=True):
                if want in bad_index:
                    nxt = (want + 1) % len(corpus)
                    while nxt in bad_index:
                        nxt = (nxt + 1) % len(corpus)
                    assert got == nxt
                    replaced += 1
                else:
                    assert got == want
        assert replaced == 2
    _assert_same(runs[0], runs[2])


def test_ranks_read_disjoint_shards(clips):
    root, _ = clips
    corpus = AudioCorpus(root, SR)
    kwargs = {"batch_size": 3, "crop_seconds": 1.0, "min_crop_seconds": 1.0, "seed": 2, "world_size": 2}
    ranks = [_batches(CropBatches(corpus, rank=r, max_steps=6, **kwargs)) for r in (0, 1)]
    assert CropBatches(corpus, rank=1, **kwargs).steps_per_epoch == 2
    for a, b in zip(*ranks, strict=True):
        assert not set(a.indices.tolist()) & set(b.indices.tolist())
    for epoch in range(3):
        seen = [i for r in ranks for b in r[2 * epoch : 2 * epoch + 2] for i in b.indices.tolist()]
        assert sorted(seen) == list(range(len(LENGTHS)))  # together the ranks read every clip once per epoch
    # a rank's shard does not depend on how many workers read it
    _assert_same(ranks[1], _batches(CropBatches(corpus, rank=1, max_steps=6, num_workers=2, **kwargs)))


def test_crop_offsets_depend_on_rank_step_and_slot(tmp_path):
    """With clips of equal length, only the seeds can make offsets differ: between ranks, steps and slots."""
    rng = np.random.default_rng(6)
    for k in range(8):
        _write(tmp_path / f"{k}.wav", rng.uniform(-0.5, 0.5, 2 * SR).astype(np.float32))
    corpus = AudioCorpus(tmp_path, SR, min_seconds=1.0)
    kwargs = {"batch_size": 2, "crop_seconds": 1.0, "min_crop_seconds": 1.0, "world_size": 2, "max_steps": 4}
    offsets = torch.stack([b.offsets for r in (0, 1) for b in CropBatches(corpus, rank=r, seed=0, **kwargs)])
    assert len(set(offsets.flatten().tolist())) == offsets.numel()  # 16 draws from 24001 values: all distinct
    again = torch.stack([b.offsets for b in CropBatches(corpus, rank=1, seed=0, **kwargs)])
    assert torch.equal(again, offsets[4:])
    other_seed = torch.stack([b.offsets for b in CropBatches(corpus, rank=1, seed=1, **kwargs)])
    assert not torch.equal(other_seed, offsets[4:])


def test_small_corpus_draws_with_replacement_and_resumes_exactly(clips, caplog):
    root, audio = clips
    corpus = AudioCorpus(root, SR)
    # 12 clips, 2 ranks x 7 per step: more slots than clips (this used to refuse to train)
    kwargs = {"batch_size": 7, "crop_seconds": 1.0, "min_crop_seconds": 1.0, "seed": 5, "world_size": 2}
    with caplog.at_level("WARNING", logger="mert_fast.train.corpus"):
        loader = CropBatches(corpus, rank=0, max_steps=4, **kwargs)
    assert loader.with_replacement and "drawn with replacement" in caplog.text
    full = [_batches(CropBatches(corpus, rank=r, max_steps=4, **kwargs)) for r in (0, 1)]
    for r, batches in enumerate(full):
        for b in batches:
            assert b.audio.shape == (7, SR)
            for j, i in enumerate(b.indices.tolist()):
                # every slot's clip is a function of (seed, step, rank, sample) alone
                assert i == seed_for(5, b.step, r, j, "clip") % len(corpus)
                start = round(b.offsets[j].item() * SR)
                assert torch.equal(b.audio[j], torch.from_numpy(audio[corpus.files[i]][start : start + SR]))
    drawn = [i for batches in full for b in batches for i in b.indices.tolist()]
    assert len(set(drawn)) < len(drawn)  # some clip repeats
    assert len(set(drawn)) > 7  # and the draws spread over the corpus
    # resumed at step 2 (with workers): exactly the uninterrupted batches
    _assert_same(full[1][2:], _batches(CropBatches(corpus, rank=1, start_step=2, max_steps=4, num_workers=2, **kwargs)))
    # with enough clips nothing changes: disjoint permutation slices, no replacement
    enough = CropBatches(corpus, rank=0, max_steps=2, **{**kwargs, "batch_size": 6})
    assert not enough.with_replacement and len(set(enough.indices_for(0).tolist())) == 6
