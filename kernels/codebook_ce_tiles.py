"""``@triton.jit`` helpers of the codebook cross-entropy kernels: the feature and codebook tile loads, a logits
tile, the per-frame reads and the logits gradient. Every helper is inlined into its caller."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _logits_tile(
    xt,
    ct,
    ix,
    q,
    cols,
    col_ok,
    nc_ptr,
    bias_ptr,
    n_k,
    scale,
    eps,
    HAS_BIAS: tl.constexpr,
    NORMALIZE: tl.constexpr,
    PRECISION: tl.constexpr,
    FP64: tl.constexpr,
):
    """``(BLOCK_S, BLOCK_K)`` logits and the codebook rows' inverse norms ``(BLOCK_K,)``; padded columns -inf."""
    acc_t = tl.float64 if FP64 else tl.float32
    logits = tl.dot(xt, tl.trans(ct), input_precision=PRECISION).to(acc_t)
    if NORMALIZE:
        ic = 1.0 / tl.maximum(tl.load(nc_ptr + q * n_k + cols, mask=col_ok, other=1.0).to(acc_t), eps)
        logits = logits * (ix * scale)[:, None] * ic[None, :]
    else:
        ic = tl.full(cols.shape, 1.0, acc_t)
        logits = logits * scale
    if HAS_BIAS:
        logits += tl.load(bias_ptr + q * n_k + cols, mask=col_ok, other=0.0).to(acc_t)[None, :]
    return tl.where(col_ok[None, :], logits, float("-inf")), ic


@triton.jit
def _row_inv_norm(nx_ptr, rows, row_ok, q, n_q, eps, NORMALIZE: tl.constexpr, FP64: tl.constexpr):
    acc_t = tl.float64 if FP64 else tl.float32
    if NORMALIZE:
        inv = 1.0 / tl.maximum(tl.load(nx_ptr + rows * n_q + q, mask=row_ok, other=1.0).to(acc_t), eps)
    else:
        inv = tl.full(rows.shape, 1.0, acc_t)
    return inv


@triton.jit
def _x_tile(x_ptr, rows, row_ok, q, n_q, n_d, dims, dim_ok, UPCAST: tl.constexpr, FP64: tl.constexpr):
    """Codebook ``q``'s features of frames ``rows``, ``(BLOCK_S, BLOCK_D)``, 0 outside ``x``; in the accumulation
    dtype under ``UPCAST``."""
    xt = tl.load(
        x_ptr + (rows[:, None] * n_q + q) * n_d + dims[None, :], mask=row_ok[:, None] & dim_ok[None, :], other=0.0
    )
    if UPCAST:
        xt = xt.to(tl.float64 if FP64 else tl.float32)
    return xt


@triton.jit
def _code_tile(c_ptr, cols, col_ok, q, n_k, n_d, dims, dim_ok, UPCAST: tl.constexpr, FP64: tl.constexpr):
    """Codebook ``q``'s entries ``cols``, ``(BLOCK_K, BLOCK_D)``, 0 outside the codebook; in the accumulation dtype
    under ``UPCAST``."""
    ct = tl.load(
        c_ptr + (q * n_k + cols[:, None]) * n_d + dims[None, :], mask=col_ok[:, None] & dim_ok[None, :], other=0.0
    )
    if UPCAST:
        ct = ct.to(tl.float64 if FP64 else tl.float32)
    return ct


@triton.jit
def _targets(tgt_ptr, rows, row_ok, q, n_q, ignore_index):
    """The targets of frames ``rows`` for codebook ``q`` and which of them count (in range, not ignored)."""
    tgt = tl.load(tgt_ptr + rows * n_q + q, mask=row_ok, other=ignore_index)
    return tgt, row_ok & (tgt != ignore_index)


@triton.jit
def _bwd_rows(
    tgt_ptr,
    lse_ptr,
    g_ptr,
    nx_ptr,
    rows,
    row_ok,
    q,
    n_q,
    ignore_index,
    eps,
    NORMALIZE: tl.constexpr,
    FP64: tl.constexpr,
):
    """What the backward kernels read per frame: targets, which count, the forward's log-sum-exp, the upstream
    gradient and the inverse feature norm."""
    acc_t = tl.float64 if FP64 else tl.float32
    tgt, valid = _targets(tgt_ptr, rows, row_ok, q, n_q, ignore_index)
    lse = tl.load(lse_ptr + rows * n_q + q, mask=row_ok, other=0.0).to(acc_t)
    g = tl.load(g_ptr + rows * n_q + q, mask=row_ok, other=0.0).to(acc_t)
    ix = _row_inv_norm(nx_ptr, rows, row_ok, q, n_q, eps, NORMALIZE, FP64)
    return tgt, valid, lse, g, ix


@triton.jit
def _dlogits(logits, lse, g, tgt, cols, keep):
    """``g * (softmax - onehot(tgt))`` of a logits tile, 0 outside ``keep``: a where, not a product, since padded
    rows may hold inf - inf and their gradient is 0 by definition."""
    onehot = tl.where(cols[None, :] == tgt[:, None], 1.0, 0.0)
    return tl.where(keep, g[:, None] * (tl.exp(logits - lse[:, None]) - onehot), 0.0)
