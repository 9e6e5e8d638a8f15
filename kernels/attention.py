"""Triton flash attention: forward, backward and the dropout keep-mask, with key padding masks.

Forward: one program per (query block, head, batch) streams over key blocks with an online softmax in fp32
(running max and sum, base-2 exponentials) and saves the row log-sum-exp (base 2). Backward recomputes the
probabilities from it: ``delta = rowsum(dO * O)`` first, then one kernel per key block accumulating dK and dV
over the query blocks and one per query block accumulating dQ over the key blocks (no atomics).

Masking: ``kpm[b, j]`` False removes key ``j``; with ``MASK_Q`` (T_q == T_k) it also marks query row ``i`` as
padding, whose output is 0 and log-sum-exp +inf (so its recomputed probabilities, and every gradient through
it, are 0). A row with no valid key outputs 0 the same way. ``kv_end[b]`` (one past the last valid key) bounds
every loop, so right-padded batches skip their padding instead of computing it.

Dropout: the keep decision of entry ``(b, h, i, j)`` is a pure function of the seed and the counter
``((b * H + h) * T_q + i) * T_k + j`` (Philox 4x32-10 through ``tl.randint``): ``keep = (r >> 8) >= thresh``
with ``thresh = round(p * 2**24)``. Forward, both backward kernels and :func:`dropout_keep_mask` evaluate the
same function, so the mask is regenerated, never stored.

Interpreter: bf16 arithmetic is wrong there, so ``UPCAST`` turns every loaded tile to fp32 (the probabilities
are still rounded to the input dtype before their matmul, as on the GPU).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

LOG2E = math.log2(math.e)

#: Dropout probability resolution: keep iff the top 24 bits of the Philox draw are >= round(p * 2**24).
DROPOUT_BITS = 24


@triton.jit
def _mm(a, b, F32: tl.constexpr):
    """fp32 operands: three TF32 tensor-core products (``tf32x3``), about fp32's accuracy without an FMA-loop
    dot, whose whole contraction sits in registers and spills; fp16/bf16 operands: one tensor-core product."""
    if F32:
        return tl.dot(a, b, input_precision="tf32x3")
    else:
        return tl.dot(a, b)


@triton.jit
def _rne_bf16(x):
    """fp32 -> the nearest bf16 value (ties to even), kept in fp32: the interpreter's own cast truncates."""
    bits = x.to(tl.uint32, bitcast=True)
    bits = bits + (0x7FFF + ((bits >> 16) & 1))
    return (bits & 0xFFFF0000).to(tl.float32, bitcast=True)


@triton.jit
def _round_io(x, io_ty, UPCAST: tl.constexpr, BF16: tl.constexpr):
    """``x`` rounded to the input dtype, as a matmul operand (fp32 under ``UPCAST``)."""
    if UPCAST:
        if BF16:
            return _rne_bf16(x)
        else:
            return x.to(io_ty).to(tl.float32)
    else:
        return x.to(io_ty)


@triton.jit
def _to_io(x, io_ty, UPCAST: tl.constexpr, BF16: tl.constexpr):
    """``x`` cast to the input dtype for storing, rounded to nearest under the interpreter too."""
    if UPCAST and BF16:
        return _rne_bf16(x).to(io_ty)
    else:
        return x.to(io_ty)


