"""Backend selection shared by every op (``MERT_FAST_BACKEND``) and the measured tuning table ``auto`` reads.

On CUDA tensors ``auto`` runs, per op, GPU and shape bucket, the fastest candidate that ``tuning.json`` measured on
this GPU, PyTorch's own paths included; where the table has no measurement for this GPU or bucket, the op's
documented safe default (the PyTorch path, or for the CQT the CUDA extension when it is built).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
import os
import re
from importlib import resources

import torch

logger = logging.getLogger(__name__)

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


# ---------------------------------------------------------------------------------------------- the tuning table

#: The measured table ``auto`` reads on CUDA tensors (package data next to this module), written on a GPU by
#: ``python bench/tune.py`` from the benchmarks' JSON.
TUNING_TABLE = "tuning.json"
TUNING_FORMAT = 2

#: Per op, the candidates that are PyTorch's own paths (the baseline ``auto`` must never lose to).
PYTORCH_CANDIDATES = {
    "attention": ("sdpa-cudnn", "sdpa-flash", "sdpa-efficient", "torch"),
    "codebook_cross_entropy": ("torch",),
    "cqt": ("torch",),
    "rvq": ("torch",),
}

_EMPTY_TABLE = {"format": TUNING_FORMAT, "devices": {}}


def bucket(value: int) -> int:
    """The exponent of the power-of-two ceiling: 1000 -> 10, 1024 -> 10, 1025 -> 11."""
    return max(0, int(value) - 1).bit_length()


def device_key(name: str) -> str:
    """A GPU's table key: its name lowercased, runs of other characters as ``-`` ("NVIDIA H200" -> "nvidia-h200")."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


@functools.cache
def tuning_table() -> dict:
    """``{"format", "note", "devices": {device_key: {"gpu", "ops": {op: {"provenance", "buckets": {key: entry}}}}}}``;
    an entry's ``ms`` maps each measured candidate to its median time (ms); ``provenance`` names the GPU, torch,
    triton, commit and date of the measurement. An unreadable table counts as empty."""
    try:
        table = json.loads(resources.files("mert_fast.ops").joinpath(TUNING_TABLE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        logger.warning("cannot read the tuning table %s (%s); auto runs the safe defaults", TUNING_TABLE, exc)
        return _EMPTY_TABLE
    if table.get("format") != TUNING_FORMAT:
        logger.warning(
            "%s has format %r, expected %d; auto runs the safe defaults",
            TUNING_TABLE,
            table.get("format"),
            TUNING_FORMAT,
        )
        return _EMPTY_TABLE
    return table


@functools.cache
def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device)


def measured_times(op: str, device: torch.device, key: str) -> dict[str, float]:
    """The measured median times (ms) of ``op``'s candidates on ``device``'s GPU in bucket ``key``; {} if none."""
    devices = tuning_table().get("devices", {})
    if not devices:
        return {}
    ops = devices.get(device_key(device_name(device)), {}).get("ops", {})
    entry = ops.get(op, {}).get("buckets", {}).get(key, {})
    return dict(entry.get("ms", {}))


def fastest(times: dict[str, float], available: tuple[str, ...], op: str) -> str | None:
    """The fastest measured candidate among ``available``; on a tie, PyTorch's own path. None if none was measured."""
    measured = [name for name in available if name in times]
    if not measured:
        return None
    pytorch = PYTORCH_CANDIDATES.get(op, ())
    return min(measured, key=lambda name: (times[name], name not in pytorch))


def tuned_backend(op: str, device: torch.device, key: str, available: tuple[str, ...]) -> str | None:
    """``auto``'s measured choice for ``op`` on a CUDA ``device`` in bucket ``key``: the fastest candidate the table
    measured on this GPU among those that can run here; None when this GPU or bucket has no measurement."""
    return fastest(measured_times(op, device, key), available, op)
