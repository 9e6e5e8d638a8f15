"""Span masking and the in-batch noise mixture, both on the training device and seeded per step.

Masking follows fairseq's ``compute_mask_indices`` semantics (static span lengths): each row draws
``int(mask_prob * T / span + u)`` span starts (``u ~ U[0, 1)``: probabilistic rounding, at least ``min_masks``)
uniformly without replacement from ``[0, T - span]``; spans may overlap; then every row keeps the same number of
masked frames (the batch minimum), chosen at random among its masked frames, so losses are balanced per clip.
"""

from __future__ import annotations

import math

import torch

__all__ = ["compute_mask", "copy_baseline_ce", "copy_baseline_correct", "in_batch_mixture", "nearest_visible"]


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


def nearest_visible(mask: torch.Tensor) -> torch.Tensor:
    """For ``mask`` ``(B, T)`` bool (True: masked), the index ``(B, T)`` int64 of each frame's nearest unmasked frame
    in its own row (the frame itself where it is unmasked; the earlier one on a tie; -1 in a row with no unmasked
    frame)."""
    b, t = mask.shape
    pos = torch.arange(t, device=mask.device).expand(b, t)
    visible = ~mask
    prev = torch.where(visible, pos, -1).cummax(1).values  # last unmasked frame at or before t, or -1
    big = torch.full_like(pos, 2 * t + 1)
    nxt = torch.where(visible, pos, big).flip(1).cummin(1).values.flip(1)  # first unmasked at or after t, or big
    use_next = (prev < 0) | ((nxt - pos) < (pos - prev))
    out = torch.where(use_next, nxt, prev)
    return torch.where(out >= t, -1, out)


def copy_baseline_correct(codes: torch.Tensor, mask: torch.Tensor, scored: torch.Tensor | None = None) -> torch.Tensor:
    """``(Q,)`` int64: on the ``scored`` frames (default: the masked ones) of ``mask`` ``(B, T)``, how many of
    ``codes`` ``(B, T, Q)`` equal the code of the nearest unmasked frame (:func:`nearest_visible`; an unmasked frame
    is its own nearest). What a student that copies its context would score; a frame in a row without unmasked
    frames counts as wrong."""
    src = nearest_visible(mask)
    copied = codes.gather(1, src.clamp_min(0)[..., None].expand_as(codes))
    hit = (copied == codes) & (src >= 0)[..., None] & (mask if scored is None else scored)[..., None]
    return hit.sum((0, 1))


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


def copy_baseline_ce(accuracy: float, codebook_size: int) -> float:
    """The cross-entropy per frame of the copy baseline as a distribution: probability ``accuracy`` (how often the
    nearest unmasked frame's code is right, :func:`copy_baseline_correct`) on the copied code, the rest spread evenly
    over the other ``codebook_size - 1`` codes: what copying scores when it is allowed to hedge."""
    a = min(max(float(accuracy), 0.0), 1.0)
    if codebook_size < 2:
        return 0.0
    rest = 1.0 - a
    return -(a * math.log(a) if a > 0 else 0.0) - (rest * math.log(rest / (codebook_size - 1)) if rest > 0 else 0.0)
