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
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from mert_fast.model.config import MERTConfig
from mert_fast.ops.attention import attention

__all__ = ["MERTModel", "MERTOutput"]

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
    """What :meth:`MERTModel.forward` returns.

    ``last_hidden_state`` ``(B, T, H)``; ``hidden_states`` a tuple of ``num_hidden_layers + 1`` tensors ``(B, T, H)``
    (HF semantics: the encoder input, then each layer's output; for the pre-LN layout the last one is after the
    final LayerNorm and the others are un-normalised) when asked for; ``frame_mask`` ``(B, T)`` bool, True on the
    frames each clip really has (None without an ``attention_mask``). Padded frames are 0 in every state.
    """

    last_hidden_state: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None = None
    frame_mask: torch.Tensor | None = None


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

    def forward(
        self,
        x: torch.Tensor,
        frame_mask: torch.Tensor | None,
        output_hidden_states: bool,
        layer_keep: list[bool] | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        """``layer_keep``: which layers run in training (LayerDrop); None draws them here with ``layerdrop``. Data
        parallel training passes one draw shared by every rank, so all ranks use the same parameters."""
        zero_pad = (lambda y: y * frame_mask[..., None].to(y.dtype)) if frame_mask is not None else (lambda y: y)
        x = zero_pad(x)
        x = x + self.pos_conv_embed(x, frame_mask)
        if not self.config.do_stable_layer_norm:
            x = self.layer_norm(x)
        x = self.dropout(x)
        states = [] if output_hidden_states else None
        for i, layer in enumerate(self.layers):
            if states is not None:
                states.append(zero_pad(x))
            if self.training and layer_keep is not None:
                if not layer_keep[i]:
                    continue
            elif self.training and self.config.layerdrop > 0 and torch.rand(()) < self.config.layerdrop:
                continue
            if self.gradient_checkpointing and self.training:
                x = checkpoint(layer, x, frame_mask, use_reentrant=False)
            else:
                x = layer(x, frame_mask)
        if self.config.do_stable_layer_norm:
            x = self.layer_norm(x)
        x = zero_pad(x)
        if states is not None:
            states.append(x)
        return x, (tuple(states) if states is not None else None)


# ---------------------------------------------------------------------------------------------- the model


class MERTModel(nn.Module):
    """MERT student. ``MERTModel(MERTConfig.from_name("mert-v1-95m"))`` or ``MERTModel.from_pretrained(path)``."""

    def __init__(self, config: MERTConfig, *, init_weights: bool = True) -> None:
        """``init_weights``: draw the weights as HF's ``HubertPreTrainedModel`` does (:meth:`init_weights`); False
        leaves PyTorch's per-module defaults, for a model whose weights are loaded next."""
        super().__init__()
        self.config = config
        self.feature_extractor = _FeatureEncoder(config)
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
        n = sample_lengths.to(torch.int64)
        for k, s in zip(self.config.conv_kernel, self.config.conv_stride, strict=True):
            n = torch.div(n - k, s, rounding_mode="floor") + 1
        return n.clamp_min(0)

    def extract_features(self, audio: torch.Tensor, attention_mask: torch.Tensor | None = None):
        """Conv features ``(B, T, C)`` and the frame mask ``(B, T)`` (None without ``attention_mask``)."""
        audio, lengths = self._check_inputs(audio, attention_mask)
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
        """Encode audio.

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
        x = self.feature_projection(feats)
        if mask_time_indices is not None:
            if mask_time_indices.shape != x.shape[:2]:
                raise ValueError(
                    f"mask_time_indices must be (B, T) = {tuple(x.shape[:2])}; got {tuple(mask_time_indices.shape)}"
                )
            x = torch.where(mask_time_indices[..., None], self.masked_spec_embed.to(x.dtype), x)
        last, states = self.encoder(x, frame_mask, output_hidden_states)
        return MERTOutput(last_hidden_state=last, hidden_states=states, frame_mask=frame_mask)

    def extract(
        self,
        audio: torch.Tensor,
        *,
        layers: list[int] | tuple[int, ...] | str | None = None,
        window_s: float | None = None,
        hop_s: float | None = None,
        chunk_s: float = 30.0,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Hidden states of audio of any length in memory linear in its length; see
        :func:`mert_fast.model.extract.extract` for every argument.

        ``audio`` ``(L,)`` -> ``(S, T, H)``; ``(B, L)`` -> ``(B, S, T, H)``; ``layers`` None (all
        ``num_hidden_layers + 1`` states), indices or ``"mean"``; ``window_s`` None for full context (the same
        states as :meth:`forward`), else sliding windows stitched by owner frame.
        """
        from mert_fast.model.extract import extract

        return extract(
            self, audio, layers=layers, window_s=window_s, hop_s=hop_s, chunk_s=chunk_s, attention_mask=attention_mask
        )

    def _check_inputs(self, audio: torch.Tensor, attention_mask: torch.Tensor | None):
        if not isinstance(audio, torch.Tensor):
            raise TypeError(f"audio must be a torch.Tensor; got {type(audio).__name__}")
        if not audio.is_floating_point():
            raise TypeError(f"audio must be a floating-point waveform; got {audio.dtype}")
        if audio.dim() == 1:
            audio = audio[None]
        if audio.dim() != 2:
            raise ValueError(f"audio must be mono, (B, L) or (L,); got shape {tuple(audio.shape)} (downmix first)")
        need = self.config.receptive_field
        if audio.shape[-1] < need:
            raise ValueError(f"audio must hold at least {need} samples (one frame); got {audio.shape[-1]}")
        if not torch.isfinite(audio).all():
            raise ValueError("audio contains NaN or inf values")
        param = self.masked_spec_embed
        if audio.device != param.device:
            raise ValueError(f"audio is on {audio.device} but the model is on {param.device}")
        audio = audio.to(param.dtype)
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
        if int(lengths.min()) < need:
            raise ValueError(f"attention_mask: every clip needs at least {need} real samples; got {int(lengths.min())}")
        return audio * mask.to(audio.dtype), lengths

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
        ``ValueError`` listing them. The model is returned in eval mode."""
        if isinstance(path, Mapping):
            if config is None:
                raise ValueError("config is required when loading from a state dict")
            state = dict(path)
        else:
            directory = Path(path)
            if not directory.is_dir():
                raise FileNotFoundError(f"path: no such model directory: {directory}")
            if config is None:
                cfg_file = directory / "config.json"
                if not cfg_file.is_file():
                    raise FileNotFoundError(f"path: {directory} has no config.json")
                config = MERTConfig.from_json_file(cfg_file)
            state = _read_weights(directory, map_location)
        model = cls(config, init_weights=False)
        model.load_hf_state_dict(state)
        return model.eval()

    def load_hf_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Load HF-style weights strictly (see :meth:`from_pretrained`)."""
        state = _normalise_keys(dict(state))
        own = self.state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        wrong = sorted(
            f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
            for k in set(own) & set(state)
            if state[k].shape != own[k].shape
        )
        if missing or unexpected or wrong:
            parts = []
            if missing:
                parts.append(f"missing keys: {', '.join(missing)}")
            if unexpected:
                parts.append(f"unexpected keys: {', '.join(unexpected)}")
            if wrong:
                parts.append(f"wrong shapes: {'; '.join(wrong)}")
            raise ValueError("checkpoint does not match the model: " + " | ".join(parts))
        self.load_state_dict(state, strict=True)

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write ``config.json`` + ``model.safetensors`` that ``transformers.HubertModel`` (``Data2VecAudioModel`` for
        the data2vec layout) loads with no missing or unexpected keys."""
        from safetensors.torch import save_file

        directory = Path(path)
        directory.mkdir(parents=True, exist_ok=True)
        self.config.to_json_file(directory / "config.json")
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})


_PREFIXES = ("hubert.", "data2vec_audio.", "mert.", "model.")


def _normalise_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip a common model prefix and map the old weight-norm names (``weight_g``/``weight_v``) or a fused weight
    onto the parametrization names this model (and current torch/transformers) uses."""
    for prefix in _PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    base = "encoder.pos_conv_embed.conv."
    renames = {
        base + "weight_g": base + "parametrizations.weight.original0",
        base + "weight_v": base + "parametrizations.weight.original1",
    }
    state = {renames.get(k, k): v for k, v in state.items()}
    fused = base + "weight"
    if fused in state and base + "parametrizations.weight.original0" not in state:
        weight = state.pop(fused)
        state[base + "parametrizations.weight.original0"] = torch.linalg.vector_norm(weight, dim=(0, 1), keepdim=True)
        state[base + "parametrizations.weight.original1"] = weight
    return state


def _read_weights(directory: Path, map_location) -> dict[str, torch.Tensor]:
    for index_name, single_name in (
        ("model.safetensors.index.json", "model.safetensors"),
        ("pytorch_model.bin.index.json", "pytorch_model.bin"),
    ):
        index = directory / index_name
        if index.is_file():
            try:
                with open(index, encoding="utf-8") as f:
                    files = sorted({str(v) for v in json.load(f)["weight_map"].values()})
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise ValueError(
                    f"{index}: expected a JSON object whose 'weight_map' maps weight names to files "
                    f"({type(exc).__name__}: {exc})"
                ) from None
        elif (directory / single_name).is_file():
            files = [single_name]
        else:
            continue
        state: dict[str, torch.Tensor] = {}
        for name in files:
            file = directory / name
            if not file.is_file():
                raise FileNotFoundError(f"{file}: weight file missing (named in {index})")
            try:
                if name.endswith(".safetensors"):
                    from safetensors.torch import load_file

                    state.update(load_file(str(file), device=str(map_location)))
                else:
                    state.update(torch.load(file, map_location=map_location, weights_only=True))
            except Exception as exc:  # safetensors and torch raise their own types for truncated or foreign bytes
                kind = "safetensors" if name.endswith(".safetensors") else "PyTorch"
                reason = " ".join(str(exc).split())[:200]
                raise ValueError(
                    f"{file}: not a readable {kind} weight file ({file.stat().st_size} bytes; truncated, empty or "
                    f"another format): {type(exc).__name__}: {reason}"
                ) from None
        return state
    raise FileNotFoundError(f"path: {directory} has no model.safetensors or pytorch_model.bin (sharded or not)")
