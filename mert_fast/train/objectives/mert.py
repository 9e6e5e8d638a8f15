"""MERT's pre-training objective: masked prediction of acoustic codes and CQT regression (HuBERT-style heads).

For the masked frames of the student's output ``h`` ``(S, H)``:

- acoustic: ``final_proj(h)`` viewed as ``(S, Q, 64)`` (untied per codebook), cosine logits against ``Q x K``
  learned label embeddings / 0.1, cross-entropy summed over frames and codebooks
  (:func:`mert_fast.ops.codebook_cross_entropy`, no ``(S, K)`` logits in memory);
- musical: ``cqt_head(h)`` ``(S, n_bins)``, MSE against the teacher's CQT;
- timbre (optional, ``mfcc_dims``): ``mfcc_head(h)`` ``(S, n_mfcc)``, MSE against the masked frames' MFCCs
  (:class:`~mert_fast.model.teachers.MFCCTeacher`), each coefficient standardised by its mean and standard
  deviation over the step's scored frames (per rank), so the term is 1 for a constant prediction whatever the
  coefficients' scales;
- clip identity (optional, ``clip_dim``): each clip's output frames split into a first and a second half, each
  half's mean through ``clip_head`` (Linear, ReLU, Linear to ``clip_dim``), L2-normalised; the InfoNCE loss of
  matching every first half to its own clip's second half among the batch's, and back (cosine / 0.1, the mean of
  both directions): what stays the same across a clip (its instruments, key, tempo) and differs between clips;
  with ``clip_views="renders"`` each whole clip is matched to its partner instead (clips ``2j`` and ``2j + 1``: two
  renders of one clip, see ``TrainConfig.paired_renders``) among the batch's other clips;
- the conv-feature L2 penalty ``mean(features ** 2)``.

``loss = CE_sum + w_features * penalty * S + w_cqt * MSE * S [+ w_mfcc * MFCC_MSE * S] [+ w_clip * InfoNCE * S]``
(MERT's loss weights [10, 1], extra terms scaled by the number of masked frames as fairseq's HuBERT criterion
does).
``feature_grad_mult`` scales the gradient reaching the conv feature encoder.

``head="linear"`` (MuQ's objective on the MERT student): one ``Linear(H, K)`` classifier per codebook on ``h``
itself (plain dot products plus a bias, ``codebook_cross_entropy(normalize=False)``); ``cqt_bins=None`` drops the
CQT head and its term (MuQ predicts the Mel-RVQ tokens only).

:func:`step_inputs` makes what one micro-step feeds it: the teachers' targets of the clean clip, then the masks and
the mixed clip (:func:`~mert_fast.train.objectives.base.mask_and_mix`); :class:`CodebookObjective` is what the
trainer drives.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from mert_fast.model.config import MERTConfig
from mert_fast.model.mert import MERTModel
from mert_fast.model.teachers import align_to_frames
from mert_fast.model.teachers.cqt import mert_cqt_bins
from mert_fast.ops import codebook_cross_entropy
from mert_fast.train.config import CHOICES, TrainConfig
from mert_fast.train.masking import copy_baseline_ce, copy_baseline_correct
from mert_fast.train.objectives.base import Objective, StepBatch, code_entropy, mask_and_mix

__all__ = [
    "CodebookObjective",
    "MERTPretrainer",
    "PretrainOutput",
    "clip_infonce",
    "partner_infonce",
    "cqt_bins",
    "masked_student",
    "standardized",
    "step_inputs",
]


def masked_student(
    model: MERTModel, feats: torch.Tensor, mask: torch.Tensor, layer_keep: list[bool] | None, feature_grad_mult: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The student on masked input, from its conv features ``feats`` ``(B, T, C)``: :meth:`MERTModel.encode` with
    the gradient into the conv encoder scaled by ``feature_grad_mult``, masked frames (``mask`` ``(B, T)``) replaced
    by the learned ``masked_spec_embed`` and the step's LayerDrop draw. Returns ``(feats, hidden)``: the
    (gradient-scaled) features and the encoder's output ``(B, T, H)``. Every objective's forward runs this."""
    # the gradient scaling comes before any loss on the features, as in fairseq: every gradient into them is scaled
    out = model.encode(feats, mask=mask, layer_keep=layer_keep, feature_grad_mult=feature_grad_mult)
    return out.features, out.last_hidden_state


