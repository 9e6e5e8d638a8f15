"""Pre-training configuration: a validated dataclass with per-model presets (the MERT recipe's numbers).

Each field's documentation is the string literal under it; :func:`add_config_arguments` turns the fields into
command-line flags with that text as their help, so ``train.py`` declares none of them again.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import math
import textwrap
import types
import typing
from typing import Any

from mert_fast._checks import check_int
from mert_fast.model.config import CPU_SIZES, PRESETS, MERTConfig

__all__ = ["CHOICES", "TrainConfig", "add_config_arguments", "config_from_args", "field_docs", "model_config"]

#: The values a field that names one of a few options accepts.
CHOICES: dict[str, tuple[str, ...]] = {
    "preset": tuple(sorted(PRESETS)),
    "model_size": ("full", *CPU_SIZES),
    "front_end": ("conv", "logmel"),
    "objective": ("mert", "muq", "data2vec"),
    "teacher_type": ("mel-rvq", "kmeans"),
    "kmeans_feature": ("mfcc", "logmel"),
    "precision": ("fp32", "bf16", "fp16"),
    "clip_views": ("halves", "renders"),
    "teacher_view": ("own", "second"),
}


@dataclasses.dataclass
class TrainConfig:
    """Everything a pre-training run needs besides the DeepSpeed engine settings (``configs/ds_zero*.json``)."""

    preset: str = "tiny"
    """Model preset (``mert-v1-95m``, ``mert-v1-330m``, ``mert-v0``, ``music2vec-v1``, ``tiny``, ``small``)."""
    model_size: str = "full"
    """``full``: the preset's model; ``tiny``: the preset's layout, sample rate and recipe with the ``tiny`` preset's
    sizes (CPU smoke runs and tests of every objective); ``small``: the same with the ``small`` preset's (4 x 256,
    the wider student of the longer CPU recipe)."""
    front_end: str = "conv"
    """The student's feature extractor: ``conv`` (the preset's learned conv stack, as MERT) or ``logmel`` (a fixed
    128-band log-mel spectrogram on the same frames, as MuQ feeds its encoder; it learns the codes in minutes on a
    CPU, where a small conv stack does not, and loads in mert_fast only)."""
    data: str | None = None
    """Folder or manifest of audio; None trains on a synthetic corpus generated in ``output_dir/corpus``."""
    output_dir: str = "runs/mert-tiny"
    """Where metrics, the teacher, checkpoints and the exported model go (a preset's recipe: ``runs/PRESET``)."""
    teacher: str | None = None
    """The acoustic teacher: a fitted Mel-RVQ directory, or ``encodec:DIR`` (a local transformers EncodecModel,
    24 kHz, 8 codebooks at 6 kbps); None reuses ``output_dir/teacher`` or fits a Mel-RVQ teacher there first."""
    max_steps: int = 300
    """Optimizer steps to run."""
    seed: int = 0
    """Seed of every random draw (crops, masks, mixture, dropout): each is a function of (seed, step, rank, sample)."""
    log_every: int = 10
    """Steps between lines of ``metrics.jsonl``."""
    batch_size: int = 8
    """Clips per rank per micro-step."""
    grad_accum: int = 1
    """Micro-steps per optimizer step."""
    crop_seconds: float = 5.0
    """Crop length (330M: 5.12 s)."""
    min_crop_seconds: float = 3.0
    """Clips shorter than this are skipped; a batch is cut to its shortest crop."""
    lr: float = 5e-4
    """Peak learning rate."""
    warmup_steps: int = 32000
    """Linear warmup steps."""
    decay_steps: int | None = None
    """Steps of the polynomial decay to 0 (power 1); None: ``max_steps``."""
    weight_decay: float = 0.01
    """AdamW weight decay (betas 0.9, 0.98; eps 1e-6)."""
    clip_grad: float = 10.0
    """Gradient-norm clipping (330M: 1.0)."""
    feature_grad_mult: float = 0.1
    """Gradient scale into the conv feature encoder (330M: 1.0)."""
    freeze_feature_projection: bool = False
    """Keep the student's input projection (the LayerNorm and Linear from the front end's features to the hidden
    size) at its initialisation, so the encoder learns on a fixed random view of its features (a diagnostic: where
    pre-training spends the input projection)."""
    mask_prob: float = 0.8
    """Probability mass of span starts (fairseq compute_mask_indices)."""
    mask_length: int = 5
    """Span length in frames."""
    mixture_prob: float = 0.5
    """Probability that a clip gets in-batch noise segments."""
    mixture_max_segments: int = 3
    """At most this many segments per mixed clip."""
    mixture_seconds: tuple[float, float] = (0.5, 1.0)
    """Segment length range (330M: 0.5-1.5 s)."""
    loss_weights: tuple[float, float] = (10.0, 1.0)
    """Weights of the conv-feature L2 penalty and the CQT MSE (both times the masked-frame count)."""
    mfcc_weight: float = 0.0
    """Weight of a timbre term (``mert`` and ``muq``): the MSE of a linear head's prediction of the masked frames'
    13 MFCCs of the clean clip, each standardised over the step's masked frames, times the masked-frame count as
    the CQT term; 0: off (MERT's recipe)."""
    clip_weight: float = 0.0
    """Weight of a clip term (``mert`` and ``muq``): InfoNCE of matching each clip's first half to its second half
    among the batch's clips (mean-pooled output frames through a small projection head), times the masked-frame
    count; needs ``batch_size >= 2``; 0: off (MERT's recipe)."""
    paired_renders: bool = False
    """Draw a corpus's renders of one clip in pairs (``make-corpus --real --renders 2``: ``NAME.flac`` and
    ``NAME.r1.flac``, by default the same notes on other instruments), cropped at the same offset, ``batch_size // 2``
    pairs a step (and in validation). With ``clip_weight``, each clip's other render is among the clips its halves
    are told apart from: the same notes on other instruments, which only timbre tells apart. Needs an even
    ``batch_size``."""
    clip_views: str = "halves"
    """The two views the clip term matches: ``halves`` (a clip's first and second half) or ``renders`` (the two
    renders of a clip that ``paired_renders`` draws, each whole crop against its partner among the batch's other
    crops: with ``make-corpus --real --renders 2 --render-vary notes`` the same instruments on other notes)."""
    teacher_view: str = "own"
    """What the teachers (``mert`` and ``muq``: codes, CQT, MFCCs) hear: ``own``, each crop's clean clip (MERT's
    recipe); ``second``, with ``paired_renders``, both crops of a pair get the targets of the pair's second render:
    with ``make-corpus --real --ensemble --renders 2 --render-vary solo`` the top part's stem, so that the student
    predicts the top part's codes and CQT from the mixture (and from the stem itself)."""
    objective: str = "mert"
    """``mert`` (codes through cosine heads + CQT regression), ``muq`` (Mel-RVQ codes through linear heads, no CQT)
    or ``data2vec`` (music2vec: regress the EMA teacher's averaged top layers)."""
    teacher_type: str = "mel-rvq"
    """The acoustic teacher fitted when ``teacher`` is None: ``mel-rvq`` or ``kmeans`` (MERT-v0)."""
    kmeans_feature: str = "mfcc"
    """Features of a fitted k-means teacher: ``mfcc`` or ``logmel``."""
    ema_decay: tuple[float, float] = (0.999, 0.9999)
    """data2vec: the EMA decay, annealed linearly from the first to the second value..."""
    ema_anneal_steps: int = 30000
    """... over this many optimizer steps."""
    ema_top_k: int = 8
    """data2vec: the targets average the top K layers (all of them when the model has fewer)."""
    teacher_codebooks: int = 8
    """Mel-RVQ stages (label streams)."""
    teacher_codebook_size: int = 1024
    """Codes per stage."""
    teacher_fit_steps: int = 300
    """Adam steps when fitting the teacher."""
    teacher_fit_clips: int = 256
    """At most this many clips to fit the teacher on."""
    synthetic_clips: int = 64
    """Size of the synthetic corpus when no ``data`` is given."""
    num_workers: int = 2
    """DataLoader workers per rank."""
    precision: str | None = None
    """``fp32``, ``bf16`` or ``fp16``; None takes the DeepSpeed config's choice."""
    save_every: int = 1000
    """Steps between checkpoints (0: only at the end and on SIGTERM/SIGINT)."""
    keep_last: int = 3
    """Checkpoints kept in ``output_dir/checkpoints`` (older ones are deleted)."""
    val_data: str | None = None
    """Folder or manifest of held-out audio; None holds out ``val_fraction`` of ``data`` instead."""
    val_fraction: float = 0.0
    """Fraction of the training files held out for validation when ``val_data`` is None (chosen by file name)."""
    val_every: int = 1000
    """Steps between validations (and one at the end) when there is validation data."""
    profile_steps: int = 0
    """Steps traced by the torch profiler (after 2 warm-up steps) into ``output_dir/profile``; 0: off."""

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {', '.join(sorted(PRESETS))}; got {self.preset!r}")
        self.mixture_seconds = tuple(float(v) for v in self.mixture_seconds)
        self.loss_weights = tuple(float(v) for v in self.loss_weights)
        for name in ("max_steps", "log_every", "batch_size", "grad_accum", "mask_length", "teacher_codebooks",
                     "ema_top_k", "teacher_codebook_size", "synthetic_clips", "teacher_fit_clips"):  # fmt: skip
            check_int(name, getattr(self, name), min=1, expected="a positive integer")
        for name in ("warmup_steps", "teacher_fit_steps", "num_workers", "seed", "save_every", "keep_last",
                     "val_every", "profile_steps", "ema_anneal_steps"):  # fmt: skip
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0; got {getattr(self, name)!r}")
        if not 0 < self.min_crop_seconds <= self.crop_seconds:
            raise ValueError(f"min_crop_seconds must be in (0, crop_seconds]; got {self.min_crop_seconds}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive; got {self.lr}")
        if not 0 <= self.mask_prob <= 1 or not 0 <= self.mixture_prob <= 1:
            raise ValueError("mask_prob and mixture_prob must be in [0, 1]")
        if not 0 < self.mixture_seconds[0] <= self.mixture_seconds[1]:
            raise ValueError(
                f"mixture_seconds must be an increasing pair of positive lengths; got {self.mixture_seconds}"
            )
        if self.model_size not in CHOICES["model_size"]:
            raise ValueError(f"model_size must be one of {', '.join(CHOICES['model_size'])}; got {self.model_size!r}")
        if self.front_end not in CHOICES["front_end"]:
            raise ValueError(f"front_end must be conv or logmel; got {self.front_end!r}")
        if self.objective not in CHOICES["objective"]:
            raise ValueError(f"objective must be mert, muq or data2vec; got {self.objective!r}")
        if self.teacher_type not in CHOICES["teacher_type"]:
            raise ValueError(f"teacher_type must be mel-rvq or kmeans; got {self.teacher_type!r}")
        if self.kmeans_feature not in CHOICES["kmeans_feature"]:
            raise ValueError(f"kmeans_feature must be mfcc or logmel; got {self.kmeans_feature!r}")
        self.ema_decay = tuple(float(v) for v in self.ema_decay)
        if not 0 <= self.ema_decay[0] <= self.ema_decay[1] < 1:
            raise ValueError(f"ema_decay must be an increasing pair in [0, 1); got {self.ema_decay}")
        if self.precision is not None and self.precision not in CHOICES["precision"]:
            raise ValueError(f"precision must be fp32, bf16 or fp16; got {self.precision!r}")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1); got {self.val_fraction}")
        if self.keep_last < 1:
            raise ValueError(f"keep_last must be >= 1; got {self.keep_last}")
        if not isinstance(self.freeze_feature_projection, bool):
            raise TypeError(f"freeze_feature_projection must be a bool; got {self.freeze_feature_projection!r}")
        for name in ("mfcc_weight", "clip_weight"):
            value = getattr(self, name)
            if not value >= 0 or math.isinf(value):
                raise ValueError(f"{name} must be a finite number >= 0; got {value!r}")
            if value and self.objective == "data2vec":
                raise ValueError(f"{name}: the data2vec objective has no such term; use objective mert or muq")
        if not isinstance(self.paired_renders, bool):
            raise TypeError(f"paired_renders must be a bool; got {self.paired_renders!r}")
        if self.paired_renders and self.batch_size % 2:
            raise ValueError(f"batch_size: paired_renders takes clips in pairs, it must be even; got {self.batch_size}")
        if self.clip_views not in CHOICES["clip_views"]:
            raise ValueError(f"clip_views must be one of {', '.join(CHOICES['clip_views'])}; got {self.clip_views!r}")
        if self.clip_views == "renders" and not self.paired_renders:
            raise ValueError("clip_views: 'renders' matches the renders paired_renders draws; set paired_renders")
        if self.teacher_view not in CHOICES["teacher_view"]:
            raise ValueError(
                f"teacher_view must be one of {', '.join(CHOICES['teacher_view'])}; got {self.teacher_view!r}"
            )
        if self.teacher_view == "second" and not self.paired_renders:
            raise ValueError("teacher_view: 'second' hears the second render of the pairs paired_renders draws; set "
                             "paired_renders")  # fmt: skip
        if self.teacher_view == "second" and self.objective == "data2vec":
            raise ValueError("teacher_view: the data2vec teacher hears the student's input; use objective mert or muq")
        if self.clip_weight and self.batch_size < 2:
            raise ValueError(f"clip_weight: the clip term needs batch_size >= 2; got {self.batch_size}")
        if self.clip_grad < 0 or self.feature_grad_mult < 0:
            raise ValueError("clip_grad and feature_grad_mult must be >= 0")

    @classmethod
    def from_preset(cls, preset: str, **overrides: Any) -> TrainConfig:
        """The recipe for ``preset`` with ``overrides`` (None values are ignored)."""
        base = dict(_RECIPES.get(preset, {}), preset=preset, output_dir=f"runs/{preset}")
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**base)


