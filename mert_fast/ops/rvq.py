"""Residual vector quantisation: nearest-code search and multi-stage encode / decode.

Layouts (frames first, like every op of mert_fast):

- features ``x``: ``(N, D)`` or ``(B, T, D)``, one row per frame;
- one codebook: ``(K, D)``, one row per code; residual-VQ codebooks: ``(Q, K, Dc)``, stage first;
- codes: ``(N, Q)`` (or ``(B, T, Q)``) int64, stage ``s`` in column ``s``;
- projections (factorised codes, MuQ's Mel-RVQ and DAC): ``in_proj`` ``(Q, Dc, D)`` and ``out_proj``
  ``(Q, D, Dc)``, ``nn.Linear`` weight layout per stage (``z = r @ in_proj[s].T + in_bias[s]``), biases
  ``in_bias`` ``(Q, Dc)`` and ``out_bias`` ``(Q, D)``. Without projections ``Dc == D``.

Stage ``s`` of an encode projects the residual ``r`` down (``z``), finds the code nearest to ``z`` (squared L2,
or ``1 - cosine`` with a zero vector's cosine taken as 0), projects that raw code back up (``u``) and
subtracts it: ``r -= u``. ``quantized`` is the sum of the ``u`` in stage order, accumulated in float32 (float64
for float64 input); :func:`rvq_decode` recomputes exactly that sum from the codes, so
``rvq_decode(codes, codebooks) == quantized`` bit for bit when ``x`` and the codebooks share a dtype and no
projection is used (with projections, the up-projection's matmul may round differently in the fused kernel, in a
chunk of rows and in the decode: last-bit differences, ~1e-7 relative).

Ties resolve to the lowest code index (``torch.argmin``'s rule). Distances are searched as
``|c|^2 - 2 <z, c>`` in fp32 with fp32 accumulation (Triton's ``input_precision="ieee"``; TF32 and bf16 search
would flip codes and are not offered), so the chosen code's distance equals the minimum up to fp32 rounding;
``rvq_code_gaps_ref`` in :mod:`mert_fast.ops.reference` checks exactly that.

Backends (``MERT_FAST_BACKEND``): ``triton`` encodes every stage in one launch, streaming the codebooks and the
feature dimension in chunks (any ``D`` up to 4,096) with each tile's residual in an fp32 workspace; ``cuda`` is the
same fused encode in CUDA C++ (``csrc/rvq_encode.cu``, in the ``mert_fast._C`` extension; float32 and float64, half
inputs searched in float32 like the other backends); ``torch`` loops over stages on chunks of rows, so no ``N x K``
distance matrix is ever held. ``cuda`` exists for CUDA tensors only: an
explicit ``cuda`` request on a CPU tensor is an error, as for every op.

``auto`` (the default): the CPU runs ``torch``. On a CUDA tensor it runs the fastest candidate (``torch``, ``cuda``
where the extension is built, ``triton``) that ``mert_fast/ops/tuning.json`` measured on this GPU in this shape's
bucket (compute dtype, metric, projections and the power-of-two ceilings of ``N``, ``D``, ``Dc`` and ``K``;
:func:`tuning_key`); a GPU or bucket with no measurement runs ``torch``, the safe default. On the H200 the table
holds, the ``torch`` path was the fastest at both measured shapes (EnCodec, Mel-RVQ).
"""

from __future__ import annotations

import contextlib
import logging

import torch
import torch.nn.functional as F

from mert_fast._checks import check_int
from mert_fast.ops._backend import bucket, select_backend, triton_importable, tuned_backend
from mert_fast.ops.rvq_checks import (
    METRICS,
    check_codebook,
    check_decode_inputs,
    check_features,
    check_metric,
    compute_dtype,
    prepare_codebooks,
)

__all__ = ["METRICS", "nearest_code", "rvq_decode", "rvq_encode"]

logger = logging.getLogger(__name__)

#: Elements of one chunk's distance matrix in the torch path (8 MiB of fp32 on the CPU: 2,048 rows of 1,024 codes).
#: Measured on 2 shared cores: 256-row chunks ran 2-8x slower than one 1,500-row matmul (every matmul pays the
#: thread pool's fork/join, and a busy core stalls it), so chunks are large; they only bound memory.
_CHUNK_CPU = 1 << 21
_CHUNK_GPU = 1 << 24