class PretrainOutput(NamedTuple):
    """``loss`` (what backward takes) and detached statistics for logging. A named tuple, so that ZeRO-3 sees the
    tensors a module returns and gathers the top module's own parameters again for backward."""

    loss: torch.Tensor
    ce_sum: torch.Tensor
    cqt_mse: torch.Tensor
    features_pen: torch.Tensor
    correct: torch.Tensor  # (Q,) int64 correct predictions per codebook on masked frames
    n_masked: int
    code_counts: torch.Tensor | None = None  # (Q, K) int64 histogram of the masked frames' codes per codebook
    ce_per_codebook: torch.Tensor | None = None  # (Q,) the CE summed over the scored frames, per codebook
    copy_correct: torch.Tensor | None = None  # (Q,) int64 frames the copy-the-nearest-unmasked-frame baseline gets
    mfcc_mse: torch.Tensor | None = None  # the timbre term's MSE (standardised MFCCs); None without an MFCC head
    clip_loss: torch.Tensor | None = None  # the clip term's InfoNCE (nats); None without a clip head
    clip_acc: float = 0.0  # the fraction of the 2B halves whose nearest other half is their own clip's


class MERTPretrainer(nn.Module):
    """The student plus its pre-training heads; ``forward(audio, codes, cqt, mask)`` -> :class:`PretrainOutput`."""

    def __init__(
        self,
        model: MERTModel,
        *,
        n_codebooks: int,
        codebook_size: int,
        cqt_bins: int | None,
        final_dim: int = 64,
        temperature: float = 0.1,
        feature_grad_mult: float = 0.1,
        loss_weights: tuple[float, float] = (10.0, 1.0),
        head: str = "cosine",
        mfcc_dims: int | None = None,
        mfcc_weight: float = 1.0,
        clip_dim: int | None = None,
        clip_weight: float = 1.0,
        clip_views: str = "halves",
    ) -> None:
        super().__init__()
        if head not in ("cosine", "linear"):
            raise ValueError(f"head must be 'cosine' (MERT/HuBERT) or 'linear' (MuQ); got {head!r}")
        self.model = model
        hidden = model.config.hidden_size
        self.head = head
        self.n_codebooks = n_codebooks
        if head == "cosine":
            self.final_dim = final_dim
            self.final_proj = nn.Linear(hidden, final_dim * n_codebooks)
            self.label_embs_concat = nn.Parameter(torch.empty(n_codebooks, codebook_size, final_dim).uniform_())
            self.label_bias = None
        else:  # one Linear(H, K) per codebook on the hidden state itself: weights (Q, K, H) and biases (Q, K)
            self.final_dim = hidden
            self.final_proj = None
            self.label_embs_concat = nn.Parameter(torch.randn(n_codebooks, codebook_size, hidden) * hidden**-0.5)
            self.label_bias = nn.Parameter(torch.zeros(n_codebooks, codebook_size))
            temperature = 1.0
        self.cqt_head = nn.Linear(hidden, cqt_bins) if cqt_bins else None
        self.mfcc_head = nn.Linear(hidden, mfcc_dims) if mfcc_dims else None
        self.mfcc_weight = float(mfcc_weight)
        self.clip_head = None
        if clip_dim:
            self.clip_head = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, clip_dim))
        self.clip_weight = float(clip_weight)
        if clip_views not in CHOICES["clip_views"]:
            raise ValueError(f"clip_views must be one of {', '.join(CHOICES['clip_views'])}; got {clip_views!r}")
        self.clip_views = clip_views
        self.temperature = temperature
        self.feature_grad_mult = feature_grad_mult
        self.loss_weights = loss_weights

    def zero3_external_parameters(self) -> list[tuple[nn.Module, nn.Parameter]]:
        """Parameters used outside their own module's forward, which ZeRO-3 must gather for another module.

        ``masked_spec_embed`` is read in ``MERTModel.encode``, which this module's forward calls outside
        ``MERTModel.forward``; the positional conv's weight-norm factors live in a parametrization submodule and are
        read when the conv computes its weight.
        """
        pairs: list[tuple[nn.Module, nn.Parameter]] = [(self, self.model.masked_spec_embed)]
        pos = self.model.encoder.pos_conv_embed
        conv = getattr(pos, "conv", None)
        if conv is not None and hasattr(conv, "parametrizations"):
            pairs += [(pos, p) for p in conv.parametrizations.weight.parameters()]
        return pairs

    def _check_frames(self, n_frames: int, codes, cqt, mfcc, mask: torch.Tensor, scored: torch.Tensor) -> None:
        """The targets, mask and scored frames must all be on the student's ``n_frames`` frames."""
        if (self.cqt_head is None) != (cqt is None):
            raise ValueError("cqt: give CQT targets exactly when the module has a CQT head (cqt_bins)")
        if (self.mfcc_head is None) != (mfcc is None):
            raise ValueError("mfcc: give MFCC targets exactly when the module has an MFCC head (mfcc_dims)")
        if mfcc is not None and mfcc.shape[-1] != self.mfcc_head.out_features:
            raise ValueError(f"mfcc: expected {self.mfcc_head.out_features} coefficients a frame; got {mfcc.shape[-1]}")
        cqt_shape = mask.shape if cqt is None else cqt.shape[:2]
        mfcc_shape = mask.shape if mfcc is None else mfcc.shape[:2]
        shapes = (codes.shape[:2], cqt_shape, mfcc_shape, scored.shape)
        if n_frames != mask.shape[1] or any(shape != mask.shape for shape in shapes):
            raise ValueError(
                f"frames: student {n_frames}, mask {tuple(mask.shape)}, codes {tuple(codes.shape)}, "
                f"cqt {tuple(cqt_shape)}, mfcc {tuple(mfcc_shape)}, scored {tuple(scored.shape)} must agree"
            )

    def forward(
        self,
        audio: torch.Tensor,
        codes: torch.Tensor,
        cqt: torch.Tensor | None,
        mask: torch.Tensor,
        layer_keep: list[bool] | None = None,
        *,
        scored: torch.Tensor | None = None,
        mfcc: torch.Tensor | None = None,
    ) -> PretrainOutput:
        """audio ``(B, L)`` (the mixed clip); codes ``(B, T, Q)`` int64, cqt ``(B, T, n_bins)`` (None without a CQT
        head) and mask ``(B, T)`` bool, all aligned to the student's ``T`` frames; ``layer_keep``: the step's
        LayerDrop draw (same on all ranks). ``scored`` ``(B, T)`` bool: the frames the losses are taken on (default
        the masked ones; the learnability check scores frames the student sees). ``mfcc`` ``(B, T, n_mfcc)``: the
        timbre targets, exactly when the module has an MFCC head."""
        feats, _ = self.model.extract_features(audio)
        scored = mask if scored is None else scored
        self._check_frames(feats.shape[1], codes, cqt, mfcc, mask, scored)
        feats, hidden = masked_student(self.model, feats, mask, layer_keep, self.feature_grad_mult)
        features_pen = feats.float().pow(2).mean()
        h = hidden[scored]
        n_masked = h.shape[0]
        if self.final_proj is not None:
            proj = self.final_proj(h).view(n_masked, self.n_codebooks, self.final_dim)
        else:
            proj = h[:, None, :].expand(n_masked, self.n_codebooks, self.final_dim)
        targets = codes[scored]  # (n_masked, Q)
        losses, correct = codebook_cross_entropy(
            proj,
            # copies: the loss saves them for backward, and under ZeRO-3 the parameters are released after forward
            self.label_embs_concat.to(proj.dtype, copy=True),
            targets,
            bias=None if self.label_bias is None else self.label_bias.to(proj.dtype, copy=True),
            temperature=self.temperature,
            normalize=self.head == "cosine",
            reduction="none",
            return_accuracy=True,
        )
        ce_sum = losses.sum()
        if self.cqt_head is not None:
            cqt_mse = F.mse_loss(self.cqt_head(h).float(), cqt[scored].float())
        else:
            cqt_mse = torch.zeros((), device=h.device)
        w_feat, w_cqt = self.loss_weights
        loss = ce_sum + (w_feat * features_pen + w_cqt * cqt_mse) * n_masked
        mfcc_mse = None
        if self.mfcc_head is not None:
            mfcc_mse = F.mse_loss(self.mfcc_head(h).float(), standardized(mfcc[scored]))
            loss = loss + self.mfcc_weight * mfcc_mse * n_masked
        clip_loss, clip_acc = None, 0.0
        if self.clip_head is not None:
            if self.clip_views == "renders":
                clip_loss, clip_acc = partner_infonce(hidden, self.clip_head, CLIP_TEMPERATURE)
            else:
                clip_loss, clip_acc = clip_infonce(hidden, self.clip_head, CLIP_TEMPERATURE)
            loss = loss + self.clip_weight * clip_loss * n_masked
        return PretrainOutput(
            loss=loss,
            ce_sum=ce_sum.detach(),
            cqt_mse=cqt_mse.detach(),
            features_pen=features_pen.detach(),
            correct=correct.detach(),
            n_masked=n_masked,
            code_counts=torch.stack([torch.bincount(c, minlength=self.label_embs_concat.shape[1]) for c in targets.T]),
            ce_per_codebook=losses.detach().sum(0),
            copy_correct=copy_baseline_correct(codes, mask, scored),
            mfcc_mse=None if mfcc_mse is None else mfcc_mse.detach(),
            clip_loss=None if clip_loss is None else clip_loss.detach(),
            clip_acc=clip_acc,
        )


