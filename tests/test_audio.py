"""mert_fast.audio: decoding, downmix and resampling round trips, input errors, and the synthesized demo."""

from __future__ import annotations

import math

import numpy as np
import pytest
import soundfile as sf
import torch

from mert_fast.audio import load_audio, synth_demo


def _sine(freq: float, rate: int, n: int, amp: float = 0.5) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * freq * np.arange(n) / rate)).astype(np.float32)


def _peak_hz(x: np.ndarray, rate: int) -> float:
    """Frequency of the strongest spectral peak, refined by parabolic interpolation of the log magnitude."""
    spec = np.log(np.abs(np.fft.rfft(x * np.hanning(len(x)))) + 1e-12)
    k = int(np.argmax(spec[1:-1])) + 1
    a, b, c = spec[k - 1 : k + 2]
    return (k + 0.5 * (a - c) / (a - 2 * b + c)) * rate / len(x)


@pytest.mark.parametrize("n", [24000, 12345])
def test_load_at_file_rate_is_exact(tmp_path, n):
    x = np.random.uniform(-1, 1, n).astype(np.float32)
    path = tmp_path / "mono.wav"
    sf.write(path, x, 24000, subtype="FLOAT")
    out = load_audio(path)
    assert out.dtype == torch.float32 and out.shape == (n,)
    np.testing.assert_array_equal(out.numpy(), x)


def test_downmix_is_channel_mean_wav(tmp_path):
    x = np.random.uniform(-1, 1, (9001, 3)).astype(np.float32)
    path = tmp_path / "three.wav"
    sf.write(path, x, 24000, subtype="FLOAT")
    out = load_audio(str(path), 24000)
    assert out.shape == (9001,)
    np.testing.assert_allclose(out.numpy(), x.astype(np.float64).mean(axis=1), rtol=0, atol=1e-7)
    kept = load_audio(path, mono=False)
    assert kept.shape == (3, 9001)
    np.testing.assert_array_equal(kept.numpy(), x.T)


def test_downmix_is_channel_mean_flac(tmp_path):
    # 16-bit integers survive FLAC exactly, so the expected mean is computed from them alone
    pcm = np.random.randint(-32768, 32768, (4096, 2)).astype(np.int16)
    path = tmp_path / "stereo.flac"
    sf.write(path, pcm, 24000, subtype="PCM_16")
    out = load_audio(path)
    np.testing.assert_allclose(out.numpy(), pcm.astype(np.float64).mean(axis=1) / 32768, rtol=0, atol=1e-7)


@pytest.mark.parametrize("fmt", ["wav", "flac"])
@pytest.mark.parametrize("n", [44100, 12345])
def test_resampled_length(tmp_path, fmt, n):
    x = np.random.uniform(-0.5, 0.5, (n, 2)).astype(np.float32)
    path = tmp_path / f"stereo.{fmt}"
    sf.write(path, x, 44100)
    for rate in (24000, 16000):
        out = load_audio(path, rate)
        assert out.dim() == 1 and out.dtype == torch.float32
        assert abs(out.shape[0] - n * rate / 44100) <= 1
        assert torch.isfinite(out).all()


@pytest.mark.parametrize(
    "fmt, subtype", [("wav", "FLOAT"), ("flac", "PCM_24"), ("ogg", "VORBIS"), ("mp3", "MPEG_LAYER_III")]
)
def test_resampled_sine_keeps_frequency(tmp_path, fmt, subtype):
    rate, n = 44100, 2 * 44100
    left = _sine(1000.0, rate, n)
    path = tmp_path / f"sine.{fmt}"
    try:
        sf.write(path, np.stack([left, left], axis=1), rate, subtype=subtype)
    except (sf.SoundFileError, RuntimeError, ValueError, TypeError) as exc:
        pytest.skip(f"this libsndfile cannot write {fmt}: {exc}")
    out = load_audio(path).numpy()
    assert abs(out.shape[0] - n * 24000 / rate) <= 1
    assert abs(_peak_hz(out, 24000) - 1000.0) < 2.0
    # amplitude survives too (away from the edges, where lossy codecs and the resampler ramp)
    middle = out[4800:-4800]
    assert abs(np.sqrt(2 * np.mean(middle.astype(np.float64) ** 2)) - 0.5) < 0.02


def test_missing_file(tmp_path):
    path = tmp_path / "nowhere.wav"
    with pytest.raises(FileNotFoundError, match="nowhere.wav"):
        load_audio(path)


def test_directory_is_not_audio(tmp_path):
    with pytest.raises(ValueError, match="not a file"):
        load_audio(tmp_path)


@pytest.mark.parametrize("content", [b"", b"this is not audio at all" * 50], ids=["empty-file", "garbage"])
def test_undecodable_file(tmp_path, content):
    path = tmp_path / "broken.wav"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=r"cannot decode audio file .*broken\.wav"):
        load_audio(path)


def test_file_without_samples(tmp_path):
    path = tmp_path / "silent.wav"
    sf.write(path, np.zeros((0, 2), np.float32), 24000)
    with pytest.raises(ValueError, match=r"silent\.wav.* no samples"):
        load_audio(path)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_samples(tmp_path, bad):
    x = _sine(440.0, 24000, 2400)
    x[1000] = bad
    path = tmp_path / "nan.wav"
    sf.write(path, x, 24000, subtype="FLOAT")
    with pytest.raises(ValueError, match=r"nan\.wav.* NaN or inf"):
        load_audio(path)


@pytest.mark.parametrize("rate", [0, -24000, math.nan, math.inf, True, "24000", None])
def test_bad_sample_rate(tmp_path, rate):
    path = tmp_path / "ok.wav"
    sf.write(path, _sine(440.0, 24000, 2400), 24000)
    with pytest.raises(ValueError, match="sample_rate"):
        load_audio(path, rate)


def test_synth_demo_shape_range_and_determinism():
    x = synth_demo()
    assert x.dtype == torch.float32 and x.shape == (6 * 24000,)
    assert torch.isfinite(x).all()
    assert 0.1 < x.abs().max() < 1.0
    assert torch.equal(x, synth_demo(24000, 6.0))
    # a shorter clip is the start of a longer one
    assert torch.equal(synth_demo(24000, 1.3), x[: round(1.3 * 24000)])
    assert synth_demo(16000, 0.5).shape == (8000,)
    long = synth_demo(22050, 13.0)
    assert long.shape == (13 * 22050,) and long.abs().max() < 1.0


def test_synth_demo_plays_the_progression():
    # the strongest partials of each 1.5 s chord belong to that chord: C major, A minor, F major, G major
    rate = 24000
    x = synth_demo(rate).numpy().astype(np.float64)
    pitch_classes = [{0, 4, 7}, {9, 0, 4}, {5, 9, 0}, {7, 11, 2}]
    n = int(1.5 * rate)
    freqs = np.fft.rfftfreq(n, 1 / rate)
    for i, chord in enumerate(pitch_classes):
        mag = np.abs(np.fft.rfft(x[i * n : (i + 1) * n] * np.hanning(n)))
        strongest = freqs[np.argsort(mag[1:])[::-1][:8] + 1]
        classes = {round(69 + 12 * math.log2(f / 440)) % 12 for f in strongest}
        assert classes <= chord, (i, strongest)


@pytest.mark.parametrize("kwargs", [{"seconds": 0}, {"seconds": -1.0}, {"seconds": math.nan}, {"sample_rate": 0}])
def test_synth_demo_bad_arguments(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        synth_demo(**kwargs)
