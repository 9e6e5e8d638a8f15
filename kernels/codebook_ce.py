"""Triton kernels of the fused codebook cross-entropy: logits tiles, online log-sum-exp, no ``(S, K)`` logits.

For codebook ``q``, frame ``s`` and entry ``k``::

    logit[s, q, k] = <x[s, q], c[q, k]> * ix[s, q] * ic[q, k] * scale + bias[q, k]

with ``ix = 1 / max(||x[s, q]||, eps)`` and ``ic = 1 / max(||c[q, k]||, eps)`` when normalising (cosine
logits; 1 otherwise) and ``scale = 1 / temperature``. The dot products take the raw inputs, so bf16/fp16 inputs
enter the tensor cores unrounded and every product is exact in the fp32 accumulator; the norms are applied to
the fp32 logits.

* forward, one program per (S tile, codebook), looping over K tiles: running max and sum of exponentials,
  the target's logit and the running argmax (ties: the lowest index, as ``torch.argmax``);
* backward ``dx``, one program per (S tile, codebook), looping over K tiles: ``p - onehot`` recomputed from the
  saved log-sum-exp, times the upstream gradient, contracted with the normalised codebook tile;
* backward ``dc`` and ``dbias``, one program per (K tile, codebook), looping over S tiles. Each output has
  one writer: no atomics, deterministic.

Both backward kernels end with the Jacobian of the normalisation, ``dx = (dy - y <dy, y>) / ||x||`` for
``y = x / ||x||`` (``dx = dy / eps`` where the norm is clamped, as for ``F.normalize``). The tile loads and the
logits tile the three kernels share are in :mod:`.codebook_ce_tiles`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .codebook_ce_tiles import _bwd_rows, _code_tile, _dlogits, _logits_tile, _row_inv_norm, _targets, _x_tile

#: (BLOCK_S, BLOCK_K) under the interpreter: small enough that test shapes span several tiles each way.
INTERPRET_BLOCKS = (32, 32)
#: Largest feature dimension the kernels hold in one tile.
MAX_DIM = 256


@triton.jit
def _codebook_ce_fwd_kernel(
    x_ptr,  # (S, Q, D)
    c_ptr,  # (Q, K, D)
    tgt_ptr,  # (S, Q) int64
    bias_ptr,  # (Q, K) or a placeholder
    nx_ptr,  # (S, Q) norms of x (placeholder without NORMALIZE)
    nc_ptr,  # (Q, K) norms of the codebooks
    params_ptr,  # [scale, eps] in the accumulation dtype
    loss_ptr,  # (S, Q) out: per-entry loss, 0 where ignored
    lse_ptr,  # (S, Q) out: log-sum-exp of the logits
    hits_ptr,  # (n_s_tiles, Q) int32 out: correct predictions per tile
    n_s,
    n_q,
    n_k,
    n_d,
    ignore_index,
    BLOCK_S: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    NORMALIZE: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
    FP64: tl.constexpr,
):
    pid_s = tl.program_id(0).to(tl.int64)
    q = tl.program_id(1).to(tl.int64)
    acc_t = tl.float64 if FP64 else tl.float32
    scale = tl.load(params_ptr)
    eps = tl.load(params_ptr + 1)

    rows = pid_s * BLOCK_S + tl.arange(0, BLOCK_S).to(tl.int64)
    row_ok = rows < n_s
    dims = tl.arange(0, BLOCK_D)
    dim_ok = dims < n_d
    xt = _x_tile(x_ptr, rows, row_ok, q, n_q, n_d, dims, dim_ok, UPCAST, FP64)
    tgt, valid = _targets(tgt_ptr, rows, row_ok, q, n_q, ignore_index)
    ix = _row_inv_norm(nx_ptr, rows, row_ok, q, n_q, eps, NORMALIZE, FP64)

    m = tl.full([BLOCK_S], float("-inf"), acc_t)
    s = tl.zeros([BLOCK_S], acc_t)
    t_logit = tl.zeros([BLOCK_S], acc_t)
    best = tl.zeros([BLOCK_S], tl.int64)
    for k0 in range(0, n_k, BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K).to(tl.int64)
        col_ok = cols < n_k
        ct = _code_tile(c_ptr, cols, col_ok, q, n_k, n_d, dims, dim_ok, UPCAST, FP64)
        logits, _ = _logits_tile(
            xt, ct, ix, q, cols, col_ok, nc_ptr, bias_ptr, n_k, scale, eps, HAS_BIAS, NORMALIZE, PRECISION, FP64
        )
        tile_max, tile_arg = tl.max(logits, 1, return_indices=True, return_indices_tie_break_left=True)
        # strictly greater: an equal maximum in a later tile keeps the earlier (lower) index
        best = tl.where(tile_max > m, tile_arg.to(tl.int64) + k0, best)
        m_new = tl.maximum(m, tile_max)
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(logits - m_new[:, None]), 1)
        m = m_new
        t_logit += tl.sum(tl.where(cols[None, :] == tgt[:, None], logits, 0.0), 1)

    lse = m + tl.log(s)
    tl.store(lse_ptr + rows * n_q + q, lse.to(lse_ptr.dtype.element_ty), mask=row_ok)
    loss = tl.where(valid, lse - t_logit, 0.0)
    tl.store(loss_ptr + rows * n_q + q, loss.to(loss_ptr.dtype.element_ty), mask=row_ok)
    hits = tl.sum((valid & (best == tgt)).to(tl.int32), 0)
    tl.store(hits_ptr + pid_s * n_q + q, hits)


@triton.jit
def _codebook_ce_bwd_x_kernel(
    x_ptr,  # (S, Q, D)
    c_ptr,  # (Q, K, D)
    tgt_ptr,  # (S, Q) int64
    bias_ptr,  # (Q, K) or a placeholder
    nx_ptr,  # (S, Q)
    nc_ptr,  # (Q, K)
    lse_ptr,  # (S, Q) from the forward
    g_ptr,  # (S, Q) upstream gradient / gmax, 0 where ignored
    params_ptr,  # [scale, eps, gmax]
    dx_ptr,  # (S, Q, D) out
    n_s,
    n_q,
    n_k,
    n_d,
    ignore_index,
    BLOCK_S: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    NORMALIZE: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
    FP64: tl.constexpr,
):
    pid_s = tl.program_id(0).to(tl.int64)
    q = tl.program_id(1).to(tl.int64)
    acc_t = tl.float64 if FP64 else tl.float32
    scale = tl.load(params_ptr)
    eps = tl.load(params_ptr + 1)
    gmax = tl.load(params_ptr + 2)

    rows = pid_s * BLOCK_S + tl.arange(0, BLOCK_S).to(tl.int64)
    row_ok = rows < n_s
    dims = tl.arange(0, BLOCK_D)
    dim_ok = dims < n_d
    x_mask = row_ok[:, None] & dim_ok[None, :]
    xt = _x_tile(x_ptr, rows, row_ok, q, n_q, n_d, dims, dim_ok, UPCAST, FP64)
    tgt, valid, lse, g, ix = _bwd_rows(
        tgt_ptr, lse_ptr, g_ptr, nx_ptr, rows, row_ok, q, n_q, ignore_index, eps, NORMALIZE, FP64
    )

    acc = tl.zeros([BLOCK_S, BLOCK_D], acc_t)
    for k0 in range(0, n_k, BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K).to(tl.int64)
        col_ok = cols < n_k
        # the load written out, not _code_tile: through the helper, triton 3.6 spills here at fp32 (sm_90 gate)
        ct = tl.load(
            c_ptr + (q * n_k + cols[:, None]) * n_d + dims[None, :], mask=col_ok[:, None] & dim_ok[None, :], other=0.0
        )
        if UPCAST:
            ct = ct.to(acc_t)
        logits, ic = _logits_tile(
            xt, ct, ix, q, cols, col_ok, nc_ptr, bias_ptr, n_k, scale, eps, HAS_BIAS, NORMALIZE, PRECISION, FP64
        )
        dl = _dlogits(logits, lse, g, tgt, cols, valid[:, None])
        if NORMALIZE:
            cn = (ct.to(acc_t) * ic[:, None]).to(xt.dtype)
        else:
            cn = ct
        acc = tl.dot(dl.to(xt.dtype), cn, acc, input_precision=PRECISION, out_dtype=acc_t)

    acc = acc * (scale * gmax)
    if NORMALIZE:
        y = xt.to(acc_t) * ix[:, None]
        nx = tl.load(nx_ptr + rows * n_q + q, mask=row_ok, other=1.0).to(acc_t)
        radial = tl.where(nx >= eps, tl.sum(acc * y, 1), 0.0)
        acc = (acc - radial[:, None] * y) * ix[:, None]
    tl.store(dx_ptr + (rows[:, None] * n_q + q) * n_d + dims[None, :], acc.to(dx_ptr.dtype.element_ty), mask=x_mask)


@triton.jit
def _codebook_ce_bwd_c_kernel(
    x_ptr,  # (S, Q, D)
    c_ptr,  # (Q, K, D)
    tgt_ptr,  # (S, Q) int64
    bias_ptr,  # (Q, K) or a placeholder
    nx_ptr,  # (S, Q)
    nc_ptr,  # (Q, K)
    lse_ptr,  # (S, Q)
    g_ptr,  # (S, Q) upstream gradient / gmax, 0 where ignored
    params_ptr,  # [scale, eps, gmax]
    dc_ptr,  # (Q, K, D) out
    dbias_ptr,  # (Q, K) out
    n_s,
    n_q,
    n_k,
    n_d,
    ignore_index,
    BLOCK_S: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    NORMALIZE: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
    FP64: tl.constexpr,
):
    pid_k = tl.program_id(0).to(tl.int64)
    q = tl.program_id(1).to(tl.int64)
    acc_t = tl.float64 if FP64 else tl.float32
    scale = tl.load(params_ptr)
    eps = tl.load(params_ptr + 1)
    gmax = tl.load(params_ptr + 2)

    cols = pid_k * BLOCK_K + tl.arange(0, BLOCK_K).to(tl.int64)
    col_ok = cols < n_k
    dims = tl.arange(0, BLOCK_D)
    dim_ok = dims < n_d
    c_mask = col_ok[:, None] & dim_ok[None, :]
    ct = _code_tile(c_ptr, cols, col_ok, q, n_k, n_d, dims, dim_ok, UPCAST, FP64)

    acc = tl.zeros([BLOCK_K, BLOCK_D], acc_t)
    dbias = tl.zeros([BLOCK_K], acc_t)
    for s0 in range(0, n_s, BLOCK_S):
        rows = s0 + tl.arange(0, BLOCK_S).to(tl.int64)
        row_ok = rows < n_s
        xt = _x_tile(x_ptr, rows, row_ok, q, n_q, n_d, dims, dim_ok, UPCAST, FP64)
        tgt, valid, lse, g, ix = _bwd_rows(
            tgt_ptr, lse_ptr, g_ptr, nx_ptr, rows, row_ok, q, n_q, ignore_index, eps, NORMALIZE, FP64
        )
        logits, _ = _logits_tile(
            xt, ct, ix, q, cols, col_ok, nc_ptr, bias_ptr, n_k, scale, eps, HAS_BIAS, NORMALIZE, PRECISION, FP64
        )
        dl = _dlogits(logits, lse, g, tgt, cols, valid[:, None] & col_ok[None, :])
        dbias += tl.sum(dl, 0)
        if NORMALIZE:
            xn = (xt.to(acc_t) * ix[:, None]).to(ct.dtype)
        else:
            xn = xt
        acc = tl.dot(tl.trans(dl.to(ct.dtype)), xn, acc, input_precision=PRECISION, out_dtype=acc_t)

    acc = acc * (scale * gmax)
    if NORMALIZE:
        nc = tl.load(nc_ptr + q * n_k + cols, mask=col_ok, other=1.0).to(acc_t)
        ic = 1.0 / tl.maximum(nc, eps)
        y = ct.to(acc_t) * ic[:, None]
        radial = tl.where(nc >= eps, tl.sum(acc * y, 1), 0.0)
        acc = (acc - radial[:, None] * y) * ic[:, None]
    tl.store(dc_ptr + (q * n_k + cols[:, None]) * n_d + dims[None, :], acc.to(dc_ptr.dtype.element_ty), mask=c_mask)
    tl.store(dbias_ptr + q * n_k + cols, (dbias * gmax).to(dbias_ptr.dtype.element_ty), mask=col_ok)


def launch_config(dtype: torch.dtype, n_d: int, on_gpu: bool) -> dict:
    """Block sizes and compile-time flags shared by the three kernels (the compile gate builds what this returns
    on a GPU for every dtype)."""
    if n_d > MAX_DIM:
        raise ValueError(f"x: the Triton kernels hold D <= {MAX_DIM} features in one tile; got D={n_d}")
    fp64 = dtype == torch.float64
    interpreted = not on_gpu
    if interpreted:
        block_s, block_k = INTERPRET_BLOCKS
        warps = 4
    else:
        # measured for sm_90 (the compile gate): 8 warps keep the half-precision backward kernels spill-free
        # under triton 3.6; fp32 operands are split in two for tf32x3, and 32 codes per tile keep its backward
        # kernels near spill-free
        if n_d > 64:
            block_s, block_k, warps = 64, 32, 8
        elif dtype == torch.float32:
            block_s, block_k, warps = 64, 32, 4
        else:
            block_s, block_k, warps = 64, 64, 8 if dtype in (torch.float16, torch.bfloat16) else 4
    return {
        "block_s": block_s,
        "block_k": block_k,
        "BLOCK_D": max(16, triton.next_power_of_2(n_d)),
        # the interpreter mis-computes half-precision arithmetic: convert after loading, cast on store
        "UPCAST": interpreted and dtype in (torch.float16, torch.bfloat16),
        # fp32 operands must not silently become TF32 on Hopper: three TF32 products (tf32x3) keep about fp32's
        # accuracy on tensor cores, where an ieee FMA-loop dot holds its contraction in registers and spills;
        # half-precision operands are exact either way
        "PRECISION": {torch.float32: "tf32x3", torch.float64: "ieee"}.get(dtype, "tf32"),
        "FP64": fp64,
        "num_warps": warps,
    }


def _acc_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def codebook_ce_forward(
    x: torch.Tensor,
    codebooks: torch.Tensor,
    targets: torch.Tensor,
    bias: torch.Tensor | None,
    norm_x: torch.Tensor | None,
    norm_c: torch.Tensor | None,
    *,
    scale: float,
    eps: float,
    ignore_index: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-entry losses, log-sum-exps and correct counts, without materialising the logits.

    ``x`` ``(S, Q, D)`` and ``codebooks`` ``(Q, K, D)`` of one float dtype, ``targets`` ``(S, Q)`` int64,
    ``bias`` ``(Q, K)`` or None, ``norm_x`` ``(S, Q)`` and ``norm_c`` ``(Q, K)`` (float32, float64 for float64
    inputs) for cosine logits or both None for dot products. Returns ``loss`` and ``lse`` ``(S, Q)`` (float32;
    float64 for float64 inputs; ``loss`` is 0 where ``targets == ignore_index``) and ``hits`` ``(Q,)`` int64.
    """
    n_s, n_q, n_d = x.shape
    n_k = codebooks.shape[1]
    cfg = launch_config(x.dtype, n_d, x.is_cuda)
    acc = _acc_dtype(x)
    x, codebooks, targets = x.contiguous(), codebooks.contiguous(), targets.contiguous()
    normalize = norm_x is not None
    params = torch.full((2,), scale, dtype=acc, device=x.device)
    params[1] = eps
    n_tiles = triton.cdiv(n_s, cfg["block_s"])
    loss = torch.full((n_s, n_q), float("nan"), dtype=acc, device=x.device)
    lse = torch.full((n_s, n_q), float("nan"), dtype=acc, device=x.device)
    hits = torch.full((n_tiles, n_q), -1, dtype=torch.int32, device=x.device)
    if n_s > 0:
        _codebook_ce_fwd_kernel[(n_tiles, n_q)](
            x,
            codebooks,
            targets,
            bias.contiguous() if bias is not None else x,
            norm_x.contiguous() if normalize else params,
            norm_c.contiguous() if normalize else params,
            params,
            loss,
            lse,
            hits,
            n_s=n_s,
            n_q=n_q,
            n_k=n_k,
            n_d=n_d,
            ignore_index=ignore_index,
            BLOCK_S=cfg["block_s"],
            BLOCK_K=cfg["block_k"],
            BLOCK_D=cfg["BLOCK_D"],
            HAS_BIAS=bias is not None,
            NORMALIZE=normalize,
            UPCAST=cfg["UPCAST"],
            PRECISION=cfg["PRECISION"],
            FP64=cfg["FP64"],
            num_warps=cfg["num_warps"],
        )
    return loss, lse, hits.sum(0, dtype=torch.int64)