def _backend(x: torch.Tensor, n_codes: int, code_dim: int, projected: bool, cosine: bool) -> str:
    """The backend for an encode of ``x`` ``(N, D)`` (or ``(B, T, D)``) with ``K = n_codes`` codes of ``code_dim``."""
    auto = "torch"
    if x.is_cuda:
        n_rows = x.numel() // max(1, x.shape[-1])
        metric = "cosine" if cosine else "l2"
        key = tuning_key(compute_dtype(x), metric, projected, n_rows, x.shape[-1], code_dim, n_codes)
        auto = tuned_backend("rvq", x.device, key, _available(x)) or SAFE_DEFAULT
    return select_backend("rvq", x, ("triton", "cuda", "torch"), auto)


#: ``auto`` on a GPU or shape bucket the tuning table has not measured: the stage loop, PyTorch's own matmuls.
SAFE_DEFAULT = "torch"


def _available(x: torch.Tensor) -> tuple[str, ...]:
    """The candidates that can run on the CUDA tensor ``x`` in this process (the Triton kernel has no float64)."""
    triton = triton_importable() and x.dtype != torch.float64
    return ("torch",) + (("cuda",) if _native_built() else ()) + (("triton",) if triton else ())


def tuning_key(
    dtype: torch.dtype, metric: str, projected: bool, n_rows: int, dim: int, code_dim: int, n_codes: int
) -> str:
    """The tuning-table bucket of an encode: compute dtype, metric, projections and the power-of-two ceilings'
    exponents of N, D, Dc and K (``float32/l2/plain/n15/d7/dc7/k10`` for EnCodec's 24,000 x 128 -> 8 x 1024)."""
    compute = "float64" if dtype == torch.float64 else "float32"
    buckets = "/".join(
        f"{name}{bucket(v)}" for name, v in (("n", n_rows), ("d", dim), ("dc", code_dim), ("k", n_codes))
    )
    return f"{compute}/{metric}/{'proj' if projected else 'plain'}/{buckets}"


def _native_built() -> bool:
    from mert_fast._native import native

    return native() is not None


# ---------------------------------------------------------------------------------------------- torch path


def _down(r, s, in_proj, in_bias):
    return r if in_proj is None else F.linear(r, in_proj[s], None if in_bias is None else in_bias[s])


def _up(code, s, out_proj, out_bias):
    return code if out_proj is None else F.linear(code, out_proj[s], None if out_bias is None else out_bias[s])