#: The clip term's temperature (cosine similarities divided by it).
CLIP_TEMPERATURE = 0.1


def clip_infonce(hidden: torch.Tensor, head: nn.Module, temperature: float) -> tuple[torch.Tensor, float]:
    """The clip term of ``hidden`` ``(B, T, H)`` (``T >= 2``): the mean of each clip's first ``T // 2`` frames and
    of its next ``T // 2`` through ``head``, L2-normalised, cosine logits ``(B, B)`` / ``temperature``; returns the
    mean of the cross-entropies of matching first halves to second halves and back, and the fraction of the ``2B``
    halves that score their own clip's other half highest. A batch of one clip (a rank whose other clips failed to
    decode) has nothing to tell apart: its loss is 0 (the head still runs, as ZeRO-3 needs on every rank) and its
    accuracy NaN."""
    b, t = hidden.shape[:2]
    if t < 2:
        raise ValueError(f"the clip term needs clips of at least 2 frames; got {t}")
    half = t // 2
    first = F.normalize(head(hidden[:, :half].mean(1)).float(), dim=-1)
    second = F.normalize(head(hidden[:, half : 2 * half].mean(1)).float(), dim=-1)
    logits = first @ second.T / temperature
    own = torch.arange(b, device=hidden.device)
    loss = (F.cross_entropy(logits, own) + F.cross_entropy(logits.T, own)) / 2
    correct = int((logits.argmax(1) == own).sum()) + int((logits.argmax(0) == own).sum())
    return loss, correct / (2 * b) if b > 1 else float("nan")


