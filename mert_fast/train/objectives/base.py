"""What every pre-training objective shares: the interface the trainer drives, the step's inputs, the masks.

An :class:`Objective` owns the module the DeepSpeed engine wraps, turns a clean batch into a :class:`StepBatch`
(:meth:`~Objective.inputs`), runs the engine on it (:meth:`~Objective.forward`), turns the engine's output into sums
that add up over micro-steps and ranks, and those sums into logged metrics; ``after_step`` runs once per optimizer
step (the EMA update) and ``state_dict`` is what a checkpoint keeps beside the engine's own state.

Every draw of :func:`mask_and_mix` is keyed on ``(seed, micro_step, rank)`` through
:func:`~mert_fast.train.data.seed_for`, so a resumed run makes the same inputs as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch import nn

from mert_fast.model.config import MERTConfig
from mert_fast.train.config import TrainConfig
from mert_fast.train.data import seed_for
from mert_fast.train.masking import compute_mask, in_batch_mixture

__all__ = ["Objective", "StepBatch", "code_entropy", "mask_and_mix"]


@dataclasses.dataclass
class StepBatch:
    """What one micro-step feeds the student, all aligned to its ``T`` frames.

    Attributes:
        audio: ``(B, L)`` the student's input (the mixed clip in training), in the compute dtype.
        codes: ``(B, T, Q)`` int64 acoustic-teacher codes of the clean clip; None without an acoustic teacher.
        cqt: ``(B, T, n_bins)`` CQT of the clean clip; None without a CQT teacher.
        mask: ``(B, T)`` bool, the masked frames.
        layer_keep: one bool per layer, the step's LayerDrop draw (the same on every rank); None: no LayerDrop.
        targets: ``(B, T, H)`` regression targets (data2vec's EMA teacher); None for the codebook objectives.
        mfcc: ``(B, T, n_mfcc)`` float32 MFCCs of the clean clip (the timbre term); None without an MFCC teacher.
    """

    audio: torch.Tensor
    codes: torch.Tensor | None
    cqt: torch.Tensor | None
    mask: torch.Tensor
    layer_keep: list[bool] | None
    targets: torch.Tensor | None = None
    mfcc: torch.Tensor | None = None

    @property
    def n_frames(self) -> int:
        """The student's frame count ``T``."""
        return self.mask.shape[1]


@torch.no_grad()
def mask_and_mix(
    audio: torch.Tensor,
    *,
    model_cfg: MERTConfig,
    cfg: TrainConfig,
    micro_step: int,
    rank: int,
    mixture: bool = True,
    stream: str = "",
) -> tuple[torch.Tensor, torch.Tensor, list[bool]]:
    """The mask ``(B, T)`` bool of the clean ``audio`` ``(B, L)``, then (``mixture``) the in-batch mixture, then the
    LayerDrop draw; returns ``(audio, mask, layer_keep)``. Validation passes ``mixture=False`` (clean input) and
    ``stream="val"`` (masks drawn apart from training's, the same at every evaluation of a given batch)."""
    n_frames = model_cfg.num_frames(audio.shape[1])
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
    return audio, mask, layer_keep


def code_entropy(counts: list[float]) -> float:
    """Entropy in nats of the distribution of a histogram (0 for an empty one)."""
    total = sum(counts)
    return -sum(c / total * math.log(c / total) for c in counts if c > 0) if total > 0 else 0.0


class Objective:
    """The interface; see the module docstring."""

    name: str
    module: nn.Module

    def inputs(
        self, audio: torch.Tensor, micro_step: int, rank: int, dtype: torch.dtype, validation: bool
    ) -> StepBatch:
        """The step's inputs from the clean ``audio`` ``(B, L)`` float32 on the device."""
        raise NotImplementedError

    def forward(self, engine: Any, batch: StepBatch) -> Any:
        """Run ``engine`` (the DeepSpeed engine wrapping :attr:`module`, or the module itself) on ``batch``; the
        result has a ``loss`` field."""
        raise NotImplementedError

    def sums(self, result: Any) -> dict[str, float]:
        raise NotImplementedError

    def metrics(self, totals: dict[str, float]) -> dict[str, float]:
        raise NotImplementedError

    def after_step(self, engine: Any, step: int) -> None:
        """Called on every rank after optimizer step ``step`` (counted from 1)."""

    def state_dict(self) -> dict[str, Any] | None:
        return None

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if state is not None:
            raise ValueError(f"checkpoint: objective {self.name!r} keeps no state, but the checkpoint holds some")
