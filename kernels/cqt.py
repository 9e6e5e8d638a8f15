"""Triton kernel of the frequency-domain CQT: a complex sparse (CSR) matrix times a batch of spectra.

Row ``k * L + r`` of the matrix holds bin ``k``'s truncated filter spectrum at the frequencies
``f = r (mod L)``, so one product both multiplies by the filters and folds the result to ``L`` points
(decimating the correlation by the hop in time aliases its spectrum); an inverse FFT of length ``L`` per
bin then gives the frames. The same kernel on the conjugate-transposed matrix is the backward pass.

Columns ``c >= n`` (``n`` = the length of each input row) read ``conj(x[c - n])``: frequencies above
Nyquist taken from a one-sided spectrum through Hermitian symmetry.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _csr_spmm_kernel(
    crow_ptr,  # (R + 1,) int64 row starts
    col_ptr,  # (nnz,) int64 column of each entry
    val_ptr,  # (nnz, 2) entries, real view
    x_ptr,  # (B, n, 2) inputs, real view
    out_ptr,  # (B, R, 2) outputs, real view
    n_rows,
    n_batch,
    n_in,
    stride_xb,
    stride_ob,
    BLOCK_R: tl.constexpr,
    BLOCK_B: tl.constexpr,
    FP64: tl.constexpr,
):
    pid_r = tl.program_id(0).to(tl.int64)
    pid_b = tl.program_id(1).to(tl.int64)
    acc_t = tl.float64 if FP64 else tl.float32

    # every per-row value is a (BLOCK_R, 1) column, never a 1-D vector: triton 3.6's layout pass mis-compiles
    # the mix of 1-D row vectors and their (BLOCK_R, BLOCK_B) broadcasts once BLOCK_B reaches 16
    rows = pid_r * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)[:, None]
    row_mask = rows < n_rows
    batch = pid_b * BLOCK_B + tl.arange(0, BLOCK_B).to(tl.int64)[None, :]
    batch_mask = batch < n_batch
    start = tl.load(crow_ptr + rows, mask=row_mask, other=0)
    count = tl.load(crow_ptr + rows + 1, mask=row_mask, other=0) - start
    n_steps = tl.max(tl.max(count, axis=1), axis=0)

    acc_re = tl.zeros([BLOCK_R, BLOCK_B], dtype=acc_t)
    acc_im = tl.zeros([BLOCK_R, BLOCK_B], dtype=acc_t)
    for q in range(0, n_steps):
        m = row_mask & (q < count)
        idx = start + q
        col = tl.load(col_ptr + idx, mask=m, other=0)
        v_re = tl.load(val_ptr + idx * 2, mask=m, other=0.0).to(acc_t)
        v_im = tl.load(val_ptr + idx * 2 + 1, mask=m, other=0.0).to(acc_t)
        upper = col >= n_in
        src = tl.where(upper, col - n_in, col)
        sign = tl.where(upper, -1.0, 1.0).to(acc_t)
        m2 = m & batch_mask
        xp = x_ptr + batch * stride_xb + src * 2
        x_re = tl.load(xp, mask=m2, other=0.0).to(acc_t)
        x_im = tl.load(xp + 1, mask=m2, other=0.0).to(acc_t) * sign
        acc_re += v_re * x_re - v_im * x_im
        acc_im += v_re * x_im + v_im * x_re

    om = row_mask & batch_mask
    op = out_ptr + batch * stride_ob + rows * 2
    tl.store(op, acc_re.to(out_ptr.dtype.element_ty), mask=om)
    tl.store(op + 1, acc_im.to(out_ptr.dtype.element_ty), mask=om)


#: Largest batch tile: batches of more clips run several tiles.
MAX_BLOCK_B = 16


def launch_config(batch: int, on_gpu: bool) -> dict:
    """Block sizes and warps for ``batch`` clips: ``BLOCK_R * BLOCK_B`` = 512 complex accumulators on a GPU
    (1024 made ptxas spill at BLOCK_B = 4); the interpreter takes 64-row tiles. The compile gate checks every
    value this returns for batches 1 to 64."""
    block_b = min(MAX_BLOCK_B, triton.next_power_of_2(batch))
    block_r = max(16, 512 // block_b) if on_gpu else 64
    return {"BLOCK_R": block_r, "BLOCK_B": block_b, "num_warps": 4}


def csr_spmm(crow: torch.Tensor, col: torch.Tensor, val: torch.Tensor, x: torch.Tensor, n_cols: int) -> torch.Tensor:
    """``out[b] = A @ [x[b], conj(x[b])][:n_cols]`` for a complex CSR matrix ``A``.

    ``crow`` ``(R + 1,)`` and ``col`` ``(nnz,)`` int64; ``val`` ``(nnz, 2)`` and ``x`` ``(B, n, 2)`` real views of
    one float dtype (float32 math, float64 for float64). Returns ``(B, R, 2)`` of that dtype.
    """
    del n_cols  # implied by the column indices; kept for the signature shared with the other backends
    x = x.contiguous()
    val = val.contiguous()
    n_rows = crow.shape[0] - 1
    batch = x.shape[0]
    out = torch.empty((batch, n_rows, 2), device=x.device, dtype=x.dtype)
    cfg = launch_config(batch, x.is_cuda)
    grid = (triton.cdiv(n_rows, cfg["BLOCK_R"]), triton.cdiv(batch, cfg["BLOCK_B"]))
    _csr_spmm_kernel[grid](
        crow,
        col,
        val,
        x,
        out,
        n_rows=n_rows,
        n_batch=batch,
        n_in=x.shape[1],
        stride_xb=x.stride(0),
        stride_ob=out.stride(0),
        FP64=x.dtype == torch.float64,
        **cfg,
    )
    return out
