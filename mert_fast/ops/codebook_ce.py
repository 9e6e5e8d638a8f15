"""Fused masked-prediction loss over codebooks (HuBERT / MERT / MuQ heads), without the logits in memory.

fairseq's ``compute_nce`` builds a ``(K + 1, S, D)`` tensor of [positive; negatives] per codebook, and a
plain head materialises ``(S, Q, K)`` logits; here the Triton kernels stream the codebooks through an online
log-sum-exp, one tile at a time, and recompute ``softmax - onehot`` tile by tile in the backward. Memory beyond
inputs and gradients: ``O(S Q)``. ``MERT_FAST_BACKEND=triton`` runs them. ``auto`` runs them only on a GPU
where ``mert_fast/ops/tuning.json`` measured them faster than the torch path (chunked materialised logits) in the
call's bucket; elsewhere the torch path (no GPU measurement of the kernels exists yet).

The cosine normalisation (``x / max(||x||, eps)``, eps = 1e-8 as ``torch.cosine_similarity``) is applied to the
logits in float32, not to the inputs, so the kernels take the raw (e.g. bf16) vectors; its Jacobian is folded
into the gradients.
"""

from __future__ import annotations

import torch

from mert_fast._checks import check_float, check_int
from mert_fast.ops._backend import bucket, select_backend, triton_importable, tuned_backend

__all__ = ["codebook_cross_entropy", "EPS"]

#: Norms are clamped to at least this before dividing (``torch.cosine_similarity``'s eps).
EPS = 1e-8
#: The torch backend materialises at most this many logits at a time.
_TORCH_CHUNK_ELEMENTS = 1 << 22
_REDUCTIONS = ("sum", "mean", "none")
_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _acc_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _norms(x: torch.Tensor, codebooks: torch.Tensor, normalize: bool):
    if not normalize:
        return None, None
    acc = _acc_dtype(x)
    return torch.linalg.vector_norm(x, dim=-1, dtype=acc), torch.linalg.vector_norm(codebooks, dim=-1, dtype=acc)


def _check_targets(targets: torch.Tensor, n_k: int, ignore_index: int) -> None:
    bad = (targets != ignore_index) & ((targets < 0) | (targets >= n_k))
    if bool(bad.any()):
        value = int(targets[bad][0])
        raise ValueError(
            f"targets must lie in [0, {n_k}) (the codebook size K) or equal ignore_index={ignore_index}; found {value}"
        )


# ---------------------------------------------------------------------------------------------- torch backend


