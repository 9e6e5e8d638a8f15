"""Argument checks of the residual-VQ ops (:mod:`mert_fast.ops.rvq`): dtypes, devices, shapes, finiteness and the
metric, each failing with an error that names the argument."""

from __future__ import annotations

import torch

METRICS = ("l2", "cosine")


def check_tensor(name: str, t, *, floating: bool = True) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(t).__name__}")
    if floating and not t.is_floating_point():
        raise TypeError(f"{name} must be floating point (float16, bfloat16, float32 or float64); got {t.dtype}")


def check_shape(name: str, t: torch.Tensor, expected: tuple[int, ...], meaning: str) -> None:
    if tuple(t.shape) != expected:
        raise ValueError(f"{name} must be shaped {meaning} = {expected}; got {tuple(t.shape)}")


def check_device(name: str, t: torch.Tensor, x: torch.Tensor) -> None:
    if t.device != x.device:
        raise ValueError(f"{name} must be on x's device {x.device}; got {t.device}")


def check_finite(named: dict[str, torch.Tensor]) -> None:
    """One host sync for all tensors; on failure, name the first bad one (and row, for x)."""
    tensors = [t for t in named.values() if t is not None and t.numel()]
    if not tensors:
        return
    flags = torch.stack([torch.isfinite(t).all() for t in tensors])
    if bool(flags.all()):
        return
    for name, t in named.items():
        if t is not None and t.numel() and not bool(torch.isfinite(t).all()):
            bad = (~torch.isfinite(t)).reshape(-1, t.shape[-1]).any(-1).nonzero()
            where = f" (first at row {int(bad[0])})" if name == "x" and t.dim() > 1 else ""
            raise ValueError(f"{name} contains NaN or inf values{where}")


def check_metric(metric) -> bool:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(repr(m) for m in METRICS)}; got {metric!r}")
    return metric == "cosine"


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def prepare_codebooks(
    x: torch.Tensor,
    codebooks: torch.Tensor,
    in_proj: torch.Tensor | None,
    in_bias: torch.Tensor | None,
    out_proj: torch.Tensor | None,
    out_bias: torch.Tensor | None,
) -> tuple:
    """Check the codebooks and projections against ``x`` ``(..., D)``; return them in the compute dtype."""
    check_tensor("codebooks", codebooks)
    if codebooks.dim() != 3:
        raise ValueError(f"codebooks must be shaped (Q, K, Dc); got {tuple(codebooks.shape)}")
    n_stages, n_codes, code_dim = codebooks.shape
    if n_stages == 0 or n_codes == 0 or code_dim == 0:
        raise ValueError(
            f"codebooks must hold at least one stage, one code and one dimension (Q, K, Dc >= 1); "
            f"got shape {tuple(codebooks.shape)}"
        )
    check_device("codebooks", codebooks, x)
    dim = x.shape[-1]
    named = {"in_proj": in_proj, "in_bias": in_bias, "out_proj": out_proj, "out_bias": out_bias}
    for name, t in named.items():
        if t is not None:
            check_tensor(name, t)
            check_device(name, t, x)
    for bias, proj in (("in_bias", "in_proj"), ("out_bias", "out_proj")):
        if named[bias] is not None and named[proj] is None:
            raise ValueError(f"{bias} needs {proj}: a bias without its projection has no meaning")
    for proj, shape, layout in (
        ("in_proj", (n_stages, code_dim, dim), "(Q, Dc, D)"),
        ("out_proj", (n_stages, dim, code_dim), "(Q, D, Dc)"),
    ):
        if named[proj] is not None:
            check_shape(proj, named[proj], shape, layout)
        elif code_dim != dim:
            raise ValueError(
                f"codebooks: without {proj} the code dimension Dc must equal x's last dimension D = {dim}; "
                f"got codebooks of shape {tuple(codebooks.shape)}"
            )
    if in_bias is not None:
        check_shape("in_bias", in_bias, (n_stages, code_dim), "(Q, Dc)")
    if out_bias is not None:
        check_shape("out_bias", out_bias, (n_stages, dim), "(Q, D)")
    check_finite({"x": x, "codebooks": codebooks, **named})
    dtype = compute_dtype(x)
    return tuple(None if t is None else t.to(dtype) for t in (codebooks, in_proj, in_bias, out_proj, out_bias))


def check_codebook(codebook, x: torch.Tensor) -> None:
    """One ``(K, D)`` codebook of at least one code, in ``x``'s dimension ``D``."""
    check_tensor("codebook", codebook)
    if codebook.dim() != 2:
        raise ValueError(f"codebook must be shaped (K, D); got {tuple(codebook.shape)}")
    if codebook.shape[0] == 0:
        raise ValueError(f"codebook must hold at least one code (K >= 1); got shape {tuple(codebook.shape)}")
    if codebook.shape[1] != x.shape[1]:
        raise ValueError(
            f"codebook must have x's dimension D = {x.shape[1]} (shape (K, D)); got {tuple(codebook.shape)}"
        )


def check_features(x, dims: tuple[int, ...], layouts: str) -> None:
    """Floating-point features of one of the ranks ``dims`` with at least one feature dimension."""
    check_tensor("x", x)
    if x.dim() not in dims:
        raise ValueError(f"x must be shaped {layouts}; got {tuple(x.shape)}")
    if x.shape[-1] == 0:
        raise ValueError(f"x must have at least one feature dimension (D >= 1); got shape {tuple(x.shape)}")


def check_decode_inputs(
    codes: torch.Tensor, codebooks: torch.Tensor, out_proj: torch.Tensor | None, out_bias: torch.Tensor | None
) -> int:
    """Check :func:`~mert_fast.ops.rvq.rvq_decode`'s arguments; return the output dimension ``D``."""
    check_tensor("codes", codes, floating=False)
    if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
        raise TypeError(f"codes must be an integer tensor (int64 from rvq_encode); got {codes.dtype}")
    check_tensor("codebooks", codebooks)
    if codebooks.dim() != 3 or 0 in codebooks.shape:
        raise ValueError(f"codebooks must be shaped (Q, K, Dc) with Q, K, Dc >= 1; got {tuple(codebooks.shape)}")
    n_stages, n_codes, code_dim = codebooks.shape
    check_device("codebooks", codebooks, codes)
    if codes.dim() not in (2, 3) or not 1 <= codes.shape[-1] <= n_stages:
        raise ValueError(
            f"codes must be shaped (N, q) or (B, T, q) with 1 <= q <= Q = {n_stages}; got {tuple(codes.shape)}"
        )
    for name, t in (("out_proj", out_proj), ("out_bias", out_bias)):
        if t is not None:
            check_tensor(name, t)
            check_device(name, t, codes)
    if out_bias is not None and out_proj is None:
        raise ValueError("out_bias needs out_proj: a bias without its projection has no meaning")
    dim = code_dim
    if out_proj is not None:
        if out_proj.dim() != 3 or out_proj.shape[0] != n_stages or out_proj.shape[2] != code_dim:
            raise ValueError(
                f"out_proj must be shaped (Q, D, Dc) with Q, Dc = {n_stages}, {code_dim}; got {tuple(out_proj.shape)}"
            )
        dim = out_proj.shape[1]
        if out_bias is not None:
            check_shape("out_bias", out_bias, (n_stages, dim), "(Q, D)")
    if codes.numel():
        low, high = int(codes.min()), int(codes.max())
        if low < 0 or high >= n_codes:
            bad = low if low < 0 else high
            raise IndexError(f"codes must lie in [0, K) = [0, {n_codes}); got {bad}")
    return dim
