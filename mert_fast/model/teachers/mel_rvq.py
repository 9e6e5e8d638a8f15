"""MuQ-style acoustic teacher: residual VQ tokens of stacked log-mel frames (Mel-RVQ).

128-bin log-mel spectrogram (n_fft 2048, 100 frames/s, dB), 4 frames stacked into 512 dims at 25 Hz, normalised
per dimension, then a :class:`~mert_fast.ops.ResidualVQ` with 8 stages, each projecting to 16 dims and looking
up by cosine among ``codebook_size`` codes. Fitted in minutes on the training audio itself by
:func:`fit_mel_rvq` (``mert-fast fit-teacher --type mel-rvq``), saved as ``teacher.json`` + ``teacher.safetensors``.
Labels come out at 25 Hz; :func:`~mert_fast.model.teachers.align_to_frames` repeats them x3 to 75 Hz.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mert_fast.ops.residual_vq import ResidualVQ

__all__ = ["MelRVQTeacher", "fit_mel_rvq", "mel_filterbank"]

logger = logging.getLogger(__name__)

TEACHER_FORMAT = "mert_fast.mel_rvq.v1"


def mel_filterbank(
    sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0, fmax: float | None = None
) -> torch.Tensor:
    """Triangular filters on the HTK mel scale, ``(n_fft // 2 + 1, n_mels)`` float32 (unnormalised, peak 1)."""
    fmax = sample_rate / 2 if fmax is None else fmax
    to_mel = lambda f: 2595.0 * math.log10(1.0 + f / 700.0)
    mels = torch.linspace(to_mel(fmin), to_mel(fmax), n_mels + 2, dtype=torch.float64)
    hz = 700.0 * (10.0 ** (mels / 2595.0) - 1.0)
    freqs = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    lower, centre, upper = hz[:-2], hz[1:-1], hz[2:]
    up = (freqs[:, None] - lower[None, :]) / (centre - lower)[None, :]
    down = (upper[None, :] - freqs[:, None]) / (upper - centre)[None, :]
    return torch.clamp(torch.minimum(up, down), min=0.0).float()


class MelRVQTeacher(nn.Module):
    """Audio ``(B, L)`` -> codes ``(B, ceil((L // hop + 1) / stack), n_q)`` int64 at ``sample_rate / hop / stack`` Hz.

    The frame count always covers the student's: ``3 * ceil((L // 240 + 1) / 4) >= floor((L - 400) / 320) + 1``.
    """

    def __init__(
        self,
        sample_rate: int = 24000,
        *,
        n_mels: int = 128,
        n_fft: int = 2048,
        stack: int = 4,
        n_q: int = 8,
        codebook_size: int = 1024,
        codebook_dim: int = 16,
    ) -> None:
        super().__init__()
        self.settings = dict(
            sample_rate=sample_rate, n_mels=n_mels, n_fft=n_fft, stack=stack, n_q=n_q, codebook_size=codebook_size,
            codebook_dim=codebook_dim,
        )  # fmt: skip
        self.sample_rate = sample_rate
        self.hop = sample_rate // 100
        self.n_fft = n_fft
        self.stack = stack
        dim = n_mels * stack
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        self.register_buffer("mel_fb", mel_filterbank(sample_rate, n_fft, n_mels), persistent=False)
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))
        self.rvq = ResidualVQ(dim, n_q, codebook_size, codebook_dim=codebook_dim, metric="cosine")

    @property
    def label_rate(self) -> float:
        return self.sample_rate / self.hop / self.stack

    def features(self, audio: torch.Tensor) -> torch.Tensor:
        """Normalised stacked log-mel frames ``(B, T25, n_mels * stack)`` float32."""
        x = audio.float()
        spec = torch.stft(
            x, self.n_fft, self.hop, window=self.window, center=True, pad_mode="constant", return_complex=True
        )
        power = spec.real.square() + spec.imag.square()  # (B, F, T)
        mel = torch.einsum("bft,fm->btm", power, self.mel_fb)
        db = 10.0 * torch.log10(mel.clamp_min(1e-10))
        t = db.shape[1]
        pad = (-t) % self.stack
        if pad:
            db = F.pad(db.transpose(1, 2), (0, pad), mode="replicate").transpose(1, 2)
        stacked = db.reshape(db.shape[0], -1, self.stack * db.shape[2])
        return (stacked - self.mean) / self.std

    @torch.no_grad()
    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return self.rvq.encode(self.features(audio))

    # ------------------------------------------------------------------------------------------ files

    def save(self, directory: str | os.PathLike) -> None:
        save_teacher(self, directory, {"format": TEACHER_FORMAT, "type": "mel-rvq", **self.settings})

    @classmethod
    def load(cls, directory: str | os.PathLike, map_location: str | torch.device = "cpu") -> MelRVQTeacher:
        from safetensors.torch import load_file

        directory = Path(directory)
        meta_file = directory / "teacher.json"
        if not meta_file.is_file():
            raise FileNotFoundError(f"teacher: {directory} has no teacher.json (fit one with `mert-fast fit-teacher`)")
        meta = json.loads(meta_file.read_text())
        if meta.get("format") != TEACHER_FORMAT:
            raise ValueError(f"teacher: {meta_file} is not a mel-rvq teacher ({meta.get('format')!r})")
        settings = {k: meta[k] for k in ("n_mels", "n_fft", "stack", "n_q", "codebook_size", "codebook_dim")}
        teacher = cls(int(meta["sample_rate"]), **settings)
        teacher.load_state_dict(load_file(str(directory / "teacher.safetensors"), device=str(map_location)))
        return teacher.eval()