def _torch_chunks(n_s: int, n_q: int, n_k: int):
    step = max(1, _TORCH_CHUNK_ELEMENTS // max(1, n_q * n_k))
    return [(s0, min(n_s, s0 + step)) for s0 in range(0, n_s, step)]


def _torch_logits(xn, cn, bias, scale, s0, s1):
    logits = torch.einsum("sqd,qkd->sqk", xn[s0:s1], cn).mul_(scale)
    return logits.add_(bias) if bias is not None else logits


def _torch_prepare(x, codebooks, bias, norm_x, norm_c):
    acc = _acc_dtype(x)
    xn, cn = x.to(acc), codebooks.to(acc)
    if norm_x is not None:
        xn = xn / norm_x.clamp_min(EPS)[..., None]
        cn = cn / norm_c.clamp_min(EPS)[..., None]
    return xn, cn, bias.to(acc) if bias is not None else None


def _forward_torch(x, codebooks, targets, bias, norm_x, norm_c, scale, ignore_index):
    n_s, n_q, _ = x.shape
    n_k = codebooks.shape[1]
    xn, cn, b = _torch_prepare(x, codebooks, bias, norm_x, norm_c)
    valid = targets != ignore_index
    safe = torch.where(valid, targets, 0)
    loss = torch.empty((n_s, n_q), dtype=xn.dtype, device=x.device)
    lse = torch.empty_like(loss)
    hits = torch.zeros(n_q, dtype=torch.int64, device=x.device)
    for s0, s1 in _torch_chunks(n_s, n_q, n_k):
        logits = _torch_logits(xn, cn, b, scale, s0, s1)
        lse[s0:s1] = torch.logsumexp(logits, -1)
        picked = logits.gather(-1, safe[s0:s1, :, None])[..., 0]
        loss[s0:s1] = torch.where(valid[s0:s1], lse[s0:s1] - picked, 0.0)
        hits += ((logits.argmax(-1) == targets[s0:s1]) & valid[s0:s1]).sum(0)
    return loss, lse, hits


def _normalize_backward(dy: torch.Tensor, y: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
    """``dx`` for ``y = x / max(||x||, EPS)``: ``(dy - y <dy, y>) / ||x||``, or ``dy / EPS`` where clamped."""
    radial = torch.where(norm >= EPS, (dy * y).sum(-1), 0.0)
    return (dy - radial[..., None] * y) / norm.clamp_min(EPS)[..., None]


def _backward_torch(grad, x, codebooks, targets, bias, norm_x, norm_c, lse, scale, ignore_index, need_x, need_c):
    n_s, n_q, _ = x.shape
    n_k = codebooks.shape[1]
    xn, cn, b = _torch_prepare(x, codebooks, bias, norm_x, norm_c)
    valid = targets != ignore_index
    safe = torch.where(valid, targets, 0)
    g = torch.where(valid, grad.to(xn.dtype), 0.0)
    dxn = torch.zeros_like(xn) if need_x else None
    dcn = torch.zeros_like(cn) if need_c else None
    dbias = torch.zeros((n_q, n_k), dtype=xn.dtype, device=x.device) if need_c else None
    for s0, s1 in _torch_chunks(n_s, n_q, n_k):
        p = _torch_logits(xn, cn, b, scale, s0, s1).sub_(lse[s0:s1, :, None]).exp_()
        p.scatter_add_(-1, safe[s0:s1, :, None], torch.full_like(p[..., :1], -1.0))
        dl = p.mul_(g[s0:s1, :, None])  # p <= 1 is finite: ignored rows (g = 0) give exact zeros
        if need_x:
            dxn[s0:s1] = torch.einsum("sqk,qkd->sqd", dl, cn) * scale
        if need_c:
            dcn += torch.einsum("sqk,sqd->qkd", dl, xn[s0:s1]) * scale
            dbias += dl.sum(0)
    dx = dc = None
    if need_x:
        dx = (_normalize_backward(dxn, xn, norm_x) if norm_x is not None else dxn).to(x.dtype)
    if need_c:
        dc = (_normalize_backward(dcn, cn, norm_c) if norm_c is not None else dcn).to(codebooks.dtype)
        if bias is not None:
            dbias = dbias.to(bias.dtype)
    return dx, dc, dbias


# ---------------------------------------------------------------------------------------------- custom ops


@torch.library.custom_op("mert_fast::codebook_ce_forward", mutates_args=())
def _codebook_ce_forward(
    x: torch.Tensor,
    codebooks: torch.Tensor,
    targets: torch.Tensor,
    bias: torch.Tensor | None,
    temperature: float,
    normalize: bool,
    ignore_index: int,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-entry losses ``(S, Q)``, log-sum-exps ``(S, Q)`` (float32; float64 for float64) and hits ``(Q,)``."""
    _check_targets(targets, codebooks.shape[1], ignore_index)
    norm_x, norm_c = _norms(x, codebooks, normalize)
    if backend == "triton":
        from mert_fast.kernels.codebook_ce import codebook_ce_forward

        return codebook_ce_forward(
            x, codebooks, targets, bias, norm_x, norm_c, scale=1.0 / temperature, eps=EPS, ignore_index=ignore_index
        )
    return _forward_torch(x, codebooks, targets, bias, norm_x, norm_c, 1.0 / temperature, ignore_index)


@_codebook_ce_forward.register_fake
def _(x, codebooks, targets, bias, temperature, normalize, ignore_index, backend):
    acc = _acc_dtype(x)
    n_s, n_q, _ = x.shape
    return (
        x.new_empty((n_s, n_q), dtype=acc),
        x.new_empty((n_s, n_q), dtype=acc),
        x.new_empty((n_q,), dtype=torch.int64),
    )


@torch.library.custom_op("mert_fast::codebook_ce_backward", mutates_args=())
def _codebook_ce_backward(
    grad: torch.Tensor,
    x: torch.Tensor,
    codebooks: torch.Tensor,
    targets: torch.Tensor,
    bias: torch.Tensor | None,
    lse: torch.Tensor,
    temperature: float,
    normalize: bool,
    ignore_index: int,
    backend: str,
    need_x: bool,
    need_c: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dx, dcodebooks, dbias)``; a gradient not needed comes back as an empty tensor."""
    norm_x, norm_c = _norms(x, codebooks, normalize)
    scale = 1.0 / temperature
    if backend == "triton":
        from mert_fast.kernels.codebook_ce import codebook_ce_backward

        dx, dc, db = codebook_ce_backward(
            grad,
            x,
            codebooks,
            targets,
            bias,
            norm_x,
            norm_c,
            lse,
            scale=scale,
            eps=EPS,
            ignore_index=ignore_index,
            need_x=need_x,
            need_c=need_c,
        )
    else:
        dx, dc, db = _backward_torch(
            grad, x, codebooks, targets, bias, norm_x, norm_c, lse, scale, ignore_index, need_x, need_c
        )
    return (
        dx if dx is not None else x.new_empty((0,)),
        dc if dc is not None else codebooks.new_empty((0,)),
        db if db is not None else x.new_empty((0,)),
    )


@_codebook_ce_backward.register_fake
def _(grad, x, codebooks, targets, bias, lse, temperature, normalize, ignore_index, backend, need_x, need_c):
    n_q, n_k, _ = codebooks.shape
    db_dtype = bias.dtype if bias is not None else _acc_dtype(x)
    return (
        torch.empty_like(x) if need_x else x.new_empty((0,)),
        torch.empty_like(codebooks) if need_c else codebooks.new_empty((0,)),
        x.new_empty((n_q, n_k), dtype=db_dtype) if need_c else x.new_empty((0,)),
    )


def _forward_setup(ctx, inputs, output):
    x, codebooks, targets, bias, temperature, normalize, ignore_index, backend = inputs
    _, lse, _ = output
    ctx.save_for_backward(x, codebooks, targets, bias, lse)
    ctx.options = (temperature, normalize, ignore_index, backend)
    ctx.has_bias = bias is not None


def _forward_backward(ctx, grad_loss, grad_lse, grad_hits):
    # lse and hits are internal (never handed to the caller): only the losses carry a gradient.
    x, codebooks, targets, bias, lse = ctx.saved_tensors
    need_x = ctx.needs_input_grad[0]
    need_c = ctx.needs_input_grad[1] or (ctx.has_bias and ctx.needs_input_grad[3])
    if grad_loss is None or not (need_x or need_c):
        return None, None, None, None, None, None, None, None
    dx, dc, db = torch.ops.mert_fast.codebook_ce_backward(
        grad_loss, x, codebooks, targets, bias, lse, *ctx.options, need_x, need_c
    )
    return (
        dx if need_x else None,
        dc if ctx.needs_input_grad[1] else None,
        None,
        db if (ctx.has_bias and ctx.needs_input_grad[3]) else None,
        None,
        None,
        None,
        None,
    )


_codebook_ce_forward.register_autograd(_forward_backward, setup_context=_forward_setup)


# ---------------------------------------------------------------------------------------------- public op


def _check_inputs(x, codebooks, targets, bias, temperature, reduction, ignore_index) -> None:
    for name, t in (("x", x), ("codebooks", codebooks), ("targets", targets)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor; got {type(t).__name__}")
    if bias is not None and not isinstance(bias, torch.Tensor):
        raise TypeError(f"bias must be a torch.Tensor or None; got {type(bias).__name__}")
    if x.dtype not in _FLOATS:
        raise TypeError(f"x must be float16, bfloat16, float32 or float64; got {x.dtype}")
    if codebooks.dtype != x.dtype:
        raise TypeError(
            f"codebooks must have x's dtype {x.dtype}; got {codebooks.dtype} "
            "(under autocast, pass codebooks.to(x.dtype): gradients flow back through the cast)"
        )
    if bias is not None and bias.dtype != x.dtype:
        raise TypeError(f"bias must have x's dtype {x.dtype}; got {bias.dtype}")
    if targets.dtype != torch.int64:
        raise TypeError(f"targets must be int64 (torch.long) codebook indices; got {targets.dtype}")
    if x.dim() != 3:
        raise ValueError(f"x must be (S, Q, D) (frames, codebooks, features); got shape {tuple(x.shape)}")
    n_s, n_q, n_d = x.shape
    if codebooks.dim() != 3 or codebooks.shape[0] != n_q or codebooks.shape[2] != n_d:
        raise ValueError(
            f"codebooks must be (Q, K, D) = ({n_q}, K, {n_d}) to match x {tuple(x.shape)}; "
            f"got shape {tuple(codebooks.shape)}"
        )
    n_k = codebooks.shape[1]
    if n_k == 0 or n_d == 0 or n_q == 0:
        raise ValueError(
            f"codebooks must hold Q >= 1 codebooks of K >= 1 entries of D >= 1 features; got {n_q, n_k, n_d}"
        )
    if targets.shape != (n_s, n_q):
        raise ValueError(f"targets must be (S, Q) = ({n_s}, {n_q}); got shape {tuple(targets.shape)}")
    if bias is not None and bias.shape != (n_q, n_k):
        raise ValueError(f"bias must be (Q, K) = ({n_q}, {n_k}); got shape {tuple(bias.shape)}")
    for name, t in (("codebooks", codebooks), ("targets", targets), ("bias", bias)):
        if t is not None and t.device != x.device:
            raise ValueError(f"{name} must be on x's device {x.device}; got {t.device}")
    check_float("temperature", temperature, min=0, exclusive_min=True)
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be 'sum', 'mean' or 'none'; got {reduction!r}")
    check_int("ignore_index", ignore_index, expected="an int", error=TypeError)


def tuning_key(dtype: torch.dtype, frames: int, n_codebooks: int, n_codes: int, dim: int) -> str:
    """The tuning-table bucket of a call: dtype, power-of-two ceilings' exponents of S and K, Q and D
    (``bfloat16/s12/q8/k10/d64`` for 4,096 masked frames x 8 codebooks of 1,024 codes of 64 dims)."""
    return f"{str(dtype).removeprefix('torch.')}/s{bucket(frames)}/q{n_codebooks}/k{bucket(n_codes)}/d{dim}"


def _select(x: torch.Tensor, codebooks: torch.Tensor) -> str:
    """``auto``: on CUDA the fastest candidate the tuning table measured on this GPU in this call's bucket; else,
    and on the CPU, the torch path."""
    auto = "torch"
    if x.is_cuda:
        n_q, n_k, dim = codebooks.shape
        triton = triton_importable() and x.dtype != torch.float64 and dim <= 256
        key = tuning_key(x.dtype, x.shape[0], n_q, n_k, dim)
        auto = tuned_backend("codebook_cross_entropy", x.device, key, ("torch",) + (("triton",) if triton else ()))
    backend = select_backend("codebook_cross_entropy", x, ("triton", "torch"), auto or "torch")
    if backend == "triton" and x.shape[-1] > 256:
        raise ValueError(
            f"x: MERT_FAST_BACKEND=triton holds D <= 256 features per tile; got D={x.shape[-1]} (use the torch backend)"
        )
    return backend


def codebook_cross_entropy(
    x: torch.Tensor,
    codebooks: torch.Tensor,
    targets: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    temperature: float = 0.1,
    normalize: bool = True,
    reduction: str = "sum",
    ignore_index: int = -100,
    return_accuracy: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of ``Q`` codebook classifiers, fused: the ``(S, Q, K)`` logits are never stored.

    ``logits[s, q, k] = cos(x[s, q], codebooks[q, k]) / temperature + bias[q, k]`` (HuBERT / MERT heads:
    temperature 0.1, no bias; norms clamped to ``EPS = 1e-8`` like ``torch.cosine_similarity``), or with
    ``normalize=False`` the plain dot product ``<x[s, q], codebooks[q, k]> / temperature + bias[q, k]``
    (linear heads such as MuQ's: pass ``temperature=1.0``). The loss is ``logsumexp(logits) - logits[target]``
    per entry.

    Args:
        x: ``(S, Q, D)`` predictions, frames first (a ``Linear(H, Q * D)`` head's output viewed per codebook);
            float16, bfloat16, float32 or float64.
        codebooks: ``(Q, K, D)`` label embeddings, x's dtype.
        targets: ``(S, Q)`` int64 labels in ``[0, K)``, or ``ignore_index``.
        bias: optional ``(Q, K)`` logit bias, x's dtype.
        temperature: positive divisor of the similarities.
        normalize: cosine (True) or dot-product (False) logits.
        reduction: ``"sum"`` (fairseq's), ``"mean"`` over non-ignored entries (0, not NaN, when all are ignored)
            or ``"none"``.
        ignore_index: targets equal to it contribute no loss and no gradient.
        return_accuracy: also return the per-codebook count of entries whose argmax (lowest index on ties, as
            ``torch.argmax``) equals the target, from the same pass.

    Returns:
        The loss: a scalar, or ``(S, Q)`` for ``"none"`` (0 where ignored); float32 for half and float32 inputs
        (accumulated in float32), float64 for float64. With ``return_accuracy``, ``(loss, correct)`` with
        ``correct`` ``(Q,)`` int64. Differentiable in x, codebooks and bias (gradients in their dtypes).

    Raises ValueError for targets outside ``[0, K)`` other than ``ignore_index`` (this check reads the targets
    on the host: one device synchronisation per call), mismatched shapes, devices or ``temperature <= 0``;
    TypeError for wrong dtypes. NaN or inf inputs are not checked: they propagate to the loss.
    """
    _check_inputs(x, codebooks, targets, bias, temperature, reduction, ignore_index)
    backend = _select(x, codebooks)
    losses, _, hits = torch.ops.mert_fast.codebook_ce_forward(
        x, codebooks, targets, bias, float(temperature), bool(normalize), int(ignore_index), backend
    )
    if reduction == "none":
        loss = losses
    elif reduction == "sum":
        loss = losses.sum()
    else:
        loss = losses.sum() / (targets != ignore_index).sum().clamp_min(1)
    return (loss, hits) if return_accuracy else loss
