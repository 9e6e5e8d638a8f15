"""MuQ-style acoustic teacher: residual VQ tokens of stacked log-mel frames (Mel-RVQ).

128-bin log-mel spectrogram (n_fft 2048, 100 frames/s, dB) floored at ``top_db`` (80) under the clip's loudest bin
and centred on the clip's mean level, so that the codes describe the music, not its gain or a faint noise floor;
4 frames stacked into 512 dims at 25 Hz, normalised per dimension, then a :class:`~mert_fast.ops.ResidualVQ` with
8 stages, each projecting to 16 dims and looking up the nearest (squared L2) of ``codebook_size`` codes. Fitted in
minutes on the training audio itself by :func:`fit_mel_rvq` (``mert-fast fit-teacher --type mel-rvq``) to
reconstruct those frames, saved as ``teacher.json`` (settings and held-out quality) + ``teacher.safetensors``.
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

__all__ = ["MelRVQTeacher", "fit_mel_rvq", "log_mel_db", "mel_filterbank", "quality_warnings", "teacher_quality"]

logger = logging.getLogger(__name__)

TEACHER_FORMAT = "mert_fast.mel_rvq.v2"
#: Power floor before the logarithm (librosa's ``amin``); the clip-relative ``top_db`` floor sits far above it.
POWER_FLOOR = 1e-10
#: Dynamic range kept under each clip's loudest mel bin (librosa's ``power_to_db(top_db=80)``).
TOP_DB = 80.0
#: A codebook whose held-out perplexity is below this uses effectively fewer codes: reported as collapsed.
COLLAPSED_PERPLEXITY = 4.0


def log_mel_db(
    mel: torch.Tensor, top_db: float | None = TOP_DB, *, centre: bool = True, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-clip decibels of mel powers ``(B, T, n_mels)`` (or ``(B, n_mels, T)``; float32 or float64, same out).

    ``10 log10(max(mel, 1e-10))``, floored at ``top_db`` under the clip's loudest bin (``None``: no floor), then,
    with ``centre``, minus the clip's mean over every frame and bin. Scaling a clip's audio by ``g`` scales its
    powers by ``g^2``: the floored, centred values do not change (as long as the loudest bin stays above
    ``1e-10 * 10^(top_db / 10)``), and bins far under the music sit on the floor instead of following the noise.
    ``valid``: a bool mask broadcastable to ``mel`` (a padded batch's real frames); the loudest bin and the mean are
    then taken over those entries only.
    """
    db = 10.0 * torch.log10(mel.clamp_min(POWER_FLOOR))
    if top_db is not None:
        loud = db if valid is None else db.masked_fill(~valid, float("-inf"))
        db = torch.maximum(db, loud.amax(dim=(1, 2), keepdim=True) - top_db)
    if centre:
        if valid is None:
            db = db - db.mean(dim=(1, 2), keepdim=True)
        else:
            weight = valid.to(db.dtype).expand_as(db)
            count = weight.sum(dim=(1, 2), keepdim=True).clamp_min(1)
            db = db - (db * weight).sum(dim=(1, 2), keepdim=True) / count
    return db


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
        top_db: float = TOP_DB,
    ) -> None:
        super().__init__()
        self.settings = dict(
            sample_rate=sample_rate, n_mels=n_mels, n_fft=n_fft, stack=stack, n_q=n_q, codebook_size=codebook_size,
            codebook_dim=codebook_dim, top_db=float(top_db), level="clip mean", metric="l2",
        )  # fmt: skip
        self.top_db = float(top_db)
        #: held-out quality of the fit (:func:`teacher_quality`), saved in ``teacher.json``; None when unknown
        self.quality: dict | None = None
        self.sample_rate = sample_rate
        self.hop = sample_rate // 100
        self.n_fft = n_fft
        self.stack = stack
        dim = n_mels * stack
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        self.register_buffer("mel_fb", mel_filterbank(sample_rate, n_fft, n_mels), persistent=False)
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))
        self.rvq = ResidualVQ(dim, n_q, codebook_size, codebook_dim=codebook_dim, metric="l2")

    @property
    def label_rate(self) -> float:
        return self.sample_rate / self.hop / self.stack

    def features(self, audio: torch.Tensor) -> torch.Tensor:
        """Normalised stacked log-mel frames ``(B, T25, n_mels * stack)`` float32 (per clip: see :func:`log_mel_db`)."""
        x = audio.float()
        spec = torch.stft(
            x, self.n_fft, self.hop, window=self.window, center=True, pad_mode="constant", return_complex=True
        )
        power = spec.real.square() + spec.imag.square()  # (B, F, T)
        mel = torch.einsum("bft,fm->btm", power, self.mel_fb)
        db = log_mel_db(mel, self.top_db)
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
        meta = {"format": TEACHER_FORMAT, "type": "mel-rvq", **self.settings}
        if self.quality is not None:
            meta["quality"] = self.quality
        save_teacher(self, directory, meta)

    @classmethod
    def load(cls, directory: str | os.PathLike, map_location: str | torch.device = "cpu") -> MelRVQTeacher:
        from safetensors.torch import load_file

        directory = Path(directory)
        meta_file = directory / "teacher.json"
        if not meta_file.is_file():
            raise FileNotFoundError(f"teacher: {directory} has no teacher.json (fit one with `mert-fast fit-teacher`)")
        meta = json.loads(meta_file.read_text())
        if meta.get("format") == "mert_fast.mel_rvq.v1":
            raise ValueError(
                f"teacher: {meta_file} was fitted on features without a level floor and by an older fit; fit it again "
                "with `mert-fast fit-teacher --type mel-rvq` (or delete it and let train.py fit one)"
            )
        if meta.get("format") != TEACHER_FORMAT:
            raise ValueError(f"teacher: {meta_file} is not a mel-rvq teacher ({meta.get('format')!r})")
        keys = ("n_mels", "n_fft", "stack", "n_q", "codebook_size", "codebook_dim", "top_db")
        teacher = cls(int(meta["sample_rate"]), **{k: meta[k] for k in keys})
        teacher.load_state_dict(load_file(str(directory / "teacher.safetensors"), device=str(map_location)))
        teacher.quality = meta.get("quality")
        return teacher.to(map_location).eval()


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
    batch_frames: int = 4096,
    lr: float = 1e-3,
    seed: int = 0,
    device: str | torch.device = "cpu",
    hold_out: int = 8,
) -> MelRVQTeacher:
    """Fit a Mel-RVQ teacher on ``clips`` (1-D waveforms at ``sample_rate``) to reconstruct their features.

    Every ``hold_out``-th clip (the last of each group of ``hold_out``; none with fewer than two clips) is held out
    of the fit: the quality the fit logs and saves (:func:`teacher_quality`: explained variance per stage, code
    usage, perplexity, flip rates under -6 dB of gain and faint noise) is measured on them, in eval mode, with the
    codes :meth:`MelRVQTeacher.forward` gives. Normalisation statistics come from every frame of the fitted clips,
    then :meth:`ResidualVQ.fit <mert_fast.ops.ResidualVQ.fit>` (principal directions and k-means per stage, then
    ``steps`` Adam steps of ``lr`` on the reconstruction of batches of ``batch_frames`` frames). Deterministic for
    a seed. Returns the teacher in eval mode, its ``quality`` set; a collapsed codebook or a stage that does not
    lower the held-out residual is logged as a warning.
    """
    torch.manual_seed(seed)
    teacher = MelRVQTeacher(sample_rate, n_q=n_q, codebook_size=codebook_size, codebook_dim=codebook_dim).to(device)
    clips = [clip.to(device).float() for clip in clips]
    if not clips:
        raise ValueError("clips: no audio to fit the teacher on")
    held = [i for i in range(len(clips)) if i % hold_out == hold_out - 1] if len(clips) >= 2 else []
    if len(clips) >= 2 and not held:
        held = [len(clips) - 1]
    fit_clips = [clip for i, clip in enumerate(clips) if i not in held]
    with torch.no_grad():
        data = torch.cat([teacher.features(clip[None])[0] for clip in fit_clips])
    if data.shape[0] < codebook_size:
        raise ValueError(f"clips: {data.shape[0]} frames are too few to fit {codebook_size} codes; give more audio")
    teacher.mean.copy_(data.mean(0))
    teacher.std.copy_(data.std(0).clamp_min(1e-3))
    data = (data - teacher.mean) / teacher.std
    losses = teacher.rvq.fit(data, steps=steps, batch_rows=batch_frames, lr=lr, seed=seed)
    for step in range(0, len(losses), 50):
        logger.debug("fit mel-rvq: step %d batch reconstruction error %.4f per dim", step, losses[step])
    teacher.eval()
    scored = [clips[i] for i in held] or clips
    quality = teacher_quality(teacher, scored, seed=seed)
    quality["held_out"] = bool(held)
    quality["fit_frames"] = int(data.shape[0])
    teacher.quality = quality
    where = f"{len(held)} held-out clips" if held else "the fitted clip (no clip held out)"
    ev = quality["explained_variance"]
    logger.info(
        "fit mel-rvq: %d frames of %d clips; on %s (eval mode): reconstruction error %.4f, explained variance per "
        "stage %s", data.shape[0], len(fit_clips), where, 1.0 - ev[-1], " ".join(f"{v:.3f}" for v in ev),
    )  # fmt: skip
    logger.info(
        "fit mel-rvq: perplexity per codebook %s; codes used %s of %d; flip rate at -6 dB %s, with noise at 60 dB "
        "SNR %s", " ".join(f"{v:.1f}" for v in quality["perplexity"]), " ".join(str(v) for v in quality["codes_used"]),
        codebook_size, " ".join(f"{v:.3f}" for v in quality["flip_rate_gain_-6db"]),
        " ".join(f"{v:.3f}" for v in quality["flip_rate_noise_60db"]),
    )  # fmt: skip
    for warning in quality_warnings(quality):
        logger.warning("fit mel-rvq: %s", warning)
    return teacher