def _lookup(codebooks: torch.Tensor, n_q: int, cosine: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The searched codebooks and their squared norms ``(n_q, K)`` (zeros for cosine: score ``-2 <z, c/|c|>``)."""
    if cosine:
        return F.normalize(codebooks[:n_q], dim=-1), codebooks.new_zeros(codebooks[:n_q].shape[:2])
    return codebooks[:n_q], codebooks[:n_q].square().sum(-1)


def _chunk_rows(x: torch.Tensor, n_codes: int) -> int:
    return max(1, (_CHUNK_GPU if x.is_cuda else _CHUNK_CPU) // n_codes)


@contextlib.contextmanager
def _ieee_matmul(tensor: torch.Tensor):
    """True fp32 CUDA matmuls for the duration, whatever the process chose (TF32 search flips codes)."""
    if not tensor.is_cuda:
        yield
        return
    matmul = torch.backends.cuda.matmul
    if hasattr(matmul, "fp32_precision"):
        old, matmul.fp32_precision = matmul.fp32_precision, "ieee"
        try:
            yield
        finally:
            matmul.fp32_precision = old
    else:
        old, matmul.allow_tf32 = matmul.allow_tf32, False
        try:
            yield
        finally:
            matmul.allow_tf32 = old


def _encode_torch(x, codebooks, in_proj, in_bias, out_proj, out_bias, n_q, cosine, with_quantized):
    with _ieee_matmul(x):
        return _encode_torch_chunks(x, codebooks, in_proj, in_bias, out_proj, out_bias, n_q, cosine, with_quantized)


def _encode_torch_chunks(x, codebooks, in_proj, in_bias, out_proj, out_bias, n_q, cosine, with_quantized):
    xc = x.to(codebooks.dtype)
    lookup, norms = _lookup(codebooks, n_q, cosine)
    n_rows = x.shape[0]
    codes = torch.empty((n_rows, n_q), dtype=torch.int64, device=x.device)
    quant = torch.empty_like(x) if with_quantized else None
    step = _chunk_rows(x, codebooks.shape[1])
    for r0 in range(0, n_rows, step):
        resid = xc[r0 : r0 + step].clone()
        total = torch.zeros_like(resid)
        for s in range(n_q):
            score = torch.addmm(norms[s], _down(resid, s, in_proj, in_bias), lookup[s].T, alpha=-2)
            idx = score.argmin(1)
            codes[r0 : r0 + step, s] = idx
            up = _up(codebooks[s].index_select(0, idx), s, out_proj, out_bias)
            resid.sub_(up)
            total.add_(up)
        if quant is not None:
            quant[r0 : r0 + step] = total
    return codes, quant


def _encode_triton(x, codebooks, in_proj, in_bias, out_proj, out_bias, n_q, cosine, with_quantized):
    from mert_fast.kernels.rvq import rvq_encode_fused

    return rvq_encode_fused(
        x,
        codebooks,
        in_proj=in_proj,
        in_bias=in_bias,
        out_proj=out_proj,
        out_bias=out_bias,
        n_q=n_q,
        cosine=cosine,
        with_quantized=with_quantized,
    )


def _encode_cuda(x, codebooks, in_proj, in_bias, out_proj, out_bias, n_q, cosine, with_quantized):
    from mert_fast._native import native

    books = codebooks.contiguous()
    lookup, norms = _lookup(books, n_q, cosine)
    codes, quant = native().rvq_encode(
        x.to(books.dtype).contiguous(),
        books,
        lookup.contiguous(),
        norms.contiguous(),
        *(None if t is None else t.contiguous() for t in (in_proj, in_bias, out_proj, out_bias)),
        n_q,
        with_quantized,
    )
    return codes, quant.to(x.dtype) if with_quantized else None


_ENCODERS = {"triton": _encode_triton, "cuda": _encode_cuda, "torch": _encode_torch}


# ---------------------------------------------------------------------------------------------- custom op


@torch.library.custom_op("mert_fast::rvq_encode", mutates_args=())
def _rvq_encode_op(
    x: torch.Tensor,
    codebooks: torch.Tensor,
    in_proj: torch.Tensor | None,
    in_bias: torch.Tensor | None,
    out_proj: torch.Tensor | None,
    out_bias: torch.Tensor | None,
    n_q: int,
    cosine: bool,
    with_quantized: bool,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Checked, 2-D ``x`` ``(N, D)``; everything else in the compute dtype. Returns ``(quantized, codes)``
    (float output first: torch's op checks sum the outputs in order); ``quantized`` is ``(0, D)`` when not
    ``with_quantized``."""
    codes, quant = _ENCODERS[backend](x, codebooks, in_proj, in_bias, out_proj, out_bias, n_q, cosine, with_quantized)
    return quant if quant is not None else x.new_empty((0, x.shape[1])), codes


@_rvq_encode_op.register_fake
def _(x, codebooks, in_proj, in_bias, out_proj, out_bias, n_q, cosine, with_quantized, backend):
    codes = x.new_empty((x.shape[0], n_q), dtype=torch.int64)
    return x.new_empty((x.shape[0] if with_quantized else 0, x.shape[1])), codes


def _encode_setup(ctx, inputs, output):
    x, codebooks, in_proj, in_bias, out_proj, out_bias, n_q, cosine, with_quantized, backend = inputs
    ctx.save_for_backward(output[1], codebooks, out_proj)
    ctx.has_out_proj = out_proj is not None
    ctx.n_q = n_q


def _encode_backward(ctx, grad_quant, grad_codes):
    # quantized = sum_s up_s(codebooks[s][codes[:, s]]): the codes are piecewise constant in x and in_proj (zero
    # gradient almost everywhere), so only the gathered codes and the up-projection receive gradient.
    codes, codebooks, out_proj = ctx.saved_tensors
    out_proj = out_proj if ctx.has_out_proj else None
    needs = ctx.needs_input_grad
    g_cb = g_op = g_ob = None
    g = grad_quant.to(codebooks.dtype) if grad_quant is not None and grad_quant.numel() else None
    if g is not None and needs[1]:
        g_cb = torch.zeros_like(codebooks)
        for s in range(ctx.n_q):
            g_cb[s].index_add_(0, codes[:, s], g if out_proj is None else g @ out_proj[s])
    if g is not None and needs[4]:
        g_op = torch.zeros_like(out_proj)
        for s in range(ctx.n_q):
            g_op[s] = g.T @ codebooks[s].index_select(0, codes[:, s])
    if g is not None and needs[5]:
        g_ob = torch.zeros((out_proj.shape[0], out_proj.shape[1]), dtype=g.dtype, device=g.device)
        g_ob[: ctx.n_q] = g.sum(0)
    return None, g_cb, None, None, g_op, g_ob, None, None, None, None


_rvq_encode_op.register_autograd(_encode_backward, setup_context=_encode_setup)


# ---------------------------------------------------------------------------------------------- public ops


def nearest_code(
    x: torch.Tensor, codebook: torch.Tensor, *, metric: str = "l2", k: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` codes nearest to every row of ``x``.

    Args:
        x: ``(N, D)`` features, float16/bfloat16/float32 (searched in float32) or float64.
        codebook: ``(K, D)`` codes, any float dtype (converted to the compute dtype), on x's device.
        metric: ``"l2"`` (squared Euclidean distance) or ``"cosine"`` (``1 - cosine similarity``; a zero
            vector's cosine is 0).
        k: how many codes per row, ``1 <= k <= K``.

    Returns:
        ``(indices, distances)``: ``indices`` int64 ``(N,)`` for ``k == 1``, else ``(N, k)``; ``distances`` of the
        same shape, float32 (float64 for float64 ``x``), nearest first. Equal distances resolve to the lowest
        index. ``k == 1`` runs the fused search (Triton on CUDA); ``k > 1`` a chunked PyTorch search. The
        distances are recomputed directly from the chosen codes (``sum((x - c) ** 2)``, not the search's
        ``|x|^2 - 2 <x, c> + |c|^2``), so they are accurate to float rounding and differentiable with respect to
        ``x`` and ``codebook``; for ``k > 1`` the rows are ordered by those distances.
    """
    check_features(x, (2,), "(N, D)")
    cosine = check_metric(metric)
    check_codebook(codebook, x)
    k = check_int("k", k, min=1, max=codebook.shape[0])
    (books, *_) = prepare_codebooks(x, codebook[None], None, None, None, None)
    book = books[0]
    if k == 1:
        backend = _backend(x, book.shape[0], book.shape[1], False, cosine)
        _, codes = _rvq_encode_op(x, books, None, None, None, None, 1, cosine, False, backend)
        indices = codes[:, 0]
        chosen = book[indices]
    else:
        indices = _topk_torch(x.to(book.dtype), book, k, cosine)
        chosen = book[indices]
    xc = x.to(book.dtype)
    xc = xc if k == 1 else xc[:, None, :]
    if cosine:
        distances = 1 - (F.normalize(xc, dim=-1) * F.normalize(chosen, dim=-1)).sum(-1)
    else:
        distances = (xc - chosen).square().sum(-1)
    if k > 1:
        distances, order = torch.sort(distances, dim=1, stable=True)
        indices = indices.gather(1, order)
    return indices, distances


def _topk_torch(x: torch.Tensor, book: torch.Tensor, k: int, cosine: bool) -> torch.Tensor:
    """``(N, k)`` indices of the ``k`` best scores, ties to the lowest index, chunked over rows."""
    lookup, norms = _lookup(book[None], 1, cosine)
    out = torch.empty((x.shape[0], k), dtype=torch.int64, device=x.device)
    step = _chunk_rows(x, book.shape[0])
    with torch.no_grad(), _ieee_matmul(x):
        for r0 in range(0, x.shape[0], step):
            score = torch.addmm(norms[0], x[r0 : r0 + step], lookup[0].T, alpha=-2)
            out[r0 : r0 + step] = torch.sort(score, dim=1, stable=True).indices[:, :k]
    return out


def rvq_encode(
    x: torch.Tensor,
    codebooks: torch.Tensor,
    *,
    metric: str = "l2",
    in_proj: torch.Tensor | None = None,
    in_bias: torch.Tensor | None = None,
    out_proj: torch.Tensor | None = None,
    out_bias: torch.Tensor | None = None,
    n_q: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Residual vector quantisation of every row of ``x`` through the first ``n_q`` stages.

    Args:
        x: ``(N, D)`` or ``(B, T, D)`` features, float16/bfloat16/float32 (computed in float32) or float64.
        codebooks: ``(Q, K, Dc)`` codes per stage, any float dtype, on x's device (``Dc == D`` without projections).
        metric: ``"l2"`` (EnCodec, k-means) or ``"cosine"`` (MuQ's Mel-RVQ, DAC); see :func:`nearest_code`.
        in_proj, in_bias: optional ``(Q, Dc, D)`` and ``(Q, Dc)``: the residual is searched as
            ``r @ in_proj[s].T + in_bias[s]``.
        out_proj, out_bias: optional ``(Q, D, Dc)`` and ``(Q, D)``: the raw chosen code is subtracted as
            ``c @ out_proj[s].T + out_bias[s]``.
        n_q: how many stages to run, ``1 <= n_q <= Q`` (default ``Q``).

    Returns:
        ``(codes, quantized)``: ``codes`` int64 ``(N, n_q)`` (``(B, T, n_q)``); ``quantized`` x's shape and dtype,
        the sum of the chosen (projected) codes accumulated in float32 (float64), equal to
        :func:`rvq_decode` of the codes (bit for bit without projections, see the module docstring).
        ``quantized`` is differentiable with respect to ``codebooks``, ``out_proj`` and ``out_bias``; its
        gradient with respect to ``x``, ``in_proj`` and ``in_bias`` is zero (the codes are piecewise constant;
        use a straight-through estimator ``x + (quantized - x).detach()``).
    """
    check_features(x, (2, 3), "(N, D) or (B, T, D)")
    cosine = check_metric(metric)
    books, w_in, b_in, w_out, b_out = prepare_codebooks(x, codebooks, in_proj, in_bias, out_proj, out_bias)
    n_q = books.shape[0] if n_q is None else check_int("n_q", n_q, min=1, max=books.shape[0])
    flat = x.reshape(-1, x.shape[-1])
    backend = _backend(x, books.shape[1], books.shape[2], w_in is not None or w_out is not None, cosine)
    logger.debug(
        "rvq_encode: %d rows, %d of %d stages, %s, backend %s", flat.shape[0], n_q, books.shape[0], metric, backend
    )
    quant, codes = _rvq_encode_op(flat, books, w_in, b_in, w_out, b_out, n_q, cosine, True, backend)
    return codes.reshape(*x.shape[:-1], n_q), quant.reshape(x.shape)


def rvq_decode(
    codes: torch.Tensor,
    codebooks: torch.Tensor,
    *,
    out_proj: torch.Tensor | None = None,
    out_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """The sum over stages of the chosen codes, projected up: the ``quantized`` of :func:`rvq_encode`.

    Args:
        codes: ``(N, q)`` or ``(B, T, q)`` integer codes of the first ``q <= Q`` stages, each in ``[0, K)``.
        codebooks: ``(Q, K, Dc)`` float codes, on codes' device.
        out_proj, out_bias: optional ``(Q, D, Dc)`` and ``(Q, D)`` (required when ``Dc`` differs from ``D``).

    Returns:
        ``(N, D)`` or ``(B, T, D)`` in the codebooks' dtype, summed stage by stage in float32 (float64 for float64
        codebooks). Differentiable with respect to ``codebooks``, ``out_proj`` and ``out_bias``.
    """
    dim = check_decode_inputs(codes, codebooks, out_proj, out_bias)
    flat = codes.reshape(-1, codes.shape[-1]).to(torch.int64)
    acc = compute_dtype(codebooks)
    books = codebooks.to(acc)
    w_out = None if out_proj is None else out_proj.to(acc)
    b_out = None if out_bias is None else out_bias.to(acc)
    total = None
    for s in range(flat.shape[1]):
        up = _up(books[s].index_select(0, flat[:, s]), s, w_out, b_out)
        total = up if total is None else total + up
    return total.to(codebooks.dtype).reshape(*codes.shape[:-1], dim)
