"""The log-mel front end: a fixed spectrogram in place of the learned conv feature encoder.

MERT and HuBERT learn their front end from the waveform: seven strided convs whose first output frame sees 400
samples. At the scale of a CPU run (32 channels, a few hundred steps) that stack does not learn the spectral detail
the Mel-RVQ codes are made of, and the student stays at the codes' prior. ``feature_extractor_type="logmel"``
replaces it by what MuQ feeds its encoder: a log-mel spectrogram, here with the teacher's resolution (Hann window of
``mel_n_fft`` samples, ``conv_dim[-1]`` HTK mel bands), one frame per conv frame: frame ``t`` is centred on sample
``hop * t + 200`` (the centre of the conv stack's frame ``t``), so frame counts, the 75 Hz rate and the alignment
of every teacher's labels stay as they are. Samples outside the clip are zeros.

Per clip, as the Mel-RVQ teacher does, decibels are floored ``TOP_DB`` under the clip's loudest value and centred on
the clip's mean level (over its real frames and every band), then divided by ``DB_SCALE`` and scaled and shifted per
band by learned weights (ones and zeros at first). The features do not depend on the clip's gain, keep its spectral
envelope, and a padded clip gets exactly the features it gets alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mert_fast.model.config import MERTConfig
from mert_fast.model.teachers.mel_rvq import TOP_DB, log_mel_db, mel_filterbank

__all__ = ["LogMelFrontEnd"]

#: Decibels per unit of the features: centred log-mel levels of music spread over a few tens of dB.
DB_SCALE = 20.0
#: Frames per STFT block: bounds the ``(B, n_fft / 2 + 1, frames)`` spectrum of long clips.
BLOCK_FRAMES = 2048


class LogMelFrontEnd(nn.Module):
    """Audio ``(B, L)`` -> normalised log-mel features ``(B, n_mels, T)``, ``T = config.num_frames(L)``."""

    def __init__(self, config: MERTConfig) -> None:
        super().__init__()
        self.config = config
        self.n_fft = config.mel_n_fft
        self.hop = config.hop_length
        self.n_mels = config.conv_dim[-1]
        #: where frame 0's window starts, relative to sample 0: its centre sits on the conv frame's centre
        self.offset = config.receptive_field // 2 - self.n_fft // 2
        self.register_buffer("window", torch.hann_window(self.n_fft), persistent=False)
        self.register_buffer("mel_fb", mel_filterbank(config.sample_rate, self.n_fft, self.n_mels), persistent=False)
        self.weight = nn.Parameter(torch.ones(self.n_mels))
        self.bias = nn.Parameter(torch.zeros(self.n_mels))

    def mel_power(self, audio: torch.Tensor, n_frames: int) -> torch.Tensor:
        """Mel power ``(B, n_mels, n_frames)`` float32 of zero-padded ``audio`` ``(B, L)``, computed in blocks of
        :data:`BLOCK_FRAMES` frames."""
        x = audio.float()
        window, mel_fb = self.window.float(), self.mel_fb.float()  # float32 in a half-precision model too
        blocks = []
        for first in range(0, n_frames, BLOCK_FRAMES):
            count = min(BLOCK_FRAMES, n_frames - first)
            start = self.offset + first * self.hop
            stop = start + (count - 1) * self.hop + self.n_fft
            left, right = max(0, -start), max(0, stop - x.shape[-1])
            piece = F.pad(x[:, max(0, start) : max(0, min(stop, x.shape[-1]))], (left, right))
            spec = torch.stft(piece, self.n_fft, self.hop, window=window, center=False, return_complex=True)
            power = spec.real.square() + spec.imag.square()  # (B, F, count)
            blocks.append(torch.einsum("bft,fm->bmt", power, mel_fb))
        return torch.cat(blocks, dim=-1)

    def forward(self, audio: torch.Tensor, sample_lengths: torch.Tensor | None) -> torch.Tensor:
        """audio ``(B, L)`` (samples past ``sample_lengths[b]`` are treated as zeros) -> ``(B, n_mels, T)``."""
        n_frames = self.config.num_frames(audio.shape[-1])
        valid = None  # (B, 1, T): each clip's real frames
        if sample_lengths is not None:
            keep = torch.arange(audio.shape[-1], device=audio.device)[None, :] < sample_lengths[:, None]
            audio = audio * keep.to(audio.dtype)
            frames = self.config.frame_counts(sample_lengths)
            valid = (torch.arange(n_frames, device=audio.device)[None, :] < frames[:, None])[:, None, :]
        db = log_mel_db(self.mel_power(audio, n_frames), TOP_DB, valid=valid)  # floored and centred as the teacher's
        x = db / DB_SCALE * self.weight[None, :, None] + self.bias[None, :, None]
        return (x if valid is None else x * valid).to(audio.dtype)
