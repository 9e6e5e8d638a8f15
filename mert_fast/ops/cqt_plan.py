"""The frequency-domain filter plans of the constant-Q transform (:mod:`mert_fast.ops.cqt`).

A plan holds, for one filter bank, FFT length and device, each bin's filter spectrum truncated to its band and
folded to ``L = N / hop`` points, as a sparse CSR matrix from the clip's rFFT to the folded products (and its
conjugate transpose for the backward pass). Plans and the time-domain filter banks they start from are cached.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np
import torch

from mert_fast.ops.reference import cqt_kernels


class _Filters(NamedTuple):
    width: int  # W, the dense kernel width (filters centred at W // 2)
    half_support: int  # s: every filter is zero outside [-s, s] around its centre
    rows: torch.Tensor  # (nnz_t,) bin of each non-zero time-domain tap
    taps: torch.Tensor  # (nnz_t,) tap position relative to the centre
    values: torch.Tensor  # (nnz_t,) complex128 tap value
    lengths: torch.Tensor  # (n_bins,) float64 filter lengths


@functools.lru_cache(maxsize=8)
def _filters(key: tuple) -> _Filters:
    kernels, lengths = cqt_kernels(*key)
    width = kernels.shape[-1]
    rows, cols = torch.nonzero(kernels, as_tuple=True)
    taps = cols - width // 2
    return _Filters(width, int(taps.abs().max()), rows, taps, kernels[rows, cols], lengths)


def _smooth_at_least(n: int) -> int:
    """The smallest 2-3-5-smooth integer >= n (a fast FFT length)."""
    best = 1 << max(0, (n - 1).bit_length())
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            p = p35
            while p < n:
                p *= 2
            best = min(best, p)
            p35 *= 3
        p5 *= 5
    return best


def _band(mask: np.ndarray, n: int) -> tuple[int, int]:
    """The shortest circular range of [0, n) that holds every True of ``mask``: (start, length)."""
    idx = np.flatnonzero(mask)
    gaps = np.diff(idx)
    wrap_gap = idx[0] + n - idx[-1]
    if gaps.size == 0 or wrap_gap >= gaps.max():
        return int(idx[0]), int(idx[-1] - idx[0] + 1)
    g = int(np.argmax(gaps))
    return int(idx[g + 1]), int(idx[g] + n - idx[g + 1] + 1)


class CQTPlan(NamedTuple):
    """The truncated filter spectra for one FFT length on one device, as a sparse matrix.

    ``A`` maps the clip's spectrum to the folded products: row ``k * L + r`` sums
    ``conj(filter_k spectrum)[f] * sqrt(len_k) / hop * X[f]`` over the band frequencies ``f = r (mod L)``.
    Columns ``c < n_freq`` read the rfft bin ``c``; columns ``n_freq + c`` read its conjugate (frequencies above
    Nyquist, present only for filters whose band crosses it). Stored in CSR form, and its conjugate transpose
    for the backward pass.
    """

    n_fft: int  # N = n_fold * hop
    n_fold: int  # L
    n_bins: int  # K
    n_cols: int  # n_freq or 2 * n_freq
    crow: torch.Tensor  # (K * L + 1,) int64
    col: torch.Tensor  # (nnz,) int64
    val: torch.Tensor  # (nnz,) complex64 (complex128 for float64)
    crow_t: torch.Tensor  # (n_cols + 1,) int64, the conjugate transpose
    col_t: torch.Tensor  # (nnz,) int64
    val_t: torch.Tensor  # (nnz,) complex


def _csr(rows: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor, n_rows: int):
    order = torch.argsort(rows * (int(cols.max()) + 1) + cols)
    crow = torch.zeros(n_rows + 1, dtype=torch.int64)
    crow[1:] = torch.cumsum(torch.bincount(rows, minlength=n_rows), 0)
    return crow, cols[order], vals[order]


@functools.lru_cache(maxsize=32)
def _plan(key: tuple, hop: int, threshold: float, n_fold: int, device: torch.device, dtype: torch.dtype) -> CQTPlan:
    filt = _filters(key)
    n_fft = n_fold * hop
    n_freq = n_fft // 2 + 1
    n_bins = key[2]
    # float32 plans are built in complex64 (the spectra's rounding is ~1e-7 of the peak), on the target device
    spec_dtype = torch.complex128 if dtype == torch.float64 else torch.complex64
    rows = filt.rows.to(device)
    flat_taps = filt.taps.to(device) % n_fft
    values = filt.values.to(device=device, dtype=spec_dtype)
    scale = (filt.lengths.sqrt() / hop).to(device=device, dtype=spec_dtype)
    chunk = max(1, min(n_bins, (1 << 25) // n_fft))  # bounds the dense spectra held at once
    buf = torch.empty(chunk * n_fft, dtype=spec_dtype, device=device)
    bins, freqs, coefs = [], [], []
    for k0 in range(0, n_bins, chunk):
        n = min(n_bins, k0 + chunk) - k0
        sel = (rows >= k0) & (rows < k0 + n)
        wrapped = buf[: n * n_fft].zero_()
        wrapped.index_add_(0, (rows[sel] - k0) * n_fft + flat_taps[sel], values[sel])
        spec = torch.fft.fft(wrapped.view(n, n_fft))
        parts = torch.view_as_real(spec)
        power = parts[..., 0] * parts[..., 0]
        power.addcmul_(parts[..., 1], parts[..., 1])
        keep = (power >= threshold**2 * power.amax(dim=1, keepdim=True)).cpu().numpy()
        bands = [_band(keep[i], n_fft) for i in range(n)]
        lens = np.array([length for _, length in bands])
        k_of = np.repeat(np.arange(n), lens)
        f = np.repeat([lo for lo, _ in bands], lens) + np.arange(lens.sum()) - np.repeat(np.cumsum(lens) - lens, lens)
        f %= n_fft
        flat = torch.from_numpy(k_of * n_fft + f).to(device)
        k_dev = torch.from_numpy(k_of).to(device)
        # correlation with conj(filter) <=> product with conj(FFT(filter)) in frequency
        coefs.append(spec.view(-1)[flat].conj() * scale[k0 + k_dev])
        bins.append(torch.from_numpy(k_of + k0))
        freqs.append(torch.from_numpy(f))
    freq = torch.cat(freqs)
    upper = freq > n_fft // 2
    n_cols = 2 * n_freq if bool(upper.any()) else n_freq
    cols = torch.where(upper, n_freq + n_fft - freq, freq)
    rows_out = torch.cat(bins) * n_fold + freq % n_fold
    vals = torch.cat(coefs).cpu()
    crow, col, val = _csr(rows_out, cols, vals, n_bins * n_fold)
    crow_t, col_t, val_t = _csr(cols, rows_out, torch.conj_physical(vals), n_cols)
    on = lambda t: t.to(device)
    return CQTPlan(n_fft, n_fold, n_bins, n_cols, on(crow), on(col), on(val), on(crow_t), on(col_t), on(val_t))
