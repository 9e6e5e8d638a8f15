"""Triton flash attention: forward, backward and the dropout keep-mask, with key padding masks.

The kernels are in :mod:`.attention_fwd` and :mod:`.attention_bwd` (their shared tile loads in
:mod:`.attention_tiles`); this module holds their launch configs and the launchers.

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

# The kernels, re-exported: the compile gate and the tests reach them by name here.
from .attention_bwd import _attn_bwd_delta_kernel, _attn_bwd_dkdv_kernel, _attn_bwd_dq_kernel
from .attention_fwd import _attn_fwd_kernel, _keep_mask_kernel

LOG2E = math.log2(math.e)

#: Dropout probability resolution: keep iff the top 24 bits of the Philox draw are >= round(p * 2**24).
DROPOUT_BITS = 24


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


def _strides(name: str, t: torch.Tensor, row: str) -> dict:
    """The kernels' ``stride_<name>b``, ``stride_<name>h`` and ``stride_<name><row>`` of a ``(B, H, T, D)`` tensor."""
    return {f"stride_{name}b": t.stride(0), f"stride_{name}h": t.stride(1), f"stride_{name}{row}": t.stride(2)}


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
        **_strides("q", q, "m"),
        **_strides("k", k, "n"),
        **_strides("v", v, "n"),
        **_strides("o", out, "m"),
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
        **_strides("o", out, "m"),
        **_strides("do", grad_out, "m"),
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
        **_strides("q", q, "m"),
        **_strides("k", k, "n"),
        **_strides("v", v, "n"),
        **_strides("do", grad_out, "m"),
        stride_mb=stride_mb,
        qk_scale=softmax_scale * LOG2E,
        sm_scale=softmax_scale,
        drop_thresh=drop_thresh,
        drop_scale=drop_scale,
        **meta,
    )
    dkdv_args = dict(shared, DK=dk, DV=dv, **_strides("dk", dk, "n"))
    dq_args = dict(shared, DQ=dq, **_strides("dq", dq, "m"))
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