# The step counts of the full-size pre-training recipes: 32k warm-up steps, 400k decay and total steps.
_PRETRAIN_SCHEDULE: dict[str, Any] = dict(warmup_steps=32000, decay_steps=400000, max_steps=400000)

_RECIPES: dict[str, dict[str, Any]] = {
    "mert-v1-95m": dict(_PRETRAIN_SCHEDULE, lr=5e-4, clip_grad=10.0),
    "mert-v1-330m": dict(
        _PRETRAIN_SCHEDULE,
        lr=1.5e-3,
        clip_grad=1.0,
        feature_grad_mult=1.0,
        crop_seconds=5.12,
        mixture_seconds=(0.5, 1.5),
    ),
    # HuBERT-style first iteration: k-means codes of MFCCs at 50 Hz (16 kHz audio), one label stream
    "mert-v0": dict(_PRETRAIN_SCHEDULE, lr=5e-4, teacher_type="kmeans", teacher_codebooks=1, teacher_codebook_size=100),
    # data2vec audio base: mask 0.65 of span 10, EMA 0.999 -> 0.9999 over 30k steps, top 8 layers, no mixture
    "music2vec-v1": dict(
        _PRETRAIN_SCHEDULE,
        lr=5e-4,
        objective="data2vec",
        mask_prob=0.65,
        mask_length=10,
        mixture_prob=0.0,
        feature_grad_mult=1.0,
    ),  # fmt: skip
    # CPU demo: a small corpus, a small teacher (4 x 32 codes), the log-mel front end, minutes on 2 cores
    "tiny": dict(
        front_end="logmel",
        teacher_codebooks=4,
        teacher_codebook_size=32,
        lr=2e-3,
        warmup_steps=30,
        max_steps=1000,
        batch_size=8,
        crop_seconds=4.0,
        teacher_fit_steps=60,
        log_every=10,
        clip_grad=10.0,
        save_every=250,
        val_fraction=0.1,
        val_every=250,
    ),  # fmt: skip
}