def partner_infonce(hidden: torch.Tensor, head: nn.Module, temperature: float) -> tuple[torch.Tensor, float]:
    """The clip term on pairs of clips: ``hidden`` ``(B, T, H)``, ``B`` even, clips ``2j`` and ``2j + 1`` two views
    of one clip. Each clip's mean through ``head``, L2-normalised; cosine logits ``(B, B)`` / ``temperature`` with
    a clip's own entry left out; returns the mean cross-entropy of every clip naming its partner among the other
    ``B - 1``, and the fraction that score their partner highest (NT-Xent)."""
    b = hidden.shape[0]
    if b % 2:
        raise ValueError(f"the clip term on renders needs clips in pairs; got a batch of {b}")
    z = F.normalize(head(hidden.mean(1)).float(), dim=-1)
    self_mask = torch.eye(b, dtype=torch.bool, device=hidden.device)
    logits = (z @ z.T / temperature).masked_fill(self_mask, float("-inf"))
    partner = torch.arange(b, device=hidden.device) ^ 1
    loss = F.cross_entropy(logits, partner)
    return loss, int((logits.argmax(1) == partner).sum()) / b


#: Output size of the clip term's projection head.
CLIP_DIM = 64

#: The smallest standard deviation :func:`standardized` divides by (a constant coefficient is only centred).
STANDARDIZE_FLOOR = 1e-3


