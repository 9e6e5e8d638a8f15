"""``mert-fast extract``: features of audio files, folders or manifests, written to disk (resumable)."""

from __future__ import annotations

import argparse
import logging
import os
import sys

import torch

from mert_fast.cli.common import PROG, add_command, parse_device, positive_float, positive_int

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def layers_arg(text: str) -> str | list[int]:
    """``--layers``: ``all``, ``mean`` or comma-separated hidden-state indices such as ``0,6,12``."""
    text = text.strip().lower()
    if text in ("all", "mean"):
        return text
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected all, mean or indices such as 0,6,12; got {text!r}") from None
    return values


def rank_and_world() -> tuple[int, int]:
    """This process's shard under ``torchrun`` (``RANK``, ``WORLD_SIZE``); ``(0, 1)`` otherwise."""
    try:
        rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise ValueError("RANK and WORLD_SIZE must be integers (as torchrun sets them)") from None
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"RANK must be in [0, WORLD_SIZE); got RANK={rank}, WORLD_SIZE={world}")
    return rank, world


_DESCRIPTION = (
    "Decode every input (24 kHz mono: soundfile + soxr, channels averaged), run the model with full "
    "context (or sliding windows) and write one array per file, mirroring the input tree under --out, with a "
    "JSON sidecar per file and a run manifest. Files already done with the same settings are skipped; files "
    "that cannot be decoded, are empty or too short are reported and the run goes on (exit status 1 if any "
    "failed). Under torchrun each rank takes every WORLD_SIZE-th file."
)


def run(args: argparse.Namespace) -> int:
    from mert_fast.model.extract_files import load_model, run_extraction, weights_sha256

    rank, world = rank_and_world()
    if args.device == "auto":
        local = int(os.environ.get("LOCAL_RANK", "0") or 0)
        device = torch.device(f"cuda:{local}") if torch.cuda.is_available() else torch.device("cpu")
    else:
        device = parse_device(args.device)
    dtype_name = args.dtype if args.dtype != "auto" else ("bfloat16" if device.type == "cuda" else "float32")
    if args.hop_s is not None and args.window_s is None:
        raise ValueError("--hop-s needs --window-s")
    model, model_id = load_model(args.model)
    sha = weights_sha256(model)  # of the weights as stored, so every --dtype names the same model
    model = model.to(device=device, dtype=DTYPES[dtype_name])
    logger.info("model %s (sha256 %s) on %s in %s; rank %d of %d", model_id, sha[:12], device, dtype_name, rank, world)
    result = run_extraction(
        args.inputs,
        args.out,
        model,
        model_id,
        model_sha256=sha,
        layers=args.layers,
        pool=args.pool,
        fmt=args.format,
        save_dtype=args.save_dtype,
        window_s=args.window_s,
        hop_s=args.hop_s,
        batch_size=args.batch_size,
        chunk_s=args.chunk_s,
        rank=rank,
        world_size=world,
    )
    failed = result.failed
    print(
        f"{args.out}: {result.count('ok')} extracted, {result.count('skipped')} skipped (already done), "
        f"{len(failed)} failed; manifest {result.manifest}"
    )
    for entry in failed:
        print(f"{PROG} extract: failed: {entry['input']}: {entry['reason']}", file=sys.stderr)
    return 1 if failed else 0


def register(commands: argparse._SubParsersAction) -> None:
    p = add_command(
        commands,
        "extract",
        run,
        help="extract MERT features for audio files, folders or manifests (resumable)",
        description=_DESCRIPTION,
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="audio files, folders (recursive) or .txt/.csv manifests")
    p.add_argument(
        "--model", required=True, help="a local model directory (HF layout) or a preset name (random weights)"
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--layers",
        type=layers_arg,
        default="all",
        help="hidden states to save: all (default), mean (their average) or indices such as 0,6,12",
    )
    p.add_argument("--pool", choices=("none", "mean"), default="none", help="average over frames (default: none)")
    p.add_argument("--format", choices=("npy", "safetensors"), default="npy", help="output format (default: npy)")
    p.add_argument(
        "--save-dtype", choices=("float32", "float16"), default="float32", help="saved array dtype (default: float32)"
    )
    p.add_argument(
        "--window-s", type=positive_float, default=None, help="sliding windows of this many seconds (default: full)"
    )
    p.add_argument("--hop-s", type=positive_float, default=None, help="seconds between windows (default: half)")
    p.add_argument("--batch-size", type=positive_int, default=8, help="clips per batch (default: %(default)s)")
    p.add_argument(
        "--chunk-s", type=positive_float, default=30.0, help="conv-encoder chunk in seconds (default: %(default)s)"
    )
    p.add_argument("--device", default="auto", help="torch device (default: cuda:LOCAL_RANK when a GPU is visible)")
    p.add_argument(
        "--dtype",
        choices=("auto", *DTYPES),
        default="auto",
        help="compute dtype (default: bfloat16 on a GPU, float32 on the CPU)",
    )
