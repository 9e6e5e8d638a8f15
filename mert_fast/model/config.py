"""MERT model configuration: a validated dataclass, named presets, and HF ``config.json`` in and out."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import torch

from mert_fast._checks import check_int
from mert_fast._io import write_text

__all__ = ["CPU_SIZES", "MERTConfig", "PRESETS"]

_CONV_DIM = (512,) * 7
_CONV_KERNEL = (10, 3, 3, 3, 3, 2, 2)
_CONV_STRIDE = (5, 2, 2, 2, 2, 2, 2)


@dataclasses.dataclass
class MERTConfig:
    """Architecture of a MERT-style student (HuBERT / data2vec-audio layout). Field names follow HF ``HubertConfig``."""

    sample_rate: int = 24000
    """Input sampling rate in Hz (MERT-v1: 24 kHz; MERT-v0 and music2vec: 16 kHz)."""
    hidden_size: int = 768
    """Transformer width H."""
    num_hidden_layers: int = 12
    """Number of transformer layers."""
    num_attention_heads: int = 12
    """Attention heads; must divide ``hidden_size``."""
    intermediate_size: int = 3072
    """Feed-forward inner width."""
    hidden_act: str = "gelu"
    """Feed-forward activation (``gelu``, ``relu`` or ``gelu_new``... any of torch.nn.functional's names)."""
    conv_dim: tuple[int, ...] = _CONV_DIM
    """Channels of each conv feature-encoder layer."""
    conv_kernel: tuple[int, ...] = _CONV_KERNEL
    """Kernel size of each conv layer."""
    conv_stride: tuple[int, ...] = _CONV_STRIDE
    """Stride of each conv layer (their product is the hop: 320 samples)."""
    conv_bias: bool = False
    """Whether the conv layers have a bias."""
    feature_extractor_type: str = "conv"
    """``"conv"``: the learned conv feature encoder (MERT, HuBERT); ``"logmel"``: a fixed log-mel spectrogram of
    ``conv_dim[-1]`` bands on the conv stack's frames (:mod:`mert_fast.model.frontend`; ``conv_dim``,
    ``conv_kernel`` and ``conv_stride`` then hold one entry each, e.g. ``(128,)``, ``(400,)``, ``(320,)``). A
    log-mel model loads in mert_fast only: transformers has no such front end."""
    mel_n_fft: int = 2048
    """Window (FFT) length in samples of the ``logmel`` front end."""
    feat_extract_norm: str = "group"
    """``"group"``: GroupNorm(C, C) after conv layer 0 only (HuBERT/MERT); ``"layer"``: LayerNorm after every one."""
    feat_proj_layer_norm: bool = True
    """LayerNorm before the feature projection."""
    do_stable_layer_norm: bool = False
    """Pre-LN transformer with a final encoder LayerNorm (MERT-330M); post-LN otherwise (MERT-95M)."""
    pos_conv_style: str = "hubert"
    """``"hubert"``: one weight-normed conv (kernel ``num_conv_pos_embeddings``); ``"data2vec"``: a stack of
    ``conv_pos_layers`` plain convs with kernel ``conv_pos_kernel_size``, each followed by a LayerNorm."""
    num_conv_pos_embeddings: int = 128
    """Kernel of the positional conv (``hubert`` style)."""
    num_conv_pos_embedding_groups: int = 16
    """Groups of the positional conv(s)."""
    conv_pos_kernel_size: int = 19
    """Kernel of each stacked positional conv (``data2vec`` style)."""
    conv_pos_layers: int = 5
    """Number of stacked positional convs (``data2vec`` style)."""
    layer_norm_eps: float = 1e-5
    """LayerNorm epsilon."""
    attention_relax: float | None = None
    """MERT-330M's attention relaxation alpha (32). It equals the max-subtracted softmax the kernels compute, so
    it changes nothing numerically; kept for drop-in configs."""
    hidden_dropout: float = 0.1
    """Dropout on residual branches."""
    attention_dropout: float = 0.1
    """Dropout on attention probabilities."""
    activation_dropout: float = 0.0
    """Dropout after the feed-forward activation."""
    feat_proj_dropout: float = 0.1
    """Dropout after the feature projection."""
    layerdrop: float = 0.05
    """Probability of skipping a whole layer in training."""
    mask_time_prob: float = 0.05
    """HF field; > 0 keeps ``masked_spec_embed`` in HF models loaded from our checkpoints."""

    def __post_init__(self) -> None:
        self._check_types()
        for name in ("conv_dim", "conv_kernel", "conv_stride"):
            setattr(self, name, tuple(int(v) for v in getattr(self, name)))
        positive = (
            "sample_rate", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
            "num_conv_pos_embeddings", "num_conv_pos_embedding_groups", "conv_pos_kernel_size", "conv_pos_layers",
        )  # fmt: skip
        for name in positive:
            value = getattr(self, name)
            check_int(name, value, min=1, expected="a positive integer")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"num_attention_heads must divide hidden_size; got {self.num_attention_heads} and {self.hidden_size}"
            )
        if self.hidden_size % self.num_conv_pos_embedding_groups:
            raise ValueError(
                f"num_conv_pos_embedding_groups must divide hidden_size; got {self.num_conv_pos_embedding_groups}"
            )
        if not (len(self.conv_dim) == len(self.conv_kernel) == len(self.conv_stride) >= 1):
            raise ValueError(
                "conv_dim, conv_kernel and conv_stride must have the same positive length; got "
                f"{len(self.conv_dim)}, {len(self.conv_kernel)}, {len(self.conv_stride)}"
            )
        if min(self.conv_dim + self.conv_kernel + self.conv_stride) <= 0:
            raise ValueError("conv_dim, conv_kernel and conv_stride must hold positive integers")
        if self.feature_extractor_type not in ("conv", "logmel"):
            raise ValueError(f"feature_extractor_type must be 'conv' or 'logmel'; got {self.feature_extractor_type!r}")
        if self.feature_extractor_type == "logmel":
            check_int("mel_n_fft", self.mel_n_fft, min=self.receptive_field)
            if len(self.conv_dim) != 1:
                raise ValueError(f"the logmel front end takes one conv_dim entry (its mel bands); got {self.conv_dim}")
        if self.feat_extract_norm not in ("group", "layer"):
            raise ValueError(f"feat_extract_norm must be 'group' or 'layer'; got {self.feat_extract_norm!r}")
        if self.pos_conv_style not in ("hubert", "data2vec"):
            raise ValueError(f"pos_conv_style must be 'hubert' or 'data2vec'; got {self.pos_conv_style!r}")
        if self.hidden_act not in ("gelu", "relu", "gelu_new", "gelu_fast", "silu", "swish"):
            raise ValueError(
                f"hidden_act must be one of gelu, relu, gelu_new, gelu_fast, silu; got {self.hidden_act!r}"
            )
        if not self.layer_norm_eps > 0:
            raise ValueError(f"layer_norm_eps must be positive; got {self.layer_norm_eps!r}")
        for name in ("hidden_dropout", "attention_dropout", "activation_dropout", "feat_proj_dropout", "layerdrop"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1); got {value!r}")
        if self.attention_relax is not None and self.attention_relax <= 0:
            self.attention_relax = None  # MERT configs write -1 for "off"

    def _check_types(self) -> None:
        """Every field has its annotated type (a JSON string where a number belongs is an error, not a crash later);
        integers are accepted for float fields and converted."""
        for f in dataclasses.fields(self):
            value, kind = getattr(self, f.name), str(f.type)
            if kind == "float | None" and value is None:
                continue
            if kind == "bool":
                ok = isinstance(value, bool)
                expected = "true or false"
            elif kind == "int":
                ok = isinstance(value, int) and not isinstance(value, bool)
                expected = "an integer"
            elif kind in ("float", "float | None"):
                ok = isinstance(value, (int, float)) and not isinstance(value, bool)
                expected = "a number" + (" or null" if kind == "float | None" else "")
                if ok:
                    setattr(self, f.name, float(value))
            elif kind == "str":
                ok = isinstance(value, str)
                expected = "a string"
            else:  # tuple[int, ...]
                ok = isinstance(value, (list, tuple)) and all(
                    isinstance(v, int) and not isinstance(v, bool) for v in value
                )
                expected = "a list of integers"
            if not ok:
                raise ValueError(f"{f.name} must be {expected}; got {value!r} ({type(value).__name__})")

    # ------------------------------------------------------------------------------------------ derived facts

    @property
    def hop_length(self) -> int:
        """Samples per output frame (320 for MERT)."""
        hop = 1
        for s in self.conv_stride:
            hop *= s
        return hop

    @property
    def frame_rate(self) -> float:
        """Output frames per second (75 Hz for MERT-v1)."""
        return self.sample_rate / self.hop_length

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def num_frames(self, num_samples: int) -> int:
        """Frames the conv encoder gives for a clip of ``num_samples`` (n(L) = floor((L - 400) / 320) + 1 for MERT)."""
        n = int(num_samples)
        for k, s in zip(self.conv_kernel, self.conv_stride, strict=True):
            n = (n - k) // s + 1 if n >= k else 0
        return max(n, 0)

    def frame_counts(self, sample_lengths: torch.Tensor) -> torch.Tensor:
        """:meth:`num_frames` of each of ``sample_lengths`` ``(B,)``: ``(B,)`` int64 on their device."""
        n = sample_lengths.to(torch.int64)
        for k, s in zip(self.conv_kernel, self.conv_stride, strict=True):
            n = torch.div(n - k, s, rounding_mode="floor") + 1
        return n.clamp_min(0)

    @property
    def receptive_field(self) -> int:
        """Samples one output frame sees (400 for MERT)."""
        field, jump = 1, 1
        for k, s in zip(self.conv_kernel, self.conv_stride, strict=True):
            field += (k - 1) * jump
            jump *= s
        return field

    # ------------------------------------------------------------------------------------------ presets and files

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> MERTConfig:
        """A named preset with overrides: ``mert-v1-95m``, ``mert-v1-330m``, ``mert-v0``, ``music2vec-v1``, ``tiny``,
        ``small``."""
        if name not in PRESETS:
            raise ValueError(f"preset must be one of {', '.join(sorted(PRESETS))}; got {name!r}")
        return dataclasses.replace(PRESETS[name], **overrides)

    def shrunk(self, size: str = "tiny") -> MERTConfig:
        """This configuration with the sizes (layers, widths, heads, conv channels) of the CPU-scale preset ``size``
        (``tiny`` or ``small``): the same sample rate, layout and frame rate (``train.py --model-size tiny``)."""
        if size not in CPU_SIZES:
            raise ValueError(f"size must be one of {', '.join(CPU_SIZES)}; got {size!r}")
        sizes = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "conv_dim",
                 "num_conv_pos_embeddings", "num_conv_pos_embedding_groups", "attention_dropout")  # fmt: skip
        return dataclasses.replace(self, **{k: getattr(PRESETS[size], k) for k in sizes}, conv_pos_layers=2)

    def with_logmel_front_end(self, n_mels: int = 128, n_fft: int = 2048) -> MERTConfig:
        """This configuration with the log-mel front end (:mod:`mert_fast.model.frontend`) in place of the conv
        feature encoder: ``n_mels`` bands, a window of ``n_fft`` samples, the same frames (hop, receptive field)."""
        return dataclasses.replace(
            self,
            feature_extractor_type="logmel",
            mel_n_fft=n_fft,
            conv_dim=(n_mels,),
            conv_kernel=(self.receptive_field,),
            conv_stride=(self.hop_length,),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in dataclasses.fields(self)
        }

    def to_hf_dict(self) -> dict[str, Any]:
        """An HF ``config.json`` for ``HubertModel`` (or ``Data2VecAudioModel`` for the data2vec layout); a log-mel
        model's also names its front end, which only mert_fast reads."""
        common = {
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "intermediate_size": self.intermediate_size,
            "hidden_act": self.hidden_act,
            "feat_extract_activation": "gelu",
            "conv_dim": list(self.conv_dim),
            "conv_kernel": list(self.conv_kernel),
            "conv_stride": list(self.conv_stride),
            "num_feat_extract_layers": len(self.conv_dim),
            "conv_bias": self.conv_bias,
            "num_conv_pos_embedding_groups": self.num_conv_pos_embedding_groups,
            "layer_norm_eps": self.layer_norm_eps,
            "hidden_dropout": self.hidden_dropout,
            "attention_dropout": self.attention_dropout,
            "activation_dropout": self.activation_dropout,
            "feat_proj_dropout": self.feat_proj_dropout,
            "layerdrop": self.layerdrop,
            "mask_time_prob": self.mask_time_prob,
            "sample_rate": self.sample_rate,
        }
        if self.feature_extractor_type != "conv":
            common.update(feature_extractor_type=self.feature_extractor_type, mel_n_fft=self.mel_n_fft)
        if self.pos_conv_style == "data2vec":
            if self.feat_extract_norm != "layer" or self.do_stable_layer_norm:
                raise ValueError("the data2vec layout needs feat_extract_norm='layer' and a post-LN encoder")
            return {
                **common,
                "model_type": "data2vec-audio",
                "architectures": ["Data2VecAudioModel"],
                "num_conv_pos_embeddings": self.conv_pos_layers,
                "conv_pos_kernel_size": self.conv_pos_kernel_size,
            }
        out = {
            **common,
            "model_type": "hubert",
            "architectures": ["HubertModel"],
            "feat_extract_norm": self.feat_extract_norm,
            "feat_proj_layer_norm": self.feat_proj_layer_norm,
            "do_stable_layer_norm": self.do_stable_layer_norm,
            "num_conv_pos_embeddings": self.num_conv_pos_embeddings,
            "conv_pos_batch_norm": False,
        }
        if self.attention_relax is not None:
            out["attention_relax"] = self.attention_relax
        return out

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any]) -> MERTConfig:
        """Read an HF ``config.json`` dict: Hubert, MERT (``mert_model``) or Data2VecAudio field names."""
        model_type = str(d.get("model_type", "hubert")).lower()
        data2vec = model_type.startswith("data2vec")
        if d.get("conv_pos_batch_norm"):
            raise ValueError("config.json: conv_pos_batch_norm=True (a batch-normed positional conv) is not supported")
        if d.get("feature_extractor_cqt"):
            raise ValueError("config.json: feature_extractor_cqt=True (a CQT input branch) is not supported")
        if d.get("deepnorm"):
            # MERT's DeepNorm variant scales each residual by (2 * layers) ** 0.25 and its initialisation by the
            # inverse; no released MERT checkpoint uses it, so there are no weights to test an implementation against
            raise ValueError(
                "config.json: deepnorm=True (DeepNorm residual scaling) is not supported: the model would compute "
                "something else than the checkpoint was trained for; released MERT checkpoints have deepnorm=false"
            )
        kw: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name in d and f.name not in ("num_conv_pos_embeddings", "conv_pos_layers", "pos_conv_style"):
                kw[f.name] = d[f.name]
        if "hidden_dropout_prob" in d and "hidden_dropout" not in d:
            kw["hidden_dropout"] = d["hidden_dropout_prob"]
        if "attention_relax" in d:
            kw["attention_relax"] = d["attention_relax"]
        if data2vec:
            kw.update(
                pos_conv_style="data2vec",
                feat_extract_norm="layer",
                feat_proj_layer_norm=True,
                do_stable_layer_norm=False,
                conv_pos_layers=d.get("num_conv_pos_embeddings", 5),
                sample_rate=d.get("sample_rate", d.get("sampling_rate", 16000)),
            )
        else:
            kw["pos_conv_style"] = "hubert"
            kw["num_conv_pos_embeddings"] = d.get("num_conv_pos_embeddings", 128)
            kw.setdefault("sample_rate", d.get("sampling_rate", 24000 if "mert" in model_type else 16000))
        return cls(**kw)

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> MERTConfig:
        """Read an HF ``config.json`` (:meth:`from_hf_dict`).

        Raises:
            ValueError: the file is not JSON, not a JSON object, or a field is missing its type or range; one line
                that names the file and the field.
        """
        name = os.fspath(path)
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except UnicodeDecodeError as exc:
            raise ValueError(f"{name}: not a JSON text file ({exc.reason} at byte {exc.start})") from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"{name}: not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}") from None
        if not isinstance(data, dict):
            raise ValueError(f"{name}: expected a JSON object of config fields; got a JSON {type(data).__name__}")
        try:
            return cls.from_hf_dict(data)
        except (TypeError, ValueError) as exc:
            message = str(exc).removeprefix("config.json: ")
            raise ValueError(f"{name}: {message}") from None

    def to_json_file(self, path: str | os.PathLike) -> None:
        """Write the HF ``config.json`` (sorted keys) atomically."""
        write_text(path, json.dumps(self.to_hf_dict(), indent=2, sort_keys=True) + "\n")


