"""Triton kernel of residual vector quantisation: every stage of one encode in a single launch.

One program owns a tile of ``BLOCK_N`` rows and keeps their residual (and the running sum of the chosen
codes) on chip for all stages. Per stage it optionally projects the residual down (``in_proj``), streams
the stage's codebook in ``BLOCK_K`` chunks, scores every code as ``||c||^2 - 2 <z, c>`` (code norms
precomputed; ``||z||^2`` is the same for every code and left out), keeps a running argmin with the lowest
index winning ties (``torch.argmin``'s rule), gathers the winner, optionally projects it back up
(``out_proj``) and subtracts it. No ``N x K`` distance matrix ever reaches memory.

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
    acc_t = tl.float64 if FP64 else tl.float32

    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
    row_mask = rows < n_rows
    d = tl.arange(0, BLOCK_D)
    d_mask = d < dim
    c = tl.arange(0, BLOCK_C)
    c_mask = c < code_dim
    kk = tl.arange(0, BLOCK_K)

    xm = row_mask[:, None] & d_mask[None, :]
    resid = tl.load(x_ptr + rows[:, None] * stride_x + d[None, :], mask=xm, other=0.0).to(acc_t)
    quant = tl.zeros([BLOCK_N, BLOCK_D], dtype=acc_t)
    cd_mask = c_mask[:, None] & d_mask[None, :]
    dc_mask = d_mask[:, None] & c_mask[None, :]

    for s in range(0, n_q):
        s64 = tl.cast(s, tl.int64)  # int64 offsets (the loop variable is int32)
        book = s64 * n_codes * code_dim
        if HAS_IN_PROJ:
            # w[d, c] = in_proj[s, c, d]: z = resid @ in_proj[s].T
            w = tl.load(in_w_ptr + s64 * code_dim * dim + c[None, :] * dim + d[:, None], mask=dc_mask, other=0.0)
            z = tl.dot(resid, w.to(acc_t), input_precision=PRECISION, out_dtype=acc_t)
            if HAS_IN_BIAS:
                z += tl.load(in_b_ptr + s64 * code_dim + c, mask=c_mask, other=0.0).to(acc_t)[None, :]
        else:
            z = resid  # BLOCK_C == BLOCK_D, code_dim == dim

        best = tl.full([BLOCK_N], float("inf"), dtype=acc_t)
        best_idx = tl.zeros([BLOCK_N], dtype=tl.int64)
        for k0 in range(0, n_codes, BLOCK_K):
            ks = k0 + kk
            k_mask = ks < n_codes
            # codes as columns: cb_t[c, k] = lookup[s, k, c]
            cb_t = tl.load(
                lookup_ptr + book + ks[None, :].to(tl.int64) * code_dim + c[:, None],
                mask=c_mask[:, None] & k_mask[None, :],
                other=0.0,
            ).to(acc_t)
            norms = tl.load(norm_ptr + s64 * n_codes + ks, mask=k_mask, other=float("inf")).to(acc_t)
            dots = tl.dot(z, cb_t, input_precision=PRECISION, out_dtype=acc_t)
            score = norms[None, :] - 2.0 * dots
            low, arg = tl.min(score, axis=1, return_indices=True, return_indices_tie_break_left=True)
            better = low < best  # strict: an equal score in a later chunk has a higher index and loses
            best = tl.where(better, low, best)
            best_idx = tl.where(better, arg.to(tl.int64) + k0, best_idx)

        tl.store(codes_ptr + rows * stride_codes + s64, best_idx, mask=row_mask)
        rm = row_mask[:, None] & c_mask[None, :]
        code = tl.load(cb_ptr + book + best_idx[:, None] * code_dim + c[None, :], mask=rm, other=0.0).to(acc_t)
        if HAS_OUT_PROJ:
            # v[c, d] = out_proj[s, d, c]: up = code @ out_proj[s].T
            v = tl.load(out_w_ptr + s64 * dim * code_dim + d[None, :] * code_dim + c[:, None], mask=cd_mask, other=0.0)
            up = tl.dot(code, v.to(acc_t), input_precision=PRECISION, out_dtype=acc_t)
            if HAS_OUT_BIAS:
                up += tl.load(out_b_ptr + s64 * dim + d, mask=d_mask, other=0.0).to(acc_t)[None, :]
        else:
            up = code  # BLOCK_C == BLOCK_D, code_dim == dim
        resid -= up
        quant += up

    if WRITE_QUANT:
        tl.store(quant_ptr + rows[:, None] * stride_quant + d[None, :], quant.to(quant_ptr.dtype.element_ty), mask=xm)


def _blocks(n_rows: int, dim: int, code_dim: int, n_codes: int, on_gpu: bool) -> tuple[int, int, int, int, int]:
    """(BLOCK_N, BLOCK_K, BLOCK_D, BLOCK_C, num_warps); tl.dot needs every tile dimension >= 16."""
    block_d = max(16, triton.next_power_of_2(dim))
    block_c = max(16, triton.next_power_of_2(code_dim))
    if not on_gpu:
        # the interpreter runs each program serially in numpy: few, large tiles are fastest
        return 32, max(16, min(256, triton.next_power_of_2(n_codes))), block_d, block_c, 4
    # two (BLOCK_N, BLOCK_D) fp32 tiles live in registers for the whole launch: cap them at 8K elements each
    block_n = max(16, min(64, 8192 // block_d))
    block_k = 64 if block_c >= 64 else 128
    num_warps = 8 if block_n * block_d >= 8192 else 4
    return block_n, block_k, block_d, block_c, num_warps


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
    block_n, block_k, block_d, block_c, num_warps = _blocks(n_rows, dim, code_dim, n_codes, x.is_cuda)
    dummy = codebooks
    fp64 = codebooks.dtype == torch.float64
    _rvq_encode_kernel[(triton.cdiv(n_rows, block_n),)](
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
        n_rows=n_rows,
        n_codes=n_codes,
        dim=dim,
        code_dim=code_dim,
        n_q=n_q,
        stride_x=x.stride(0),
        stride_codes=codes.stride(0),
        stride_quant=quant.stride(0) if quant is not None else 0,
        BLOCK_N=block_n,
        BLOCK_K=block_k,
        BLOCK_D=block_d,
        BLOCK_C=block_c,
        HAS_IN_PROJ=in_proj is not None,
        HAS_IN_BIAS=in_bias is not None,
        HAS_OUT_PROJ=out_proj is not None,
        HAS_OUT_BIAS=out_bias is not None,
        WRITE_QUANT=quant is not None,
        FP64=fp64,
        PRECISION="ieee" if fp64 else precision,
        num_warps=num_warps,
    )
    return codes, quant
