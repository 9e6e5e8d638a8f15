"""Pure-PyTorch references: the definitions every kernel is tested and benchmarked against.

Each reference is written for clarity, runs in float64 when asked (``upcast=True``) and shares no code
with the fast paths beyond the filter definitions themselves.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.signal
import torch
import torch.nn.functional as F

__all__ = ["cqt_frequencies", "cqt_kernels", "cqt_ref"]


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
    sample_rate: float = 24000,
    hop_length: int = 320,
    fmin: float = 32.7,
    n_bins: int = 336,
    bins_per_octave: int = 48,
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
