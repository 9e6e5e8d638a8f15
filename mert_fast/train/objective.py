"""MERT's pre-training objective: masked prediction of acoustic codes and CQT regression (HuBERT-style heads).

For the masked frames of the student's output ``h`` ``(S, H)``:

- acoustic: ``final_proj(h)`` viewed as ``(S, Q, 64)`` (untied per codebook), cosine logits against ``Q x K``
  learned label embeddings / 0.1, cross-entropy summed over frames and codebooks
  (:func:`mert_fast.ops.codebook_cross_entropy`, no ``(S, K)`` logits in memory);
- musical: ``cqt_head(h)`` ``(S, n_bins)``, MSE against the teacher's CQT;
- the conv-feature L2 penalty ``mean(features ** 2)``.

``loss = CE_sum + w_features * penalty * S + w_cqt * MSE * S`` (MERT's loss weights [10, 1], extra terms scaled by
the number of masked frames as fairseq's HuBERT criterion does). ``feature_grad_mult`` scales the gradient
reaching the conv feature encoder.

``head="linear"`` (MuQ's objective on the MERT student): one ``Linear(H, K)`` classifier per codebook on ``h``
itself (plain dot products plus a bias, ``codebook_cross_entropy(normalize=False)``); ``cqt_bins=None`` drops the
CQT head and its term (MuQ predicts the Mel-RVQ tokens only).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from mert_fast.model.mert import MERTModel
from mert_fast.ops import codebook_cross_entropy

__all__ = ["MERTPretrainer", "PretrainOutput", "masked_student"]


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

    def forward(
        self,
        audio: torch.Tensor,
        codes: torch.Tensor,
        cqt: torch.Tensor | None,
        mask: torch.Tensor,
        layer_keep: list[bool] | None = None,
    ) -> PretrainOutput:
        """audio ``(B, L)`` (the mixed clip); codes ``(B, T, Q)`` int64, cqt ``(B, T, n_bins)`` (None without a CQT
        head) and mask ``(B, T)`` bool, all aligned to the student's ``T`` frames; ``layer_keep``: the step's
        LayerDrop draw (same on all ranks)."""
        feats, _ = self.model.extract_features(audio)
        if (self.cqt_head is None) != (cqt is None):
            raise ValueError("cqt: give CQT targets exactly when the module has a CQT head (cqt_bins)")
        cqt_shape = mask.shape if cqt is None else cqt.shape[:2]
        if feats.shape[1] != mask.shape[1] or codes.shape[:2] != mask.shape or cqt_shape != mask.shape:
            raise ValueError(
                f"frames: student {feats.shape[1]}, mask {tuple(mask.shape)}, codes {tuple(codes.shape)}, "
                f"cqt {tuple(cqt_shape)} must agree"
            )
        feats, hidden = masked_student(self.model, feats, mask, layer_keep, self.feature_grad_mult)
        features_pen = feats.float().pow(2).mean()
        h = hidden[mask]
        n_masked = h.shape[0]
        if self.final_proj is not None:
            proj = self.final_proj(h).view(n_masked, self.n_codebooks, self.final_dim)
        else:
            proj = h[:, None, :].expand(n_masked, self.n_codebooks, self.final_dim)
        scored = codes[mask]  # (n_masked, Q)
        ce_sum, correct = codebook_cross_entropy(
            proj,
            # copies: the loss saves them for backward, and under ZeRO-3 the parameters are released after forward
            self.label_embs_concat.to(proj.dtype, copy=True),
            scored,
            bias=None if self.label_bias is None else self.label_bias.to(proj.dtype, copy=True),
            temperature=self.temperature,
            normalize=self.head == "cosine",
            reduction="sum",
            return_accuracy=True,
        )
        if self.cqt_head is not None:
            cqt_mse = F.mse_loss(self.cqt_head(h).float(), cqt[mask].float())
        else:
            cqt_mse = torch.zeros((), device=h.device)
        w_feat, w_cqt = self.loss_weights
        loss = ce_sum + (w_feat * features_pen + w_cqt * cqt_mse) * n_masked
        return PretrainOutput(
            loss=loss,
            ce_sum=ce_sum.detach(),
            cqt_mse=cqt_mse.detach(),
            features_pen=features_pen.detach(),
            correct=correct.detach(),
            n_masked=n_masked,
            code_counts=torch.stack([torch.bincount(c, minlength=self.label_embs_concat.shape[1]) for c in scored.T]),
        )
