"""In-memory feature extraction: hidden states of audio tensors of any length in bounded memory, sliding windows.

Full context (the default) gives exactly what :meth:`MERTModel.forward` gives, with memory linear in length:

- the conv feature encoder runs chunk by chunk. MERT's first conv layer is followed by a GroupNorm whose
  statistics cover the whole clip, so it takes two passes: pass 1 runs layer 0's conv over the clip in
  chunks and combines each channel's per-chunk sum and centred sum of squares (Chan et al.'s parallel
  variance, in float64); pass 2 recomputes layer 0 chunk by chunk, normalises it with those statistics and
  runs the rest of the conv stack. Output frame ``t`` depends only on samples ``[t * hop, t * hop + rf)``
  (hop 320, receptive field 400), so chunks of output frames read audio slices that overlap by
  ``rf - hop`` samples and every frame is computed exactly once, as in the unchunked encoder;
- :meth:`MERTModel.encode` (feature projection, positional conv, transformer) then runs over the whole clip,
  attention through :func:`mert_fast.ops.attention` (flash attention: memory linear in length), keeping only the
  requested layers as they are computed.

With a window (``window_s``), the clip is cut into equal windows on the frame grid, ``hop_s`` apart (the last
one ends at the clip's end), each window runs with full context inside it, and each output frame is taken
from the window that owns it: the one where it is farthest from either edge (the earlier one on a tie). The
result has the full-context frame count n(L).

The file driver behind ``mert-fast extract`` is :mod:`mert_fast.model.extract_files`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from mert_fast._checks import check_float, check_int, is_int

if TYPE_CHECKING:
    from mert_fast.model.mert import MERTModel

__all__ = [
    "conv_features_chunked",
    "encode_full_context",
    "extract",
    "resolve_layers",
    "window_lengths",
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
        if not is_int(i, integral=True):
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
    check_int("chunk_frames", chunk_frames, min=1, integral=True, expected="a positive integer")
    cfg = model.config
    if cfg.feature_extractor_type == "logmel":  # a fixed spectrogram, computed in blocks of frames already
        return model.feature_extractor(audio, lengths).transpose(1, 2)
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
    """Chunked conv encoder, then :meth:`MERTModel.encode` over the whole clip, keeping the requested states.

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
    num_states = model.config.num_hidden_layers + 1
    feats = conv_features_chunked(model, audio, lengths, chunk_frames=chunk_frames)
    frame_mask = None
    if lengths is not None:
        n = model.frame_lengths(lengths.to(audio.device))
        frame_mask = torch.arange(feats.shape[1], device=feats.device)[None, :] < n[:, None]
    mean = layers == "mean"
    slots = {i: j for j, i in enumerate(layers)} if not mean else {}
    batch, frames = feats.shape[:2]
    out = feats.new_zeros(
        batch, 1 if mean else len(layers), frames, model.config.hidden_size, dtype=torch.float32 if mean else None
    )

    def keep(index: int, state: torch.Tensor) -> None:  # states come with padded frames zeroed
        if mean:
            out[:, 0] += state.float()
        elif index in slots:
            out[:, slots[index]] = state

    last = model.encode(feats, frame_mask=frame_mask, on_state=keep).last_hidden_state
    if mean:
        out = (out / num_states).to(last.dtype)
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


def window_lengths(model: MERTModel, window_s: float, hop_s: float | None) -> tuple[int, int]:
    rate = model.config.frame_rate
    for name, value in (("window_s", window_s), ("hop_s", hop_s)):
        if value is not None:
            check_float(name, value, min=0, exclusive_min=True, finite=True, expected="a positive number of seconds")
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
    audio, lengths = model.check_inputs(audio, attention_mask)
    states = resolve_layers(layers, model.config.num_hidden_layers + 1)
    check_float("chunk_s", chunk_s, min=0, exclusive_min=True, expected="a positive number of seconds")
    check_int("batch_size", batch_size, min=1, integral=True, expected="a positive integer")
    chunk_frames = max(1, round(chunk_s * model.config.frame_rate))
    was_training = model.training
    model.eval()
    try:
        window_frames, hop_frames = window_lengths(model, window_s, hop_s) if window_s is not None else (0, 0)
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