def model_config(cfg: TrainConfig) -> MERTConfig:
    """The student's configuration: the preset's, shrunk to the ``tiny`` or ``small`` sizes when ``model_size`` names
    one, with the log-mel front end when ``front_end`` is ``logmel``."""
    model_cfg = MERTConfig.from_name(cfg.preset)
    model_cfg = model_cfg.shrunk(cfg.model_size) if cfg.model_size != "full" else model_cfg
    return model_cfg.with_logmel_front_end() if cfg.front_end == "logmel" else model_cfg


def field_docs(cls: type) -> dict[str, str]:
    """The documentation of each field of the dataclass ``cls``: the string literal that follows the field in the
    class body (read from its source), whitespace collapsed to single spaces."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    docs = {}
    for node, following in zip(body, body[1:], strict=False):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            docs[node.target.id] = " ".join(following.value.value.split())
    return docs


#: Flags that differ from ``--field-name`` taking one value: their names and argparse options.
_FLAG_OPTIONS: dict[str, dict[str, Any]] = {
    "preset": {"default": "tiny"},
    "profile_steps": {"flags": ("--profile", "--profile-steps"), "nargs": "?", "const": 3, "metavar": "STEPS"},
}


def _value_type(annotation: Any) -> tuple[type, int | None]:
    """``(type, nargs)`` of a field's annotation: ``X | None`` -> X; ``tuple[X, ...]`` of n items -> (X, n)."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return _value_type(args[0])
    if typing.get_origin(annotation) is tuple:
        return args[0], len(args)
    return annotation, None