def standardized(x: torch.Tensor) -> torch.Tensor:
    """``x`` ``(S, D)`` as float32, each column centred on its mean and divided by its (population) standard
    deviation, floored at :data:`STANDARDIZE_FLOOR`."""
    x = x.float()
    return (x - x.mean(0)) / x.std(0, unbiased=False).clamp_min(STANDARDIZE_FLOOR)


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
    mfcc_teacher: nn.Module | None = None,
    rank: int,
    dtype: torch.dtype = torch.float32,
    mixture: bool = True,
    stream: str = "",
) -> StepBatch:
    """Targets from the clean ``audio`` ``(B, L)`` float32 (``cfg.teacher_view == "second"``: crops ``2j`` and
    ``2j + 1`` both get crop ``2j + 1``'s), then the mask and (``mixture``) the in-batch mixture.

    ``acoustic_teacher(audio)`` gives codes ``(B, T_t, Q)`` at ``label_rate`` Hz (repeated up to the student's frame
    rate); ``cqt_teacher(audio)`` gives ``(B, T_c, n_bins)`` and ``mfcc_teacher(audio)`` ``(B, T_c, n_mfcc)`` at the
    student's rate. ``mixture`` and ``stream``: see
    :func:`~mert_fast.train.objectives.base.mask_and_mix`. ``audio`` and ``cqt`` come back in ``dtype``.
    """
    n_frames = model_cfg.num_frames(audio.shape[1])
    heard = audio
    if cfg.teacher_view == "second":
        if audio.shape[0] % 2:
            raise ValueError(f"audio: teacher_view 'second' needs pairs of crops; got a batch of {audio.shape[0]}")
        heard = audio[1::2].repeat_interleave(2, dim=0)
    codes = cqt = mfcc = None
    if acoustic_teacher is not None:
        repeat = round(model_cfg.frame_rate / acoustic_teacher.label_rate)
        codes = align_to_frames(acoustic_teacher(heard), n_frames, repeat=repeat)
    if cqt_teacher is not None:
        cqt = align_to_frames(cqt_teacher(heard), n_frames).to(dtype)
    if mfcc_teacher is not None:  # kept in float32: the targets are standardised in the loss
        mfcc = align_to_frames(mfcc_teacher(heard), n_frames)
    audio, mask, layer_keep = mask_and_mix(
        audio, model_cfg=model_cfg, cfg=cfg, micro_step=micro_step, rank=rank, mixture=mixture, stream=stream
    )
    return StepBatch(audio.to(dtype), codes, cqt, mask, layer_keep, mfcc=mfcc)


