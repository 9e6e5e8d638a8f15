"""``@triton.jit`` helpers shared by the attention kernels: matmul precision, rounding to the input dtype, the
dropout keep decision, and the tile loads of the key padding mask, ``q``/``dO`` rows and ``k``/``v`` blocks.

Every helper is inlined into its caller, so the kernels compile to what they would with the code written out.
"""

from __future__ import annotations

import triton
import triton.language as tl


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
def _unpadded(KPM, kpm_off, offs, ok, USE_MASK: tl.constexpr):
    """``ok`` narrowed to the positions the key padding mask row at ``kpm_off`` keeps (``ok`` itself without it)."""
    if USE_MASK:
        ok = ok & (tl.load(KPM + kpm_off + offs, mask=ok, other=0) != 0)
    return ok


@triton.jit
def _load_tile(base, offs, stride, offs_d, mask, UPCAST: tl.constexpr):
    """Rows ``offs`` of a ``(T, D)`` head (unit last stride), 0 where ``mask`` is off; fp32 under ``UPCAST``.
    Padding is never read (it may hold anything, NaN included)."""
    x = tl.load(base + offs[:, None] * stride + offs_d[None, :], mask=mask, other=0.0)
    if UPCAST:
        x = x.to(tl.float32)
    return x


@triton.jit
def _query_block(KPM, KV_END, b, kpm_off, start_m, offs_m, m_ok, TK, HAS_MASK: tl.constexpr, MASK_Q: tl.constexpr):
    """A query block's real rows and the end of its key loop: ``kv_end[b]`` with a mask, and no keys at all for
    a block of padded queries."""
    row_ok = m_ok
    hi = TK
    if HAS_MASK:
        hi = tl.load(KV_END + b)
        if MASK_Q:
            row_ok = _unpadded(KPM, kpm_off, offs_m, row_ok, True)
            hi = tl.where(start_m < hi, hi, 0)
    return row_ok, hi


@triton.jit
def _query_tiles(
    q_base, do_base, LSE, DELTA, stat_base, offs_m, row_ok, stride_qm, stride_dom, offs_d, d_ok, UPCAST: tl.constexpr
):
    """The backward pass's ``q`` and ``dO`` tiles of a query block and its saved row statistics (log-sum-exp +inf
    and delta 0 on masked rows)."""
    q_mask = row_ok[:, None] & d_ok[None, :]
    q = _load_tile(q_base, offs_m, stride_qm, offs_d, q_mask, UPCAST)
    do = _load_tile(do_base, offs_m, stride_dom, offs_d, q_mask, UPCAST)
    lse = tl.load(LSE + stat_base + offs_m, mask=row_ok, other=float("inf"))
    delta = tl.load(DELTA + stat_base + offs_m, mask=row_ok, other=0.0)
    return q, do, lse, delta


@triton.jit
def _kv_tiles(
    k_base,
    v_base,
    KPM,
    kpm_off,
    offs_n,
    stride_kn,
    stride_vn,
    offs_d,
    d_ok,
    TK,
    HAS_MASK: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """The ``k`` and ``v`` tiles of key block ``offs_n`` (0 on padded keys) and which of its keys are real."""
    key_ok = _unpadded(KPM, kpm_off, offs_n, offs_n < TK, HAS_MASK)
    kv_mask = key_ok[:, None] & d_ok[None, :]
    k = _load_tile(k_base, offs_n, stride_kn, offs_d, kv_mask, UPCAST)
    v = _load_tile(v_base, offs_n, stride_vn, offs_d, kv_mask, UPCAST)
    return k, v, key_ok
