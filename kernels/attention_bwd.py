"""The attention backward kernels: ``delta = rowsum(dO * O)``, then one program per key block accumulating dK and
dV over the query blocks and one per query block accumulating dQ over the key blocks (no atomics). Both recompute
the probabilities from the saved log-sum-exp; the launchers are in :mod:`.attention`."""

from __future__ import annotations

import triton
import triton.language as tl

from .attention_tiles import (
    _keep,
    _kv_tiles,
    _mm,
    _query_block,
    _query_tiles,
    _round_io,
    _to_io,
    _unpadded,
)


@triton.jit
def _attn_bwd_delta_kernel(
    OUT,
    DO,
    DELTA,  # (B, H, TQ) fp32: rowsum(dO * O)
    stride_ob,
    stride_oh,
    stride_om,
    stride_dob,
    stride_doh,
    stride_dom,
    H,
    TQ,
    HEAD_DIM,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid_m = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_m < TQ)[:, None] & (offs_d < HEAD_DIM)[None, :]
    o = tl.load(OUT + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_om + offs_d[None, :], mask=mask, other=0)
    do = tl.load(
        DO + b * stride_dob + h * stride_doh + offs_m[:, None] * stride_dom + offs_d[None, :], mask=mask, other=0
    )
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(DELTA + (b * H + h) * TQ + offs_m, delta, mask=offs_m < TQ)


@triton.jit
def _attn_bwd_dkdv_kernel(
    Q,
    K,
    V,
    DO,
    DK,
    DV,
    LSE,
    DELTA,
    KPM,
    KV_END,
    SEED,
    stride_qb,
    stride_qh,
    stride_qm,
    stride_kb,
    stride_kh,
    stride_kn,
    stride_vb,
    stride_vh,
    stride_vn,
    stride_dob,
    stride_doh,
    stride_dom,
    stride_dkb,
    stride_dkh,
    stride_dkn,
    stride_mb,
    H,
    TQ,
    TK,
    HEAD_DIM,
    qk_scale,
    sm_scale,
    drop_thresh,
    drop_scale,
    T_BUCKET,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    HAS_MASK: tl.constexpr,
    MASK_Q: tl.constexpr,
    DROPOUT: tl.constexpr,
    F32: tl.constexpr,
    UPCAST: tl.constexpr,
    BF16: tl.constexpr,
):
    """One key block; loops over query blocks. Works on transposed tiles (keys x queries)."""
    pid_n = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    start_n = pid_n * BLOCK_N
    offs_n = start_n + tl.arange(0, BLOCK_N).to(tl.int64)
    offs_m0 = tl.arange(0, BLOCK_M).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    n_ok = offs_n < TK
    io_ty = DK.dtype.element_ty

    kpm_off = b * stride_mb
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh
    k, v, key_ok = _kv_tiles(
        k_base, v_base, KPM, kpm_off, offs_n, stride_kn, stride_vn, offs_d, d_ok, TK, HAS_MASK, UPCAST
    )
    hi = TQ
    if HAS_MASK:
        kv_end = tl.load(KV_END + b)
        if MASK_Q:
            hi = kv_end  # query rows past the last real key are padding
        hi = tl.where(start_n < kv_end, hi, 0)  # a block of padded keys gets zero gradients
    if DROPOUT:
        seed = tl.load(SEED)
        rng_base = (b * H + h) * TQ * TK + offs_n

    q_base = Q + b * stride_qb + h * stride_qh
    do_base = DO + b * stride_dob + h * stride_doh
    stat_base = (b * H + h) * TQ
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    for start_m in range(0, hi, BLOCK_M):
        offs_m = start_m + offs_m0
        m_ok = _unpadded(KPM, kpm_off, offs_m, offs_m < TQ, MASK_Q)
        q, do, lse, delta = _query_tiles(
            q_base, do_base, LSE, DELTA, stat_base, offs_m, m_ok, stride_qm, stride_dom, offs_d, d_ok, UPCAST
        )
        s_t = _mm(k, tl.trans(q), F32) * qk_scale
        s_t = tl.where(key_ok[:, None], s_t, float("-inf"))
        p_t = tl.exp2(s_t - lse[None, :])  # rows with lse = +inf (padding, no valid key) give 0
        dp_t = _mm(v, tl.trans(do), F32)
        if DROPOUT:
            keep_t = _keep(seed, rng_base[:, None] + offs_m[None, :] * TK, drop_thresh)
            pd_t = tl.where(keep_t, p_t * drop_scale, 0.0)
            dp_t = tl.where(keep_t, dp_t * drop_scale, 0.0)
        else:
            pd_t = p_t
        dv = dv + _mm(_round_io(pd_t, io_ty, UPCAST, BF16), do, F32)
        ds_t = p_t * (dp_t - delta[None, :])
        dk = dk + _mm(_round_io(ds_t, io_ty, UPCAST, BF16), q, F32)

    dk = dk * sm_scale
    out_off = b * stride_dkb + h * stride_dkh + offs_n[:, None] * stride_dkn + offs_d[None, :]
    out_mask = n_ok[:, None] & d_ok[None, :]
    tl.store(DK + out_off, _to_io(dk, io_ty, UPCAST, BF16), mask=out_mask)
    tl.store(DV + out_off, _to_io(dv, io_ty, UPCAST, BF16), mask=out_mask)


