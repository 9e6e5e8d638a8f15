"""Training checkpoints: atomic, pruned, resumable to the exact step.

Layout of ``OUTPUT_DIR/checkpoints``::

    step00000120/                      one finished checkpoint (a DeepSpeed tag directory)
        mp_rank_00_model_states.pt     DeepSpeed: module, lr scheduler (and client state)
        *_optim_states.pt              DeepSpeed: each rank's optimizer partition, loss scaler
        trainer_rank{r}.pt             each rank's RNG states and unlogged metric sums
        mert_fast.json                 step, world size, run settings, model config, teacher fingerprint
        manifest.json                  every other file's size and SHA-256, written last
    latest                             the newest finished tag (replaced atomically)

A checkpoint is written into ``.tmp-stepN`` and renamed once every rank has finished, so a run killed while
saving leaves the previous checkpoints intact and never a half-written one under a step name. Only the last
``keep_last`` are kept. The checkpoint directory must be on a file system every rank sees.

Resuming checks the manifest first (:func:`verify_checkpoint`): a file that is missing, truncated or altered
afterwards (a full disk, a copy cut short) is named in the error instead of surfacing as a load failure deep in
torch. A run or checkpoints directory resumes from its newest intact checkpoint, with a warning for each newer
one that is not.
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

from mert_fast._io import write_json, write_text

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
    "verify_checkpoint",
    "write_manifest",
]

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "mert_fast.checkpoint.v1"
MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "mert_fast.checkpoint-manifest.v1"

#: Run settings a resumed run must share with its checkpoint: they fix which batches, masks and updates follow.
RESUME_KEYS = ("preset", "objective", "seed", "batch_size", "grad_accum", "crop_seconds", "min_crop_seconds",
               "mask_prob", "mask_length", "world_size")  # fmt: skip
#: Weights of optional terms that have a head of their own: a resumed run keeps each one on (> 0) or off as its
#: checkpoint has it, since the module's parameters differ; the value itself may change (as the loss weights may).
HEAD_KEYS = ("mfcc_weight", "clip_weight")


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


def write_manifest(checkpoint: str | os.PathLike) -> Path:
    """Write ``checkpoint/manifest.json``: the relative path, size and SHA-256 of every other file in the
    checkpoint directory (recursively). Call it after every file is written: its presence marks a finished one."""
    root = Path(checkpoint)
    files = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST_NAME):
        files[path.relative_to(root).as_posix()] = {"bytes": path.stat().st_size, "sha256": file_fingerprint(path)}
    write_json(root / MANIFEST_NAME, {"format": MANIFEST_FORMAT, "files": files})
    return root / MANIFEST_NAME


def verify_checkpoint(checkpoint: str | os.PathLike) -> None:
    """Check every file of ``checkpoint`` against its ``manifest.json`` (sizes, then SHA-256).

    A checkpoint written before manifests existed is accepted with a warning (nothing to check it against).

    Raises:
        ValueError: the manifest is unreadable, or a file is missing, has the wrong size or the wrong SHA-256; the
            message names the file and what was expected.
    """
    root = Path(checkpoint)
    manifest = root / MANIFEST_NAME
    if not manifest.is_file():
        logger.warning("checkpoint %s has no %s (an older checkpoint): its files are not verified", root, MANIFEST_NAME)
        return
    try:
        files = json.loads(manifest.read_text(encoding="utf-8"))["files"]
        entries = [(str(name), int(e["bytes"]), str(e["sha256"])) for name, e in files.items()]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"checkpoint: {manifest} is unreadable or malformed ({type(exc).__name__}: {exc})") from None
    for name, size, _ in entries:
        path = root / name
        if not path.is_file():
            raise ValueError(f"checkpoint: {path} is missing (listed in {manifest})")
        actual = path.stat().st_size
        if actual != size:
            raise ValueError(f"checkpoint: {path} is {actual} bytes, the manifest says {size} (truncated or altered)")
    for name, _, sha in entries:
        if file_fingerprint(root / name) != sha:
            raise ValueError(f"checkpoint: {root / name} does not match its SHA-256 in {manifest} (corrupt)")


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
        write_json(directory / tmp_tag / "mert_fast.json", meta)
        write_manifest(directory / tmp_tag)
        if final.exists():  # saved again at the same step (e.g. a signal right after a periodic save)
            shutil.rmtree(final)
        os.replace(directory / tmp_tag, final)
        write_text(directory / "latest", tag + "\n")
        done = sorted(p for p in directory.glob("step*") if p.is_dir() and (p / "mert_fast.json").is_file())
        for old in done[:-keep_last] if keep_last > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
        logger.info("checkpoint saved: %s", final)
    barrier()
    return final


def find_checkpoint(source: str | os.PathLike) -> Path:
    """The checkpoint directory that ``source`` names, checked against its manifest (:func:`verify_checkpoint`).

    ``source`` is one checkpoint (it must be intact), a ``checkpoints`` directory or a run directory: then its
    newest intact checkpoint (``latest`` first, then by step), with a warning naming each newer one skipped.

    Raises:
        FileNotFoundError: nothing resumable there (the message says what was looked for).
        ValueError: the named checkpoint, or every checkpoint of the directory, fails the check (the message
            names the bad file).
    """
    path = Path(source)
    if (path / "mert_fast.json").is_file():
        verify_checkpoint(path)
        return path
    for base in (path / "checkpoints", path):
        candidates = sorted((p for p in base.glob("step*") if (p / "mert_fast.json").is_file()), reverse=True)
        latest = base / "latest"
        if latest.is_file():
            named = base / latest.read_text().strip()
            if named in candidates:
                candidates.remove(named)
                candidates.insert(0, named)
        bad = []
        for candidate in candidates:
            try:
                verify_checkpoint(candidate)
            except ValueError as exc:
                logger.warning("resume: skipping checkpoint %s: %s", candidate, exc)
                bad.append(str(exc))
                continue
            if bad:
                logger.warning("resume: %d newer checkpoint(s) failed the check; resuming from %s", len(bad), candidate)
            return candidate
        if bad:
            raise ValueError(f"resume: no intact checkpoint in {os.fspath(base)!r}: {'; '.join(bad)}")
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
    if bool(meta["run"].get("paired_renders")) != bool(run.get("paired_renders")):  # absent before it existed: off
        diffs.append(f"paired_renders: checkpoint {bool(meta['run'].get('paired_renders'))}, now "
                     f"{bool(run.get('paired_renders'))} (it fixes which clips a step takes)")  # fmt: skip
    for k in HEAD_KEYS:  # absent from checkpoints written before the term existed: off
        was, now = meta["run"].get(k) or 0.0, run.get(k) or 0.0
        if (was > 0) != (now > 0):
            diffs.append(f"{k}: checkpoint {was!r}, now {now!r} (the term's head must be in both or in neither)")
    if diffs:
        hint = ""
        if any(d.startswith("world_size") for d in diffs):
            hint = (
                " Resuming needs the world size the checkpoint was written with (the data order and the optimizer "
                "partitions depend on it); `mert-fast export` turns the checkpoint into weights to start a new run."
            )
        raise ValueError("resume: the run does not match the checkpoint: " + "; ".join(diffs) + "." + hint)
