"""Feature extraction at scale: long audio in bounded memory, sliding windows, and the ``mert-fast extract`` driver.

Full context (the default) gives exactly what :meth:`MERTModel.forward` gives, with memory linear in length:

- the conv feature encoder runs chunk by chunk. MERT's first conv layer is followed by a GroupNorm whose
  statistics cover the whole clip, so it takes two passes: pass 1 runs layer 0's conv over the clip in
  chunks and combines each channel's per-chunk sum and centred sum of squares (Chan et al.'s parallel
  variance, in float64); pass 2 recomputes layer 0 chunk by chunk, normalises it with those statistics and
  runs the rest of the conv stack. Output frame ``t`` depends only on samples ``[t * hop, t * hop + rf)``
  (hop 320, receptive field 400), so chunks of output frames read audio slices that overlap by
  ``rf - hop`` samples and every frame is computed exactly once, as in the unchunked encoder;
- the feature projection, positional conv and transformer then run over the whole clip, attention through
  :func:`mert_fast.ops.attention` (flash attention: memory linear in length), keeping only the requested
  layers.

With a window (``window_s``), the clip is cut into equal windows on the frame grid, ``hop_s`` apart (the last
one ends at the clip's end), each window runs with full context inside it, and each output frame is taken
from the window that owns it: the one where it is farthest from either edge (the earlier one on a tie). The
result has the full-context frame count n(L).

The second half of the module is the file driver behind ``mert-fast extract``: input discovery (files,
folders, CSV/txt manifests), sharding across ``torchrun`` ranks, padding-exact batches of similar-length
clips, atomic writes with a JSON sidecar per file, resumption and the run manifest.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import numbers
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from mert_fast.audio import AUDIO_EXTENSIONS, find_audio

if TYPE_CHECKING:
    from mert_fast.model.mert import MERTModel

__all__ = [
    "AUDIO_EXTENSIONS",
    "ExtractionResult",
    "conv_features_chunked",
    "encode_full_context",
    "extract",
    "iter_audio_files",
    "load_model",
    "resolve_layers",
    "run_extraction",
    "weights_sha256",
    "window_owners",
    "window_starts",
]

logger = logging.getLogger(__name__)


LayerSpec = Sequence[int] | str | None


# ============================================================================================== tensors


def resolve_layers(layers: LayerSpec, num_states: int) -> list[int] | str:
    """Hidden-state indices from ``layers``: None or ``"all"`` -> every state ``[0, num_states)``; ``"mean"`` ->
    ``"mean"`` (their average); a sequence of ints (negative counts from the end) -> those, in that order."""
    if layers is None or (isinstance(layers, str) and layers == "all"):
        return list(range(num_states))
    if isinstance(layers, str):
        if layers == "mean":
            return "mean"
        raise ValueError(f"layers must be None, 'all', 'mean' or a sequence of ints; got {layers!r}")
    out = []
    for i in layers:
        if isinstance(i, bool) or not isinstance(i, numbers.Integral):
            raise TypeError(f"layers must hold ints; got {i!r}")
        if not -num_states <= i < num_states:
            raise ValueError(f"layers: index {i} is out of range for {num_states} hidden states [0, {num_states})")
        out.append(int(i) % num_states)
    if not out:
        raise ValueError("layers must name at least one hidden state")
    return out


def _group_norm_stats(
    conv: torch.nn.Conv1d,
    audio: torch.Tensor,
    valid: torch.Tensor,
    chunk_frames: int,
    eps: float,
    first_chunk: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pass 1: per-clip, per-channel mean and 1/std of layer 0's conv output over each clip's valid frames
    (population variance, as GroupNorm takes it).

    audio ``(B, L)``; valid ``(B,)`` int64 valid layer-0 frames; ``first_chunk``: layer 0's output for the first
    chunk when the caller has it already. Returns mean and rstd, ``(B, C, 1)`` float32.
    """
    k, s = conv.kernel_size[0], conv.stride[0]
    total = (audio.shape[-1] - k) // s + 1
    batch, device = audio.shape[0], audio.device
    count = torch.zeros(batch, 1, dtype=torch.float64, device=device)
    mean = torch.zeros(batch, conv.out_channels, dtype=torch.float64, device=device)
    m2 = torch.zeros_like(mean)
    for i0 in range(0, total, chunk_frames):
        i1 = min(total, i0 + chunk_frames)
        y = first_chunk if i0 == 0 and first_chunk is not None else conv(audio[:, None, i0 * s : (i1 - 1) * s + k])
        y = y.float()  # (B, C, n): the values GroupNorm sees
        n_c = (valid - i0).clamp(0, i1 - i0)  # valid frames of each clip in this chunk
        if bool((n_c == i1 - i0).all()):
            var_c, mean_c = torch.var_mean(y, dim=-1, correction=0)
        else:  # a padded batch: each clip over its own valid frames
            var_c, mean_c = torch.zeros(2, batch, conv.out_channels, device=device)
            for b in range(batch):
                if n_c[b] > 0:
                    var_c[b], mean_c[b] = torch.var_mean(y[b, :, : int(n_c[b])], dim=-1, correction=0)
        n_c = n_c.double()[:, None]
        # Chan et al.: merge the chunk's (count, mean, M2) into the running ones
        n_new = count + n_c
        delta = mean_c.double() - mean
        mean = mean + delta * (n_c / n_new.clamp_min(1))
        m2 = m2 + var_c.double() * n_c + delta**2 * (count * n_c / n_new.clamp_min(1))
        count = n_new
    var = m2 / count.clamp_min(1)
    rstd = torch.rsqrt(var + eps)
    return mean.float()[..., None], rstd.float()[..., None]


