"""Pre-train a MERT-style model from a folder of audio; teachers (CQT + Mel-RVQ) are computed in the step.

python train.py                                   # tiny preset on a synthetic corpus, CPU, a few minutes
deepspeed train.py --preset mert-v1-95m --data DIR --output-dir runs/95m --deepspeed_config configs/ds_zero2.json
torchrun --nproc-per-node 8 train.py --preset mert-v1-95m --data DIR --deepspeed_config configs/ds_zero2.json
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path

from mert_fast.model.config import PRESETS
from mert_fast.train.config import TrainConfig


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--preset", default="tiny", choices=sorted(PRESETS), help="model preset and its training recipe")
    p.add_argument("--model-size", choices=("full", "tiny"),
                   help="tiny: the preset's layout and recipe at the tiny preset's sizes (CPU smoke runs)")  # fmt: skip
    p.add_argument("--objective", choices=("mert", "muq", "data2vec"),
                   help="mert: codes (cosine heads) + CQT; muq: Mel-RVQ codes, linear heads; data2vec: EMA-teacher "
                        "regression (music2vec). Default: the preset's")  # fmt: skip
    p.add_argument("--data", help="folder or manifest (.csv/.txt) of audio; default: a synthetic corpus")
    p.add_argument("--output-dir", help="where metrics, teacher, checkpoints and model go (default runs/PRESET)")
    p.add_argument(
        "--teacher",
        help="a fitted Mel-RVQ teacher directory, or encodec:DIR (a local transformers "
        "EncodecModel, 24 kHz); default: fit a Mel-RVQ teacher in OUTPUT_DIR/teacher",
    )
    p.add_argument("--max-steps", type=int, help="optimizer steps (default: the preset's recipe)")
    p.add_argument("--seed", type=int, help="seed of every random draw (default 0)")
    p.add_argument("--log-every", type=int, help="steps between metrics.jsonl lines")
    p.add_argument("--batch-size", type=int, help="clips per rank per micro-step")
    p.add_argument("--grad-accum", type=int, help="micro-steps per optimizer step")
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--warmup-steps", type=int, help="linear warmup steps")
    p.add_argument("--crop-seconds", type=float, help="crop length in seconds")
    p.add_argument("--num-workers", type=int, help="DataLoader workers per rank")
    p.add_argument("--save-every", type=int, help="steps between checkpoints (0: at the end and on SIGTERM only)")
    p.add_argument("--keep-last", type=int, help="checkpoints to keep (default 3)")
    p.add_argument("--resume", nargs="?", const="latest", metavar="CHECKPOINT",
                   help="resume from a checkpoint or run directory; alone: OUTPUT_DIR's newest; 'auto': resume if "
                        "OUTPUT_DIR has a checkpoint, else start afresh")  # fmt: skip
    p.add_argument("--val-data", help="folder or manifest of validation audio")
    p.add_argument("--val-fraction", type=float, help="fraction of --data held out for validation (by file name)")
    p.add_argument("--val-every", type=int, help="steps between validations")
    p.add_argument("--profile", type=int, nargs="?", const=3, metavar="STEPS",
                   help="trace STEPS steps (default 3, after 2 warm-up steps) with the torch profiler into "
                        "OUTPUT_DIR/profile")  # fmt: skip
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), help="overrides the DeepSpeed config's choice")
    p.add_argument("--deepspeed_config", "--deepspeed-config", dest="deepspeed_config",
                   help="DeepSpeed JSON of engine settings (configs/ds_zero{1,2,3}.json; default ZeRO-2)")  # fmt: skip
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--log-level", default="INFO", help="logging level")
    return p.parse_args(argv)


def _check_output_dir(path: str) -> None:
    """Create ``--output-dir`` and check that files can be written there, so the error names the flag."""
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=out)
        os.close(fd)
        os.unlink(probe)
    except FileExistsError:
        raise ValueError(f"--output-dir {path!r} is a file, not a folder") from None
    except OSError as exc:
        raise ValueError(f"--output-dir {path!r} cannot be created or written: {exc.strerror or exc}") from None


def _usage_error(exc: BaseException, parser_flags: dict[str, str]) -> str:
    """One line for a usage error, with a leading config field name replaced by its command-line flag."""
    message = " ".join(str(exc).split())
    field = message.split(" ", 1)[0].rstrip(":")
    if field in parser_flags:
        message = parser_flags[field] + message[len(field) :]
    return message


def main(argv: list[str] | None = None) -> int:
    """Train; returns the exit status: 0, 2 for a usage error (bad argument, missing data or checkpoint, unwritable
    output folder: one line on stderr from rank 0), 128 + signal after a checkpoint-and-stop."""
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return _run(args)
    except (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError) as exc:
        logging.getLogger("train").debug("usage error", exc_info=True)
        if os.environ.get("RANK", "0") == "0":  # every rank meets the same error; one line is enough
            print(f"train.py: error: {_usage_error(exc, _FLAGS)}", file=sys.stderr)
        return 2


#: TrainConfig fields set by a command-line flag, for error messages.
_FLAGS = {
    "lr": "--lr", "max_steps": "--max-steps", "seed": "--seed", "log_every": "--log-every",
    "batch_size": "--batch-size", "grad_accum": "--grad-accum", "warmup_steps": "--warmup-steps",
    "crop_seconds": "--crop-seconds", "min_crop_seconds": "--crop-seconds", "num_workers": "--num-workers",
    "save_every": "--save-every", "keep_last": "--keep-last", "val_fraction": "--val-fraction",
    "val_every": "--val-every", "precision": "--precision", "objective": "--objective",
    "model_size": "--model-size",
}  # fmt: skip


def _run(args: argparse.Namespace) -> int:
    cfg = TrainConfig.from_preset(
        args.preset, model_size=args.model_size, objective=args.objective, data=args.data,
        output_dir=args.output_dir, teacher=args.teacher, max_steps=args.max_steps,
        seed=args.seed, log_every=args.log_every, batch_size=args.batch_size, grad_accum=args.grad_accum, lr=args.lr,
        warmup_steps=args.warmup_steps, crop_seconds=args.crop_seconds, num_workers=args.num_workers,
        precision=args.precision, save_every=args.save_every, keep_last=args.keep_last, val_data=args.val_data,
        val_fraction=args.val_fraction, val_every=args.val_every, profile_steps=args.profile,
    )  # fmt: skip
    _check_output_dir(cfg.output_dir)
    from mert_fast.train.trainer import Interrupted, train

    try:
        result = train(cfg, deepspeed_config=args.deepspeed_config, resume=args.resume)
    except Interrupted as stop:
        print(f"stopped: {stop}; continue with --resume", file=sys.stderr)
        return 128 + stop.signum
    if result["paths"].get("plot"):
        last = result["last"]
        print(f"done: step {last.get('step')} loss {last.get('loss', float('nan')):.4f}")
        for name, path in result["paths"].items():
            print(f"{name:>12}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
