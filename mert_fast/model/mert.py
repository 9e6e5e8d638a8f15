"""The MERT student: HuBERT / data2vec-audio layout, padding-exact batches, attention through mert_fast.ops.

Module and parameter names follow HF ``HubertModel`` (``Data2VecAudioModel`` for the data2vec layout), so a
state dict moves between them unchanged. What differs from the reference implementations:

- Padded batches give each clip exactly the features it gets alone: the first GroupNorm takes its statistics
  over each clip's valid frames only, frames past each clip's valid count are zeroed before (and, for the
  stacked data2vec positional convs, between) the positional convs, and padded keys are masked in attention.
- Attention runs through :func:`mert_fast.ops.attention` (flash attention on the GPU: memory linear in length).
- No ``trust_remote_code`` and no transformers import: weights load from a local directory or state dict.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from mert_fast.model import hf_checkpoint
from mert_fast.model.config import MERTConfig
from mert_fast.model.frontend import LogMelFrontEnd
from mert_fast.model.inputs import check_audio_inputs
from mert_fast.ops.attention import attention

__all__ = ["MERTModel", "MERTOutput", "grad_multiply"]

logger = logging.getLogger(__name__)

#: Standard deviation of the normal draw of linear layers (HF ``HubertConfig.initializer_range``'s default).
INITIALIZER_RANGE = 0.02

_ACTIVATIONS = {
    "gelu": F.gelu,
    "relu": F.relu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_fast": lambda x: F.gelu(x, approximate="tanh"),
    "silu": F.silu,
    "swish": F.silu,
}


@dataclasses.dataclass
class MERTOutput:
    """What :meth:`MERTModel.forward` and :meth:`MERTModel.encode` return.

    ``last_hidden_state`` ``(B, T, H)``; ``hidden_states`` a tuple of ``num_hidden_layers + 1`` tensors ``(B, T, H)``
    (HF semantics: the encoder input, then each layer's output; for the pre-LN layout the last one is after the
    final LayerNorm and the others are un-normalised) when asked for; ``frame_mask`` ``(B, T)`` bool, True on the
    frames each clip really has (None without an ``attention_mask``). Padded frames are 0 in every state.
    ``features``: the conv features ``(B, T, C)`` the encoder read, after their gradient scaling, when
    :meth:`MERTModel.encode` was given a ``feature_grad_mult`` (None otherwise).
    """

    last_hidden_state: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None = None
    frame_mask: torch.Tensor | None = None
    features: torch.Tensor | None = None


# ---------------------------------------------------------------------------------------------- conv encoder


class _ConvLayer(nn.Module):
    def __init__(self, config: MERTConfig, layer_id: int) -> None:
        super().__init__()
        c_in = config.conv_dim[layer_id - 1] if layer_id > 0 else 1
        c_out = config.conv_dim[layer_id]
        self.conv = nn.Conv1d(
            c_in, c_out, config.conv_kernel[layer_id], stride=config.conv_stride[layer_id], bias=config.conv_bias
        )
        self.norm_kind = None
        if config.feat_extract_norm == "layer":
            self.layer_norm = nn.LayerNorm(c_out, elementwise_affine=True)
            self.norm_kind = "layer"
        elif layer_id == 0:
            self.layer_norm = nn.GroupNorm(c_out, c_out, affine=True)
            self.norm_kind = "group"

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
        x = self.conv(x)
        if self.norm_kind == "layer":
            x = self.layer_norm(x.transpose(1, 2)).transpose(1, 2)
        elif self.norm_kind == "group":
            x = _group_norm_per_channel(x, self.layer_norm, lengths)
        return F.gelu(x)


def _group_norm_per_channel(x: torch.Tensor, norm: nn.GroupNorm, lengths: torch.Tensor | None) -> torch.Tensor:
    """GroupNorm(C, C) whose statistics cover each clip's first ``lengths[b]`` frames only.

    x ``(B, C, T)``; lengths ``(B,)`` int64 or None (every frame valid: plain GroupNorm).
    """
    if lengths is None:
        return norm(x)
    xf = x.float()
    valid = (torch.arange(x.shape[-1], device=x.device)[None, :] < lengths[:, None]).to(xf.dtype)[:, None, :]
    count = valid.sum(-1, keepdim=True)
    mean = (xf * valid).sum(-1, keepdim=True) / count
    var = (((xf - mean) * valid) ** 2).sum(-1, keepdim=True) / count
    y = (xf - mean) * torch.rsqrt(var + norm.eps)
    y = y * norm.weight.float()[None, :, None] + norm.bias.float()[None, :, None]
    return y.to(x.dtype)


class _FeatureEncoder(nn.Module):
    def __init__(self, config: MERTConfig) -> None:
        super().__init__()
        self.config = config
        self.conv_layers = nn.ModuleList(_ConvLayer(config, i) for i in range(len(config.conv_dim)))

    def forward(self, audio: torch.Tensor, sample_lengths: torch.Tensor | None) -> torch.Tensor:
        """audio ``(B, L)`` -> features ``(B, C, T)``."""
        x = audio[:, None, :]
        lengths = sample_lengths
        for layer in self.conv_layers:
            if lengths is not None:
                lengths = (
                    torch.div(lengths - layer.conv.kernel_size[0], layer.conv.stride[0], rounding_mode="floor") + 1
                )
            x = layer(x, lengths)
        return x


class _FeatureProjection(nn.Module):
    def __init__(self, config: MERTConfig) -> None:
        super().__init__()
        self.layer_norm = (
            nn.LayerNorm(config.conv_dim[-1], eps=config.layer_norm_eps) if config.feat_proj_layer_norm else None
        )
        self.projection = nn.Linear(config.conv_dim[-1], config.hidden_size)
        self.dropout = nn.Dropout(config.feat_proj_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.layer_norm is not None:
            x = self.layer_norm(x)
        return self.dropout(self.projection(x))


# ---------------------------------------------------------------------------------------------- positional convs


class _HubertPositionalConv(nn.Module):
    def __init__(self, config: MERTConfig) -> None:
        super().__init__()
        k = config.num_conv_pos_embeddings
        conv = nn.Conv1d(
            config.hidden_size, config.hidden_size, k, padding=k // 2, groups=config.num_conv_pos_embedding_groups
        )
        self.conv = nn.utils.parametrizations.weight_norm(conv, name="weight", dim=2)
        self.remove = 1 if k % 2 == 0 else 0

    def forward(self, x: torch.Tensor, frame_mask: torch.Tensor | None) -> torch.Tensor:
        """x ``(B, T, H)`` with padded frames already zero -> ``(B, T, H)``."""
        y = self.conv(x.transpose(1, 2))
        if self.remove:
            y = y[:, :, : -self.remove]
        return F.gelu(y).transpose(1, 2)


class _Data2VecPositionalLayer(nn.Module):
    def __init__(self, config: MERTConfig) -> None:
        super().__init__()
        k = config.conv_pos_kernel_size
        self.conv = nn.Conv1d(
            config.hidden_size, config.hidden_size, k, padding=k // 2, groups=config.num_conv_pos_embedding_groups
        )
        self.layer_norm = nn.LayerNorm(config.hidden_size, elementwise_affine=False)
        self.remove = 1 if k % 2 == 0 else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if self.remove:
            y = y[:, :, : -self.remove]
        return F.gelu(self.layer_norm(y.transpose(1, 2)).transpose(1, 2))


class _Data2VecPositionalConv(nn.Module):
    def __init__(self, config: MERTConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(_Data2VecPositionalLayer(config) for _ in range(config.conv_pos_layers))

    def forward(self, x: torch.Tensor, frame_mask: torch.Tensor | None) -> torch.Tensor:
        y = x.transpose(1, 2)
        for layer in self.layers:
            y = layer(y)
            if frame_mask is not None:  # the next conv must see zeros past each clip, as it does for the clip alone
                y = y * frame_mask[:, None, :].to(y.dtype)
        return y.transpose(1, 2)


# ---------------------------------------------------------------------------------------------- transformer


class _Attention(nn.Module):
    def __init__(self, config: MERTConfig) -> None:
        super().__init__()
        h = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.dropout = config.attention_dropout
        self.k_proj = nn.Linear(h, h)
        self.v_proj = nn.Linear(h, h)
        self.q_proj = nn.Linear(h, h)
        self.out_proj = nn.Linear(h, h)

    def forward(self, x: torch.Tensor, frame_mask: torch.Tensor | None) -> torch.Tensor:
        b, t, h = x.shape
        split = lambda y: y.view(b, t, self.num_heads, h // self.num_heads).transpose(1, 2)
        out = attention(
            split(self.q_proj(x)),
            split(self.k_proj(x)),
            split(self.v_proj(x)),
            key_padding_mask=frame_mask,
            dropout_p=self.dropout if self.training else 0.0,
        )
        return self.out_proj(out.transpose(1, 2).reshape(b, t, h))


class _FeedForward(nn.Module):
    def __init__(self, config: MERTConfig) -> None:
        super().__init__()
        self.intermediate_dropout = nn.Dropout(config.activation_dropout)
        self.intermediate_dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.output_dense = nn.Linear(config.intermediate_size, config.hidden_size)
        self.output_dropout = nn.Dropout(config.hidden_dropout)
        self.act = _ACTIVATIONS[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.intermediate_dropout(self.act(self.intermediate_dense(x)))
        return self.output_dropout(self.output_dense(x))


class _EncoderLayer(nn.Module):
    def __init__(self, config: MERTConfig) -> None:
        super().__init__()
        self.pre_ln = config.do_stable_layer_norm
        self.attention = _Attention(config)
        self.dropout = nn.Dropout(config.hidden_dropout)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.feed_forward = _FeedForward(config)
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor, frame_mask: torch.Tensor | None) -> torch.Tensor:
        if self.pre_ln:
            x = x + self.dropout(self.attention(self.layer_norm(x), frame_mask))
            return x + self.feed_forward(self.final_layer_norm(x))
        x = self.layer_norm(x + self.dropout(self.attention(x, frame_mask)))
        return self.final_layer_norm(x + self.feed_forward(x))


class _Encoder(nn.Module):
    """The positional conv, the transformer layers and the encoder LayerNorm; :meth:`MERTModel.encode` runs them."""

    def __init__(self, config: MERTConfig) -> None:
        super().__init__()
        self.config = config
        self.pos_conv_embed = (
            _HubertPositionalConv(config) if config.pos_conv_style == "hubert" else _Data2VecPositionalConv(config)
        )
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout)
        self.layers = nn.ModuleList(_EncoderLayer(config) for _ in range(config.num_hidden_layers))
        self.gradient_checkpointing = False


class _GradMultiply(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.scale, None


def grad_multiply(x: torch.Tensor, scale: float) -> torch.Tensor:
    """``x`` unchanged in forward; its gradient multiplied by ``scale`` in backward (fairseq's ``GradMultiply``)."""
    return _GradMultiply.apply(x, scale)


# ---------------------------------------------------------------------------------------------- the model


class MERTModel(nn.Module):
    """MERT student. ``MERTModel(MERTConfig.from_name("mert-v1-95m"))`` or ``MERTModel.from_pretrained(path)``."""

    def __init__(self, config: MERTConfig, *, init_weights: bool = True) -> None:
        """``init_weights``: draw the weights as HF's ``HubertPreTrainedModel`` does (:meth:`init_weights`); False
        leaves PyTorch's per-module defaults, for a model whose weights are loaded next."""
        super().__init__()
        self.config = config
        self.feature_extractor = (
            LogMelFrontEnd(config) if config.feature_extractor_type == "logmel" else _FeatureEncoder(config)
        )
        self.feature_projection = _FeatureProjection(config)
        self.masked_spec_embed = nn.Parameter(torch.empty(config.hidden_size).uniform_())
        self.encoder = _Encoder(config)
        if init_weights:
            self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """Initialise every weight as HF's ``HubertPreTrainedModel._init_weights`` (and fairseq's HuBERT) does.

        Conv layers: Kaiming normal (fan in, ReLU gain), zero bias; the weight-normed positional conv of the HuBERT
        layout keeps PyTorch's default draw, as in HF, whose in-place Kaiming draw lands on the recomputed weight
        and not on its ``weight_g`` / ``weight_v``, and gets a zero bias. Linear layers and embeddings: normal with
        standard deviation ``initializer_range`` (0.02), zero bias. LayerNorm and GroupNorm: ones and zeros. The
        mask embedding: uniform in ``[0, 1)``. Without it, the conv stack's outputs shrink by about 4x per layer
        (PyTorch's default conv draw has a third of the variance Kaiming keeps), so the features reaching the
        projection's LayerNorm are comparable to its eps.
        """
        std = getattr(self.config, "initializer_range", INITIALIZER_RANGE)
        for module in self.modules():
            if isinstance(module, nn.Conv1d):
                if not nn.utils.parametrize.is_parametrized(module, "weight"):
                    nn.init.kaiming_normal_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, 0.0, std)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, (nn.LayerNorm, nn.GroupNorm)):
                if module.weight is not None:
                    nn.init.ones_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.uniform_(self.masked_spec_embed)

    # ------------------------------------------------------------------------------------------ forward

    def gradient_checkpointing_enable(self, enable: bool = True) -> None:
        """Recompute each transformer layer in backward instead of keeping its activations."""
        self.encoder.gradient_checkpointing = enable

    def frame_lengths(self, sample_lengths: torch.Tensor) -> torch.Tensor:
        """Valid output frames of clips with ``sample_lengths`` samples: ``(B,)`` int64."""
        return self.config.frame_counts(sample_lengths)

    def check_inputs(
        self, audio: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:func:`~mert_fast.model.inputs.check_audio_inputs` against this model's receptive field, device and
        dtype: ``(B, L)`` audio in the model's dtype and the real samples per clip (None without a mask)."""
        param = self.masked_spec_embed
        return check_audio_inputs(
            audio, attention_mask, min_samples=self.config.receptive_field, device=param.device, dtype=param.dtype
        )

    def extract_features(self, audio: torch.Tensor, attention_mask: torch.Tensor | None = None):
        """Conv features ``(B, T, C)`` and the frame mask ``(B, T)`` (None without ``attention_mask``)."""
        audio, lengths = self.check_inputs(audio, attention_mask)
        feats = self.feature_extractor(audio, lengths).transpose(1, 2)
        if lengths is None:
            return feats, None
        frames = self.frame_lengths(lengths)
        mask = torch.arange(feats.shape[1], device=feats.device)[None, :] < frames[:, None]
        return feats, mask

    def forward(
        self,
        audio: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        mask_time_indices: torch.Tensor | None = None,
    ) -> MERTOutput:
        """Encode audio: the conv features (:meth:`extract_features`), then :meth:`encode`.

        Args:
            audio: ``(B, L)`` (or ``(L,)``) mono waveform at ``config.sample_rate``, float.
            attention_mask: ``(B, L)`` bool/int over samples, 1 on real samples (a prefix of each row). Clips in a
                padded batch get exactly the features they get alone.
            output_hidden_states: also return every layer's output (``num_hidden_layers + 1`` states). The last one
                is the encoder output, ``last_hidden_state``: in the pre-LN layout (``do_stable_layer_norm``,
                MERT-330M) it includes the final encoder LayerNorm, as in MERT's published code (transformers 4.x)
                and ``HubertModel`` of transformers 4.x. transformers 5.x changed this: its pre-LN
                ``hidden_states[-1]`` is the last layer's output *before* that LayerNorm (only its
                ``last_hidden_state`` has it). The other states are the same in every version.
            mask_time_indices: ``(B, T)`` bool frames to replace by the learned mask embedding (pre-training).
        """
        feats, frame_mask = self.extract_features(audio, attention_mask)
        return self.encode(
            feats, frame_mask=frame_mask, mask=mask_time_indices, output_hidden_states=output_hidden_states
        )

    def encode(
        self,
        features: torch.Tensor,
        *,
        frame_mask: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        layer_keep: Sequence[bool] | None = None,
        feature_grad_mult: float | None = None,
        output_hidden_states: bool = False,
        on_state: Callable[[int, torch.Tensor], None] | None = None,
    ) -> MERTOutput:
        """Everything after the conv feature encoder, in the one order every caller uses.

        ``features`` (gradient scaled by ``feature_grad_mult``) -> feature projection -> ``mask``ed frames replaced
        by ``masked_spec_embed`` -> padded frames zeroed -> ``+ pos_conv_embed`` -> encoder LayerNorm (post-LN
        layout) -> dropout -> the transformer layers (LayerDrop in training) -> encoder LayerNorm (pre-LN layout)
        -> padded frames zeroed.

        Args:
            features: conv features ``(B, T, C)`` (:meth:`extract_features` or a chunked equivalent).
            frame_mask: ``(B, T)`` bool, True on each clip's real frames; None when every frame is real.
            mask: ``(B, T)`` bool frames to replace by the learned mask embedding (pre-training), or None.
            layer_keep: which layers run in training (LayerDrop); None draws them here with ``layerdrop``. Data
                parallel training passes one draw shared by every rank, so all ranks use the same parameters.
            feature_grad_mult: multiply the gradient reaching ``features`` by this (fairseq's ``feature_grad_mult``;
                1.0 leaves it) and return those features as ``features``, so that a loss on them (the L2 penalty)
                is scaled the same way, as in fairseq. None: the features are used as given and not returned.
            output_hidden_states: return the ``num_hidden_layers + 1`` hidden states (see :meth:`forward`).
            on_state: called as ``on_state(index, state)`` with each hidden state as it is computed (padded frames
                zeroed), for a caller that keeps only some of them or a running sum; the states are not kept.

        Returns:
            :class:`MERTOutput` (``frame_mask`` as given).
        """
        if feature_grad_mult is not None and feature_grad_mult != 1.0:
            features = grad_multiply(features, feature_grad_mult)
        x = self.feature_projection(features)
        if mask is not None:
            if mask.shape != x.shape[:2]:
                raise ValueError(f"mask_time_indices must be (B, T) = {tuple(x.shape[:2])}; got {tuple(mask.shape)}")
            x = torch.where(mask[..., None], self.masked_spec_embed.to(x.dtype), x)
        enc = self.encoder
        zero_pad = (lambda y: y * frame_mask[..., None].to(y.dtype)) if frame_mask is not None else (lambda y: y)
        states: list[torch.Tensor] | None = [] if output_hidden_states else None

        def emit(index: int, state: torch.Tensor) -> None:
            if states is not None:
                states.append(state)
            if on_state is not None:
                on_state(index, state)

        x = zero_pad(x)
        x = x + enc.pos_conv_embed(x, frame_mask)
        if not self.config.do_stable_layer_norm:
            x = enc.layer_norm(x)
        x = enc.dropout(x)
        for i, layer in enumerate(enc.layers):
            if states is not None or on_state is not None:
                emit(i, zero_pad(x))
            if enc.training and layer_keep is not None:
                if not layer_keep[i]:
                    continue
            elif enc.training and self.config.layerdrop > 0 and torch.rand(()) < self.config.layerdrop:
                continue
            if enc.gradient_checkpointing and enc.training:
                x = checkpoint(layer, x, frame_mask, use_reentrant=False)
            else:
                x = layer(x, frame_mask)
        if self.config.do_stable_layer_norm:
            x = enc.layer_norm(x)
        x = zero_pad(x)
        emit(len(enc.layers), x)
        return MERTOutput(
            last_hidden_state=x,
            hidden_states=tuple(states) if states is not None else None,
            frame_mask=frame_mask,
            features=features if feature_grad_mult is not None else None,
        )

    # ------------------------------------------------------------------------------------------ checkpoints

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike | Mapping[str, torch.Tensor],
        config: MERTConfig | None = None,
        *,
        map_location: str | torch.device = "cpu",
    ) -> MERTModel:
        """Load a local HF directory (``config.json`` + ``model.safetensors`` / ``pytorch_model.bin``, sharded or not)
        or a state dict (with ``config``). Either weight-norm key style; a missing, unexpected or misshapen key is a
        ``ValueError`` listing them. The model is returned in eval mode. See :mod:`mert_fast.model.hf_checkpoint`."""
        config, state = hf_checkpoint.read_pretrained(path, config, map_location=map_location)
        model = cls(config, init_weights=False)
        model.load_hf_state_dict(state)
        return model.eval()

    def load_hf_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Load HF-style weights strictly (see :meth:`from_pretrained`)."""
        hf_checkpoint.load_hf_state_dict(self, state)

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write ``config.json`` + ``model.safetensors`` that ``transformers.HubertModel`` (``Data2VecAudioModel`` for
        the data2vec layout) loads with no missing or unexpected keys."""
        hf_checkpoint.save_pretrained(self, path)