class CodebookObjective(Objective):
    """``mert`` (cosine heads, CQT term) or ``muq`` (linear heads, no CQT) on an acoustic teacher's codes."""

    name = "mert"
    head = "cosine"

    def __init__(
        self,
        cfg: TrainConfig,
        model_cfg: MERTConfig,
        student: MERTModel,
        acoustic: nn.Module,
        cqt_teacher: nn.Module | None,
        mfcc_teacher: nn.Module | None = None,
    ) -> None:
        self.cfg, self.model_cfg = cfg, model_cfg
        self.acoustic, self.cqt_teacher, self.mfcc_teacher = acoustic, cqt_teacher, mfcc_teacher
        self.n_q = acoustic.settings["n_q"]
        self.codebook_size = acoustic.settings["codebook_size"]
        self.module = MERTPretrainer(
            student, n_codebooks=self.n_q, codebook_size=self.codebook_size,
            cqt_bins=cqt_teacher.n_bins if cqt_teacher is not None else None, feature_grad_mult=cfg.feature_grad_mult,
            loss_weights=cfg.loss_weights, head=self.head,
            mfcc_dims=mfcc_teacher.n_mfcc if mfcc_teacher is not None else None, mfcc_weight=cfg.mfcc_weight,
            clip_dim=CLIP_DIM if cfg.clip_weight > 0 else None, clip_weight=cfg.clip_weight, clip_views=cfg.clip_views,
        )  # fmt: skip

    def inputs(self, audio, micro_step, rank, dtype, validation):
        batch = step_inputs(
            audio, model_cfg=self.model_cfg, cfg=self.cfg, acoustic_teacher=self.acoustic,
            cqt_teacher=self.cqt_teacher, micro_step=micro_step, rank=rank, dtype=dtype, mixture=not validation,
            stream="val" if validation else "", mfcc_teacher=self.mfcc_teacher,
        )  # fmt: skip
        if validation:
            batch.layer_keep = None
        return batch

    def forward(self, engine, batch):
        if batch.mfcc is None:
            return engine(batch.audio, batch.codes, batch.cqt, batch.mask, batch.layer_keep)
        return engine(batch.audio, batch.codes, batch.cqt, batch.mask, batch.layer_keep, mfcc=batch.mfcc)

    def sums(self, result):
        n = result.n_masked
        out = {"loss": float(result.loss.detach()), "ce": float(result.ce_sum), "masked": float(n),
               "cqt": float(result.cqt_mse) * n, "pen": float(result.features_pen) * n}  # fmt: skip
        if result.mfcc_mse is not None:
            out["mfcc"] = float(result.mfcc_mse) * n
        if result.clip_loss is not None:  # per batch, weighted by its masked frames as the per-frame terms are
            weight = n if math.isfinite(result.clip_acc) else 0  # a batch of one clip counts for nothing
            out.update(clip=float(result.clip_loss) * weight, clip_correct=result.clip_acc * weight if weight else 0.0,
                       clip_masked=float(weight))  # fmt: skip
        out.update({f"correct_{q}": float(c) for q, c in enumerate(result.correct.tolist())})
        out.update({f"copy_{q}": float(c) for q, c in enumerate(result.copy_correct.tolist())})
        out.update({f"ce_{q}": float(c) for q, c in enumerate(result.ce_per_codebook.tolist())})
        # every code's count, zeros included: the sums of all ranks must have the same keys
        for q, row in enumerate(result.code_counts.tolist()):
            out.update({f"codes_{q}_{k}": float(c) for k, c in enumerate(row)})
        return out

    def metrics(self, totals):
        masked = max(totals["masked"], 1.0)
        out = {"loss": totals["loss"] / masked, "ce": totals["ce"] / masked, "cqt_mse": totals["cqt"] / masked,
               "features_pen": totals["pen"] / masked}  # fmt: skip
        if "mfcc" in totals:
            out["mfcc_mse"] = totals["mfcc"] / masked
        if "clip" in totals:
            clip_masked = max(totals["clip_masked"], 1.0)
            out["clip_loss"] = totals["clip"] / clip_masked
            out["clip_acc"] = totals["clip_correct"] / clip_masked
        out.update({f"acc_{q}": totals[f"correct_{q}"] / masked for q in range(self.n_q)})
        out.update({f"ce_{q}": totals[f"ce_{q}"] / masked for q in range(self.n_q)})
        # the copy baseline: each masked frame predicted as the code of its nearest unmasked frame; a student that
        # has learnt the codes of what it hears and uses its context does at least this well
        out.update({f"copy_acc_{q}": totals[f"copy_{q}"] / masked for q in range(self.n_q)})
        out["acc"] = sum(out[f"acc_{q}"] for q in range(self.n_q)) / self.n_q
        out["copy_acc"] = sum(out[f"copy_acc_{q}"] for q in range(self.n_q)) / self.n_q
        out["copy_ce"] = sum(copy_baseline_ce(out[f"copy_acc_{q}"], self.codebook_size) for q in range(self.n_q))
        # the prior: the entropy of each codebook's code histogram over the scored frames since the last row, the CE
        # of the best constant prediction of those frames; ``ce`` below ``prior`` is what is learnt about each frame
        priors = [code_entropy([totals[f"codes_{q}_{k}"] for k in range(self.codebook_size)]) for q in range(self.n_q)]
        out.update({f"prior_{q}": p for q, p in enumerate(priors)})
        out["prior"] = sum(priors)
        return out