def codebook_ce_backward(
    grad: torch.Tensor,
    x: torch.Tensor,
    codebooks: torch.Tensor,
    targets: torch.Tensor,
    bias: torch.Tensor | None,
    norm_x: torch.Tensor | None,
    norm_c: torch.Tensor | None,
    lse: torch.Tensor,
    *,
    scale: float,
    eps: float,
    ignore_index: int,
    need_x: bool = True,
    need_c: bool = True,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Gradients of ``sum(grad * loss)``: ``dx`` ``(S, Q, D)`` (x's dtype), ``dc`` ``(Q, K, D)`` (the codebooks'
    dtype) and ``dbias`` ``(Q, K)`` (bias's dtype; float32/float64 without a bias).

    ``grad`` ``(S, Q)`` is the upstream gradient of the per-entry losses (any float dtype; ignored entries do
    not contribute), ``lse`` the forward's log-sum-exps; the rest as in :func:`codebook_ce_forward`. ``dx`` is
    None unless ``need_x``; ``dc`` and ``dbias`` are None unless ``need_c``.
    """
    n_s, n_q, n_d = x.shape
    n_k = codebooks.shape[1]
    cfg = launch_config(x.dtype, n_d, x.is_cuda)
    acc = _acc_dtype(x)
    x, codebooks, targets = x.contiguous(), codebooks.contiguous(), targets.contiguous()
    normalize = norm_x is not None
    # Upstream gradients scaled to at most 1 in magnitude: the products with (p - onehot) then stay inside
    # float16's range whatever the reduction (a mean over many entries would otherwise underflow there).
    g = torch.where(targets != ignore_index, grad.to(acc), 0.0)
    gmax = g.abs().amax() if g.numel() else g.new_zeros(())
    g = (g / gmax.clamp_min(torch.finfo(acc).tiny)).contiguous()
    params = torch.stack([torch.full_like(gmax, scale), torch.full_like(gmax, eps), gmax])
    common = dict(
        n_s=n_s,
        n_q=n_q,
        n_k=n_k,
        n_d=n_d,
        ignore_index=ignore_index,
        BLOCK_S=cfg["block_s"],
        BLOCK_K=cfg["block_k"],
        BLOCK_D=cfg["BLOCK_D"],
        HAS_BIAS=bias is not None,
        NORMALIZE=normalize,
        UPCAST=cfg["UPCAST"],
        PRECISION=cfg["PRECISION"],
        FP64=cfg["FP64"],
        num_warps=cfg["num_warps"],
    )
    ptrs = (
        x,
        codebooks,
        targets,
        bias.contiguous() if bias is not None else x,
        norm_x.contiguous() if normalize else params,
        norm_c.contiguous() if normalize else params,
        lse.contiguous(),
        g,
        params,
    )
    dx = dc = dbias = None
    if need_x:
        dx = torch.full_like(x, float("nan"))
        if n_s > 0:
            _codebook_ce_bwd_x_kernel[(triton.cdiv(n_s, cfg["block_s"]), n_q)](*ptrs, dx, **common)
    if need_c:
        dc = torch.full_like(codebooks, float("nan"))
        dbias = torch.full((n_q, n_k), float("nan"), dtype=bias.dtype if bias is not None else acc, device=x.device)
        _codebook_ce_bwd_c_kernel[(triton.cdiv(n_k, cfg["block_k"]), n_q)](*ptrs, dc, dbias, **common)
    return dx, dc, dbias
