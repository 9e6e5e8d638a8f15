"""MERT's musical teacher: the constant-Q transform of the clean clip (nnAudio CQT1992v2 semantics)."""

from __future__ import annotations

import torch
from torch import nn

from mert_fast.ops.cqt import CQT
from mert_fast.ops.reference import (
    MERT_CQT_BINS_PER_OCTAVE,
    MERT_CQT_FMIN,
    MERT_CQT_HOP_LENGTH,
    MERT_CQT_N_BINS,
    MERT_CQT_SAMPLE_RATE,
)


def mert_cqt_bins(sample_rate: float) -> int:
    """336 bins (7 octaves from 32.7 Hz, 48 per octave) at 24 kHz; whole octaves fewer where the top bin would
    pass Nyquist (16 kHz presets)."""
    bins = MERT_CQT_N_BINS
    while MERT_CQT_FMIN * 2 ** ((bins - 1) / MERT_CQT_BINS_PER_OCTAVE) > sample_rate / 2:
        bins -= MERT_CQT_BINS_PER_OCTAVE
    return bins


class CQTTeacher(nn.Module):
    """Linear-magnitude CQT targets, frames first: audio ``(B, L)`` -> ``(B, L // hop + 1, n_bins)`` float32.

    MERT's configuration: hop 320 at 24 kHz (75 Hz), fmin 32.7 Hz, 336 bins, 48 per octave, zero padding. At
    other sample rates the hop is the student's (e.g. 320 at 16 kHz: 50 Hz) and the bins stop below Nyquist.
    """

    def __init__(
        self,
        sample_rate: int = MERT_CQT_SAMPLE_RATE,
        hop_length: int = MERT_CQT_HOP_LENGTH,
        n_bins: int = MERT_CQT_N_BINS,
        bins_per_octave: int = MERT_CQT_BINS_PER_OCTAVE,
    ):
        super().__init__()
        self.cqt = CQT(
            sample_rate=sample_rate,
            hop_length=hop_length,
            fmin=MERT_CQT_FMIN,
            n_bins=n_bins,
            bins_per_octave=bins_per_octave,
            pad_mode="constant",
            output="magnitude",
        )
        self.n_bins = n_bins

    @torch.no_grad()
    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return self.cqt(audio.float()).transpose(1, 2)
