"""Pre-training pieces: span masks, the in-batch mixture, frame alignment and the MERT objective."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from mert_fast.model.config import PRESETS
from mert_fast.model.mert import MERTModel
from mert_fast.model.teachers import CQTTeacher, align_to_frames
from mert_fast.testing import rel_error
from mert_fast.train.masking import compute_mask, in_batch_mixture
from mert_fast.train.objectives.mert import MERTPretrainer


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_mask_statistics_and_determinism():
    masks = compute_mask(64, 374, mask_prob=0.8, span=5, generator=_gen(1))
    again = compute_mask(64, 374, mask_prob=0.8, span=5, generator=_gen(1))
    other = compute_mask(64, 374, mask_prob=0.8, span=5, generator=_gen(2))
    assert torch.equal(masks, again) and not torch.equal(masks, other)
    counts = masks.sum(1)
    assert torch.all(counts == counts[0])  # every clip masks the same number of frames
    # ~60 spans of 5 among 370 starts, overlaps allowed: 1 - (1 - 5/370)^60 ~ 0.56 of the frames, less after
    # equalising to the batch minimum
    frac = counts[0].item() / 374
    assert 0.40 < frac < 0.62, frac
    # a single clip keeps its spans whole: every masked run is one span or overlapping spans, never shorter
    single = compute_mask(1, 374, mask_prob=0.8, span=5, generator=_gen(4))[0].int()
    edges = torch.diff(torch.cat([torch.tensor([0]), single, torch.tensor([0])]))
    starts, ends = (edges == 1).nonzero().squeeze(1), (edges == -1).nonzero().squeeze(1)
    assert len(starts) > 10 and int((ends - starts).min()) >= 5


def test_mask_edge_cases():
    assert not compute_mask(2, 10, mask_prob=0.0, span=5, generator=_gen()).any()
    short = compute_mask(3, 4, mask_prob=0.8, span=5, generator=_gen())
    assert short.shape == (3, 4) and short.all()  # the span is cut to the clip
    with pytest.raises(ValueError, match="mask_prob"):
        compute_mask(1, 10, mask_prob=1.5, span=5, generator=_gen())


def test_in_batch_mixture_adds_segments_of_other_clips():
    sr = 1000
    # each clip a distinct constant; no sum of up to 3 other clips' constants equals a clip's own
    levels = [1.0, 10.0, 100.0, 1000.0]
    clean = torch.stack([torch.full((4000,), v) for v in levels])
    mixed = in_batch_mixture(clean, prob=1.0, max_segments=3, seconds=(0.5, 1.0), sample_rate=sr, generator=_gen(3))
    assert torch.equal(clean, torch.stack([torch.full((4000,), v) for v in levels]))  # the input stays clean
    for i, own in enumerate(levels):
        added = mixed[i] - clean[i]
        changed = added != 0
        assert 500 <= changed.sum() <= 3 * 1000  # 1-3 segments of 0.5-1 s
        values = set(added[changed].tolist())
        assert own not in values and min(values) >= 1.0  # segments come from the other clips
    same = in_batch_mixture(clean, prob=1.0, max_segments=3, seconds=(0.5, 1.0), sample_rate=sr, generator=_gen(3))
    assert torch.equal(mixed, same)
    none = in_batch_mixture(clean, prob=0.0, max_segments=3, seconds=(0.5, 1.0), sample_rate=sr, generator=_gen(3))
    assert torch.equal(none, clean)


@pytest.mark.parametrize("extra", [0, 1, 79, 80, 159, 160, 239, 240, 319])
def test_cqt_teacher_covers_the_student_frames(extra):
    config = PRESETS["mert-v1-95m"]
    length = 3 * 24000 + extra
    n = config.num_frames(length)
    cqt = CQTTeacher()(torch.zeros(1, length))
    assert cqt.shape[1] == length // 320 + 1 >= n
    assert align_to_frames(cqt, n).shape == (1, n, 336)


def test_align_repeats_and_truncates():
    labels = torch.arange(10).view(1, 10, 1)
    out = align_to_frames(labels, 28, repeat=3)
    assert out.squeeze().tolist() == [i // 3 for i in range(28)]
    with pytest.raises(ValueError, match="fewer"):
        align_to_frames(labels, 31, repeat=3)


def _pretrainer(feature_grad_mult: float = 0.1) -> MERTPretrainer:
    config = dataclasses.replace(PRESETS["tiny"], hidden_dropout=0.0, attention_dropout=0.0, layerdrop=0.0,
                                 feat_proj_dropout=0.0)  # fmt: skip
    torch.manual_seed(0)
    return MERTPretrainer(MERTModel(config), n_codebooks=3, codebook_size=17, cqt_bins=12,
                          feature_grad_mult=feature_grad_mult)  # fmt: skip


def _inputs(batch: int = 2, length: int = 8000):
    audio = 0.1 * torch.randn(batch, length, generator=_gen(5))
    n = PRESETS["tiny"].num_frames(length)
    codes = torch.randint(17, (batch, n, 3), generator=_gen(6))
    cqt = torch.rand(batch, n, 12, generator=_gen(7))
    mask = compute_mask(batch, n, mask_prob=0.8, span=5, generator=_gen(8))
    return audio, codes, cqt, mask


def test_objective_is_finite_and_uses_masked_frames_only():
    module = _pretrainer()
    audio, codes, cqt, mask = _inputs()
    out = module(audio, codes, cqt, mask)
    assert torch.isfinite(out.loss) and out.n_masked == int(mask.sum())
    assert out.correct.shape == (3,) and int(out.correct.max()) <= out.n_masked
    codes2, cqt2 = codes.clone(), cqt.clone()
    codes2[~mask] = (codes2[~mask] + 1) % 17
    cqt2[~mask] += 5.0
    assert torch.equal(module(audio, codes2, cqt2, mask).loss, out.loss)
    codes2[mask] = (codes2[mask] + 1) % 17
    assert not torch.equal(module(audio, codes2, cqt2, mask).loss, out.loss)
    out.loss.backward()
    for name, p in module.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_feature_grad_mult_scales_the_conv_gradient_only():
    grads = {}
    for mult in (1.0, 0.1):
        module = _pretrainer(mult)
        module(*_inputs()).loss.backward()
        grads[mult] = {n: p.grad.clone() for n, p in module.named_parameters()}
    conv = "model.feature_extractor.conv_layers.3.conv.weight"
    assert rel_error(grads[0.1][conv], 0.1 * grads[1.0][conv]) < 1e-5
    head = "final_proj.weight"
    torch.testing.assert_close(grads[0.1][head], grads[1.0][head])


def test_objective_rejects_misaligned_targets():
    module = _pretrainer()
    audio, codes, cqt, mask = _inputs()
    with pytest.raises(ValueError, match="frames"):
        module(audio, codes[:, :-1], cqt, mask)
