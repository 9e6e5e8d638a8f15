"""The attention forward kernel (online softmax, saves the base-2 row log-sum-exp) and the dropout keep-mask
kernel; the launchers are in :mod:`.attention`."""

from __future__ import annotations

import triton
import triton.language as tl

from .attention_tiles import _keep, _kv_tiles, _load_tile, _mm, _query_block, _round_io, _to_io


@triton.jit
def _attn_fwd_kernel(
    Q,
    K,
    V,
    OUT,
    LSE,  # (B, H, TQ) fp32, base-2 log-sum-exp of the scaled scores
    KPM,  # (B, TK) uint8 key padding mask (1 = real key) or None
    KV_END,  # (B,) int32, one past the last real key, or None
    SEED,  # (1,) int64 or None
    stride_qb,
    stride_qh,
    stride_qm,
    stride_kb,
    stride_kh,
    stride_kn,
    stride_vb,
    stride_vh,
    stride_vn,
    stride_ob,
    stride_oh,
    stride_om,
    stride_mb,
    H,
    TQ,
    TK,
    HEAD_DIM,
    qk_scale,  # softmax scale * log2(e)
    drop_thresh,
    drop_scale,  # 1 / (1 - p)
    T_BUCKET,  # autotuning key only
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
    pid_m = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M).to(tl.int64)
    offs_n0 = tl.arange(0, BLOCK_N).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    m_ok = offs_m < TQ
    io_ty = OUT.dtype.element_ty

    kpm_off = b * stride_mb
    row_ok, hi = _query_block(KPM, KV_END, b, kpm_off, start_m, offs_m, m_ok, TK, HAS_MASK, MASK_Q)
    q_base = Q + b * stride_qb + h * stride_qh
    q = _load_tile(q_base, offs_m, stride_qm, offs_d, row_ok[:, None] & d_ok[None, :], UPCAST)
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh
    if DROPOUT:
        seed = tl.load(SEED)
        rng_rows = ((b * H + h) * TQ + offs_m) * TK

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for start_n in range(0, hi, BLOCK_N):
        offs_n = start_n + offs_n0
        k, v, key_ok = _kv_tiles(
            k_base, v_base, KPM, kpm_off, offs_n, stride_kn, stride_vn, offs_d, d_ok, TK, HAS_MASK, UPCAST
        )
        s = _mm(q, tl.trans(k), F32) * qk_scale
        s = tl.where(key_ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with no valid key so far
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        if DROPOUT:
            p = tl.where(_keep(seed, rng_rows[:, None] + offs_n[None, :], drop_thresh), p, 0.0)
        acc = acc + _mm(_round_io(p, io_ty, UPCAST, BF16), v, F32)
        m_i = m_new

    row_ok = row_ok & (l_i > 0.0)
    l_safe = tl.where(row_ok, l_i, 1.0)
    if DROPOUT:
        out = acc * (drop_scale / l_safe)[:, None]
    else:
        out = acc / l_safe[:, None]
    out = tl.where(row_ok[:, None], out, 0.0)
    lse = tl.where(row_ok, m_i + tl.log2(l_safe), float("inf"))
    o_ptrs = OUT + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_om + offs_d[None, :]
    tl.store(o_ptrs, _to_io(out, io_ty, UPCAST, BF16), mask=m_ok[:, None] & d_ok[None, :])
    tl.store(LSE + (b * H + h) * TQ + offs_m, lse, mask=m_ok)


@triton.jit
def _keep_mask_kernel(
    OUT,  # (B, H, TQ, TK) uint8
    SEED,
    H,
    TQ,
    TK,
    drop_thresh,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    pid_m = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    seed = tl.load(SEED)
    rows = ((b * H + h) * TQ + offs_m) * TK
    for start_n in range(0, TK, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N).to(tl.int64)
        offs = rows[:, None] + offs_n[None, :]
        keep = _keep(seed, offs, drop_thresh)
        tl.store(OUT + offs, keep.to(tl.uint8), mask=(offs_m < TQ)[:, None] & (offs_n < TK)[None, :])