@triton.jit
def _attn_bwd_dq_kernel(
    Q,
    K,
    V,
    DO,
    DQ,
    LSE,
    DELTA,
    KPM,
    KV_END,
    SEED,
    stride_qb,
    stride_qh,
    stride_qm,
    stride_kb,
    stride_kh,
    stride_kn,
    stride_vb,
    stride_vh,
    stride_vn,
    stride_dob,
    stride_doh,
    stride_dom,
    stride_dqb,
    stride_dqh,
    stride_dqm,
    stride_mb,
    H,
    TQ,
    TK,
    HEAD_DIM,
    qk_scale,
    sm_scale,
    drop_thresh,
    drop_scale,
    T_BUCKET,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    HAS_MASK: tl.constexpr,
    MASK_Q: tl.constexpr,
    DROPOUT: tl.constexpr,
    F32: tl.constexpr,
    UPCAST: tl.constexpr,
    BF16: tl.constexpr,
):
    """One query block; loops over key blocks."""
    pid_m = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M).to(tl.int64)
    offs_n0 = tl.arange(0, BLOCK_N).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    m_ok = offs_m < TQ
    io_ty = DQ.dtype.element_ty

    kpm_off = b * stride_mb
    row_ok, hi = _query_block(KPM, KV_END, b, kpm_off, start_m, offs_m, m_ok, TK, HAS_MASK, MASK_Q)
    q_base = Q + b * stride_qb + h * stride_qh
    do_base = DO + b * stride_dob + h * stride_doh
    stat_base = (b * H + h) * TQ
    q, do, lse, delta = _query_tiles(
        q_base, do_base, LSE, DELTA, stat_base, offs_m, row_ok, stride_qm, stride_dom, offs_d, d_ok, UPCAST
    )
    if DROPOUT:
        seed = tl.load(SEED)
        rng_rows = ((b * H + h) * TQ + offs_m) * TK

    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for start_n in range(0, hi, BLOCK_N):
        offs_n = start_n + offs_n0
        k, v, key_ok = _kv_tiles(
            k_base, v_base, KPM, kpm_off, offs_n, stride_kn, stride_vn, offs_d, d_ok, TK, HAS_MASK, UPCAST
        )
        s = _mm(q, tl.trans(k), F32) * qk_scale
        s = tl.where(key_ok[None, :], s, float("-inf"))
        p = tl.exp2(s - lse[:, None])
        dp = _mm(do, tl.trans(v), F32)
        if DROPOUT:
            keep = _keep(seed, rng_rows[:, None] + offs_n[None, :], drop_thresh)
            dp = tl.where(keep, dp * drop_scale, 0.0)
        ds = p * (dp - delta[:, None])
        dq = dq + _mm(_round_io(ds, io_ty, UPCAST, BF16), k, F32)

    dq = dq * sm_scale
    tl.store(
        DQ + b * stride_dqb + h * stride_dqh + offs_m[:, None] * stride_dqm + offs_d[None, :],
        _to_io(dq, io_ty, UPCAST, BF16),
        mask=m_ok[:, None] & d_ok[None, :],
    )
