"""The clip term: InfoNCE of matching each clip's first half to its second half, against a float64 reference with
its gradient, its edge cases, its place in the pre-training loss and its config field."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

from mert_fast.model.config import PRESETS
from mert_fast.model.mert import MERTModel
from mert_fast.testing import rel_error
from mert_fast.train.config import TrainConfig
from mert_fast.train.masking import compute_mask
from mert_fast.train.objectives.mert import (
    CLIP_TEMPERATURE,
    MERTPretrainer,
    clip_infonce,
    masked_student,
    partner_infonce,
)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _head(hidden: int, out: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, out))


def _reference(hidden: torch.Tensor, head: nn.Module, temperature: float) -> tuple[torch.Tensor, float]:
    """Float64, written out: pooled halves, cosine similarities, log-softmax over rows and over columns."""
    h = hidden.double()
    head64 = nn.Sequential(*(m.double() if isinstance(m, nn.Linear) else m for m in _copy(head)))
    half = h.shape[1] // 2
    a = head64(h[:, :half].sum(1) / half)
    b = head64(h[:, half : 2 * half].sum(1) / half)
    sim = (a @ b.T) / (a.norm(dim=1)[:, None] * b.norm(dim=1)[None, :]) / temperature
    n = sim.shape[0]
    rows = sim.diagonal() - torch.logsumexp(sim, dim=1)
    cols = sim.diagonal() - torch.logsumexp(sim, dim=0)
    loss = -(rows.sum() + cols.sum()) / (2 * n)
    hits = sum(int(sim[i].argmax()) == i for i in range(n)) + sum(int(sim[:, i].argmax()) == i for i in range(n))
    return loss, hits / (2 * n)


def _copy(head: nn.Module) -> nn.Module:
    clone = _head(head[0].in_features, head[2].out_features, 0)
    clone.load_state_dict(head.state_dict())
    return clone


@pytest.mark.parametrize(("batch", "frames"), [(2, 2), (5, 9), (8, 31)])
def test_clip_infonce_matches_a_float64_reference_with_its_gradient(batch, frames):
    head = _head(12, 7, seed=batch)
    hidden = torch.randn(batch, frames, 12, generator=_gen(frames), requires_grad=True)
    loss, acc = clip_infonce(hidden, head, 0.1)
    hidden64 = hidden.detach().double().requires_grad_(True)
    ref, ref_acc = _reference(hidden64, head, 0.1)
    assert float(loss.detach()) == pytest.approx(float(ref.detach()), rel=1e-5)
    assert acc == ref_acc
    loss.backward()
    ref.backward()
    assert rel_error(hidden.grad.double(), hidden64.grad) < 1e-4
    if frames % 2:  # the odd last frame is in neither half
        assert torch.all(hidden.grad[:, -1] == 0)


def test_clip_infonce_tells_clips_apart_by_what_their_halves_share():
    head = nn.Identity()
    signature = torch.randn(6, 1, 16, generator=_gen(1))
    hidden = signature + 0.05 * torch.randn(6, 10, 16, generator=_gen(2))
    loss, acc = clip_infonce(hidden, head, CLIP_TEMPERATURE)
    assert acc == 1.0 and float(loss) < 0.1
    # second halves of other clips: no half finds its own clip
    swapped = hidden.clone()
    swapped[:, 5:] = torch.roll(hidden[:, 5:], 1, dims=0)
    loss2, acc2 = clip_infonce(swapped, head, CLIP_TEMPERATURE)
    assert acc2 == 0.0 and float(loss2) > math.log(6)


def _partner_reference(hidden: torch.Tensor, head: nn.Module, temperature: float) -> tuple[torch.Tensor, float]:
    """Float64, written out: each clip's mean, cosine similarities to every other clip, -log softmax at the partner
    (clip 2j's is 2j + 1 and back)."""
    head64 = nn.Sequential(*(m.double() if isinstance(m, nn.Linear) else m for m in _copy(head)))
    z = head64(hidden.double().mean(1))
    n = z.shape[0]
    losses, hits = [], 0
    for i in range(n):
        partner = i + 1 if i % 2 == 0 else i - 1
        others = [j for j in range(n) if j != i]
        sims = torch.stack([z[i] @ z[j] / (z[i].norm() * z[j].norm()) / temperature for j in others])
        losses.append(torch.logsumexp(sims, 0) - sims[others.index(partner)])
        hits += others[int(sims.argmax())] == partner
    return torch.stack(losses).mean(), hits / n


@pytest.mark.parametrize(("batch", "frames"), [(2, 1), (6, 7), (8, 30)])
def test_partner_infonce_matches_a_float64_reference_with_its_gradient(batch, frames):
    head = _head(12, 7, seed=batch + 1)
    hidden = torch.randn(batch, frames, 12, generator=_gen(frames + 3), requires_grad=True)
    loss, acc = partner_infonce(hidden, head, 0.1)
    hidden64 = hidden.detach().double().requires_grad_(True)
    ref, ref_acc = _partner_reference(hidden64, head, 0.1)
    assert float(loss.detach()) == pytest.approx(float(ref.detach()), rel=1e-5) and acc == ref_acc
    loss.backward()
    ref.backward()
    assert rel_error(hidden.grad.double(), hidden64.grad) < 1e-4


def test_partner_infonce_finds_what_a_pair_shares():
    head = nn.Identity()
    shared = torch.randn(4, 1, 16, generator=_gen(8)).repeat_interleave(2, dim=0)  # clips 2j and 2j + 1 alike
    hidden = shared + 0.05 * torch.randn(8, 9, 16, generator=_gen(9))
    loss, acc = partner_infonce(hidden, head, CLIP_TEMPERATURE)
    assert acc == 1.0 and float(loss) < 0.1
    shuffled = hidden[torch.tensor([0, 2, 1, 4, 3, 6, 5, 7])]  # every clip's partner now shares nothing with it
    loss2, acc2 = partner_infonce(shuffled, head, CLIP_TEMPERATURE)
    assert acc2 == 0.0 and float(loss2) > math.log(7)
    with pytest.raises(ValueError, match="needs clips in pairs; got a batch of 3"):
        partner_infonce(torch.randn(3, 4, 16), head, 0.1)


def test_clip_infonce_edge_cases():
    head = _head(4, 3, 0)
    one = torch.randn(1, 6, 4, generator=_gen(3), requires_grad=True)
    loss, acc = clip_infonce(one, head, 0.1)
    assert float(loss.detach()) == 0.0 and math.isnan(acc)  # nothing to tell apart
    loss.backward()
    assert torch.all(one.grad == 0)
    with pytest.raises(ValueError, match="at least 2 frames; got 1"):
        clip_infonce(torch.randn(3, 1, 4), head, 0.1)


@pytest.mark.parametrize("views", ["halves", "renders"])
def test_clip_term_adds_weight_times_infonce_times_masked_frames(views):
    config = dataclasses.replace(PRESETS["tiny"], hidden_dropout=0.0, attention_dropout=0.0, layerdrop=0.0,
                                 feat_proj_dropout=0.0)  # fmt: skip
    length, batch = 8123, 4
    n = config.num_frames(length)
    audio = 0.1 * torch.randn(batch, length, generator=_gen(4))
    codes = torch.randint(9, (batch, n, 2), generator=_gen(5))
    cqt = torch.rand(batch, n, 6, generator=_gen(6))
    mask = compute_mask(batch, n, mask_prob=0.8, span=5, generator=_gen(7))
    modules = {}
    for dim in (None, 16):
        torch.manual_seed(0)
        modules[dim] = MERTPretrainer(MERTModel(config), n_codebooks=2, codebook_size=9, cqt_bins=6, clip_dim=dim,
                                      clip_weight=2.5, clip_views=views)  # fmt: skip
    with_clip, plain = modules[16], modules[None]
    plain.load_state_dict({k: v for k, v in with_clip.state_dict().items() if not k.startswith("clip_head")})
    out, base = with_clip(audio, codes, cqt, mask), plain(audio, codes, cqt, mask)
    assert base.clip_loss is None
    with torch.no_grad():  # the student's output on the masked clips, as the module computes it (no dropout here)
        hidden = masked_student(with_clip.model, with_clip.model.extract_features(audio)[0], mask, None, 0.1)[1]
        reference = _partner_reference if views == "renders" else _reference
        ref, ref_acc = reference(hidden, with_clip.clip_head, CLIP_TEMPERATURE)
    assert float(out.clip_loss) == pytest.approx(float(ref), rel=1e-5) and out.clip_acc == ref_acc
    assert float(out.loss.detach()) == pytest.approx(float(base.loss.detach()) + 2.5 * float(ref) * out.n_masked, 1e-5)
    out.loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in with_clip.clip_head.parameters())


def test_clip_weight_needs_two_clips_and_a_codebook_objective():
    with pytest.raises(ValueError, match="clip_weight: the clip term needs batch_size >= 2; got 1"):
        TrainConfig(clip_weight=1.0, batch_size=1)
    with pytest.raises(ValueError, match="clip_weight: the data2vec objective has no such term"):
        TrainConfig(objective="data2vec", clip_weight=1.0)
    assert TrainConfig(objective="muq", clip_weight=0.5).clip_weight == 0.5
    with pytest.raises(ValueError, match="clip_views must be one of halves, renders; got 'pairs'"):
        TrainConfig(clip_views="pairs")
    with pytest.raises(ValueError, match="clip_views: 'renders' matches the renders paired_renders draws"):
        TrainConfig(clip_views="renders", clip_weight=1.0)
    assert TrainConfig(clip_views="renders", paired_renders=True, clip_weight=1.0).clip_views == "renders"
