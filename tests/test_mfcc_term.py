"""The timbre term: MFCC targets at the student's hop against librosa, and the MFCC head's loss against a float64
reference (masked frames only, invariant to each coefficient's scale), its errors and its config field."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from mert_fast.model.config import PRESETS
from mert_fast.model.mert import MERTModel
from mert_fast.model.teachers import CQTTeacher, MFCCTeacher, align_to_frames
from mert_fast.model.teachers.cqt import mert_cqt_bins
from mert_fast.testing import rel_error
from mert_fast.train.config import TrainConfig
from mert_fast.train.masking import compute_mask
from mert_fast.train.objectives.mert import MERTPretrainer, step_inputs


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _music_then_quiet(sample_rate: int, length: int, seed: int) -> torch.Tensor:
    """Coloured noise over a decaying tone, then a tail 120 dB down: the clip's top_db floor is in play."""
    gen = _gen(seed)
    t = torch.arange(length, dtype=torch.float64) / sample_rate
    x = torch.randn(length, generator=gen, dtype=torch.float64)
    x = 0.05 * (x + 0.8 * torch.roll(x, 1)) + 0.3 * torch.sin(2 * torch.pi * 330.0 * t) * torch.exp(-2 * t)
    x[length * 2 // 3 :] *= 1e-6
    return x


@pytest.mark.parametrize(("sample_rate", "extra"), [(24000, 0), (24000, 217), (16000, 131)])
def test_mfcc_teacher_matches_librosa_at_the_student_hop(sample_rate, extra):
    """MFCCs at hop 320 (75 a second at 24 kHz: not the k-means teacher's 50 Hz): librosa's mel power, dB floored
    80 dB under the clip's peak, the clip's mean level subtracted, DCT-II ortho, the first 13."""
    librosa = pytest.importorskip("librosa")
    scipy_fft = pytest.importorskip("scipy.fft")
    teacher = MFCCTeacher(sample_rate, 320)
    length = sample_rate + extra
    audio = torch.stack([_music_then_quiet(sample_rate, length, seed) for seed in (1, 2)])
    ours = teacher(audio)
    assert ours.shape == (2, length // 320 + 1, 13) and ours.dtype == torch.float32
    s = teacher.cepstra.settings
    assert s["hop_length"] == 320 and s["label_rate"] == sample_rate / 320
    for b in range(2):
        mel = librosa.feature.melspectrogram(
            y=audio[b].numpy(), sr=sample_rate, n_fft=s["n_fft"], win_length=s["win_length"], hop_length=320,
            window="hann", center=True, pad_mode="constant", power=2.0, n_mels=23, fmin=20.0, fmax=sample_rate / 2,
            htk=True, norm=None,
        )  # fmt: skip
        db = librosa.power_to_db(mel, ref=np.max, top_db=80.0)
        assert (db == -80.0).mean() > 0.1  # the quiet tail sits on the floor
        db = db - db.mean()
        ref = scipy_fft.dct(db, type=2, norm="ortho", axis=0)[:13].T
        assert rel_error(ours[b].double(), torch.from_numpy(ref)) < 1e-5


@pytest.mark.parametrize("preset", ["tiny", "mert-v1-95m"])
@pytest.mark.parametrize("extra", [0, 1, 319])
def test_mfcc_targets_line_up_with_the_cqt_and_the_student_frames(preset, extra):
    config = PRESETS[preset]
    length = 2 * config.sample_rate + extra
    audio = 0.1 * torch.randn(1, length, generator=_gen(3))
    mfcc = MFCCTeacher(config.sample_rate, config.hop_length)(audio)
    cqt = CQTTeacher(config.sample_rate, config.hop_length, mert_cqt_bins(config.sample_rate))(audio)
    n = config.num_frames(length)
    assert mfcc.shape[1] == cqt.shape[1] >= n
    assert align_to_frames(mfcc, n).shape == (1, n, 13)


def test_step_inputs_carry_the_clean_clips_mfccs():
    """The targets are the clean clip's, though the student hears the mixture."""
    model_cfg = PRESETS["tiny"]
    cfg = TrainConfig(mixture_prob=1.0, mfcc_weight=1.0)
    audio = 0.1 * torch.randn(3, 2 * model_cfg.sample_rate, generator=_gen(4))
    teacher = MFCCTeacher(model_cfg.sample_rate, model_cfg.hop_length)
    batch = step_inputs(audio, model_cfg=model_cfg, cfg=cfg, acoustic_teacher=None, cqt_teacher=None, micro_step=0,
                        rank=0, mfcc_teacher=teacher)  # fmt: skip
    n = model_cfg.num_frames(audio.shape[1])
    torch.testing.assert_close(batch.mfcc, align_to_frames(teacher(audio), n), rtol=0, atol=0)
    assert not torch.equal(batch.audio, audio)  # mixed
    assert not torch.allclose(align_to_frames(teacher(batch.audio), n), batch.mfcc)


def _pretrainer(mfcc_dims: int | None, weight: float = 3.0) -> MERTPretrainer:
    config = dataclasses.replace(PRESETS["tiny"], hidden_dropout=0.0, attention_dropout=0.0, layerdrop=0.0,
                                 feat_proj_dropout=0.0)  # fmt: skip
    torch.manual_seed(0)
    return MERTPretrainer(MERTModel(config), n_codebooks=2, codebook_size=11, cqt_bins=12, mfcc_dims=mfcc_dims,
                          mfcc_weight=weight)  # fmt: skip


def _inputs(seed: int, batch: int = 3, length: int = 7919):
    n = PRESETS["tiny"].num_frames(length)
    audio = 0.1 * torch.randn(batch, length, generator=_gen(seed))
    codes = torch.randint(11, (batch, n, 2), generator=_gen(seed + 1))
    cqt = torch.rand(batch, n, 12, generator=_gen(seed + 2))
    # coefficients of very different scales and offsets, as cepstra in dB are
    scale = torch.tensor([40.0, 10.0, 5.0, 1.0, 0.1])
    mfcc = torch.randn(batch, n, 5, generator=_gen(seed + 3)) * scale - 20.0
    mask = compute_mask(batch, n, mask_prob=0.8, span=5, generator=_gen(seed + 4))
    return audio, codes, cqt, mask, mfcc


@pytest.mark.parametrize("seed", [0, 10])
def test_mfcc_term_matches_a_float64_reference(seed):
    audio, codes, cqt, mask, mfcc = _inputs(seed)
    module = _pretrainer(5)
    seen = {}
    module.mfcc_head.register_forward_hook(lambda mod, args, out: seen.update(h=args[0], pred=out))
    out = module(audio, codes, cqt, mask, mfcc=mfcc)
    target = mfcc[mask].double().numpy()
    z = (target - target.mean(0)) / target.std(0)
    pred = seen["pred"].detach().double().numpy()
    ref = float(((pred - z) ** 2).mean())
    assert float(out.mfcc_mse) == pytest.approx(ref, rel=1e-5)
    assert 0.3 < ref < 5  # a fresh head predicts standardised targets badly, not absurdly
    # the same parameters without the term: the loss differs by exactly weight * MSE * masked frames
    plain = _pretrainer(None)
    plain.load_state_dict({k: v for k, v in module.state_dict().items() if not k.startswith("mfcc_head")})
    base = plain(audio, codes, cqt, mask)
    assert plain.mfcc_head is None and base.mfcc_mse is None
    expected = float(base.loss.detach()) + 3.0 * ref * out.n_masked
    assert float(out.loss) == pytest.approx(expected, rel=1e-5)
    # the gradient of the head is the float64 reference's
    out.loss.backward()
    h = seen["h"].detach().double()
    grad_pred = 3.0 * out.n_masked * 2 * (torch.from_numpy(pred) - torch.from_numpy(z)) / pred.size
    assert rel_error(module.mfcc_head.weight.grad.double(), grad_pred.T @ h) < 1e-4
    assert module.model.feature_projection.projection.weight.grad is not None


def test_mfcc_term_sees_masked_frames_only_and_no_coefficient_scale():
    audio, codes, cqt, mask, mfcc = _inputs(3)
    module = _pretrainer(5)
    out = module(audio, codes, cqt, mask, mfcc=mfcc)
    unmasked = mfcc.clone()
    unmasked[~mask] += 100.0 * torch.randn(int((~mask).sum()), 5, generator=_gen(9))
    assert torch.equal(module(audio, codes, cqt, mask, mfcc=unmasked).mfcc_mse, out.mfcc_mse)
    # a positive scale and an offset per coefficient: the standardised targets, so the term, stay put
    rescaled = mfcc * torch.tensor([0.01, 3.0, 7.0, 100.0, 0.5]) + torch.tensor([5.0, -3.0, 0.0, 1e3, 2.0])
    assert float(module(audio, codes, cqt, mask, mfcc=rescaled).mfcc_mse) == pytest.approx(float(out.mfcc_mse), 1e-4)
    masked = mfcc.clone()
    masked[mask] = torch.flip(masked[mask], [0])
    assert float(module(audio, codes, cqt, mask, mfcc=masked).mfcc_mse) != pytest.approx(float(out.mfcc_mse), 1e-3)


def test_mfcc_targets_and_head_must_agree():
    audio, codes, cqt, mask, mfcc = _inputs(5)
    with pytest.raises(ValueError, match="mfcc: give MFCC targets exactly when"):
        _pretrainer(None)(audio, codes, cqt, mask, mfcc=mfcc)
    module = _pretrainer(5)
    with pytest.raises(ValueError, match="mfcc: give MFCC targets exactly when"):
        module(audio, codes, cqt, mask)
    with pytest.raises(ValueError, match="expected 5 coefficients a frame; got 4"):
        module(audio, codes, cqt, mask, mfcc=mfcc[..., :4])
    with pytest.raises(ValueError, match=r"frames: .* mfcc \(3, 23\)"):
        module(audio, codes, cqt, mask, mfcc=mfcc[:, 1:])


@pytest.mark.parametrize("name", ["mfcc_weight", "clip_weight"])
@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_term_weights_must_be_finite_and_non_negative(name, bad):
    with pytest.raises(ValueError, match=f"{name} must be a finite number >= 0"):
        TrainConfig(**{name: bad})


def test_mfcc_weight_needs_a_codebook_objective():
    with pytest.raises(ValueError, match="mfcc_weight: the data2vec objective has no such term"):
        TrainConfig(objective="data2vec", mfcc_weight=1.0)
    assert TrainConfig(objective="muq", mfcc_weight=2.5).mfcc_weight == 2.5
    assert TrainConfig(objective="data2vec").mfcc_weight == 0.0