@torch.no_grad()
def conv_features_chunked(
    model: MERTModel, audio: torch.Tensor, lengths: torch.Tensor | None = None, *, chunk_frames: int = 2250
) -> torch.Tensor:
    """The conv feature encoder over ``audio`` in chunks of ``chunk_frames`` output frames (two-pass GroupNorm).

    Args:
        model: the MERT student (its ``feature_extractor`` weights are used).
        audio: ``(B, L)`` in the model's dtype and device, zero past each clip's length.
        lengths: ``(B,)`` int64 real samples per clip (a padded batch), or None (every sample real).
        chunk_frames: output frames per chunk (> 0); layer 0 is computed ``chunk_frames * hop / stride_0`` frames
            at a time. Peak memory is O(chunk) on top of the ``(B, T, C)`` result.

    Returns:
        ``(B, T, C)`` in audio's dtype, ``T = config.num_frames(L)``: equal to ``model.extract_features`` up to
        float rounding (frames past a clip's own count are whatever the padding gives; mask them).
    """
    if isinstance(chunk_frames, bool) or not isinstance(chunk_frames, numbers.Integral) or chunk_frames <= 0:
        raise ValueError(f"chunk_frames must be a positive integer; got {chunk_frames!r}")
    cfg = model.config
    conv_layers = model.feature_extractor.conv_layers
    first = conv_layers[0]
    hop, rf = cfg.hop_length, cfg.receptive_field
    batch, num_samples = audio.shape
    frames = cfg.num_frames(num_samples)
    scale = shift = single = None
    if first.norm_kind == "group":
        k0, s0 = cfg.conv_kernel[0], cfg.conv_stride[0]
        lengths = lengths if lengths is not None else torch.full((batch,), num_samples, device=audio.device)
        valid0 = torch.div(lengths.to(audio.device) - k0, s0, rounding_mode="floor") + 1
        if frames <= chunk_frames:  # one chunk: layer 0 once, statistics from it (no second pass needed)
            single = first.conv(audio[:, None, :])
        norm = first.layer_norm
        mean, rstd = _group_norm_stats(
            first.conv, audio, valid0, single.shape[-1] if single is not None else chunk_frames * hop // s0,
            norm.eps, single,
        )  # fmt: skip
        scale = rstd * norm.weight.float()[None, :, None]
        shift = norm.bias.float()[None, :, None] - mean * scale
    out = audio.new_empty(batch, frames, cfg.conv_dim[-1])
    for t0 in range(0, frames, chunk_frames):
        t1 = min(frames, t0 + chunk_frames)
        x = audio[:, None, t0 * hop : (t1 - 1) * hop + rf]
        if scale is None:
            y = first(x, None)
        else:
            y = single[..., : (t1 - 1) * hop // s0 + (rf - k0) // s0 + 1] if single is not None else first.conv(x)
            y = F.gelu(torch.addcmul(shift, y.float(), scale).to(y.dtype))  # GroupNorm as one multiply-add
        for layer in conv_layers[1:]:
            y = layer(y, None)
        if y.shape[-1] != t1 - t0:  # the frame grid is aligned by construction; a mismatch is a bug
            raise RuntimeError(f"chunk [{t0}, {t1}) gave {y.shape[-1]} frames")
        out[:, t0:t1] = y.transpose(1, 2)
    return out


@torch.no_grad()
def encode_full_context(
    model: MERTModel,
    audio: torch.Tensor,
    lengths: torch.Tensor | None,
    layers: list[int] | str,
    *,
    chunk_frames: int = 2250,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Chunked conv encoder, then projection, positional conv and transformer over the whole clip.

    Args:
        model: the MERT student, in eval mode.
        audio: ``(B, L)`` in the model's dtype and device, zero past each clip's length.
        lengths: ``(B,)`` int64 real samples per clip, or None.
        layers: hidden-state indices (see :func:`resolve_layers`) or ``"mean"``.
        chunk_frames: conv-encoder chunk in output frames.

    Returns:
        ``(B, S, T, H)`` in the model's dtype (``S = len(layers)``, 1 for ``"mean"``; padded frames are 0) and the
        ``(B, T)`` bool frame mask (None without ``lengths``).
    """
    cfg = model.config
    feats = conv_features_chunked(model, audio, lengths, chunk_frames=chunk_frames)
    frame_mask = None
    if lengths is not None:
        n = model.frame_lengths(lengths.to(audio.device))
        frame_mask = torch.arange(feats.shape[1], device=feats.device)[None, :] < n[:, None]
    x = model.feature_projection(feats)
    del feats
    enc = model.encoder
    zero_pad = (lambda y: y * frame_mask[..., None].to(y.dtype)) if frame_mask is not None else (lambda y: y)
    num_states = cfg.num_hidden_layers + 1
    mean = layers == "mean"
    slots = {i: j for j, i in enumerate(layers)} if not mean else {}
    out_dtype = torch.float32 if mean else x.dtype
    out = x.new_zeros(x.shape[0], 1 if mean else len(layers), x.shape[1], x.shape[2], dtype=out_dtype)

    def keep(index: int, state: torch.Tensor) -> None:
        if mean:
            out[:, 0] += zero_pad(state).float()
        elif index in slots:
            out[:, slots[index]] = zero_pad(state)

    # the order of _Encoder.forward in eval mode, keeping only the requested states
    x = zero_pad(x)
    x = x + enc.pos_conv_embed(x, frame_mask)
    if not cfg.do_stable_layer_norm:
        x = enc.layer_norm(x)
    for index, layer in enumerate(enc.layers):
        keep(index, x)
        x = layer(x, frame_mask)
    if cfg.do_stable_layer_norm:
        x = enc.layer_norm(x)
    keep(num_states - 1, x)
    if mean:
        out = (out / num_states).to(x.dtype)
    return out, frame_mask


def window_starts(num_frames: int, window_frames: int, hop_frames: int) -> list[int]:
    """First frame of each window: ``0, hop, 2 hop, ...`` and a last one ending at ``num_frames``; one window
    (the whole clip) when it fits in one."""
    if num_frames <= window_frames:
        return [0]
    starts = list(range(0, num_frames - window_frames, hop_frames))
    starts.append(num_frames - window_frames)
    return starts


def window_owners(starts: Sequence[int], window_frames: int, num_frames: int) -> np.ndarray:
    """Owner window of each frame: the window where the frame is farthest from an edge, the earlier one on a tie.

    Returns ``(num_frames,)`` int64 indices into ``starts``.
    """
    best = np.full(num_frames, -1, dtype=np.int64)
    owner = np.full(num_frames, -1, dtype=np.int64)
    for k, a in enumerate(starts):
        b = min(a + window_frames, num_frames)
        j = np.arange(b - a)
        dist = np.minimum(j, (b - a) - 1 - j)
        better = dist > best[a:b]
        best[a:b] = np.where(better, dist, best[a:b])
        owner[a:b] = np.where(better, k, owner[a:b])
    if (owner < 0).any():
        raise RuntimeError("windows do not cover every frame")  # window_starts guarantees coverage
    return owner


def _window_frames(model: MERTModel, window_s: float, hop_s: float | None) -> tuple[int, int]:
    rate = model.config.frame_rate
    for name, value in (("window_s", window_s), ("hop_s", hop_s)):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0
        ):
            raise ValueError(f"{name} must be a positive number of seconds; got {value!r}")
    window_frames = round(window_s * rate)
    if window_frames < 2:
        raise ValueError(f"window_s must cover at least 2 frames ({2 / rate:.4f} s); got {window_s}")
    hop_frames = round((hop_s if hop_s is not None else window_s / 2) * rate)
    if not 1 <= hop_frames <= window_frames:
        raise ValueError(f"hop_s must be between one frame ({1 / rate:.4f} s) and window_s ({window_s}); got {hop_s}")
    return window_frames, hop_frames


@torch.no_grad()
def _extract_windows(
    model: MERTModel, audio: torch.Tensor, layers: list[int] | str, window_frames: int, hop_frames: int, batch: int
) -> torch.Tensor:
    """One clip ``(L,)`` -> ``(S, T, H)``, windows stitched by owner frame."""
    cfg = model.config
    hop, rf = cfg.hop_length, cfg.receptive_field
    frames = cfg.num_frames(audio.shape[-1])
    starts = window_starts(frames, window_frames, hop_frames)
    if len(starts) == 1:
        return encode_full_context(model, audio[None], None, layers)[0][0]
    owner = torch.from_numpy(window_owners(starts, window_frames, frames))
    span = (window_frames - 1) * hop + rf
    out = None
    for b0 in range(0, len(starts), batch):
        group = starts[b0 : b0 + batch]
        clips = torch.stack([audio[a * hop : a * hop + span] for a in group])
        states, _ = encode_full_context(model, clips, None, layers)  # (n, S, W, H)
        if out is None:
            out = states.new_zeros(states.shape[1], frames, states.shape[3])
        for i, a in enumerate(group):
            mine = torch.nonzero(owner[a : a + window_frames] == b0 + i).squeeze(1)
            if mine.numel():
                lo, hi = int(mine[0]), int(mine[-1]) + 1  # owned frames are contiguous
                out[:, a + lo : a + hi] = states[i, :, lo:hi]
    return out


@torch.no_grad()
def extract(
    model: MERTModel,
    audio: torch.Tensor,
    *,
    layers: LayerSpec = None,
    window_s: float | None = None,
    hop_s: float | None = None,
    chunk_s: float = 30.0,
    attention_mask: torch.Tensor | None = None,
    batch_size: int = 8,
) -> torch.Tensor:
    """Hidden states of audio of any length in memory linear in its length (see the module docstring).

    Args:
        model: the MERT student (run in eval mode whatever its mode; restored after).
        audio: ``(L,)`` or ``(B, L)`` float mono waveform at ``config.sample_rate``, on the model's device.
        layers: hidden states to keep: None or ``"all"`` (``num_hidden_layers + 1`` states, HF order), a sequence
            of indices (negative from the end), or ``"mean"`` (their average, one state).
        window_s: None for full context (exactly :meth:`MERTModel.forward`'s states); else sliding windows of
            this many seconds, each frame from the window that owns it.
        hop_s: seconds between window starts (default ``window_s / 2``); ignored without ``window_s``.
        chunk_s: seconds of output per conv-encoder chunk (memory, not results).
        attention_mask: ``(B, L)`` bool/int, 1 on real samples (a prefix of each row): a padded batch, each clip
            getting exactly what it gets alone.
        batch_size: windows per forward in window mode.

    Returns:
        ``(S, T, H)`` for ``(L,)`` audio, ``(B, S, T, H)`` for ``(B, L)`` audio, in the model's dtype;
        ``S`` = number of kept states, ``T = config.num_frames(L)``; frames past a clip's own count are 0.
    """
    single = isinstance(audio, torch.Tensor) and audio.dim() == 1
    audio, lengths = model._check_inputs(audio, attention_mask)
    states = resolve_layers(layers, model.config.num_hidden_layers + 1)
    if isinstance(chunk_s, bool) or not isinstance(chunk_s, numbers.Real) or not chunk_s > 0:
        raise ValueError(f"chunk_s must be a positive number of seconds; got {chunk_s!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}")
    chunk_frames = max(1, round(chunk_s * model.config.frame_rate))
    was_training = model.training
    model.eval()
    try:
        window_frames, hop_frames = _window_frames(model, window_s, hop_s) if window_s is not None else (0, 0)
        frames = model.config.num_frames(audio.shape[-1])
        if window_s is None or frames <= window_frames:  # every clip fits in one window: that is full context
            out, _ = encode_full_context(model, audio, lengths, states, chunk_frames=chunk_frames)
        else:
            outs = []
            for b in range(audio.shape[0]):
                n = int(lengths[b]) if lengths is not None else audio.shape[-1]
                o = _extract_windows(model, audio[b, :n], states, window_frames, hop_frames, batch_size)
                outs.append(F.pad(o, (0, 0, 0, frames - o.shape[1])))
            out = torch.stack(outs)
    finally:
        model.train(was_training)
    return out[0] if single else out


# ============================================================================================== files


@dataclasses.dataclass
class ExtractionResult:
    """What :func:`run_extraction` did: one entry per input of this rank (``input``, ``output``, ``status`` =
    ok / skipped / failed, ``reason``, ``duration_s``), and the manifest path."""

    entries: list[dict[str, Any]]
    manifest: Path

    def count(self, status: str) -> int:
        return sum(e["status"] == status for e in self.entries)

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [e for e in self.entries if e["status"] == "failed"]


def iter_audio_files(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """Audio files from ``inputs`` (files, folders, ``.txt``/``.csv`` manifests): :func:`mert_fast.audio.find_audio`."""
    return find_audio(inputs)


def _relative_outputs(files: Sequence[Path]) -> list[Path]:
    """Each file's path relative to the deepest folder holding all of them (unique because the paths are)."""
    if not files:
        return []
    root = Path(os.path.commonpath([str(f.parent) for f in files]))
    return [f.relative_to(root) for f in files]


def weights_sha256(model: torch.nn.Module) -> str:
    """SHA-256 of the state dict: every tensor's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def load_model(name: str | os.PathLike) -> tuple[MERTModel, str]:
    """A local HF model directory (:meth:`MERTModel.from_pretrained`) or a preset name (random weights from
    seed 0, with a warning). Returns the model in eval mode on the CPU and its identity for the sidecar."""
    from mert_fast.model.config import PRESETS, MERTConfig
    from mert_fast.model.mert import MERTModel

    path = Path(name)
    if path.is_dir():
        return MERTModel.from_pretrained(path), str(path.resolve())
    if str(name) in PRESETS:
        logger.warning("model %s is a preset with RANDOM weights (seed 0): the features mean nothing", name)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = MERTModel(MERTConfig.from_name(str(name)))
        return model.eval(), f"preset:{name}"
    raise ValueError(
        f"--model must be a local model directory (config.json + weights) or a preset ({', '.join(sorted(PRESETS))});"
        f" got {str(name)!r}"
    )


@contextlib.contextmanager
def _atomic(path: Path) -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder; on success it replaces ``path`` (no half-written files)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _write_json(path: Path, data: dict[str, Any]) -> None:
    with _atomic(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2)
            f.write("\n")


def _write_array(path: Path, array: np.ndarray, fmt: str) -> None:
    with _atomic(path) as tmp:
        if fmt == "npy":
            with open(tmp, "wb") as f:
                np.save(f, array)
        else:
            from safetensors.numpy import save_file

            save_file({"features": np.ascontiguousarray(array)}, str(tmp))


#: Sidecar fields that must equal the run's for a file to be skipped on a re-run.
_RESUME_KEYS = (
    "model", "model_sha256", "layers", "pool", "format", "dtype", "compute_dtype", "window_s", "hop_s",
    "sample_rate", "source_bytes", "source_mtime_ns",
)  # fmt: skip


def _done(output: Path, sidecar: Path, expected: dict[str, Any]) -> bool:
    if not (output.is_file() and sidecar.is_file()):
        return False
    try:
        with open(sidecar, encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return False
    return all(meta.get(k) == expected.get(k) for k in _RESUME_KEYS)


@dataclasses.dataclass
class _Item:
    index: int
    source: Path
    output: Path
    sidecar: Path
    settings: dict[str, Any]
    duration_s: float = 0.0


def run_extraction(
    inputs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    model: MERTModel,
    model_id: str,
    *,
    model_sha256: str | None = None,
    layers: LayerSpec = None,
    pool: str = "none",
    fmt: str = "npy",
    save_dtype: str = "float32",
    window_s: float | None = None,
    hop_s: float | None = None,
    batch_size: int = 8,
    max_batch_s: float = 60.0,
    chunk_s: float = 30.0,
    rank: int = 0,
    world_size: int = 1,
    progress: bool | None = None,
    decode_workers: int = 2,
) -> ExtractionResult:
    """Extract features for every audio file in ``inputs`` into ``out_dir`` (the ``mert-fast extract`` command).

    Output layout: for input ``<root>/a/b.flac`` (``<root>`` the deepest folder holding every input)
    ``out_dir/a/b.flac.npy`` (or ``.safetensors``, tensor ``features``) holding ``(S, T, H)`` (``pool="none"``)
    or ``(S, H)`` (``pool="mean"``: the average over frames), and ``out_dir/a/b.flac.json``, the sidecar; the
    run manifest is ``out_dir/manifest.json`` (``manifest.rank<R>.json`` under several ranks). A file is
    skipped when its output and sidecar exist and the sidecar matches this run's settings; a file that cannot
    be decoded, is empty or shorter than one frame fails, is listed, and the run goes on.

    Args:
        inputs: files, folders, ``.txt``/``.csv`` manifests (see :func:`iter_audio_files`).
        out_dir: output folder (created).
        model: the MERT student, on the device and in the dtype to compute in.
        model_id: its identity for the sidecars (a directory path or ``preset:<name>``).
        model_sha256: :func:`weights_sha256` of its weights (computed when None; pass the one of the float32
            weights so that runs in other dtypes name the same model).
        layers: as in :func:`extract`.
        pool: ``"none"`` or ``"mean"`` (over frames).
        fmt: ``"npy"`` or ``"safetensors"``.
        save_dtype: ``"float32"`` or ``"float16"`` for the saved arrays.
        window_s, hop_s: as in :func:`extract` (None: full context).
        batch_size: clips per padded batch (and windows per forward).
        max_batch_s: clips longer than this (or than ``window_s``) run one at a time.
        chunk_s: conv-encoder chunk in seconds.
        rank, world_size: this process takes input ``i`` when ``i % world_size == rank``.
        progress: tqdm bar (None: only on a terminal).
        decode_workers: threads decoding the next batch while the model runs.
    """
    from tqdm.auto import tqdm

    from mert_fast.audio import load_audio

    if pool not in ("none", "mean"):
        raise ValueError(f"pool must be 'none' or 'mean'; got {pool!r}")
    if fmt not in ("npy", "safetensors"):
        raise ValueError(f"format must be 'npy' or 'safetensors'; got {fmt!r}")
    if save_dtype not in ("float32", "float16"):
        raise ValueError(f"save_dtype must be 'float32' or 'float16'; got {save_dtype!r}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size={world_size}); got {rank}")
    cfg = model.config
    num_states = cfg.num_hidden_layers + 1
    states = resolve_layers(layers, num_states)
    if window_s is not None:
        _window_frames(model, window_s, hop_s)
        hop_s = hop_s if hop_s is not None else window_s / 2
    else:
        hop_s = None
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = iter_audio_files(inputs)
    if not files:
        raise ValueError("inputs: no audio files found")
    rel = _relative_outputs(files)
    param = next(model.parameters())
    common = {
        "model": model_id,
        "model_sha256": model_sha256 or weights_sha256(model),
        "layers": states,
        "num_hidden_states": num_states,
        "pool": pool,
        "format": fmt,
        "dtype": save_dtype,
        "compute_dtype": str(param.dtype).removeprefix("torch."),
        "window_s": window_s,
        "hop_s": hop_s,
        "sample_rate": cfg.sample_rate,
        "hop_length": cfg.hop_length,
        "receptive_field": cfg.receptive_field,
        "frame_rate": cfg.frame_rate,
        "frame_offset_s": cfg.receptive_field / 2 / cfg.sample_rate,
    }
    suffix = ".npy" if fmt == "npy" else ".safetensors"
    entries: list[dict[str, Any]] = []
    todo: list[_Item] = []
    mine = [i for i in range(len(files)) if i % world_size == rank]
    bar = tqdm(total=len(mine), unit="file", disable=None if progress is None else not progress, smoothing=0.1)
    manifest = out_dir / ("manifest.json" if world_size == 1 else f"manifest.rank{rank}.json")
    start = time.perf_counter()
    audio_s = 0.0

    def finish(item_or_path, status: str, reason: str | None = None, duration: float | None = None) -> None:
        nonlocal audio_s
        source = item_or_path.source if isinstance(item_or_path, _Item) else item_or_path
        output = item_or_path.output if isinstance(item_or_path, _Item) else None
        entries.append(
            {
                "input": str(source),
                "output": str(output.relative_to(out_dir)) if output is not None else None,
                "status": status,
                "reason": reason,
                "duration_s": duration,
            }
        )
        if status == "failed":
            logger.warning("%s: failed: %s", source, reason)
        if status == "ok" and duration:
            audio_s += duration
        bar.update(1)
        bar.set_postfix_str(f"{audio_s / 3600 / max(time.perf_counter() - start, 1e-9):.3g} audio-h/s")

    try:
        import soundfile as sf

        for i in mine:
            source = files[i]
            output = out_dir / rel[i].with_name(rel[i].name + suffix)
            sidecar = out_dir / rel[i].with_name(rel[i].name + ".json")
            try:
                st = source.stat()
                if st.st_size == 0:
                    raise ValueError("empty file (0 bytes)")
                info = sf.info(str(source))
                if info.frames == 0:
                    raise ValueError("the file holds no samples")
            except FileNotFoundError:
                finish(source, "failed", "file not found")
                continue
            except ValueError as exc:
                finish(source, "failed", str(exc))
                continue
            except (OSError, RuntimeError, sf.SoundFileError) as exc:
                finish(source, "failed", " ".join(f"cannot decode: {exc}".split()))
                continue
            settings = {**common, "source_bytes": st.st_size, "source_mtime_ns": st.st_mtime_ns}
            item = _Item(i, source, output, sidecar, settings, float(info.frames) / max(info.samplerate, 1))
            if _done(output, sidecar, settings):
                finish(item, "skipped", "output and sidecar match this run's settings", item.duration_s)
                continue
            todo.append(item)
        limit_s = min(max_batch_s, window_s) if window_s is not None else max_batch_s
        batches = _batches(sorted(todo, key=lambda it: it.duration_s), batch_size, limit_s)

        def decode(batch: list[_Item]) -> list[tuple[_Item, torch.Tensor | str]]:
            got = []
            for item in batch:
                try:
                    wave = load_audio(item.source, cfg.sample_rate)
                except (OSError, ValueError) as exc:
                    got.append((item, " ".join(str(exc).split())))
                    continue
                if wave.shape[-1] < cfg.receptive_field:
                    got.append((item, f"too short: {wave.shape[-1]} samples, one frame needs {cfg.receptive_field}"))
                    continue
                got.append((item, wave))
            return got

        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, decode_workers)) as pool_exec:
            futures: dict[int, concurrent.futures.Future] = {}

            def submit(j: int) -> None:
                if j < len(batches):
                    futures[j] = pool_exec.submit(decode, batches[j])

            for j in range(max(1, decode_workers)):
                submit(j)
            for n in range(len(batches)):
                decoded = futures.pop(n).result()
                submit(n + max(1, decode_workers))  # decode ahead while the model runs
                ready = []
                for item, wave in decoded:
                    if isinstance(wave, str):
                        finish(item, "failed", wave, item.duration_s)
                    else:
                        ready.append((item, wave))
                if ready:
                    _run_batch(model, ready, states, pool, fmt, save_dtype, window_s, hop_s, batch_size, chunk_s,
                               finish)  # fmt: skip
    finally:
        bar.close()
        entries.sort(key=lambda e: e["input"])
        _write_json(
            manifest,
            {
                "settings": {k: v for k, v in common.items()},
                "rank": rank,
                "world_size": world_size,
                "counts": {s: sum(e["status"] == s for e in entries) for s in ("ok", "skipped", "failed")},
                "files": entries,
            },
        )
    return ExtractionResult(entries=entries, manifest=manifest)


def _batches(items: list[_Item], batch_size: int, limit_s: float) -> list[list[_Item]]:
    """Consecutive items of a length-sorted list in batches of similar length: at most ``batch_size`` clips, the
    longest at most 1.25x the shortest; clips longer than ``limit_s`` alone."""
    out: list[list[_Item]] = []
    for item in items:
        last = out[-1] if out else None
        if (
            last is not None
            and item.duration_s <= limit_s
            and last[0].duration_s <= limit_s
            and len(last) < batch_size
            and item.duration_s <= 1.25 * max(last[0].duration_s, 1e-3)
        ):
            last.append(item)
        else:
            out.append([item])
    return out


def _run_batch(
    model: MERTModel,
    ready: list[tuple[_Item, torch.Tensor]],
    states: list[int] | str,
    pool: str,
    fmt: str,
    save_dtype: str,
    window_s: float | None,
    hop_s: float | None,
    batch_size: int,
    chunk_s: float,
    finish: Callable[..., None],
) -> None:
    """Run one padded batch (or one long clip) and write each clip's features and sidecar."""
    cfg = model.config
    device = next(model.parameters()).device
    lengths = [w.shape[-1] for _, w in ready]
    longest = max(lengths)
    audio = torch.zeros(len(ready), longest)
    for b, (_, w) in enumerate(ready):
        audio[b, : w.shape[-1]] = w
    mask = torch.arange(longest)[None, :] < torch.tensor(lengths)[:, None]
    try:
        out = extract(
            model,
            audio.to(device),
            layers=states,
            window_s=window_s,
            hop_s=hop_s,
            chunk_s=chunk_s,
            attention_mask=mask.to(device) if len(ready) > 1 else None,
            batch_size=batch_size,
        )
    except (RuntimeError, ValueError) as exc:  # e.g. out of memory: report these files, keep going
        logger.debug("batch of %d failed", len(ready), exc_info=True)
        for item, _ in ready:
            finish(item, "failed", f"extraction failed: {' '.join(str(exc).split())[:300]}", item.duration_s)
        return
    np_dtype = np.float16 if save_dtype == "float16" else np.float32
    for b, (item, wave) in enumerate(ready):
        frames = cfg.num_frames(wave.shape[-1])
        feats = out[b, :, :frames]
        feats = feats.float().mean(dim=1) if pool == "mean" else feats
        array = feats.float().cpu().numpy().astype(np_dtype)
        duration = wave.shape[-1] / cfg.sample_rate
        try:
            _write_array(item.output, array, fmt)
            _write_json(
                item.sidecar,
                {
                    **item.settings,
                    "source": str(item.source),
                    "output": item.output.name,
                    "shape": list(array.shape),
                    "num_samples": int(wave.shape[-1]),
                    "num_frames": frames,
                    "duration_s": duration,
                },
            )
        except OSError as exc:
            finish(item, "failed", f"cannot write output: {exc}", duration)
            continue
        finish(item, "ok", None, duration)
