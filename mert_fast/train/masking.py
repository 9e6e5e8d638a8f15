"""Span masking and the in-batch noise mixture, both on the training device and seeded per step.

Masking follows fairseq's ``compute_mask_indices`` semantics (static span lengths): each row draws
``int(mask_prob * T / span + u)`` span starts (``u ~ U[0, 1)``: probabilistic rounding, at least ``min_masks``)
uniformly without replacement from ``[0, T - span]``; spans may overlap; then every row keeps the same number of
masked frames (the batch minimum), chosen at random among its masked frames, so losses are balanced per clip.
"""

from __future__ import annotations

import torch

__all__ = ["compute_mask", "in_batch_mixture"]


def compute_mask(
    batch: int,
    n_frames: int,
    *,
    mask_prob: float,
    span: int,
    generator: torch.Generator,
    min_masks: int = 2,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """``(batch, n_frames)`` bool mask of frames to replace by the mask embedding (see the module docstring)."""
    if not 0.0 <= mask_prob <= 1.0:
        raise ValueError(f"mask_prob must be in [0, 1]; got {mask_prob}")
    if span < 1:
        raise ValueError(f"span must be >= 1; got {span}")
    mask = torch.zeros(batch, n_frames, dtype=torch.bool)
    if n_frames == 0 or mask_prob == 0.0:
        return mask.to(device)
    span = min(span, n_frames)
    n_starts = n_frames - span + 1
    for row in range(batch):
        n_spans = int(mask_prob * n_frames / span + torch.rand((), generator=generator).item())
        n_spans = min(max(n_spans, min_masks), n_starts)
        starts = torch.randperm(n_starts, generator=generator)[:n_spans]
        idx = (starts[:, None] + torch.arange(span)[None, :]).reshape(-1)
        mask[row, idx] = True
    counts = mask.sum(1)
    keep = int(counts.min())
    for row in range(batch):
        if counts[row] > keep:
            masked = mask[row].nonzero().squeeze(1)
            drop = masked[torch.randperm(masked.numel(), generator=generator)[: int(counts[row]) - keep]]
            mask[row, drop] = False
    return mask.to(device)


def in_batch_mixture(
    audio: torch.Tensor,
    *,
    prob: float,
    max_segments: int,
    seconds: tuple[float, float],
    sample_rate: int,
    generator: torch.Generator,
    volume: float = 1.0,
) -> torch.Tensor:
    """MERT's in-batch noise mixture: with probability ``prob`` a clip gets 1..``max_segments`` segments of
    ``seconds[0]..seconds[1]`` s, each cut from another clip of the batch and added at ``volume`` at a random place.

    audio ``(B, L)`` (any device) -> a new ``(B, L)`` tensor; the input is left clean for the teachers. All draws
    come from ``generator`` (CPU), so a step's mixture is reproducible.
    """
    b, length = audio.shape
    out = audio.clone()
    if b < 2 or prob <= 0.0:
        return out
    for i in range(b):
        if torch.rand((), generator=generator).item() >= prob:
            continue
        n_seg = int(torch.randint(1, max_segments + 1, (), generator=generator))
        for _ in range(n_seg):
            seg = int(
                sample_rate * (seconds[0] + (seconds[1] - seconds[0]) * torch.rand((), generator=generator).item())
            )
            seg = max(1, min(seg, length))
            j = int(torch.randint(b - 1, (), generator=generator))
            j = j + 1 if j >= i else j  # another clip
            src = int(torch.randint(length - seg + 1, (), generator=generator))
            dst = int(torch.randint(length - seg + 1, (), generator=generator))
            out[i, dst : dst + seg] += volume * audio[j, src : src + seg]
    return out
