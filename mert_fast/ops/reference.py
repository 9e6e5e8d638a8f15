"""Pure-PyTorch references: the definitions every kernel is tested and benchmarked against.

Each reference is written for clarity, runs in float64 when asked (``upcast=True``) and shares no code
with the fast paths beyond the filter definitions themselves.
"""

from __future__ import annotations

import math
from types import MappingProxyType

import numpy as np
import scipy.signal
import torch
import torch.nn.functional as F

__all__ = [
    "MERT_CQT",
    "MERT_CQT_BINS_PER_OCTAVE",
    "MERT_CQT_FMIN",
    "MERT_CQT_HOP_LENGTH",
    "MERT_CQT_N_BINS",
    "MERT_CQT_SAMPLE_RATE",
    "attention_ref",
    "codebook_cross_entropy_ref",
    "cqt_frequencies",
    "cqt_kernels",
    "cqt_ref",
    "nearest_code_ref",
    "rvq_code_gaps_ref",
    "rvq_decode_ref",
    "rvq_encode_ref",
]

# MERT's musical teacher (nnAudio CQT1992v2 as MERT trains it), the defaults of every CQT in the package (this
# reference, mert_fast.ops.cqt, the CQT teacher) and of the benchmarks and the CLI: 24 kHz, hop 320 (75 Hz),
# 336 bins = 7 octaves from 32.7 Hz (C1), 48 per octave.
MERT_CQT_SAMPLE_RATE = 24000
MERT_CQT_HOP_LENGTH = 320
MERT_CQT_FMIN = 32.7
MERT_CQT_N_BINS = 336
MERT_CQT_BINS_PER_OCTAVE = 48
#: The same as keyword arguments of ``cqt`` / ``CQT`` / ``cqt_ref`` (the sample rate is the audio's).
MERT_CQT = MappingProxyType(
    {
        "hop_length": MERT_CQT_HOP_LENGTH,
        "fmin": MERT_CQT_FMIN,
        "n_bins": MERT_CQT_N_BINS,
        "bins_per_octave": MERT_CQT_BINS_PER_OCTAVE,
    }
)


def cqt_frequencies(fmin: float, n_bins: int, bins_per_octave: int) -> np.ndarray:
    """Centre frequency of every CQT bin in Hz, float64 ``(n_bins,)``."""
    return fmin * 2.0 ** (np.arange(n_bins, dtype=np.float64) / bins_per_octave)


