"""What one micro-step feeds the student: teacher targets of the clean clip, the mixed clip, masks, LayerDrop.

Shared by the trainer and the step benchmark. Every draw is keyed on ``(seed, micro_step, rank)`` through
:func:`~mert_fast.train.data.seed_for`, so a resumed run makes the same inputs as an uninterrupted one.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from mert_fast.model.config import MERTConfig
from mert_fast.model.teachers import align_to_frames
from mert_fast.model.teachers.cqt import mert_cqt_bins
from mert_fast.train.config import TrainConfig
from mert_fast.train.data import seed_for
from mert_fast.train.masking import compute_mask, in_batch_mixture

__all__ = ["StepInputs", "cqt_bins", "step_inputs"]


class StepInputs(NamedTuple):
    """The arguments of :class:`~mert_fast.train.objective.MERTPretrainer`: ``audio`` ``(B, L)`` in the compute
    dtype (the mixed clip); ``codes`` ``(B, T, Q)`` int64; ``cqt`` ``(B, T, n_bins)``; ``mask`` ``(B, T)`` bool;
    ``layer_keep`` one bool per layer (the same on every rank). ``codes``/``cqt`` are None without that teacher."""

    audio: torch.Tensor
    codes: torch.Tensor | None
    cqt: torch.Tensor | None
    mask: torch.Tensor
    layer_keep: list[bool]


def cqt_bins(model_cfg: MERTConfig) -> int:
    """The CQT teacher's bins at the student's sample rate (:func:`mert_cqt_bins`)."""
    return mert_cqt_bins(model_cfg.sample_rate)


@torch.no_grad()
def step_inputs(
    audio: torch.Tensor,
    *,
    model_cfg: MERTConfig,
    cfg: TrainConfig,
    acoustic_teacher: nn.Module | None,
    cqt_teacher: nn.Module | None,
    micro_step: int,
    rank: int,
    dtype: torch.dtype = torch.float32,
    mixture: bool = True,
    stream: str = "",
) -> StepInputs:
    """Targets from the clean ``audio`` ``(B, L)`` float32, then the mask and (``mixture``) the in-batch mixture.

    ``acoustic_teacher(audio)`` gives codes ``(B, T_t, Q)`` at ``label_rate`` Hz (repeated up to the student's frame
    rate); ``cqt_teacher(audio)`` gives ``(B, T_c, n_bins)`` at the student's rate. Validation passes
    ``mixture=False`` (clean input) and ``stream="val"`` (masks drawn apart from training's, the same at every
    evaluation of a given batch).
    """
    n_frames = model_cfg.num_frames(audio.shape[1])
    codes = cqt = None
    if acoustic_teacher is not None:
        repeat = round(model_cfg.frame_rate / acoustic_teacher.label_rate)
        codes = align_to_frames(acoustic_teacher(audio), n_frames, repeat=repeat)
    if cqt_teacher is not None:
        cqt = align_to_frames(cqt_teacher(audio), n_frames).to(dtype)
    gen = torch.Generator().manual_seed(seed_for(cfg.seed, micro_step, rank, purpose=stream + "mask"))
    mask = compute_mask(audio.shape[0], n_frames, mask_prob=cfg.mask_prob, span=cfg.mask_length, generator=gen,
                        device=audio.device)  # fmt: skip
    if mixture:
        audio = in_batch_mixture(
            audio, prob=cfg.mixture_prob, max_segments=cfg.mixture_max_segments, seconds=cfg.mixture_seconds,
            sample_rate=model_cfg.sample_rate, generator=gen,
        )  # fmt: skip
    # LayerDrop is drawn once per step for all ranks: a layer skipped on one rank only would leave the ranks
    # reducing different gradients
    drop = torch.Generator().manual_seed(seed_for(cfg.seed, micro_step, 0, purpose="layerdrop"))
    layer_keep = (torch.rand(model_cfg.num_hidden_layers, generator=drop) >= model_cfg.layerdrop).tolist()
    return StepInputs(audio.to(dtype), codes, cqt, mask, layer_keep)