def add_config_arguments(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Add a flag for every :class:`TrainConfig` field (``--batch-size`` for ``batch_size``...), its help the
    field's documentation; an unset flag is None (the preset's recipe applies). Returns each field's flag."""
    docs = field_docs(TrainConfig)
    hints = typing.get_type_hints(TrainConfig)
    flags = {}
    for field in dataclasses.fields(TrainConfig):
        options = dict(_FLAG_OPTIONS.get(field.name, {}))
        names = options.pop("flags", ("--" + field.name.replace("_", "-"),))
        value_type, nargs = _value_type(hints[field.name])
        help_text = docs[field.name].replace("``", "").replace("%", "%%")
        if value_type is bool:  # a switch: given sets True, absent leaves the preset's value
            parser.add_argument(*names, dest=field.name, action="store_const", const=True, help=help_text)
            flags[field.name] = names[0]
            continue
        options.setdefault("nargs", nargs)
        options.setdefault("choices", CHOICES.get(field.name))
        options.setdefault("metavar", None if field.name in CHOICES else field.name.upper())
        parser.add_argument(*names, dest=field.name, type=value_type, help=help_text, **options)
        flags[field.name] = names[0]
    return flags


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The :class:`TrainConfig` of parsed :func:`add_config_arguments` flags: the preset's recipe with every flag
    that was given."""
    values = {field.name: getattr(args, field.name) for field in dataclasses.fields(TrainConfig)}
    return TrainConfig.from_preset(values.pop("preset"), **values)