def _flip_rate(a: torch.Tensor, b: torch.Tensor) -> list[float]:
    return (a != b).double().mean(dim=tuple(range(a.dim() - 1))).tolist()


@torch.no_grad()
def teacher_quality(teacher: MelRVQTeacher, clips: list[torch.Tensor], *, seed: int = 0) -> dict:
    """How well ``teacher`` describes ``clips`` (1-D waveforms on its device), from the codes it gives in eval mode.

    Returns a JSON-ready dict: ``clips`` and ``frames`` scored; ``explained_variance`` after each stage
    (:meth:`ResidualVQ.explained_variance <mert_fast.ops.ResidualVQ.explained_variance>` of the normalised features);
    per codebook ``codes_used`` (distinct codes), ``perplexity`` (``exp`` of the entropy of the code histogram) and
    the fraction of codes that change when the audio is scaled by 0.5 (``flip_rate_gain_-6db``) and when white
    noise 60 dB under the clip's RMS is added (``flip_rate_noise_60db``, noise drawn from ``seed``).
    """
    gen = torch.Generator().manual_seed(seed)
    feats, codes, half, noisy = [], [], [], []
    for clip in clips:
        x = clip.float()[None]
        f = teacher.features(x)[0]
        feats.append(f)
        codes.append(teacher.rvq.encode(f))
        half.append(teacher(0.5 * x)[0])
        noise = torch.randn(x.shape, generator=gen).to(x.device)
        noisy.append(teacher(x + noise * x.square().mean().sqrt() * 10 ** (-60 / 20))[0])
    data, codes = torch.cat(feats), torch.cat(codes)
    size = teacher.rvq.codebook_size
    used, perplexity = [], []
    for s in range(codes.shape[1]):
        p = torch.bincount(codes[:, s], minlength=size).double() / codes.shape[0]
        used.append(int((p > 0).sum()))
        perplexity.append(float(torch.exp(-(p * torch.log(p.clamp_min(1e-30))).sum())))
    return {
        "clips": len(clips),
        "frames": int(data.shape[0]),
        "explained_variance": [round(float(v), 6) for v in teacher.rvq.explained_variance(data)],
        "codes_used": used,
        "perplexity": [round(v, 4) for v in perplexity],
        "flip_rate_gain_-6db": [round(v, 6) for v in _flip_rate(codes, torch.cat(half))],
        "flip_rate_noise_60db": [round(v, 6) for v in _flip_rate(codes, torch.cat(noisy))],
    }


def quality_warnings(quality: dict) -> list[str]:
    """Warnings for :func:`teacher_quality`'s result: collapsed codebooks and stages that do not lower the residual."""
    out = []
    ev = [0.0] + list(quality["explained_variance"])
    for s in range(1, len(ev)):
        if ev[s] <= ev[s - 1]:
            out.append(f"stage {s - 1} does not lower the held-out residual (explained variance {ev[s - 1]:.3f} -> "
                       f"{ev[s]:.3f})")  # fmt: skip
    for s, p in enumerate(quality["perplexity"]):
        if p < COLLAPSED_PERPLEXITY:
            out.append(f"codebook {s} collapsed: perplexity {p:.2f} on held-out frames")
    return out
