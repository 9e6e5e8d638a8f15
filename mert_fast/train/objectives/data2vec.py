"""music2vec / data2vec-audio pre-training: the EMA teacher, its regression targets and the student's loss.

The student (a :class:`~mert_fast.model.mert.MERTModel`, usually the ``music2vec-v1`` preset) sees the masked
input and regresses, at the masked frames, the average of the teacher's top ``K`` feed-forward outputs on the
unmasked input, each instance-normalised over time. The teacher is an exponential moving average (EMA) of the
student. How the trainer uses these pieces::

    student = MERTModel(MERTConfig.from_name("music2vec-v1"))
    teacher = EMATeacher(student)            # a full fp32 copy, outside the engine: make it before (or after,
                                             # see below) deepspeed.initialize; never give it to the engine
    module = Data2VecPretrainer(student)     # student + final_proj: what the DeepSpeed engine wraps
    engine, optimizer, scheduler = build_engine(module, cfg, ds_config)
    for step in ...:
        for micro in range(grad_accum):
            targets = teacher.targets(audio)                    # (B, T, H) float32, no grad, eval mode
            out = engine(audio, targets, mask, layer_keep)      # Data2VecOutput
            engine.backward(out.loss)
            engine.step()
        teacher.update(engine.module.model)                     # once per optimizer step, on every rank
    checkpoint: teacher.state_dict() / teacher.load_state_dict(...)   (weights and the update count)

:class:`Data2VecObjective` is that loop's part for the trainer.

The teacher sees the same audio as the student, unmasked (data2vec); whether that is a clean or a mixed clip is the
trainer's choice.

What follows fairseq's ``data2vec_audio`` (base recipe: ``ema_transformer_only`` and ``ema_layers_only`` on,
``instance_norm_target_layer``, ``average_top_k_layers=8``, ``loss_beta=0``, ``loss_scale=None``):

- EMA decay annealed linearly from ``decay_start`` (0.999) to ``decay_end`` (0.9999) over ``anneal_steps``
  (30,000) optimizer steps, then constant; the ``n``-th update (``n`` = optimizer steps done, from 1) uses
  ``decay(n)``. ``teacher = decay * teacher + (1 - decay) * student`` in fp32 for the averaged parameters.
- ``transformer_only=True`` (the default, as fairseq's base recipe): only the transformer layers and the encoder
  LayerNorm are averaged; every other tensor (conv feature encoder, feature projection, positional convs,
  buffers, and any parameter the student does not train) is copied from the student at each update. fairseq feeds
  its transformer-only teacher the student's current projected features of the unmasked input and its
  ``ema_layers_only`` copies the positional convs; a teacher holding copies of those parts made right after the
  last optimizer step computes exactly the same targets (the weights change only at optimizer steps), and needs
  nothing from inside the engine, which under ZeRO-3 holds the student partitioned. It costs one extra
  no-grad pass of the conv feature encoder per micro-step. ``transformer_only=False`` averages every parameter.
- Targets: the output of each of the top ``K`` layers' feed-forward block (``output_dense``, before the final
  residual and LayerNorm: fairseq's ``layer_result``, the fc2 output), instance-normalised over time per channel
  (``F.instance_norm``, eps 1e-5), averaged over the ``K`` layers.
- Loss: ``final_proj = Linear(H, H)`` on the student's masked frames; squared error summed over masked frames and
  channels, times ``1 / sqrt(H)``. ``loss`` is that sum, like :class:`~mert_fast.train.objectives.mert.MERTPretrainer`'s
  (fairseq then divides the gradient by the number of masked frames; ``loss_sum / n_masked`` is the per-frame value
  it logs).
- Diagnostics: ``target_var`` and ``pred_var``, the mean over channels of the standard deviation over masked frames
  (``sqrt(var + 1e-6)``, unbiased variance); collapse shows as these going to 0.

Where it differs from fairseq:

- With a padded batch (``attention_mask``), the instance norm takes its statistics over each clip's valid frames
  only, and padded frames are 0 in the targets (fairseq normalises over the padding too). Training crops are
  unpadded, so this does not arise there.
- ``target_var``/``pred_var`` are computed over this micro-batch on this rank (fairseq all-reduces the sums first);
  average them over ranks when logging.
- The EMA follows the student's live parameters, bf16 ones under bf16 training (as fairseq under fp16), not the
  optimizer's fp32 master copy, which DeepSpeed does not expose uniformly across ZeRO stages.

ZeRO: under ZeRO-3 the student's parameters are partitioned; :meth:`EMATeacher.update` (and the constructor, if
the teacher is made after ``deepspeed.initialize``) gathers them, one transformer layer at a time, with
``deepspeed.zero.GatheredParameters(..., modifier_rank=None)`` (a collective: every rank must call it). Under
ZeRO-1/2 or without DeepSpeed the parameters are whole and nothing is gathered. The teacher itself is a full fp32
module replicated on every rank.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from mert_fast._checks import check_float, check_int
from mert_fast.model.config import MERTConfig
from mert_fast.model.mert import MERTModel
from mert_fast.train.config import TrainConfig
from mert_fast.train.objectives.base import Objective, StepBatch, mask_and_mix
from mert_fast.train.objectives.mert import MERTPretrainer, masked_student

__all__ = ["Data2VecHead", "Data2VecObjective", "Data2VecOutput", "Data2VecPretrainer", "EMATeacher", "RegressionLoss"]

logger = logging.getLogger(__name__)

#: fairseq's instance-norm epsilon (``F.instance_norm``'s default).
_NORM_EPS = 1e-5
#: Added to the variance in the logged standard deviations (fairseq's ``compute_var``).
_VAR_EPS = 1e-6


# ---------------------------------------------------------------------------------------------- ZeRO-3 gathering


def _is_zero3(param: torch.Tensor) -> bool:
    return hasattr(param, "ds_id")


@contextlib.contextmanager
def _gathered(params: list[nn.Parameter]) -> Iterator[None]:
    """Gather ZeRO-3-partitioned ``params`` for reading (a collective); a no-op for whole parameters."""
    if not any(_is_zero3(p) for p in params):
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
        yield


def _parameter_groups(model: MERTModel) -> list[list[tuple[str, nn.Parameter]]]:
    """The named parameters of ``model``: one group per transformer layer, then one for everything else (what is
    gathered at once under ZeRO-3, so the transient memory is one layer, not the model)."""
    groups: list[list[tuple[str, nn.Parameter]]] = []
    seen: set[str] = set()
    for i, layer in enumerate(model.encoder.layers):
        group = list(layer.named_parameters(prefix=f"encoder.layers.{i}"))
        groups.append(group)
        seen.update(name for name, _ in group)
    groups.append([(name, p) for name, p in model.named_parameters() if name not in seen])
    return groups


# ---------------------------------------------------------------------------------------------- the teacher


def _instance_norm(y: torch.Tensor, frame_mask: torch.Tensor | None) -> torch.Tensor:
    """Normalise ``y`` ``(B, T, H)`` over time per clip and channel -> float32 ``(B, T, H)``; with ``frame_mask``
    ``(B, T)`` bool the statistics cover each clip's valid frames only and padded frames come out 0."""
    y = y.float()
    if frame_mask is None:
        return F.instance_norm(y.transpose(1, 2), eps=_NORM_EPS).transpose(1, 2)
    valid = frame_mask[..., None].to(y.dtype)
    count = valid.sum(1, keepdim=True).clamp_min(1.0)
    mean = (y * valid).sum(1, keepdim=True) / count
    var = (((y - mean) * valid) ** 2).sum(1, keepdim=True) / count
    return (y - mean) * torch.rsqrt(var + _NORM_EPS) * valid