@triton.jit
def _keep(seed, offs, thresh):
    r = tl.randint(seed, offs)  # uint32
    return (r >> (32 - 24)).to(tl.int32) >= thresh


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

    row_ok = m_ok
    hi = TK
    if HAS_MASK:
        hi = tl.load(KV_END + b)
        if MASK_Q:
            row_ok = row_ok & (tl.load(KPM + b * stride_mb + offs_m, mask=m_ok, other=0) != 0)
            hi = tl.where(start_m < hi, hi, 0)  # a block of padded queries does no work
    # padding is never read (it may hold anything, NaN included)
    q_ptrs = Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :]
    q = tl.load(q_ptrs, mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
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
        n_ok = offs_n < TK
        key_ok = n_ok
        if HAS_MASK:
            key_ok = key_ok & (tl.load(KPM + b * stride_mb + offs_n, mask=n_ok, other=0) != 0)
        kv_mask = key_ok[:, None] & d_ok[None, :]
        k = tl.load(k_base + offs_n[:, None] * stride_kn + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(v_base + offs_n[:, None] * stride_vn + offs_d[None, :], mask=kv_mask, other=0.0)
        if UPCAST:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
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

    key_ok = n_ok
    hi = TQ
    if HAS_MASK:
        key_ok = key_ok & (tl.load(KPM + b * stride_mb + offs_n, mask=n_ok, other=0) != 0)
        kv_end = tl.load(KV_END + b)
        if MASK_Q:
            hi = kv_end  # query rows past the last real key are padding
        hi = tl.where(start_n < kv_end, hi, 0)  # a block of padded keys gets zero gradients
    kv_ok = key_ok[:, None] & d_ok[None, :]
    k = tl.load(K + b * stride_kb + h * stride_kh + offs_n[:, None] * stride_kn + offs_d[None, :], mask=kv_ok, other=0)
    v = tl.load(V + b * stride_vb + h * stride_vh + offs_n[:, None] * stride_vn + offs_d[None, :], mask=kv_ok, other=0)
    if UPCAST:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
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
        m_ok = offs_m < TQ
        if MASK_Q:
            m_ok = m_ok & (tl.load(KPM + b * stride_mb + offs_m, mask=m_ok, other=0) != 0)
        q_mask = m_ok[:, None] & d_ok[None, :]
        q = tl.load(q_base + offs_m[:, None] * stride_qm + offs_d[None, :], mask=q_mask, other=0)
        do = tl.load(do_base + offs_m[:, None] * stride_dom + offs_d[None, :], mask=q_mask, other=0)
        if UPCAST:
            q = q.to(tl.float32)
            do = do.to(tl.float32)
        lse = tl.load(LSE + stat_base + offs_m, mask=m_ok, other=float("inf"))
        delta = tl.load(DELTA + stat_base + offs_m, mask=m_ok, other=0.0)
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

    row_ok = m_ok
    hi = TK
    if HAS_MASK:
        hi = tl.load(KV_END + b)
        if MASK_Q:
            row_ok = row_ok & (tl.load(KPM + b * stride_mb + offs_m, mask=m_ok, other=0) != 0)
            hi = tl.where(start_m < hi, hi, 0)
    q_ok = row_ok[:, None] & d_ok[None, :]
    q = tl.load(Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :], mask=q_ok, other=0)
    do = tl.load(
        DO + b * stride_dob + h * stride_doh + offs_m[:, None] * stride_dom + offs_d[None, :], mask=q_ok, other=0
    )
    if UPCAST:
        q = q.to(tl.float32)
        do = do.to(tl.float32)
    stat_off = (b * H + h) * TQ + offs_m
    lse = tl.load(LSE + stat_off, mask=row_ok, other=float("inf"))
    delta = tl.load(DELTA + stat_off, mask=row_ok, other=0.0)
    if DROPOUT:
        seed = tl.load(SEED)
        rng_rows = ((b * H + h) * TQ + offs_m) * TK

    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for start_n in range(0, hi, BLOCK_N):
        offs_n = start_n + offs_n0
        n_ok = offs_n < TK
        key_ok = n_ok
        if HAS_MASK:
            key_ok = key_ok & (tl.load(KPM + b * stride_mb + offs_n, mask=n_ok, other=0) != 0)
        kv_mask = key_ok[:, None] & d_ok[None, :]
        k = tl.load(k_base + offs_n[:, None] * stride_kn + offs_d[None, :], mask=kv_mask, other=0)
        v = tl.load(v_base + offs_n[:, None] * stride_vn + offs_d[None, :], mask=kv_mask, other=0)
        if UPCAST:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
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


# ------------------------------------------------------------------------------------------------- launchers


def _interpreted(t: torch.Tensor) -> bool:
    return not t.is_cuda


#: Autotune spaces on a GPU, ``(BLOCK_M, BLOCK_N, num_warps, num_stages)`` per kernel and operand dtype. The
#: launchers tune over exactly these and the compile gate (``_gate.py``) builds every entry for sm_90. For the
#: backward kernels ``BLOCK_N`` keys are held and ``BLOCK_M`` queries streamed (dK/dV), or the other way round (dQ).
#: Kept: the configs that compile for sm_90 under triton 3.6 and 3.9 at head dims 16-128 with mask and dropout
#: without spills (fp16/bf16) and with ``wgmma`` (dQ needs 64+ query rows for it, dK/dV 64+ keys); fp32 keeps its
#: smallest-spilling tile. Fewer configs also mean fewer compiles on a GPU's first call.
CONFIGS = {
    "fwd": {"half": ((128, 64, 8, 3), (64, 64, 4, 3)), "fp32": ((64, 32, 4, 2),)},
    "dkdv": {"half": ((16, 64, 8, 3),), "fp32": ((16, 64, 4, 2),)},
    "dq": {"half": ((128, 64, 8, 3),), "fp32": ((64, 32, 4, 2),)},
}
#: Fixed launches: the delta kernel's query rows and the keep-mask kernel's tile, on a GPU.
DELTA_BLOCK_M = 64
KEEP_MASK_BLOCKS = (32, 128)
KEEP_MASK_WARPS = 4


def dtype_class(dtype: torch.dtype) -> str:
    """The key of :data:`CONFIGS` for an operand dtype."""
    return "fp32" if dtype == torch.float32 else "half"


def _autotuned(kernel, name: str) -> dict:
    return {
        cls: triton.autotune(
            configs=[
                triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=st)
                for bm, bn, w, st in CONFIGS[name][cls]
            ],
            key=_KEY,
        )(kernel)
        for cls in ("half", "fp32")
    }


