"""k-means acoustic teacher (MERT-v0 / HuBERT): features against librosa, frame counts, codes, fitting, files, CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from mert_fast.cli import main as cli_main
from mert_fast.model.config import PRESETS
from mert_fast.model.teachers import (
    KMeansTeacher,
    MelRVQTeacher,
    align_to_frames,
    fit_kmeans_teacher,
    fit_mel_rvq,
    load_teacher,
)
from mert_fast.model.teachers.kmeans import MIN_SAMPLES, compute_deltas
from mert_fast.synth import make_corpus
from mert_fast.testing import rel_error

SR = 16000
#: Fundamentals (Hz) of the harmonic tones the fitting tests cluster.
TONES = (110.0, 247.0, 523.0, 1175.0)
#: Frames at each end of a clip whose features see the zero padding (centered STFT, then two delta windows of 5).
EDGE = 5


def _noise(batch: int, length: int) -> torch.Tensor:
    """Coloured noise with a slowly varying level: spectra with structure, no silence (librosa's top_db is moot)."""
    x = torch.randn(batch, length, dtype=torch.float64)
    x = x + 0.9 * torch.roll(x, 1, dims=1)  # low-pass tilt
    env = 1.0 + 0.5 * torch.sin(torch.linspace(0, 7.0, length, dtype=torch.float64))
    return 0.1 * x * env


def _tone_clips(seconds: float = 1.0, noise: float = 0.01) -> list[torch.Tensor]:
    """One clip per tone: six harmonics of random phases, 1/h amplitudes, white noise."""
    t = torch.arange(round(seconds * SR), dtype=torch.float64) / SR
    clips = []
    for f in TONES:
        x = sum(0.5 / h * torch.sin(2 * math.pi * h * f * t + 6 * torch.rand(())) for h in range(1, 7))
        clips.append((x + noise * torch.randn(t.shape[0])).float())
    return clips


def _dominant_codes(teacher: KMeansTeacher) -> list[int]:
    """The most frequent code of each tone (fresh phases and noise: unseen audio), checked to hold >= 95% of the
    frames away from the clip edges."""
    dominant = []
    for clip in _tone_clips():
        codes = teacher(clip[None])[0, EDGE:-EDGE, 0]
        values, counts = torch.unique(codes, return_counts=True)
        assert counts.max() >= 0.95 * codes.numel()
        dominant.append(int(values[counts.argmax()]))
    return dominant


def _librosa_mel_db(y: np.ndarray, teacher: KMeansTeacher) -> np.ndarray:
    """Float64 log-mel (dB, no top_db clipping) by librosa with the teacher's settings, ``(T, n_mels)``."""
    librosa = pytest.importorskip("librosa")
    s = teacher.settings
    mel = librosa.feature.melspectrogram(
        y=y, sr=s["sample_rate"], n_fft=s["n_fft"], win_length=s["win_length"], hop_length=s["hop_length"],
        window="hann", center=True, pad_mode="constant", power=2.0, n_mels=s["n_mels"], fmin=s["fmin"],
        fmax=s["fmax"], htk=True, norm=None,
    )  # fmt: skip
    return librosa.power_to_db(mel, top_db=None).T


# ---------------------------------------------------------------------------------------------- features


@pytest.mark.parametrize("length", [SR, SR + 123])
def test_mfcc_matches_librosa(length):
    """13 MFCCs = librosa.feature.mfcc (HTK mels, unnormalised, dB, DCT-II ortho); deltas as HuBERT's (window 5)."""
    librosa = pytest.importorskip("librosa")
    teacher = KMeansTeacher(SR)
    audio = _noise(2, length)
    feats = teacher.features(audio, normalize=False)
    assert feats.shape == (2, length // 320 + 1, 39) and feats.dtype == torch.float32
    for b in range(2):
        y = audio[b].numpy()
        s = teacher.settings
        ref = librosa.feature.mfcc(
            y=y, sr=SR, n_mfcc=13, n_fft=s["n_fft"], win_length=s["win_length"], hop_length=320, window="hann",
            center=True, pad_mode="constant", power=2.0, n_mels=23, fmin=20.0, htk=True, mel_norm=None,
        ).T  # fmt: skip
        db = _librosa_mel_db(y, teacher)
        assert db.max() - db.min() < 80  # librosa.feature.mfcc clips at top_db=80 below the peak: not in play here
        d1 = librosa.feature.delta(ref, width=5, mode="nearest", axis=0)
        d2 = librosa.feature.delta(d1, width=5, mode="nearest", axis=0)
        for ours, theirs in ((feats[b, :, :13], ref), (feats[b, :, 13:26], d1), (feats[b, :, 26:], d2)):
            assert rel_error(ours.double(), torch.from_numpy(theirs)) < 1e-5


@pytest.mark.parametrize("n_mels", [80, 128])
def test_logmel_matches_float64_librosa(n_mels):
    teacher = KMeansTeacher(SR, feature="logmel", n_mels=n_mels)
    audio = _noise(1, SR + 77)
    feats = teacher.features(audio, normalize=False)[0]
    ref = _librosa_mel_db(audio[0].numpy(), teacher)
    assert feats.shape == ref.shape == (audio.shape[1] // 320 + 1, n_mels)
    assert rel_error(feats.double(), torch.from_numpy(ref)) < 1e-5


@pytest.mark.parametrize("width", [5, 9])
def test_deltas_match_librosa_and_the_regression_formula(width):
    librosa = pytest.importorskip("librosa")
    x = torch.randn(2, 37, 6, dtype=torch.float64)
    ours = compute_deltas(x, width)
    for b in range(2):
        ref = librosa.feature.delta(x[b].numpy(), width=width, mode="nearest", axis=0)
        assert rel_error(ours[b], torch.from_numpy(ref)) < 1e-12
    # by hand: a ramp of slope 2 has deltas 2 away from the edges; the edges repeat the first / last frame
    ramp = 2.0 * torch.arange(20, dtype=torch.float64)[None, :, None]
    d = compute_deltas(ramp, width)[0, :, 0]
    n = width // 2
    assert torch.allclose(d[n:-n], torch.full_like(d[n:-n], 2.0))
    # first frame: x_{-i} = x_0 = 0, so d_0 = sum_i i * 2i / (2 sum_i i^2) = 1
    assert float(d[0]) == pytest.approx(1.0) and float(d[-1]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="width"):
        compute_deltas(x, 4)


def test_normalised_features_use_the_fitted_statistics():
    teacher = KMeansTeacher(SR)
    teacher.mean.normal_()
    teacher.std.uniform_(0.5, 2.0)
    audio = _noise(2, 8000 + 11).float()
    raw = teacher.features(audio, normalize=False).double()
    norm = teacher.features(audio).double()
    assert rel_error(norm, (raw - teacher.mean.double()) / teacher.std.double()) < 1e-6


# ---------------------------------------------------------------------------------------------- frames and codes


def test_frames_cover_the_mert_v0_student():
    cfg = PRESETS["mert-v0"]
    teacher = KMeansTeacher(cfg.sample_rate)
    assert cfg.sample_rate == 16000 and cfg.hop_length == teacher.hop_length == 320 and teacher.label_rate == 50.0
    assert cfg.receptive_field == MIN_SAMPLES
    # every length from one student frame over several hops, and long clips
    for length in [*range(MIN_SAMPLES, MIN_SAMPLES + 4 * 320), 5 * SR, 5 * SR + 319, 30 * SR + 1]:
        assert teacher.num_frames(length) >= cfg.num_frames(length) >= 1, length
    for length in (MIN_SAMPLES, 719, 720, 3 * SR + 319):
        codes = teacher(_noise(2, length).float())
        assert codes.shape == (2, teacher.num_frames(length), 1) and codes.dtype == torch.int64
        n = cfg.num_frames(length)
        aligned = align_to_frames(codes, n)
        assert aligned.shape == (2, n, 1) and torch.equal(aligned, codes[:, :n])


@pytest.mark.parametrize("k", [37, 64])
def test_codes_are_the_float64_nearest_centroid(k):
    teacher = KMeansTeacher(SR, n_clusters=k)
    audio = _noise(3, 2 * SR + 5).float()
    raw = teacher.features(audio, normalize=False).reshape(-1, 39)
    teacher.mean.copy_(raw.mean(0))
    teacher.std.copy_(raw.std(0))
    teacher.centroids.copy_(torch.randn(k, 39))
    codes = teacher(audio)
    assert codes.shape == (3, audio.shape[1] // 320 + 1, 1)
    feats = teacher.features(audio).reshape(-1, 39).double()
    dist = torch.cdist(feats, teacher.centroids.double()).square()
    best = dist.argmin(1)
    chosen = codes.reshape(-1)
    assert len(torch.unique(chosen)) > 3  # not a degenerate case
    differ = chosen != best
    # only float32 near-ties may differ from the float64 choice
    gap = dist.gather(1, chosen[:, None])[:, 0] - dist.gather(1, best[:, None])[:, 0]
    assert bool((gap[differ] <= 1e-4 * dist.gather(1, best[:, None])[differ, 0] + 1e-6).all())
    assert int(differ.sum()) <= 2


# ---------------------------------------------------------------------------------------------- fitting


@pytest.mark.parametrize("feature", ["mfcc", "logmel"])
def test_fit_gives_each_tone_its_own_code(feature):
    # one cluster per tone and one spare: the clip edges (zero padding) form a cluster of their own
    clips = _tone_clips()
    teacher = fit_kmeans_teacher(clips, SR, feature=feature, n_clusters=len(TONES) + 1, seed=3)
    assert teacher.settings["codebook_size"] == len(TONES) + 1 and not teacher.training
    assert len(set(_dominant_codes(teacher))) == len(TONES)
    again = fit_kmeans_teacher(clips, SR, feature=feature, n_clusters=len(TONES) + 1, seed=3)
    assert torch.equal(again.centroids, teacher.centroids) and torch.equal(again.std, teacher.std)


def test_minibatch_fit_on_a_frame_sample_separates_tones():
    clips = _tone_clips(seconds=2.0)
    teacher = fit_kmeans_teacher(
        clips, SR, n_clusters=len(TONES) + 1, max_frames=300, batch_size=64, iters=20, n_init=2, seed=1
    )
    assert len(set(_dominant_codes(teacher))) == len(TONES)


# ---------------------------------------------------------------------------------------------- files


@pytest.fixture(scope="module")
def fitted() -> KMeansTeacher:
    return fit_kmeans_teacher(_tone_clips(seconds=0.5), SR, n_clusters=6, seed=0)


def test_save_load_round_trip(fitted, tmp_path):
    fitted.save(tmp_path / "t")
    meta = json.loads((tmp_path / "t" / "teacher.json").read_text())
    assert meta["format"] == "mert_fast.kmeans.v1" and meta["type"] == "kmeans" and meta["n_q"] == 1
    assert not list((tmp_path / "t").glob("*.tmp"))
    audio = _noise(2, SR + 321).float()
    for again in (KMeansTeacher.load(tmp_path / "t"), load_teacher(tmp_path / "t", "cpu", sample_rate=SR)):
        assert isinstance(again, KMeansTeacher) and not again.training
        assert again.settings == fitted.settings
        assert torch.equal(again(audio), fitted(audio))
        assert all(
            torch.equal(a, b) for a, b in zip(again.state_dict().values(), fitted.state_dict().values(), strict=True)
        )
    with pytest.raises(ValueError, match="sample_rate.*16000 Hz.*24000 Hz"):
        load_teacher(tmp_path / "t", sample_rate=24000)
    with pytest.raises(FileNotFoundError, match="teacher.json"):
        load_teacher(tmp_path / "missing")
    (tmp_path / "t" / "teacher.json").write_text(json.dumps({**meta, "format": "other.v9"}))
    with pytest.raises(ValueError, match="not a k-means teacher"):
        KMeansTeacher.load(tmp_path / "t")
    (tmp_path / "t" / "teacher.json").write_text(json.dumps({**meta, "codebook_size": 7}))
    with pytest.raises(ValueError, match="implies"):
        KMeansTeacher.load(tmp_path / "t")


def test_load_teacher_dispatches_on_type(fitted, tmp_path):
    clips = [torch.randn(SR) * 0.1 for _ in range(2)]
    mel = fit_mel_rvq(clips, SR, n_q=2, codebook_size=8, steps=2, batch_frames=64, seed=0)
    mel.save(tmp_path / "mel")
    fitted.save(tmp_path / "km")
    loaded_mel = load_teacher(tmp_path / "mel", sample_rate=SR)
    loaded_km = load_teacher(tmp_path / "km")
    assert type(loaded_mel) is MelRVQTeacher and type(loaded_km) is KMeansTeacher
    audio = _noise(1, SR).float()
    assert torch.equal(loaded_mel(audio), mel(audio)) and torch.equal(loaded_km(audio), fitted(audio))
    with pytest.raises(ValueError, match="sample_rate"):
        load_teacher(tmp_path / "mel", sample_rate=24000)
    meta = json.loads((tmp_path / "km" / "teacher.json").read_text())
    (tmp_path / "km" / "teacher.json").write_text(json.dumps({**meta, "type": "wav2vec"}))
    with pytest.raises(ValueError, match="'wav2vec'.*'kmeans', 'mel-rvq'"):
        load_teacher(tmp_path / "km")
    (tmp_path / "km" / "teacher.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_teacher(tmp_path / "km")


# ---------------------------------------------------------------------------------------------- bad input


def test_bad_input_is_named():
    teacher = KMeansTeacher(SR, n_clusters=4)
    good = torch.randn(1, SR)
    cases = [
        ([1.0] * SR, TypeError, "audio must be a torch.Tensor"),
        (good.long(), TypeError, "audio must be floating point"),
        (good[0], ValueError, r"audio must be shaped \(B, L\)"),
        (good[:, : MIN_SAMPLES - 1], ValueError, "audio must hold at least 400 samples"),
        (torch.where(torch.arange(SR) == 7, float("nan"), good), ValueError, "audio contains NaN"),
    ]
    for audio, exc, message in cases:
        with pytest.raises(exc, match=message):
            teacher(audio)
    for kwargs, message in [
        (dict(feature="chroma"), "feature must be one of 'mfcc', 'logmel'"),
        (dict(sample_rate=16001), "sample_rate must be a multiple of 50"),
        (dict(n_clusters=0), "n_clusters must be an integer >= 1"),
        (dict(feature="logmel", n_mels=128, n_fft=256), "n_mels: 128 mel filters are too many"),
        (dict(n_mfcc=30), "n_mfcc must be at most n_mels = 23"),
        (dict(win_length=600), "win_length must be at most n_fft = 512"),
        (dict(delta_width=4), "delta_width must be an odd integer"),
    ]:
        with pytest.raises(ValueError, match=message):
            KMeansTeacher(**kwargs)
    for clips, exc, message in [
        ([], ValueError, "clips: no audio"),
        ([good], ValueError, r"clips\[0\] must be a 1-D waveform"),
        ([good[0], good[0, :100]], ValueError, r"clips\[1\] must hold at least 400 samples"),
        ([good[0].int()], TypeError, r"clips\[0\] must be floating point"),
        ([good[0] * float("inf")], ValueError, r"clips\[0\] contains NaN or inf"),
        ([good[0, :3200]], ValueError, "11 frames are too few to fit 100 clusters"),
    ]:
        with pytest.raises(exc, match=message):
            fit_kmeans_teacher(clips, SR)
    for kwargs, message in [
        (dict(max_frames=50), "max_frames must be at least n_clusters = 100"),
        (dict(n_init=0), "n_init must be an integer >= 1"),
        (dict(seed=-1), "seed must be an integer >= 0"),
    ]:
        with pytest.raises(ValueError, match=message):
            fit_kmeans_teacher([good[0]], SR, **kwargs)


# ---------------------------------------------------------------------------------------------- command line


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("kmeans_corpus")
    make_corpus(root / "audio", n_clips=3, seconds=2.0, sample_rate=SR, seed=4, source="numpy")
    return root / "audio"


@pytest.mark.parametrize("feature", ["mfcc", "logmel"])
def test_fit_teacher_command_kmeans(corpus_dir, tmp_path, capsys, feature):
    out = tmp_path / "teacher"
    args = ["fit-teacher", str(corpus_dir), "--out", str(out), "--type", "kmeans", "--feature", feature]
    code = cli_main([*args, "--clusters", "8", "--sample-rate", str(SR)])
    assert code == 0 and f"k-means teacher (8 clusters of {feature} frames, 50 Hz)" in capsys.readouterr().out
    teacher = load_teacher(out, sample_rate=SR)
    assert isinstance(teacher, KMeansTeacher)
    assert teacher.settings["feature"] == feature and teacher.settings["codebook_size"] == 8
    assert teacher.settings["dim"] == (39 if feature == "mfcc" else 80)
    codes = teacher(_noise(1, SR).float())
    assert codes.shape == (1, 51, 1) and int(codes.min()) >= 0 and int(codes.max()) < 8


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--type", "mel-rvq", "--clusters", "8"], "--clusters: not an option of --type mel-rvq"),
        (["--type", "kmeans", "--codebooks", "2"], "--codebooks: not an option of --type kmeans"),
        (["--type", "kmeans", "--clusters", "100000"], "too few to fit 100000 clusters"),
        (["--type", "kmeans", "--feature", "chroma"], "invalid choice: 'chroma'"),
        (["--type", "kmeans", "--clusters", "0"], "expected a positive integer"),
    ],
)
def test_fit_teacher_command_bad_input_exits_2(corpus_dir, tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as info:
        cli_main(["fit-teacher", str(corpus_dir), "--out", str(tmp_path / "t"), *extra])
    assert info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "t" / "teacher.json").exists()


def test_fit_teacher_command_missing_audio_exits_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        cli_main(["fit-teacher", str(tmp_path / "nowhere"), "--out", str(tmp_path / "t"), "--type", "kmeans"])
    assert info.value.code == 2 and "fit-teacher: error:" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- backends


@pytest.mark.triton
def test_codes_agree_on_torch_and_triton(fitted, triton_backend, monkeypatch):
    """The nearest-centroid search through the Triton kernel (interpreted on the CPU) gives the torch path's codes."""
    audio = _noise(2, 4000 + 17).float()  # 13 frames each: small for the interpreter
    triton_codes = fitted(audio)
    monkeypatch.setenv("MERT_FAST_BACKEND", "torch")
    assert torch.equal(triton_codes, fitted(audio))


# ---------------------------------------------------------------------------------------------- GPU


@pytest.mark.cuda
def test_cuda_codes_match_cpu(fitted):
    audio = _noise(8, 5 * SR).float()
    cpu = fitted(audio)
    teacher = KMeansTeacher(SR, n_clusters=fitted.codebook_size)
    teacher.load_state_dict(fitted.state_dict())
    gpu = teacher.to("cuda")(audio.cuda()).cpu()
    assert gpu.shape == cpu.shape
    assert float((gpu != cpu).double().mean()) < 1e-3  # float32 near-ties only
