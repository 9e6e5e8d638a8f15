"""The one tolerance table and the relative-error checks shared by tests and benchmarks."""

from __future__ import annotations

import torch

#: Relative error ``||out - ref|| / ||ref||`` allowed against the float64 reference, by compute dtype.
#: Low-precision paths are also held to at most 2x PyTorch's own error (see :func:`assert_rel_close`).
TOLERANCE = {
    torch.float64: 1e-10,
    torch.float32: 1e-5,
    torch.bfloat16: 2e-2,
    torch.float16: 4e-3,
}


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """``||out - ref|| / ||ref||`` computed in float64 (complex tensors compared as such)."""
    wide = torch.complex128 if (out.is_complex() or ref.is_complex()) else torch.float64
    out64 = out.detach().to(device="cpu").to(wide)
    ref64 = ref.detach().to(device="cpu").to(wide)
    if out64.shape != ref64.shape:
        raise AssertionError(f"shape mismatch: {tuple(out64.shape)} vs reference {tuple(ref64.shape)}")
    denom = torch.linalg.vector_norm(ref64)
    num = torch.linalg.vector_norm(out64 - ref64)
    return float(num / denom) if denom > 0 else float(num)


def assert_rel_close(
    out: torch.Tensor,
    ref: torch.Tensor,
    *,
    dtype: torch.dtype | None = None,
    bound: float | None = None,
    torch_out: torch.Tensor | None = None,
    name: str = "output",
) -> float:
    """Assert ``rel_error(out, ref)`` is within the bound and return it.

    The bound is ``bound`` when given, else the table's entry for ``dtype`` (default: ``out``'s dtype). With
    ``torch_out`` (PyTorch's own result in the same precision) the bound becomes
    ``max(bound, 2 * rel_error(torch_out, ref))``: a kernel may be as inexact as PyTorch, twice over, not more.
    """
    err = rel_error(out, ref)
    limit = bound if bound is not None else TOLERANCE[dtype or out.dtype]
    if torch_out is not None:
        limit = max(limit, 2 * rel_error(torch_out, ref))
    if not err <= limit:  # also catches NaN
        raise AssertionError(f"{name}: relative error {err:.3e} exceeds {limit:.3e}")
    return err