_KEY = ["BLOCK_D", "T_BUCKET", "HAS_MASK", "MASK_Q", "DROPOUT", "F32"]
_fwd_tuned = _autotuned(_attn_fwd_kernel, "fwd")
_dkdv_tuned = _autotuned(_attn_bwd_dkdv_kernel, "dkdv")
_dq_tuned = _autotuned(_attn_bwd_dq_kernel, "dq")

#: Block sizes under the interpreter: small, and different for M and N so a swapped index cannot pass.
_INTERP_FWD = {"BLOCK_M": 32, "BLOCK_N": 16}
_INTERP_DKDV = {"BLOCK_M": 16, "BLOCK_N": 32}
_INTERP_DQ = {"BLOCK_M": 32, "BLOCK_N": 16}


def _mask_args(key_padding_mask: torch.Tensor | None) -> tuple[torch.Tensor | None, torch.Tensor | None, int]:
    if key_padding_mask is None:
        return None, None, 0
    kpm = key_padding_mask.view(torch.uint8)
    idx = torch.arange(1, kpm.shape[1] + 1, device=kpm.device, dtype=torch.int32)
    kv_end = (kpm.to(torch.int32) * idx).amax(dim=1).to(torch.int32)
    return kpm, kv_end, kpm.stride(0)


def _drop_args(dropout_p: float) -> tuple[int, float]:
    return round(dropout_p * 2**DROPOUT_BITS), 1.0 / (1.0 - dropout_p)