PRESETS: dict[str, MERTConfig] = {
    "mert-v1-95m": MERTConfig(),
    "mert-v1-330m": MERTConfig(
        hidden_size=1024,
        num_hidden_layers=24,
        num_attention_heads=16,
        intermediate_size=4096,
        do_stable_layer_norm=True,
        attention_relax=32.0,
    ),
    # HuBERT-base-like student at 16 kHz / 50 Hz trained on k-means targets
    "mert-v0": MERTConfig(sample_rate=16000),
    # data2vec-audio architecture: LayerNorm in every conv layer, 5 stacked positional convs (k=19)
    "music2vec-v1": MERTConfig(
        sample_rate=16000,
        feat_extract_norm="layer",
        conv_bias=True,
        pos_conv_style="data2vec",
        conv_pos_layers=5,
        conv_pos_kernel_size=19,
    ),
    # a few small layers for CPU tests and the demo (MERT's conv stack, narrow)
    "tiny": MERTConfig(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        conv_dim=(32,) * 7,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
        # on the CPU, attention dropout regenerates its counter-based mask in PyTorch (slow); the demo trains without
        attention_dropout=0.0,
    ),
    # the CPU recipe's wider student: 4 x 256 (3.5M parameters with the log-mel front end), minutes a thousand steps
    "small": MERTConfig(
        hidden_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=1024,
        conv_dim=(64,) * 7,
        num_conv_pos_embeddings=32,
        num_conv_pos_embedding_groups=8,
        attention_dropout=0.0,
    ),
}

#: The presets :meth:`MERTConfig.shrunk` (and ``train.py --model-size``) can shrink another preset to.
CPU_SIZES = ("tiny", "small")
