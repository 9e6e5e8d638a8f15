"""Learnability: the student, through the pre-training head and loss, learns codes that its input determines.

Pure tones stand in for a teacher whose codes are known: each 40 ms label is one of ``K`` pitches a semitone apart,
so a frame's code is what it sounds like. With no masking and every frame scored, the student must learn the codes
of the frames it sees (far below the prior, the CE of the best constant guess); with MERT's masking and notes held
for several labels, it must predict masked frames from their context, below the prior and near the
copy-the-nearest-unmasked-frame baseline. A plumbing or optimisation bug that keeps a run at the code prior fails
here in seconds; a run of the real recipe that stays at the prior is then about its teacher and data.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from mert_fast.model.config import MERTConfig
from mert_fast.model.mert import MERTModel
from mert_fast.train.masking import compute_mask, copy_baseline_correct
from mert_fast.train.objectives.mert import MERTPretrainer

K = 8
SECONDS = 2.0


def _config() -> MERTConfig:
    cfg = MERTConfig.from_name("mert-v1-95m").shrunk()
    return dataclasses.replace(cfg, hidden_dropout=0.0, attention_dropout=0.0, layerdrop=0.0)


def _tones(cfg: MERTConfig, batch: int, hold: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``(audio (B, L), codes (B, T, 1))``: 25 Hz labels, each held for ``hold`` labels, as sine tones of random
    level plus faint noise; codes repeated to the student's 75 Hz frames."""
    seg = cfg.sample_rate // 25
    n_labels = int(SECONDS * 25)
    labels = torch.randint(K, (batch, -(-n_labels // hold)), generator=gen).repeat_interleave(hold, 1)[:, :n_labels]
    freq = (220.0 * 2 ** (labels.double() / 12)).repeat_interleave(seg, 1)
    phase = 2 * math.pi * torch.cumsum(freq / cfg.sample_rate, 1)
    level = 10 ** (-torch.rand(batch, 1, generator=gen, dtype=torch.float64))
    audio = level * torch.sin(phase) + 0.01 * torch.randn(phase.shape, generator=gen, dtype=torch.float64)
    n_frames = cfg.num_frames(audio.shape[1])
    codes = labels.repeat_interleave(round(cfg.frame_rate / 25), 1)[:, :n_frames, None]
    return audio.float(), codes


def _train(masked: bool, hold: int, steps: int) -> tuple[float, float, float]:
    """Train a fresh tiny student for ``steps``; returns held-out ``(CE per scored frame, accuracy, copy accuracy)``."""
    torch.manual_seed(0)
    cfg = _config()
    module = MERTPretrainer(MERTModel(cfg), n_codebooks=1, codebook_size=K, cqt_bins=None)
    opt = torch.optim.AdamW(module.parameters(), lr=2e-3, betas=(0.9, 0.98), eps=1e-6)
    gen = torch.Generator().manual_seed(1)

    def batch(n: int):
        audio, codes = _tones(cfg, n, hold, gen)
        if masked:
            mask = compute_mask(n, codes.shape[1], mask_prob=0.8, span=5, generator=gen)
            return audio, codes, mask, mask
        none = torch.zeros(codes.shape[:2], dtype=torch.bool)
        return audio, codes, none, ~none  # nothing masked, every frame scored

    held_out = batch(16)
    for _ in range(steps):
        audio, codes, mask, scored = batch(4)
        out = module(audio, codes, None, mask, scored=scored)
        opt.zero_grad()
        (out.loss / out.n_masked).backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 10.0)
        opt.step()
    module.eval()
    with torch.no_grad():
        audio, codes, mask, scored = held_out
        out = module(audio, codes, None, mask, scored=scored)
    copy = copy_baseline_correct(codes, mask, scored)
    assert torch.equal(out.copy_correct, copy)
    return float(out.ce_sum) / out.n_masked, float(out.correct[0]) / out.n_masked, float(copy[0]) / out.n_masked


@pytest.mark.slow
def test_the_student_learns_the_codes_of_the_frames_it_sees():
    ce, acc, _ = _train(masked=False, hold=1, steps=120)  # measured: CE 0.13 (6% of the prior), accuracy 0.99
    prior = math.log(K)  # uniform codes: the best constant guess
    assert ce < 0.2 * prior, f"visible-frame CE {ce:.3f} vs prior {prior:.3f}"
    assert acc > 0.9


@pytest.mark.slow
def test_the_student_predicts_masked_codes_from_their_context():
    ce, acc, copy = _train(masked=True, hold=10, steps=250)  # measured: CE 0.59 (28%), accuracy 0.83, copy 0.95
    prior = math.log(K)
    assert ce < 0.5 * prior, f"masked CE {ce:.3f} vs prior {prior:.3f}"
    assert acc > 0.7, f"masked accuracy {acc:.3f}, copy baseline {copy:.3f}"