def cqt_kernels(
    sample_rate: float,
    fmin: float,
    n_bins: int,
    bins_per_octave: int,
    filter_scale: float = 1.0,
    norm: int | None = 1,
    window: str | tuple = "hann",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Time-domain CQT filters with nnAudio ``CQT1992v2`` semantics, in float64.

    Returns ``(kernels, lengths)``: ``kernels`` complex128 ``(n_bins, W)`` with ``W`` the power of two that
    holds the longest filter, each filter centred at ``W // 2``; ``lengths`` float64 ``(n_bins,)``, the
    filter lengths ``ceil(Q * sr / f_k)`` with ``Q = filter_scale / (2 ** (1 / bins_per_octave) - 1)``.
    """
    freqs = cqt_frequencies(fmin, n_bins, bins_per_octave)
    if freqs[-1] > sample_rate / 2:
        raise ValueError(
            f"fmin/n_bins: the top bin is {freqs[-1]:.1f} Hz, above the Nyquist frequency {sample_rate / 2:.1f} Hz; "
            "lower fmin or n_bins"
        )
    q = float(filter_scale) / (2.0 ** (1.0 / bins_per_octave) - 1.0)
    lengths = np.ceil(q * sample_rate / freqs)
    width = int(2 ** math.ceil(math.log2(lengths.max())))
    kernels = np.zeros((n_bins, width), dtype=np.complex128)
    for k, (freq, length) in enumerate(zip(freqs, lengths, strict=True)):
        n = int(length)
        # Odd-length filters sit one sample left of centre, as nnAudio places them.
        start = int(math.ceil(width / 2.0 - n / 2.0)) - (n % 2)
        t = np.arange(-(n // 2) - (n % 2), n // 2, dtype=np.float64)
        sig = scipy.signal.get_window(window, n, fftbins=True) * np.exp(2j * np.pi * freq / sample_rate * t) / n
        if norm:
            sig = sig / np.linalg.norm(sig, norm)
        kernels[k, start : start + n] = sig
    return torch.from_numpy(kernels), torch.from_numpy(lengths)


def cqt_ref(
    audio: torch.Tensor,
    *,
    sample_rate: float = MERT_CQT_SAMPLE_RATE,
    hop_length: int = MERT_CQT_HOP_LENGTH,
    fmin: float = MERT_CQT_FMIN,
    n_bins: int = MERT_CQT_N_BINS,
    bins_per_octave: int = MERT_CQT_BINS_PER_OCTAVE,
    filter_scale: float = 1.0,
    norm: int | None = 1,
    window: str | tuple = "hann",
    center: bool = True,
    pad_mode: str = "constant",
    output: str = "magnitude",
    upcast: bool = True,
) -> torch.Tensor:
    """Constant-Q transform by dense strided correlation in the time domain (the definition).

    audio ``(T,)`` or ``(B, T)`` -> ``(B, n_bins, F)`` with ``F = T // hop_length + 1`` when centred.
    ``output``: ``"magnitude"``, ``"power"`` or ``"complex"`` (``sum_n x[n] * conj(kernel[n - t * hop])``).
    Computed in float64 when ``upcast`` (default), else in the input's dtype.
    """
    x = audio.reshape(1, -1) if audio.dim() == 1 else audio
    dtype = torch.float64 if upcast else x.dtype
    kernels, lengths = cqt_kernels(sample_rate, fmin, n_bins, bins_per_octave, filter_scale, norm, window)
    width = kernels.shape[-1]
    x = x.to(dtype)[:, None, :]
    if center:
        x = F.pad(x, (width // 2, width // 2), mode=pad_mode)
    kr = kernels.real.to(device=x.device, dtype=dtype)[:, None, :]
    ki = kernels.imag.to(device=x.device, dtype=dtype)[:, None, :]
    scale = lengths.sqrt().to(device=x.device, dtype=dtype)[:, None]
    real = F.conv1d(x, kr, stride=hop_length) * scale
    imag = -F.conv1d(x, ki, stride=hop_length) * scale
    if output == "complex":
        return torch.complex(real, imag)
    power = real**2 + imag**2
    return power if output == "power" else power.sqrt()


# ---------------------------------------------------------------------------------------------- residual VQ


def _code_distances(z: torch.Tensor, codes: torch.Tensor, metric: str) -> torch.Tensor:
    """Every distance of ``z`` ``(N, Dc)`` to ``codes`` ``(K, Dc)``, ``(N, K)``.

    ``"l2"``: ``sum((z - c) ** 2)`` from the differences themselves (``cdist`` without its matmul shortcut, which
    would cancel ``|z|^2 - 2 <z, c> + |c|^2``); ``"cosine"``: ``1 - <z/|z|, c/|c|>`` with a zero vector's cosine 0.
    """
    if metric == "cosine":
        return 1 - F.normalize(z, dim=-1) @ F.normalize(codes, dim=-1).T
    return torch.cdist(z, codes, compute_mode="donot_use_mm_for_euclid_dist").square()


def nearest_code_ref(
    x: torch.Tensor, codebook: torch.Tensor, *, metric: str = "l2", k: int = 1, upcast: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exhaustive nearest-code search (the definition of ``nearest_code``).

    x ``(N, D)``, codebook ``(K, D)``. Returns ``indices`` int64 and ``distances`` (squared L2 or
    ``1 - cosine``), ``(N,)`` for ``k == 1`` else ``(N, k)`` sorted by distance; equal distances resolve to the
    lowest index. Computed in float64 when ``upcast`` (default), else in x's dtype.
    """
    dtype = torch.float64 if upcast else x.dtype
    dist = _code_distances(x.to(dtype), codebook.to(device=x.device, dtype=dtype), metric)
    order = torch.sort(dist, dim=1, stable=True).indices[:, :k]
    values = dist.gather(1, order)
    return (order[:, 0], values[:, 0]) if k == 1 else (order, values)


def _stage_down(r, s, in_proj, in_bias):
    if in_proj is None:
        return r
    return F.linear(r, in_proj[s].to(r), None if in_bias is None else in_bias[s].to(r))


def _stage_up(code, s, out_proj, out_bias):
    if out_proj is None:
        return code
    return F.linear(code, out_proj[s].to(code), None if out_bias is None else out_bias[s].to(code))


def rvq_encode_ref(
    x: torch.Tensor,
    codebooks: torch.Tensor,
    *,
    metric: str = "l2",
    in_proj: torch.Tensor | None = None,
    in_bias: torch.Tensor | None = None,
    out_proj: torch.Tensor | None = None,
    out_bias: torch.Tensor | None = None,
    n_q: int | None = None,
    upcast: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Residual vector quantisation, stage by stage (the definition of ``rvq_encode``).

    x ``(N, D)`` or ``(B, T, D)``; codebooks ``(Q, K, Dc)``; optional in_proj ``(Q, Dc, D)``, in_bias ``(Q, Dc)``,
    out_proj ``(Q, D, Dc)``, out_bias ``(Q, D)``. Stage ``s``: ``z = in_proj[s] r + in_bias[s]``, the nearest code
    ``c`` of ``z`` (:func:`nearest_code_ref`), ``u = out_proj[s] c + out_bias[s]``, ``r -= u``. Returns ``codes``
    int64 ``(..., n_q)`` and ``quantized`` (the sum of the ``u``, x's shape), float64 when ``upcast``.
    """
    dtype = torch.float64 if upcast else x.dtype
    n_q = codebooks.shape[0] if n_q is None else n_q
    flat = x.reshape(-1, x.shape[-1]).to(dtype)
    resid, quant, codes = flat.clone(), torch.zeros_like(flat), []
    for s in range(n_q):
        book = codebooks[s].to(device=x.device, dtype=dtype)
        idx, _ = nearest_code_ref(_stage_down(resid, s, in_proj, in_bias), book, metric=metric, upcast=upcast)
        up = _stage_up(book[idx], s, out_proj, out_bias)
        resid, quant = resid - up, quant + up
        codes.append(idx)
    codes_t = torch.stack(codes, 1) if codes else flat.new_empty((flat.shape[0], 0), dtype=torch.int64)
    return codes_t.reshape(*x.shape[:-1], n_q), quant.reshape(x.shape)


def rvq_decode_ref(
    codes: torch.Tensor,
    codebooks: torch.Tensor,
    *,
    out_proj: torch.Tensor | None = None,
    out_bias: torch.Tensor | None = None,
    upcast: bool = True,
) -> torch.Tensor:
    """The sum over stages of the chosen codes (projected up): codes ``(..., q)`` -> ``(..., D)``."""
    dtype = torch.float64 if upcast else codebooks.dtype
    flat = codes.reshape(-1, codes.shape[-1])
    total = None
    for s in range(flat.shape[1]):
        up = _stage_up(codebooks[s].to(dtype)[flat[:, s]], s, out_proj, out_bias)
        total = up if total is None else total + up
    dim = out_proj.shape[1] if out_proj is not None else codebooks.shape[-1]
    if total is None:
        total = torch.zeros((flat.shape[0], dim), dtype=dtype, device=codes.device)
    return total.reshape(*codes.shape[:-1], dim)


def rvq_code_gaps_ref(
    x: torch.Tensor,
    codes: torch.Tensor,
    codebooks: torch.Tensor,
    *,
    metric: str = "l2",
    in_proj: torch.Tensor | None = None,
    in_bias: torch.Tensor | None = None,
    out_proj: torch.Tensor | None = None,
    out_bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """How far each given code is from the best one, in float64, with the residual the given codes produce.

    x ``(N, D)``, codes ``(N, q)``. Returns ``gap`` and ``scale``, float64 ``(N, q)``: ``gap`` = the given code's
    distance minus the minimum distance at that stage (0 when the code is a nearest one), and ``scale`` the
    magnitude a float rounding of the search scales with, so that ``gap <= rtol * scale`` means "a nearest code
    within rounding at relative precision ``rtol``". For ``"l2"``, ``scale = (A + max|c|)^2``; for
    ``"cosine"``, ``scale = A / |z|``; ``A`` bounds the searched vector's size, ``|W_in| (|x| + sum |u|) + |b_in|``
    over the stages so far (``W_in = 1`` without projection), since the residual's rounding grows with it.
    """
    x = x.to(torch.float64)
    resid = x.clone()
    reach = x.norm(dim=1)  # |x| + sum over earlier stages of |u|
    gaps, scales = [], []
    for s in range(codes.shape[1]):
        book = codebooks[s].to(device=x.device, dtype=torch.float64)
        z = _stage_down(resid, s, in_proj, in_bias)
        dist = _code_distances(z, book, metric)
        idx = codes[:, s].to(device=x.device, dtype=torch.int64)
        gaps.append(dist.gather(1, idx[:, None])[:, 0] - dist.min(1).values)
        size = reach
        if in_proj is not None:
            size = torch.linalg.matrix_norm(in_proj[s].double(), ord=2) * reach
            if in_bias is not None:
                size = size + in_bias[s].double().norm()
        if metric == "cosine":
            scales.append(size / z.norm(dim=1).clamp_min(1e-30))
        else:
            scales.append((size + book.norm(dim=1).max()) ** 2)
        up = _stage_up(book[idx], s, out_proj, out_bias)
        resid = resid - up
        reach = reach + up.norm(dim=1)
    empty = x.new_empty((x.shape[0], 0))
    return (torch.stack(gaps, 1), torch.stack(scales, 1)) if gaps else (empty, empty)


def attention_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    key_padding_mask: torch.Tensor | None = None,
    softmax_scale: float | None = None,
    keep_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    upcast: bool = True,
) -> torch.Tensor:
    """``softmax(q k^T * scale + mask) v``, by its definition (float64 when ``upcast``).

    ``q`` ``(B, H, T_q, D)``, ``k``/``v`` ``(B, H, T_k, D)``; ``key_padding_mask`` ``(B, T_k)`` bool, True = real
    key (when ``T_q == T_k`` it also marks query rows, whose output is 0); a row with no real key outputs 0.
    ``keep_mask`` ``(B, H, T_q, T_k)`` bool applies dropout: kept probabilities are scaled by
    ``1 / (1 - dropout_p)``, the others zeroed. ``scale`` defaults to ``1 / sqrt(D)``. Returns ``(B, H, T_q, D)``,
    float64 when ``upcast`` else q's dtype (computed in it). Differentiable.
    """
    if upcast:
        q, k, v = q.double(), k.double(), v.double()
    scale = 1.0 / math.sqrt(q.shape[-1]) if softmax_scale is None else softmax_scale
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    valid = torch.ones(scores.shape, dtype=torch.bool, device=scores.device)
    if key_padding_mask is not None:
        valid = valid & key_padding_mask[:, None, None, :]
        if q.shape[2] == k.shape[2]:
            valid = valid & key_padding_mask[:, None, :, None]
    scores = scores.masked_fill(~valid, float("-inf"))
    row_ok = valid.any(dim=-1, keepdim=True)
    probs = torch.softmax(scores.masked_fill(~row_ok, 0.0), dim=-1).masked_fill(~row_ok, 0.0)
    if keep_mask is not None:
        probs = probs * keep_mask / (1.0 - dropout_p)
    return torch.matmul(probs, v)


def codebook_cross_entropy_ref(
    x: torch.Tensor,
    codebooks: torch.Tensor,
    targets: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    temperature: float = 0.1,
    normalize: bool = True,
    reduction: str = "sum",
    ignore_index: int = -100,
    return_accuracy: bool = False,
    upcast: bool = True,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy over ``Q`` codebooks with the ``(S, Q, K)`` logits materialised (the definition).

    ``logits[s, q, k] = <x̂[s, q], ĉ[q, k]> / temperature + bias[q, k]`` with ``x̂ = F.normalize(x, eps=1e-8)``
    and ``ĉ`` likewise when ``normalize`` (cosine logits: ``torch.cosine_similarity``'s eps), else the raw
    vectors. x ``(S, Q, D)``, codebooks ``(Q, K, D)``, targets ``(S, Q)`` int64, bias ``(Q, K)``. The loss is
    summed (``"sum"``), averaged over the entries whose target is not ``ignore_index`` (``"mean"``; 0 when every
    entry is ignored) or returned per entry (``"none"``, ``(S, Q)``, 0 where ignored). With ``return_accuracy``
    also returns ``(Q,)`` int64 counts of ``argmax(logits) == target`` over non-ignored entries. Computed in
    float64 when ``upcast`` (default), else in x's dtype; differentiable in x, codebooks and bias.
    """
    dtype = torch.float64 if upcast else x.dtype
    xs, cs = x.to(dtype), codebooks.to(dtype)
    if normalize:
        xs, cs = F.normalize(xs, dim=-1, eps=1e-8), F.normalize(cs, dim=-1, eps=1e-8)
    logits = torch.einsum("sqd,qkd->sqk", xs, cs) / temperature
    if bias is not None:
        logits = logits + bias.to(dtype)
    n_s, n_q, n_k = logits.shape
    losses = F.cross_entropy(
        logits.reshape(n_s * n_q, n_k), targets.reshape(-1), ignore_index=ignore_index, reduction="none"
    ).view(n_s, n_q)
    valid = targets != ignore_index
    if reduction == "none":
        loss = losses
    elif reduction == "sum":
        loss = losses.sum()
    elif reduction == "mean":
        loss = losses.sum() / valid.sum().clamp_min(1)
    else:
        raise ValueError(f"reduction must be 'sum', 'mean' or 'none'; got {reduction!r}")
    if not return_accuracy:
        return loss
    hits = ((logits.argmax(-1) == targets) & valid).sum(0)
    return loss, hits
