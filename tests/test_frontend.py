"""The log-mel front end (``feature_extractor_type="logmel"``): against a float64 reference built frame by frame,
on the conv stack's frame grid, gain-invariant, padding-exact, in blocks, through extraction and checkpoints."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mert_fast.model import frontend
from mert_fast.model.config import MERTConfig
from mert_fast.model.extract_tensors import extract
from mert_fast.model.mert import MERTModel
from mert_fast.model.teachers.mel_rvq import mel_filterbank


def _config(**overrides) -> MERTConfig:
    return MERTConfig.from_name("mert-v1-95m").shrunk().with_logmel_front_end(**overrides)


def _reference(audio: np.ndarray, cfg: MERTConfig, mel_fb: np.ndarray) -> np.ndarray:
    """Float64, one frame at a time: frame t is the Hann-windowed ``n_fft`` samples centred on ``320 t + 200``
    (zeros outside the clip), mel power in dB, floored 80 dB under the loudest, minus the mean, over 20 dB."""
    n_fft, hop, centre = cfg.mel_n_fft, cfg.hop_length, cfg.receptive_field // 2
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)  # periodic Hann, as torch.hann_window
    padded = np.concatenate([np.zeros(n_fft), audio.astype(np.float64), np.zeros(n_fft)])
    rows = []
    for t in range(cfg.num_frames(len(audio))):
        start = n_fft + hop * t + centre - n_fft // 2
        power = np.abs(np.fft.rfft(padded[start : start + n_fft] * window)) ** 2
        rows.append(10 * np.log10(np.maximum(power @ mel_fb, 1e-10)))
    db = np.stack(rows, axis=1)  # (n_mels, T)
    db = np.maximum(db, db.max() - 80.0)
    return (db - db.mean()) / 20.0


def test_matches_the_frame_by_frame_float64_reference():
    cfg = _config(n_mels=40, n_fft=1024)
    front = frontend.LogMelFrontEnd(cfg)
    gen = torch.Generator().manual_seed(3)
    t = torch.arange(24000 + 1237) / 24000
    audio = 0.3 * torch.sin(2 * math.pi * 440 * t) + 0.05 * torch.randn(t.shape, generator=gen)
    audio[8000:9000] = 0  # a silent stretch reaches the floor
    got = front(audio[None], None)[0].double().detach().numpy()
    fb = mel_filterbank(24000, 1024, 40).double().numpy()
    want = _reference(audio.numpy(), cfg, fb)
    assert got.shape == want.shape == (40, cfg.num_frames(audio.numel()))
    np.testing.assert_allclose(got, want, atol=2e-4, rtol=0)


def test_a_click_lands_on_the_frame_whose_centre_is_nearest():
    cfg = _config()
    front = frontend.LogMelFrontEnd(cfg)
    audio = torch.zeros(2, 24000)
    audio[0, 320 * 30 + 200] = 1.0  # frame 30's centre
    audio[1, 320 * 41 + 200 + 150] = 1.0  # nearer to frame 41's centre than to 42's
    energy = front.mel_power(audio, cfg.num_frames(24000)).sum(dim=1)  # (2, T)
    # a Hann window peaks at its centre: the click is loudest in the frame centred on it
    assert int(energy[0].argmax()) == 30
    assert int(energy[1].argmax()) == 41


def test_features_do_not_depend_on_gain():
    cfg = _config()
    front = frontend.LogMelFrontEnd(cfg)
    audio = torch.randn(2, 30000, generator=torch.Generator().manual_seed(0)) * torch.linspace(0, 1, 30000)
    loud, quiet = front(audio, None), front(0.02 * audio, None)
    torch.testing.assert_close(quiet, loud, atol=1e-4, rtol=0)


def test_blocks_of_frames_give_the_unblocked_features(monkeypatch):
    cfg = _config()
    front = frontend.LogMelFrontEnd(cfg)
    audio = torch.randn(2, 24000 * 2 + 77, generator=torch.Generator().manual_seed(1))
    whole = front(audio, torch.tensor([audio.shape[1], 30001]))
    monkeypatch.setattr(frontend, "BLOCK_FRAMES", 7)
    torch.testing.assert_close(front(audio, torch.tensor([audio.shape[1], 30001])), whole, atol=1e-5, rtol=0)


def test_padded_batch_gives_each_clip_its_own_features_and_states():
    torch.manual_seed(0)
    model = MERTModel(_config()).eval()
    gen = torch.Generator().manual_seed(2)
    clips = [torch.randn(n, generator=gen) for n in (24000, 15111, 4000)]
    batch = torch.zeros(3, 24000)
    mask = torch.zeros(3, 24000, dtype=torch.bool)
    for i, clip in enumerate(clips):
        batch[i, : clip.numel()] = clip
        batch[i, clip.numel() :] = 5.0  # padding must not leak, whatever its values
        mask[i, : clip.numel()] = True
    with torch.no_grad():
        out = model(batch, attention_mask=mask, output_hidden_states=True)
        for i, clip in enumerate(clips):
            alone = model(clip[None], output_hidden_states=True)
            n = alone.last_hidden_state.shape[1]
            for got, want in zip(out.hidden_states, alone.hidden_states, strict=True):
                torch.testing.assert_close(got[i, :n], want[0], atol=2e-5, rtol=1e-4)
            assert not out.last_hidden_state[i, n:].any()


def test_extraction_in_chunks_equals_the_forward():
    torch.manual_seed(1)
    model = MERTModel(_config()).eval()
    audio = torch.randn(24000 * 3 + 511, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        want = torch.stack(model(audio[None], output_hidden_states=True).hidden_states)[:, 0]
    got = extract(model, audio, chunk_s=0.5)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_gradients_reach_the_band_weights_and_the_audio():
    cfg = _config()
    model = MERTModel(cfg)
    audio = torch.randn(2, 12000, requires_grad=True)
    model(audio).last_hidden_state.square().mean().backward()
    front = model.feature_extractor
    assert front.weight.grad is not None and front.weight.grad.abs().sum() > 0
    assert front.bias.grad is not None and front.bias.grad.abs().sum() > 0
    assert audio.grad is not None and torch.isfinite(audio.grad).all() and audio.grad.abs().sum() > 0


def test_a_bfloat16_model_computes_the_spectrum_in_float32():
    torch.manual_seed(3)
    model = MERTModel(_config()).eval()
    audio = torch.randn(2, 16000, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        want = model.feature_extractor(audio, None)
        got = model.to(torch.bfloat16).feature_extractor(audio.bfloat16(), None)
    assert got.dtype == torch.bfloat16
    # bf16 keeps 8 bits of mantissa: the features (of order 1) agree to about 1%
    torch.testing.assert_close(got.float(), want, atol=0.05, rtol=0.02)


def test_save_and_load_keep_the_front_end(tmp_path):
    torch.manual_seed(2)
    model = MERTModel(_config(n_fft=1536)).eval()
    with torch.no_grad():
        model.feature_extractor.weight.uniform_(0.5, 1.5)
    model.save_pretrained(tmp_path)
    hf = MERTConfig.from_json_file(tmp_path / "config.json")
    assert (hf.feature_extractor_type, hf.mel_n_fft, hf.conv_dim) == ("logmel", 1536, (128,))
    loaded = MERTModel.from_pretrained(tmp_path)
    audio = torch.randn(1, 20000)
    with torch.no_grad():
        torch.testing.assert_close(loaded(audio).last_hidden_state, model(audio).last_hidden_state)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"feature_extractor_type": "mfcc"}, "feature_extractor_type must be 'conv' or 'logmel'"),
        ({"mel_n_fft": 256}, "mel_n_fft"),
        ({"conv_dim": (64, 64), "conv_kernel": (10, 40), "conv_stride": (5, 64)}, "one conv_dim entry"),
    ],
)
def test_bad_front_end_settings_are_named(overrides, message):
    base = _config().to_dict()
    with pytest.raises(ValueError, match=message):
        MERTConfig(**{**base, **overrides})
