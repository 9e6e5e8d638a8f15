"""Checks of the audio a MERT student reads, shared by :class:`MERTModel` and the long-audio extraction."""

from __future__ import annotations

import torch

__all__ = ["check_audio_inputs"]


def check_audio_inputs(
    audio: torch.Tensor,
    attention_mask: torch.Tensor | None,
    *,
    min_samples: int,
    device: torch.device,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Validate a waveform batch and its sample mask; return them ready for the model.

    Args:
        audio: ``(B, L)`` or ``(L,)`` float mono waveform, finite, on ``device``.
        attention_mask: ``(B, L)`` bool/int, 1 on real samples (a prefix of each row), or None.
        min_samples: samples one output frame needs (``config.receptive_field``); every clip needs as many.
        device, dtype: the model's; ``audio`` must be on ``device`` and is cast to ``dtype``.

    Returns:
        ``audio`` ``(B, L)`` in ``dtype``, zeroed past each clip's length, and ``lengths`` ``(B,)`` int64 real
        samples per clip (None without ``attention_mask``).

    Raises:
        TypeError: not a floating-point tensor. ValueError: any other problem, named.
    """
    if not isinstance(audio, torch.Tensor):
        raise TypeError(f"audio must be a torch.Tensor; got {type(audio).__name__}")
    if not audio.is_floating_point():
        raise TypeError(f"audio must be a floating-point waveform; got {audio.dtype}")
    if audio.dim() == 1:
        audio = audio[None]
    if audio.dim() != 2:
        raise ValueError(f"audio must be mono, (B, L) or (L,); got shape {tuple(audio.shape)} (downmix first)")
    if audio.shape[-1] < min_samples:
        raise ValueError(f"audio must hold at least {min_samples} samples (one frame); got {audio.shape[-1]}")
    if not torch.isfinite(audio).all():
        raise ValueError("audio contains NaN or inf values")
    if audio.device != device:
        raise ValueError(f"audio is on {audio.device} but the model is on {device}")
    audio = audio.to(dtype)
    if attention_mask is None:
        return audio, None
    if attention_mask.shape != audio.shape:
        raise ValueError(
            f"attention_mask must match audio's shape {tuple(audio.shape)}; got {tuple(attention_mask.shape)}"
        )
    mask = attention_mask.to(device=audio.device, dtype=torch.bool)
    lengths = mask.sum(-1)
    prefix = torch.arange(mask.shape[-1], device=mask.device)[None, :] < lengths[:, None]
    if not torch.equal(prefix, mask):
        raise ValueError("attention_mask must mark a prefix of each row (real samples first, then padding)")
    if int(lengths.min()) < min_samples:
        raise ValueError(
            f"attention_mask: every clip needs at least {min_samples} real samples; got {int(lengths.min())}"
        )
    return audio * mask.to(audio.dtype), lengths
