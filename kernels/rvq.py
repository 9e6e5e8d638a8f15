"""Triton kernel of residual vector quantisation: every stage of one encode in a single launch.

One program owns a tile of ``BLOCK_N`` rows. Per stage it optionally projects the residual down (``in_proj``),
streams the stage's codebook in ``BLOCK_K`` chunks, scores every code as ``||c||^2 - 2 <z, c>`` (code norms
precomputed; ``||z||^2`` is the same for every code and left out), keeps a running argmin with the lowest index
winning ties (``torch.argmin``'s rule), gathers the winner, optionally projects it back up (``out_proj``) and
subtracts it. No ``N x K`` distance matrix ever reaches memory.

The feature dimension is streamed in ``BLOCK_D`` chunks everywhere, so no tile grows with ``D`` (any ``D`` fits
in registers and shared memory, 4096 included) and every dot product contracts over at most ``BLOCK_D``
features (an fp32 ``ieee`` dot holds its whole contraction in registers). The residual and the running sum of
the chosen codes therefore live in an fp32 (fp64) workspace in global memory, read back by the same program
from L1/L2: stage 0 reads ``x`` itself, and a one-stage search without ``quantized`` (``nearest_code``) writes
nothing but the codes.

Cosine lookup scores ``-2 <z, c / ||c||>``: the arg-max of the cosine, with a zero vector's cosine taken as 0
(``F.normalize``'s convention). Normalising ``z`` would scale every score of a row by one positive number and
change nothing, so it is skipped.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

#: ``tl.dot`` input precisions the launcher accepts. ``"ieee"`` is the only one the ops use: the others are
#: here so the flipped-code rate they cost can be measured on a GPU before they are offered as options.
PRECISIONS = ("ieee", "tf32x3", "tf32")
#: Largest projected code dimension (``Dc`` with projections), held in one tile.
MAX_CODE_DIM = 128


@triton.jit
def _resid_chunk(x_ptr, res_ptr, rows, row_mask, d, dim, stride_x, s, acc_t: tl.constexpr):
    """Columns ``d`` of the residual entering stage ``s``: ``x`` at stage 0, the workspace after."""
    m = row_mask[:, None] & (d < dim)[None, :]
    if s == 0:
        r = tl.load(x_ptr + rows[:, None] * stride_x + d[None, :], mask=m, other=0.0).to(acc_t)
    else:
        r = tl.load(res_ptr + rows[:, None] * dim + d[None, :], mask=m, other=0.0).to(acc_t)
    return r


@triton.jit
def _rvq_encode_kernel(
    x_ptr,  # (N, D) input rows, any float dtype
    cb_ptr,  # (Q, K, Dc) raw codebooks (gathered and subtracted), compute dtype
    lookup_ptr,  # (Q, K, Dc) codebooks searched (normalised for cosine), compute dtype
    norm_ptr,  # (Q, K) squared norms of the searched codes (zeros for cosine), compute dtype
    in_w_ptr,  # (Q, Dc, D) projection down, or a dummy
    in_b_ptr,  # (Q, Dc) its bias, or a dummy
    out_w_ptr,  # (Q, D, Dc) projection up, or a dummy
    out_b_ptr,  # (Q, D) its bias, or a dummy
    codes_ptr,  # (N, n_q) int64 chosen codes
    quant_ptr,  # (N, D) sum of the chosen (projected) codes, x's dtype
    res_ptr,  # (N, D) compute-dtype workspace: the residual (unused for one stage)
    acc_ptr,  # (N, D) compute-dtype workspace: the running sum (unused unless WRITE_QUANT and n_q > 1)
    n_rows,
    n_codes,
    dim,
    code_dim,
    n_q,
    stride_x,
    stride_codes,
    stride_quant,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_C: tl.constexpr,
    HAS_IN_PROJ: tl.constexpr,
    HAS_IN_BIAS: tl.constexpr,
    HAS_OUT_PROJ: tl.constexpr,
    HAS_OUT_BIAS: tl.constexpr,
    WRITE_QUANT: tl.constexpr,
    FP64: tl.constexpr,
    PRECISION: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    acc_t: tl.constexpr = tl.float64 if FP64 else tl.float32

    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
    row_mask = rows < n_rows
    dd = tl.arange(0, BLOCK_D)
    c = tl.arange(0, BLOCK_C)
    c_mask = c < code_dim
    kk = tl.arange(0, BLOCK_K)

    for s in range(0, n_q):
        s64 = tl.cast(s, tl.int64)  # int64 offsets (the loop variable is int32)
        book = s64 * n_codes * code_dim
        if HAS_IN_PROJ:
            # z = resid @ in_proj[s].T, contracted chunk by chunk: w[d, c] = in_proj[s, c, d]
            z = tl.zeros([BLOCK_N, BLOCK_C], dtype=acc_t)
            for d0 in range(0, dim, BLOCK_D):
                d = d0 + dd
                r = _resid_chunk(x_ptr, res_ptr, rows, row_mask, d, dim, stride_x, s, acc_t)
                w = tl.load(
                    in_w_ptr + s64 * code_dim * dim + c[None, :] * dim + d[:, None],
                    mask=(d < dim)[:, None] & c_mask[None, :],
                    other=0.0,
                ).to(acc_t)
                z = tl.dot(r, w, z, input_precision=PRECISION, out_dtype=acc_t)
            if HAS_IN_BIAS:
                z += tl.load(in_b_ptr + s64 * code_dim + c, mask=c_mask, other=0.0).to(acc_t)[None, :]

        best = tl.full([BLOCK_N], float("inf"), dtype=acc_t)
        best_idx = tl.zeros([BLOCK_N], dtype=tl.int64)
        for k0 in range(0, n_codes, BLOCK_K):
            ks = k0 + kk
            k_mask = ks < n_codes
            k_off = lookup_ptr + book + ks[None, :].to(tl.int64) * code_dim
            if HAS_IN_PROJ:
                # codes as columns: cb_t[c, k] = lookup[s, k, c]
                cb_t = tl.load(k_off + c[:, None], mask=c_mask[:, None] & k_mask[None, :], other=0.0).to(acc_t)
                dots = tl.dot(z, cb_t, input_precision=PRECISION, out_dtype=acc_t)
            else:
                dots = tl.zeros([BLOCK_N, BLOCK_K], dtype=acc_t)
                for d0 in range(0, dim, BLOCK_D):
                    d = d0 + dd
                    r = _resid_chunk(x_ptr, res_ptr, rows, row_mask, d, dim, stride_x, s, acc_t)
                    cb_t = tl.load(k_off + d[:, None], mask=(d < dim)[:, None] & k_mask[None, :], other=0.0)
                    dots = tl.dot(r, cb_t.to(acc_t), dots, input_precision=PRECISION, out_dtype=acc_t)
            norms = tl.load(norm_ptr + s64 * n_codes + ks, mask=k_mask, other=float("inf")).to(acc_t)
            score = norms[None, :] - 2.0 * dots
            low, arg = tl.min(score, axis=1, return_indices=True, return_indices_tie_break_left=True)
            better = low < best  # strict: an equal score in a later chunk has a higher index and loses
            best = tl.where(better, low, best)
            best_idx = tl.where(better, arg.to(tl.int64) + k0, best_idx)

        tl.store(codes_ptr + rows * stride_codes + s64, best_idx, mask=row_mask)
        # the residual and the sum are updated unless this was the last stage and no sum is wanted
        update_end = dim if WRITE_QUANT else (s + 1 < n_q) * dim
        if HAS_OUT_PROJ:
            rm = row_mask[:, None] & c_mask[None, :]
            code = tl.load(cb_ptr + book + best_idx[:, None] * code_dim + c[None, :], mask=rm, other=0.0).to(acc_t)
        tl.debug_barrier()  # every thread has read this stage's residual before any thread overwrites it
        for d0 in range(0, update_end, BLOCK_D):
            d = d0 + dd
            dm = row_mask[:, None] & (d < dim)[None, :]
            if HAS_OUT_PROJ:
                # up = code @ out_proj[s].T: v[c, d] = out_proj[s, d, c]
                v = tl.load(
                    out_w_ptr + s64 * dim * code_dim + d[None, :] * code_dim + c[:, None],
                    mask=c_mask[:, None] & (d < dim)[None, :],
                    other=0.0,
                )
                up = tl.dot(code, v.to(acc_t), input_precision=PRECISION, out_dtype=acc_t)
                if HAS_OUT_BIAS:
                    up += tl.load(out_b_ptr + s64 * dim + d, mask=d < dim, other=0.0).to(acc_t)[None, :]
            else:
                up = tl.load(cb_ptr + book + best_idx[:, None] * code_dim + d[None, :], mask=dm, other=0.0)
                up = up.to(acc_t)
            if s + 1 < n_q:
                r = _resid_chunk(x_ptr, res_ptr, rows, row_mask, d, dim, stride_x, s, acc_t)
                tl.store(res_ptr + rows[:, None] * dim + d[None, :], r - up, mask=dm)
            if WRITE_QUANT:
                if s > 0:
                    up += tl.load(acc_ptr + rows[:, None] * dim + d[None, :], mask=dm, other=0.0)
                if s + 1 < n_q:
                    tl.store(acc_ptr + rows[:, None] * dim + d[None, :], up, mask=dm)
                else:
                    q_ptrs = quant_ptr + rows[:, None] * stride_quant + d[None, :]
                    tl.store(q_ptrs, up.to(quant_ptr.dtype.element_ty), mask=dm)
        tl.debug_barrier()  # the next stage reads the residual other threads wrote


def launch_config(n_rows: int, dim: int, code_dim: int, n_codes: int, projected: bool, on_gpu: bool) -> dict:
    """Block sizes and warps (``tl.dot`` needs every tile dimension >= 16); the compile gate builds what this
    returns on a GPU at the MERT shapes and for ``D`` up to 4096. ``BLOCK_C`` spans the projected code dimension
    (unused without projections)."""
    block_c = max(16, triton.next_power_of_2(code_dim)) if projected else 16
    if not on_gpu:
        # the interpreter runs each program serially in numpy: few, large tiles are fastest; chunks of at most 64
        # features, so that tests of D > 64 cover the streaming
        block_k = max(16, min(256, triton.next_power_of_2(n_codes)))
        block_d = max(16, min(64, triton.next_power_of_2(dim)))
        return {"BLOCK_N": 32, "BLOCK_K": block_k, "BLOCK_D": block_d, "BLOCK_C": block_c, "num_warps": 4}
    # 8 warps: with 4, ptxas spilled the projected (bf16 input) and, under triton 3.6, the one-stage search
    return {"BLOCK_N": 64, "BLOCK_K": 64, "BLOCK_D": 32, "BLOCK_C": block_c, "num_warps": 8}


def rvq_encode_fused(
    x: torch.Tensor,
    codebooks: torch.Tensor,
    *,
    in_proj: torch.Tensor | None = None,
    in_bias: torch.Tensor | None = None,
    out_proj: torch.Tensor | None = None,
    out_bias: torch.Tensor | None = None,
    n_q: int | None = None,
    cosine: bool = False,
    with_quantized: bool = True,
    precision: str = "ieee",
    codes_out: torch.Tensor | None = None,
    quant_out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Encode ``x`` ``(N, D)`` through the first ``n_q`` stages of ``codebooks`` ``(Q, K, Dc)`` in one launch.

    ``x`` may be any float dtype; ``codebooks``, ``in_proj`` ``(Q, Dc, D)``, ``in_bias`` ``(Q, Dc)``, ``out_proj``
    ``(Q, D, Dc)`` and ``out_bias`` ``(Q, D)`` share one compute dtype (float32, or float64). Shapes are trusted
    (the op checks them). Returns ``codes`` ``(N, n_q)`` int64 and ``quantized`` ``(N, D)`` in ``x``'s dtype
    (``None`` unless ``with_quantized``), written into ``codes_out`` / ``quant_out`` when given.
    ``precision`` is ``tl.dot``'s fp32 input precision (ignored for float64).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}; got {precision!r}")
    n_rows, dim = x.shape
    n_stages, n_codes, code_dim = codebooks.shape
    n_q = n_stages if n_q is None else n_q
    x = x if x.stride(-1) == 1 else x.contiguous()
    codebooks = codebooks.contiguous()
    if cosine:
        lookup = F.normalize(codebooks[:n_q], dim=-1).contiguous()
        norms = torch.zeros(n_q, n_codes, device=x.device, dtype=codebooks.dtype)
    else:
        lookup = codebooks
        norms = codebooks[:n_q].square().sum(-1).contiguous()
    codes = codes_out if codes_out is not None else torch.empty((n_rows, n_q), device=x.device, dtype=torch.int64)
    quant = None
    if with_quantized:
        quant = quant_out if quant_out is not None else torch.empty((n_rows, dim), device=x.device, dtype=x.dtype)
    if n_rows == 0 or n_q == 0:
        return codes, quant
    if (in_proj is not None or out_proj is not None) and code_dim > MAX_CODE_DIM:
        raise ValueError(
            f"codebooks: projected codes of at most {MAX_CODE_DIM} dims are held in one tile; got {code_dim}"
        )
    projected = in_proj is not None or out_proj is not None
    cfg = launch_config(n_rows, dim, code_dim, n_codes, projected, x.is_cuda)
    dummy = codebooks
    fp64 = codebooks.dtype == torch.float64
    # fp32 (fp64) workspaces: the residual after each stage but the last, the running sum before the last
    res = torch.empty((n_rows, dim), device=x.device, dtype=codebooks.dtype) if n_q > 1 else dummy
    acc = torch.empty((n_rows, dim), device=x.device, dtype=codebooks.dtype) if n_q > 1 and quant is not None else dummy
    _rvq_encode_kernel[(triton.cdiv(n_rows, cfg["BLOCK_N"]),)](
        x,
        codebooks,
        lookup,
        norms,
        in_proj.contiguous() if in_proj is not None else dummy,
        in_bias.contiguous() if in_bias is not None else dummy,
        out_proj.contiguous() if out_proj is not None else dummy,
        out_bias.contiguous() if out_bias is not None else dummy,
        codes,
        quant if quant is not None else x,
        res,
        acc,
        n_rows=n_rows,
        n_codes=n_codes,
        dim=dim,
        code_dim=code_dim,
        n_q=n_q,
        stride_x=x.stride(0),
        stride_codes=codes.stride(0),
        stride_quant=quant.stride(0) if quant is not None else 0,
        HAS_IN_PROJ=in_proj is not None,
        HAS_IN_BIAS=in_bias is not None,
        HAS_OUT_PROJ=out_proj is not None,
        HAS_OUT_BIAS=out_bias is not None,
        WRITE_QUANT=quant is not None,
        FP64=fp64,
        PRECISION="ieee" if fp64 else precision,
        **cfg,
    )
    return codes, quant
