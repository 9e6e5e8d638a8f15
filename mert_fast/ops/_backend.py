"""Backend selection shared by every op (``MERT_FAST_BACKEND``)."""

from __future__ import annotations

import importlib.util
import os

import torch

BACKENDS = ("auto", "triton", "cuda", "torch", "flash-attn")


def requested_backend() -> str:
    """The backend asked for through ``MERT_FAST_BACKEND`` (default ``auto``)."""
    value = os.environ.get("MERT_FAST_BACKEND", "auto").strip().lower() or "auto"
    if value not in BACKENDS:
        raise ValueError(f"MERT_FAST_BACKEND must be one of {', '.join(BACKENDS)}; got {value!r}")
    return value


def triton_interpreted() -> bool:
    """True when Triton kernels run through its interpreter (``TRITON_INTERPRET=1``), CPU tensors included."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


# looked up once without importing triton: a plain constant, so torch.compile traces callers without a cache wrapper
_TRITON_FOUND = importlib.util.find_spec("triton") is not None


def triton_importable() -> bool:
    return _TRITON_FOUND


def triton_can_run(tensor: torch.Tensor) -> bool:
    """Whether a Triton kernel can run on ``tensor``'s device in this process."""
    if not triton_importable():
        return False
    return tensor.is_cuda or (triton_interpreted() and tensor.device.type == "cpu")


def select_backend(op: str, tensor: torch.Tensor, supported: tuple[str, ...], auto: str) -> str:
    """Resolve the backend for ``op`` on ``tensor``.

    ``auto`` is the op's measured choice for this device; an explicit request for a backend that cannot
    run here is an error, never a silent fallback.
    """
    backend = requested_backend()
    if backend == "auto":
        return auto
    if backend not in supported:
        # An op that has no such backend runs its best available one: MERT_FAST_BACKEND=flash-attn must
        # not break the CQT, for example.
        return auto
    if backend == "triton" and not triton_can_run(tensor):
        raise RuntimeError(
            f"{op}: MERT_FAST_BACKEND=triton needs a CUDA tensor or TRITON_INTERPRET=1 with triton installed; "
            f"got a tensor on {tensor.device}"
        )
    if backend == "cuda":
        from mert_fast._native import native

        if not tensor.is_cuda:
            raise RuntimeError(f"{op}: MERT_FAST_BACKEND=cuda needs a CUDA tensor; got one on {tensor.device}")
        if native() is None:
            raise RuntimeError(f"{op}: MERT_FAST_BACKEND=cuda needs the mert_fast._C extension, which is not built")
    return backend