class EMATeacher(nn.Module):
    """The data2vec teacher: an fp32 exponential moving average of a :class:`MERTModel` student.

    Args:
        student: the student; whole, or partitioned by ZeRO-3 (then every rank must construct the teacher). Its
            weights are copied (in fp32, on its device) at construction.
        decay_start: EMA decay at step 0 (data2vec: 0.999).
        decay_end: EMA decay from ``anneal_steps`` on (data2vec: 0.9999).
        anneal_steps: optimizer steps of the linear anneal (data2vec audio: 30,000); 0: ``decay_end`` throughout.
        top_k: how many of the top transformer layers the targets average (data2vec: 8).
        transformer_only: average the transformer layers (and encoder LayerNorm) only and copy the rest from the
            student at each update (data2vec audio's default); False averages every parameter.

    The teacher stays in eval mode and holds no gradients. ``state_dict()`` carries the weights and the number of
    updates done, so a resumed run continues the decay schedule exactly.
    """

    def __init__(
        self,
        student: MERTModel,
        *,
        decay_start: float = 0.999,
        decay_end: float = 0.9999,
        anneal_steps: int = 30000,
        top_k: int = 8,
        transformer_only: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(student, MERTModel):
            raise TypeError(f"student must be a MERTModel; got {type(student).__name__}")
        for name, value in (("decay_start", decay_start), ("decay_end", decay_end)):
            check_float(name, value, min=0.0, max=1.0, expected="a number in [0, 1]")
        check_int("anneal_steps", anneal_steps, min=0)
        layers = student.config.num_hidden_layers
        check_int("top_k", top_k, min=1, max=layers, expected=f"an integer in [1, num_hidden_layers={layers}]")
        self.decay_start, self.decay_end = float(decay_start), float(decay_end)
        self.anneal_steps, self.top_k, self.transformer_only = anneal_steps, top_k, bool(transformer_only)
        self.num_updates = 0

        device = student.masked_spec_embed.device
        with torch.device("meta"):
            model = MERTModel(student.config)
        self.model = model.to_empty(device=device).float().requires_grad_(False).eval()
        self._averaged = {name for name, _ in self.model.named_parameters() if self._is_averaged(name)}
        self._copy_from(student, weight=None)

    def _is_averaged(self, name: str) -> bool:
        if not self.transformer_only:
            return True
        return name.startswith(("encoder.layers.", "encoder.layer_norm."))

    def train(self, mode: bool = True) -> EMATeacher:
        """The teacher always runs in eval mode (no dropout, no LayerDrop); ``train()`` leaves it there."""
        return super().train(False)

    # ------------------------------------------------------------------------------------------ EMA

    def decay(self, step: int | None = None) -> float:
        """The EMA decay of optimizer step ``step`` (default: the last update's, ``num_updates``): linear from
        ``decay_start`` at 0 to ``decay_end`` at ``anneal_steps``, then ``decay_end``."""
        n = self.num_updates if step is None else step
        if n >= self.anneal_steps:
            return self.decay_end
        return self.decay_end - (self.decay_end - self.decay_start) * (1.0 - n / self.anneal_steps)

    @torch.no_grad()
    def update(self, student: MERTModel, step: int | None = None) -> None:
        """One EMA step from ``student`` after an optimizer step: ``teacher = d * teacher + (1 - d) * student`` (fp32)
        for the averaged parameters, a copy for the rest, with ``d = decay(n)``, ``n = step`` (default
        ``num_updates + 1``), then ``num_updates = n``.

        ``student``: the same architecture, whole or ZeRO-3-partitioned (gathered here: every rank must call).
        """
        n = self.num_updates + 1 if step is None else int(step)
        if n < 1:
            raise ValueError(f"step must be >= 1 (optimizer steps done); got {step!r}")
        self._copy_from(student, weight=1.0 - self.decay(n))
        self.num_updates = n

    @torch.no_grad()
    def _copy_from(self, student: MERTModel, weight: float | None) -> None:
        """Move the averaged parameters towards ``student``'s by ``weight`` (fp32 lerp) and copy every other tensor;
        ``weight`` None copies everything."""
        own = dict(self.model.named_parameters())
        for group in _parameter_groups(student):
            with _gathered([p for _, p in group]):
                for name, p in group:
                    _check_shape(name, own.get(name), p)
                    target = own[name]
                    source = p.detach().to(target.dtype)
                    if weight is not None and name in self._averaged and p.requires_grad:
                        target.lerp_(source, weight)
                    else:
                        target.copy_(source)
        for name, buf in student.named_buffers():
            self.model.get_buffer(name).copy_(buf)

    # ------------------------------------------------------------------------------------------ targets

    @torch.no_grad()
    def targets(self, audio: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Regression targets of the unmasked ``audio``.

        Args:
            audio: ``(B, L)`` (or ``(L,)``) float waveform at the model's sample rate (cast to float32).
            attention_mask: ``(B, L)`` bool/int, 1 on real samples (a prefix of each row), or None.

        Returns:
            ``(B, T, H)`` float32: the mean over the top ``top_k`` layers of each layer's feed-forward output
            instance-normalised over time (over each clip's valid frames with ``attention_mask``; padded frames 0).
        """
        model = self.model
        feats, frame_mask = model.extract_features(audio, attention_mask)
        total: list[torch.Tensor] = []

        def accumulate(module: nn.Module, args: Any, out: torch.Tensor) -> None:
            y = _instance_norm(out, frame_mask)
            if total:
                total[0].add_(y)
            else:
                total.append(y)

        layers = model.encoder.layers[len(model.encoder.layers) - self.top_k :]
        hooks = [layer.feed_forward.register_forward_hook(accumulate) for layer in layers]
        try:
            model.encode(feats, frame_mask=frame_mask)
        finally:
            for hook in hooks:
                hook.remove()
        return total[0].div_(self.top_k)

    # ------------------------------------------------------------------------------------------ checkpoints

    def get_extra_state(self) -> dict[str, Any]:
        return {
            "num_updates": self.num_updates,
            "decay_start": self.decay_start,
            "decay_end": self.decay_end,
            "anneal_steps": self.anneal_steps,
            "top_k": self.top_k,
            "transformer_only": self.transformer_only,
        }

    def set_extra_state(self, state: dict[str, Any]) -> None:
        if "num_updates" not in state:
            raise ValueError("state_dict: the EMA teacher's _extra_state has no num_updates")
        self.num_updates = int(state["num_updates"])
        changed = [k for k, v in self.get_extra_state().items() if k != "num_updates" and k in state and state[k] != v]
        if changed:
            logger.warning(
                "EMA teacher loaded from a checkpoint made with other settings (%s); keeping this run's",
                ", ".join(f"{k}={state[k]!r} -> {getattr(self, k)!r}" for k in changed),
            )


def _check_shape(name: str, target: torch.Tensor | None, source: torch.Tensor) -> None:
    if target is None:
        raise ValueError(f"student: parameter {name} has no counterpart in the teacher (another architecture?)")
    if target.shape != source.shape:
        raise ValueError(f"student: parameter {name} is {tuple(source.shape)}; the teacher's is {tuple(target.shape)}")


# ---------------------------------------------------------------------------------------------- the student's loss


def _std_over_frames(y: torch.Tensor) -> torch.Tensor:
    """Mean over channels of the standard deviation over rows of ``y`` ``(S, H)`` (fairseq's ``compute_var``);
    NaN for fewer than 2 rows."""
    if y.shape[0] < 2:
        return torch.full((), float("nan"), device=y.device)
    return torch.sqrt(y.float().var(dim=0) + _VAR_EPS).mean()


class RegressionLoss(NamedTuple):
    """What :class:`Data2VecHead` returns: ``loss_sum`` (scalar float32, with grad), ``n`` (frames), and detached
    scalar diagnostics ``pred_var`` / ``target_var`` (mean over channels of the std over frames)."""

    loss_sum: torch.Tensor
    n: int
    pred_var: torch.Tensor
    target_var: torch.Tensor


class Data2VecHead(nn.Module):
    """``final_proj = Linear(H, H)`` and the data2vec regression loss.

    ``loss_scale`` None scales the summed squared error by ``1 / sqrt(H)`` (fairseq's default).
    """

    def __init__(self, hidden_size: int, loss_scale: float | None = None) -> None:
        super().__init__()
        check_int("hidden_size", hidden_size, min=1, expected="a positive integer")
        if loss_scale is not None and not loss_scale > 0:
            raise ValueError(f"loss_scale must be positive or None; got {loss_scale!r}")
        self.final_proj = nn.Linear(hidden_size, hidden_size)
        self.loss_scale = 1.0 / math.sqrt(hidden_size) if loss_scale is None else float(loss_scale)

    def forward(self, hidden: torch.Tensor, targets: torch.Tensor) -> RegressionLoss:
        """hidden ``(S, H)`` the student's output at the masked frames (any float dtype); targets ``(S, H)`` the
        teacher's at the same frames. The loss is ``scale * sum((final_proj(hidden) - targets) ** 2)`` in float32."""
        if hidden.dim() != 2 or hidden.shape[1] != self.final_proj.in_features:
            raise ValueError(f"hidden must be (S, {self.final_proj.in_features}); got {tuple(hidden.shape)}")
        if targets.shape != hidden.shape:
            raise ValueError(f"targets must match hidden's shape {tuple(hidden.shape)}; got {tuple(targets.shape)}")
        pred = self.final_proj(hidden).float()
        y = targets.detach().float()
        loss_sum = F.mse_loss(pred, y, reduction="sum") * self.loss_scale
        with torch.no_grad():
            pred_var, target_var = _std_over_frames(pred), _std_over_frames(y)
        return RegressionLoss(loss_sum=loss_sum, n=hidden.shape[0], pred_var=pred_var, target_var=target_var)


class Data2VecOutput(NamedTuple):
    """``loss`` (what backward takes: the scaled squared error summed over masked frames) and detached statistics
    for logging: ``loss_sum`` (its value), ``n_masked``, ``pred_var``, ``target_var``. A named tuple, so that ZeRO-3
    sees the tensors a module returns (see :class:`~mert_fast.train.objectives.mert.PretrainOutput`)."""

    loss: torch.Tensor
    loss_sum: torch.Tensor
    n_masked: int
    pred_var: torch.Tensor
    target_var: torch.Tensor


class Data2VecPretrainer(nn.Module):
    """The student plus its data2vec head; ``forward(audio, targets, mask, layer_keep)`` -> :class:`Data2VecOutput`.

    ``feature_grad_mult`` scales the gradient reaching the conv feature encoder (data2vec audio base: 1.0).
    The teacher is not part of this module (it must stay outside the engine): pass its targets in.
    """

    def __init__(self, model: MERTModel, *, feature_grad_mult: float = 1.0, loss_scale: float | None = None) -> None:
        super().__init__()
        if not isinstance(model, MERTModel):
            raise TypeError(f"model must be a MERTModel; got {type(model).__name__}")
        if not feature_grad_mult >= 0:
            raise ValueError(f"feature_grad_mult must be >= 0; got {feature_grad_mult!r}")
        self.model = model
        self.head = Data2VecHead(model.config.hidden_size, loss_scale)
        self.feature_grad_mult = float(feature_grad_mult)

    # the same parameters are read outside their modules as in the MERT objective
    zero3_external_parameters = MERTPretrainer.zero3_external_parameters

    def forward(
        self,
        audio: torch.Tensor,
        targets: torch.Tensor,
        mask: torch.Tensor,
        layer_keep: list[bool] | None = None,
    ) -> Data2VecOutput:
        """audio ``(B, L)`` float; targets ``(B, T, H)`` (:meth:`EMATeacher.targets` of the same clip, unmasked) and
        mask ``(B, T)`` bool aligned to the student's ``T`` frames; ``layer_keep``: the step's LayerDrop draw."""
        feats, _ = self.model.extract_features(audio)
        hidden_size = self.model.config.hidden_size
        if mask.shape != feats.shape[:2] or targets.shape != (*feats.shape[:2], hidden_size):
            raise ValueError(
                f"frames: student {tuple(feats.shape[:2])}, mask {tuple(mask.shape)} and targets "
                f"{tuple(targets.shape)} must agree (targets (B, T, {hidden_size}))"
            )
        _, hidden = masked_student(self.model, feats, mask, layer_keep, self.feature_grad_mult)
        result = self.head(hidden[mask], targets[mask])
        return Data2VecOutput(
            loss=result.loss_sum,
            loss_sum=result.loss_sum.detach(),
            n_masked=result.n,
            pred_var=result.pred_var,
            target_var=result.target_var,
        )


class Data2VecObjective(Objective):
    """music2vec: the student regresses, at masked frames, its EMA teacher's averaged top-K layer outputs."""

    name = "data2vec"

    def __init__(self, cfg: TrainConfig, model_cfg: MERTConfig, student: MERTModel, device: torch.device) -> None:
        self.cfg, self.model_cfg = cfg, model_cfg
        top_k = min(cfg.ema_top_k, model_cfg.num_hidden_layers)
        if top_k < cfg.ema_top_k:
            logger.info("data2vec: the model has %d layers; targets average all of them", top_k)
        # made before deepspeed.initialize, from the whole student: a replicated fp32 copy outside the engine
        self.teacher = EMATeacher(student, decay_start=cfg.ema_decay[0], decay_end=cfg.ema_decay[1],
                                  anneal_steps=cfg.ema_anneal_steps, top_k=top_k).to(device)  # fmt: skip
        self.module = Data2VecPretrainer(student, feature_grad_mult=cfg.feature_grad_mult)

    def inputs(self, audio, micro_step, rank, dtype, validation):
        audio, mask, layer_keep = mask_and_mix(
            audio, model_cfg=self.model_cfg, cfg=self.cfg, micro_step=micro_step, rank=rank, mixture=not validation,
            stream="val" if validation else "",
        )  # fmt: skip
        targets = self.teacher.targets(audio)  # the student's own input, unmasked
        return StepBatch(audio.to(dtype), None, None, mask, None if validation else layer_keep, targets.to(dtype))

    def forward(self, engine, batch):
        return engine(batch.audio, batch.targets, batch.mask, batch.layer_keep)

    def sums(self, result):
        return {"loss": float(result.loss.detach()), "masked": float(result.n_masked), "micro": 1.0,
                "pred_var": float(result.pred_var), "target_var": float(result.target_var)}  # fmt: skip

    def metrics(self, totals):
        micro = max(totals["micro"], 1.0)
        return {"loss": totals["loss"] / max(totals["masked"], 1.0), "pred_var": totals["pred_var"] / micro,
                "target_var": totals["target_var"] / micro, "ema_decay": self.teacher.decay()}  # fmt: skip

    def after_step(self, engine, step):
        self.teacher.update(engine.module.model, step)

    def state_dict(self):
        return {k: v.detach().cpu() if torch.is_tensor(v) else v for k, v in self.teacher.state_dict().items()}

    def load_state_dict(self, state):
        if state is None:
            raise ValueError("checkpoint: a data2vec run's checkpoint must hold its EMA teacher")
        self.teacher.load_state_dict(state)
