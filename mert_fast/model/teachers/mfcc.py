"""A timbre teacher: the cepstral envelope of the clean clip, frame by frame, at the student's hop.

MERT's CQT target is a linear-magnitude spectrum at 48 bins per octave: its error is dominated by the loud
partials, so it teaches pitch and little of the spectral envelope that tells a flute from a violin. The MFCCs are
that envelope: the first ``n_mfcc`` coefficients (``c0`` kept) of the DCT of the log-mel energies, exactly the
cepstra of :class:`~mert_fast.model.teachers.kmeans.KMeansTeacher` (25 ms Hann window, 23 HTK-mel filters from
20 Hz, dB floored 80 dB under the clip's loudest bin and centred on the clip's mean level, so ``c0`` is the frame's
level against the clip's), without deltas, computed at the student's hop so that frame ``t`` lines up with the CQT's.
"""

from __future__ import annotations

import torch
from torch import nn

from mert_fast._checks import check_int
from mert_fast.model.teachers.kmeans import DEFAULT_MELS, KMeansTeacher
from mert_fast.model.teachers.mel_rvq import TOP_DB

__all__ = ["MFCCTeacher"]


class MFCCTeacher(nn.Module):
    """Audio ``(B, L)`` -> MFCCs ``(B, L // hop_length + 1, n_mfcc)`` float32 in dB (see the module docstring)."""

    def __init__(self, sample_rate: int, hop_length: int, n_mfcc: int = 13) -> None:
        super().__init__()
        n_mfcc = check_int("n_mfcc", n_mfcc, min=1, max=DEFAULT_MELS["mfcc"])
        self.cepstra = KMeansTeacher(
            sample_rate, feature="mfcc", n_clusters=1, n_mfcc=n_mfcc, top_db=TOP_DB, centre=True, hop_length=hop_length
        )
        self.sample_rate = self.cepstra.sample_rate
        self.hop_length = self.cepstra.hop_length
        self.n_mfcc = n_mfcc

    @torch.no_grad()
    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return self.cepstra.features(audio, normalize=False)[..., : self.n_mfcc]
