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

from mert_fast.train.config import add_config_arguments, config_from_args


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="A flag left out takes the preset's recipe (configs: mert_fast/train/config.py).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--resume", nargs="?", const="latest", metavar="CHECKPOINT",
                   help="resume from a checkpoint or run directory; alone: OUTPUT_DIR's newest; 'auto': resume if "
                        "OUTPUT_DIR has a checkpoint, else start afresh")  # fmt: skip
    p.add_argument("--deepspeed_config", "--deepspeed-config", dest="deepspeed_config",
                   help="DeepSpeed JSON of engine settings (configs/ds_zero{1,2,3}.json; default ZeRO-2)")  # fmt: skip
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--log-level", default="INFO", help="logging level")
    _FLAGS.update(add_config_arguments(p.add_argument_group("run settings (TrainConfig)")))
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


#: Each TrainConfig field's command-line flag, for error messages.
_FLAGS: dict[str, str] = {}


def _run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
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