def _last_dim_contiguous(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _common(q: torch.Tensor, k: torch.Tensor, key_padding_mask, dropout_p: float) -> dict:
    batch, heads, t_q, head_dim = q.shape
    t_k = k.shape[2]
    has_mask = key_padding_mask is not None
    return {
        "H": heads,
        "TQ": t_q,
        "TK": t_k,
        "HEAD_DIM": head_dim,
        "T_BUCKET": triton.next_power_of_2(max(t_q, t_k)),
        "BLOCK_D": max(16, triton.next_power_of_2(head_dim)),
        "HAS_MASK": has_mask,
        "MASK_Q": has_mask and t_q == t_k,
        "DROPOUT": dropout_p > 0.0,
        "F32": q.dtype == torch.float32,
        "UPCAST": _interpreted(q) and q.dtype != torch.float32,
        "BF16": q.dtype == torch.bfloat16,
    }


def attention_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_padding_mask: torch.Tensor | None,
    seed: torch.Tensor | None,
    dropout_p: float,
    softmax_scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flash attention forward on checked inputs.

    ``q`` ``(B, H, Tq, D)``, ``k``/``v`` ``(B, H, Tk, D)`` of one dtype (fp16, bf16, fp32), any strides with a
    unit last stride; ``key_padding_mask`` ``(B, Tk)`` bool or None; ``seed`` ``(1,)`` int64 on the device (read
    only when ``dropout_p > 0``). Returns ``out`` ``(B, H, Tq, D)`` in the input dtype and the base-2
    log-sum-exp ``(B, H, Tq)`` fp32 (+inf on rows that output 0).
    """
    q, k, v = (_last_dim_contiguous(t) for t in (q, k, v))
    batch, heads, t_q, _ = q.shape
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    lse = torch.empty((batch, heads, t_q), device=q.device, dtype=torch.float32)
    kpm, kv_end, stride_mb = _mask_args(key_padding_mask)
    drop_thresh, drop_scale = _drop_args(dropout_p)
    meta = _common(q, k, key_padding_mask, dropout_p)
    args = dict(
        Q=q,
        K=k,
        V=v,
        OUT=out,
        LSE=lse,
        KPM=kpm,
        KV_END=kv_end,
        SEED=seed if dropout_p > 0 else None,
        stride_qb=q.stride(0),
        stride_qh=q.stride(1),
        stride_qm=q.stride(2),
        stride_kb=k.stride(0),
        stride_kh=k.stride(1),
        stride_kn=k.stride(2),
        stride_vb=v.stride(0),
        stride_vh=v.stride(1),
        stride_vn=v.stride(2),
        stride_ob=out.stride(0),
        stride_oh=out.stride(1),
        stride_om=out.stride(2),
        stride_mb=stride_mb,
        qk_scale=softmax_scale * LOG2E,
        drop_thresh=drop_thresh,
        drop_scale=drop_scale,
        **meta,
    )
    if _interpreted(q):
        grid = (triton.cdiv(t_q, _INTERP_FWD["BLOCK_M"]), heads, batch)
        _attn_fwd_kernel[grid](**args, **_INTERP_FWD)
    else:
        grid = lambda cfg: (triton.cdiv(t_q, cfg["BLOCK_M"]), heads, batch)  # noqa: E731
        _fwd_tuned[dtype_class(q.dtype)][grid](**args)
    return out, lse


def attention_backward(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    key_padding_mask: torch.Tensor | None,
    seed: torch.Tensor | None,
    dropout_p: float,
    softmax_scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients ``(dq, dk, dv)`` (shapes and dtypes of ``q``, ``k``, ``v``) from :func:`attention_forward`'s
    inputs and outputs and ``grad_out`` ``(B, H, Tq, D)``; the probabilities are recomputed from ``lse``."""
    q, k, v, out, grad_out = (_last_dim_contiguous(t) for t in (q, k, v, out, grad_out))
    batch, heads, t_q, head_dim = q.shape
    t_k = k.shape[2]
    meta = _common(q, k, key_padding_mask, dropout_p)
    interp = _interpreted(q)

    delta = torch.empty((batch, heads, t_q), device=q.device, dtype=torch.float32)
    block_m = 32 if interp else DELTA_BLOCK_M
    _attn_bwd_delta_kernel[(triton.cdiv(t_q, block_m), heads, batch)](
        OUT=out,
        DO=grad_out,
        DELTA=delta,
        stride_ob=out.stride(0),
        stride_oh=out.stride(1),
        stride_om=out.stride(2),
        stride_dob=grad_out.stride(0),
        stride_doh=grad_out.stride(1),
        stride_dom=grad_out.stride(2),
        H=heads,
        TQ=t_q,
        HEAD_DIM=head_dim,
        BLOCK_M=block_m,
        BLOCK_D=meta["BLOCK_D"],
    )

    dq = torch.empty_like(q, memory_format=torch.contiguous_format)
    dk = torch.empty_like(k, memory_format=torch.contiguous_format)
    dv = torch.empty_like(v, memory_format=torch.contiguous_format)
    kpm, kv_end, stride_mb = _mask_args(key_padding_mask)
    drop_thresh, drop_scale = _drop_args(dropout_p)
    shared = dict(
        Q=q,
        K=k,
        V=v,
        DO=grad_out,
        LSE=lse,
        DELTA=delta,
        KPM=kpm,
        KV_END=kv_end,
        SEED=seed if dropout_p > 0 else None,
        stride_qb=q.stride(0),
        stride_qh=q.stride(1),
        stride_qm=q.stride(2),
        stride_kb=k.stride(0),
        stride_kh=k.stride(1),
        stride_kn=k.stride(2),
        stride_vb=v.stride(0),
        stride_vh=v.stride(1),
        stride_vn=v.stride(2),
        stride_dob=grad_out.stride(0),
        stride_doh=grad_out.stride(1),
        stride_dom=grad_out.stride(2),
        stride_mb=stride_mb,
        qk_scale=softmax_scale * LOG2E,
        sm_scale=softmax_scale,
        drop_thresh=drop_thresh,
        drop_scale=drop_scale,
        **meta,
    )
    dkdv_args = dict(shared, DK=dk, DV=dv, stride_dkb=dk.stride(0), stride_dkh=dk.stride(1), stride_dkn=dk.stride(2))
    dq_args = dict(shared, DQ=dq, stride_dqb=dq.stride(0), stride_dqh=dq.stride(1), stride_dqm=dq.stride(2))
    if interp:
        _attn_bwd_dkdv_kernel[(triton.cdiv(t_k, _INTERP_DKDV["BLOCK_N"]), heads, batch)](**dkdv_args, **_INTERP_DKDV)
        _attn_bwd_dq_kernel[(triton.cdiv(t_q, _INTERP_DQ["BLOCK_M"]), heads, batch)](**dq_args, **_INTERP_DQ)
    else:
        _dkdv_tuned[dtype_class(q.dtype)][lambda cfg: (triton.cdiv(t_k, cfg["BLOCK_N"]), heads, batch)](**dkdv_args)
        _dq_tuned[dtype_class(q.dtype)][lambda cfg: (triton.cdiv(t_q, cfg["BLOCK_M"]), heads, batch)](**dq_args)
    return dq, dk, dv


def keep_mask(seed: torch.Tensor, batch: int, heads: int, t_q: int, t_k: int, dropout_p: float) -> torch.Tensor:
    """The dropout keep-mask ``(B, H, Tq, Tk)`` bool the attention kernels use for ``seed`` ``(1,)`` int64."""
    out = torch.empty((batch, heads, t_q, t_k), device=seed.device, dtype=torch.uint8)
    block_m, block_n = KEEP_MASK_BLOCKS if seed.is_cuda else (64, 256)
    _keep_mask_kernel[(triton.cdiv(t_q, block_m), heads, batch)](
        OUT=out,
        SEED=seed,
        H=heads,
        TQ=t_q,
        TK=t_k,
        drop_thresh=_drop_args(dropout_p)[0],
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        num_warps=KEEP_MASK_WARPS,
    )
    return out.view(torch.bool)