def save_teacher(teacher: nn.Module, directory: str | os.PathLike, meta: dict) -> None:
    """Write ``teacher.safetensors`` (the module's state) then ``teacher.json`` (``meta``) into ``directory``, each
    by an atomic rename, so a reader never sees a half-written teacher."""
    from safetensors.torch import save_file

    from mert_fast._io import atomic_path, write_json

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in teacher.state_dict().items()}
    with atomic_path(directory / "teacher.safetensors") as tmp:
        save_file(state, str(tmp))
    write_json(directory / "teacher.json", meta)


def fit_mel_rvq(
    clips: Iterable[torch.Tensor],
    sample_rate: int,
    *,
    n_q: int = 8,
    codebook_size: int = 1024,
    codebook_dim: int = 16,
    steps: int = 300,
    batch_frames: int = 2048,
    lr: float = 3e-3,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> MelRVQTeacher:
    """Fit a Mel-RVQ teacher on ``clips`` (1-D waveforms at ``sample_rate``).

    Normalisation statistics from every frame; codebooks initialised by k-means stage by stage and refined by EMA
    while the projections learn from the commitment and codebook losses, ``steps`` Adam steps on random
    batches of ``batch_frames`` frames. Deterministic for a seed. Returns the teacher in eval mode.
    """
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    teacher = MelRVQTeacher(sample_rate, n_q=n_q, codebook_size=codebook_size, codebook_dim=codebook_dim).to(device)
    with torch.no_grad():
        frames = [teacher.features(clip.to(device).float()[None])[0] for clip in clips]
    if not frames:
        raise ValueError("clips: no audio to fit the teacher on")
    data = torch.cat(frames)
    if data.shape[0] < codebook_size:
        raise ValueError(f"clips: {data.shape[0]} frames are too few to fit {codebook_size} codes; give more audio")
    teacher.mean.copy_(data.mean(0))
    teacher.std.copy_(data.std(0).clamp_min(1e-3))
    data = (data - teacher.mean) / teacher.std
    teacher.rvq.train()
    teacher.rvq.init_from_data(data)
    optimizer = torch.optim.Adam([p for p in teacher.rvq.parameters() if p.requires_grad], lr=lr)
    first = last = None
    for step in range(steps):
        idx = torch.randint(data.shape[0], (min(batch_frames, data.shape[0]),), generator=generator).to(device)
        batch = data[idx]
        out = teacher.rvq(batch)
        # out.loss trains the projections (commitment, codebook terms) while EMA moves the codes; the straight-through
        # output carries no gradient to them, so the reconstruction is only watched
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        with torch.no_grad():
            recon = F.mse_loss(out.quantized, batch)
        first = recon.item() if first is None else first
        last = recon.item()
        if step % 50 == 0:
            logger.info("fit mel-rvq: step %d reconstruction %.4f", step, last)
    logger.info("fit mel-rvq: %d frames, reconstruction %.4f -> %.4f", data.shape[0], first or 0.0, last or 0.0)
    return teacher.eval()
