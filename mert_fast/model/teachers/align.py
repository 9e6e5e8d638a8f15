"""Frame alignment of teacher targets to the student (fairseq ``forward_targets`` semantics)."""

from __future__ import annotations

import torch


def align_to_frames(targets: torch.Tensor, n_frames: int, *, repeat: int = 1) -> torch.Tensor:
    """Left-align ``targets`` ``(B, T_t, ...)`` to ``n_frames`` student frames.

    Each target frame is repeated ``repeat`` times first (25 Hz labels -> 75 Hz: ``repeat=3``), then the sequence
    is truncated to ``n_frames``. A teacher with fewer frames than the student after repetition is an error: the
    teachers here are built so that never happens (see each teacher's frame count).
    """
    if repeat > 1:
        targets = targets.repeat_interleave(repeat, dim=1)
    if targets.shape[1] < n_frames:
        raise ValueError(f"targets: the teacher gives {targets.shape[1]} frames, fewer than the student's {n_frames}")
    return targets[:, :n_frames]
