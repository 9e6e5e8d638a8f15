"""Training checkpoints: atomic, pruned, resumable to the exact step.

Layout of ``OUTPUT_DIR/checkpoints``::

    step00000120/                      one finished checkpoint (a DeepSpeed tag directory)
        mp_rank_00_model_states.pt     DeepSpeed: module, lr scheduler (and client state)
        *_optim_states.pt              DeepSpeed: each rank's optimizer partition, loss scaler
        trainer_rank{r}.pt             each rank's RNG states and unlogged metric sums
        mert_fast.json                 step, world size, run settings, model config, teacher fingerprint
    latest                             the newest finished tag (replaced atomically)

A checkpoint is written into ``.tmp-stepN`` and renamed once every rank has finished, so a run killed while
saving leaves the previous checkpoints intact and never a half-written one under a step name. Only the last
``keep_last`` are kept. The checkpoint directory must be on a file system every rank sees.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "CHECKPOINT_FORMAT",
    "RESUME_KEYS",
    "find_checkpoint",
    "loss_scaler_state",
    "read_meta",
    "restore_rng",
    "rng_state",
    "save_checkpoint",
    "check_resumable",
    "file_fingerprint",
    "tag_for",
]

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "mert_fast.checkpoint.v1"

#: Run settings a resumed run must share with its checkpoint: they fix which batches, masks and updates follow.
RESUME_KEYS = ("preset", "objective", "seed", "batch_size", "grad_accum", "crop_seconds", "min_crop_seconds",
               "mask_prob", "mask_length", "world_size")  # fmt: skip


def tag_for(step: int) -> str:
    return f"step{step:08d}"


def file_fingerprint(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (hex)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def rng_state() -> dict[str, Any]:
    """Every generator a step may touch: Python, NumPy, torch CPU and (if present) the CUDA devices."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def loss_scaler_state(optimizer: Any) -> dict[str, Any] | None:
    """The dynamic loss scaler's state of a DeepSpeed optimizer (fp16), or None (fp32, bf16: no scaling).

    DeepSpeed keeps the scaler in the optimizer's state dict; this reads it so that a resumed run can check that
    what it loaded is what was saved.
    """
    scaler = getattr(optimizer, "loss_scaler", None)
    if scaler is None or not hasattr(scaler, "cur_scale"):
        return None
    keys = ("cur_scale", "cur_iter", "last_overflow_iter", "scale_factor", "scale_window", "cur_hysteresis",
            "min_scale", "dynamic")  # fmt: skip
    state = {k: getattr(scaler, k) for k in keys if getattr(scaler, k, None) is not None}
    return {k: float(v) if isinstance(v, torch.Tensor) else v for k, v in state.items()}


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_checkpoint(
    engine: Any,
    directory: str | os.PathLike,
    step: int,
    *,
    meta: dict[str, Any],
    rank_state: dict[str, Any],
    rank: int,
    keep_last: int,
    barrier,
    shared_files: dict[str, Any] | None = None,
) -> Path:
    """Save the engine and this rank's trainer state as ``directory/step{step}``; every rank must call it.

    ``meta`` (written by rank 0 into ``mert_fast.json``) describes the run; ``rank_state`` is this rank's
    (RNG states, unlogged sums); ``shared_files`` maps file names to objects that are the same on every rank (an
    EMA teacher), saved once by rank 0. Returns the finished checkpoint's path.
    """
    directory = Path(directory)
    tag = tag_for(step)
    tmp_tag = f".tmp-{tag}"
    if rank == 0:
        directory.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(directory / tmp_tag, ignore_errors=True)
    barrier()
    engine.save_checkpoint(str(directory), tag=tmp_tag, save_latest=False)
    torch.save(rank_state, directory / tmp_tag / f"trainer_rank{rank}.pt")
    barrier()
    final = directory / tag
    if rank == 0:
        for name, obj in (shared_files or {}).items():
            torch.save(obj, directory / tmp_tag / name)
        meta = {"format": CHECKPOINT_FORMAT, "step": step, **meta}
        (directory / tmp_tag / "mert_fast.json").write_text(json.dumps(meta, indent=2) + "\n")
        if final.exists():  # saved again at the same step (e.g. a signal right after a periodic save)
            shutil.rmtree(final)
        os.replace(directory / tmp_tag, final)
        _write_atomic(directory / "latest", tag + "\n")
        done = sorted(p for p in directory.glob("step*") if p.is_dir() and (p / "mert_fast.json").is_file())
        for old in done[:-keep_last] if keep_last > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
        logger.info("checkpoint saved: %s", final)
    barrier()
    return final


def find_checkpoint(source: str | os.PathLike) -> Path:
    """The checkpoint directory that ``source`` names: a run directory (its newest checkpoint), a ``checkpoints``
    directory (its ``latest``) or one checkpoint.

    Raises:
        FileNotFoundError: nothing resumable there (the message says what was looked for).
    """
    path = Path(source)
    if (path / "mert_fast.json").is_file():
        return path
    for base in (path / "checkpoints", path):
        latest = base / "latest"
        if latest.is_file():
            candidate = base / latest.read_text().strip()
            if (candidate / "mert_fast.json").is_file():
                return candidate
        done = sorted(p for p in base.glob("step*") if (p / "mert_fast.json").is_file())
        if done:
            return done[-1]
    raise FileNotFoundError(
        f"resume: no checkpoint in {os.fspath(source)!r} (expected a run directory with checkpoints/latest, a "
        "checkpoints directory, or a checkpoint directory holding mert_fast.json)"
    )


def read_meta(checkpoint: str | os.PathLike) -> dict[str, Any]:
    """The ``mert_fast.json`` of a checkpoint directory."""
    path = Path(checkpoint) / "mert_fast.json"
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint: {os.fspath(checkpoint)!r} has no mert_fast.json")
    meta = json.loads(path.read_text())
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"checkpoint: {path} is not a mert_fast checkpoint ({meta.get('format')!r})")
    return meta


def check_resumable(meta: dict[str, Any], run: dict[str, Any]) -> None:
    """Raise ValueError naming every setting in which the run differs from the checkpoint's."""
    diffs = [f"{k}: checkpoint {meta['run'].get(k)!r}, now {run.get(k)!r}" for k in RESUME_KEYS
             if meta["run"].get(k) != run.get(k)]  # fmt: skip
    if diffs:
        hint = ""
        if any(d.startswith("world_size") for d in diffs):
            hint = (
                " Resuming needs the world size the checkpoint was written with (the data order and the optimizer "
                "partitions depend on it); `mert-fast export` turns the checkpoint into weights to start a new run."
            )
        raise ValueError("resume: the run does not match the checkpoint: " + "; ".join(diffs) + "." + hint)
