"""The ``mert-fast`` command line.

One module per subcommand (``register`` adds its parser, ``run`` executes it), assembled in :func:`build_parser`.
A subcommand raises ``ValueError`` or ``OSError`` for a problem with its input; :func:`main` turns that into a
one-line ``mert-fast <command>: error: ...`` on stderr and exit status 2, as argparse does for usage errors.

    mert-fast cqt [AUDIO_FILE] --out cqt.png      # picture of MERT's CQT teacher target          (cli/cqt.py)
    mert-fast extract INPUTS... --model DIR_OR_PRESET --out DIR   # features of a music collection (cli/extract.py)
    mert-fast make-corpus OUT_DIR [--clips 64] [--seconds 8]   # synthetic music to pre-train on  (cli/make_corpus.py)
    mert-fast fit-teacher --type mel-rvq AUDIO_DIR --out DIR   # the acoustic teacher train.py reuses
    mert-fast fit-teacher --type kmeans AUDIO_DIR --out DIR --sample-rate 16000   # (cli/fit_teacher.py)
    mert-fast export CHECKPOINT_OR_RUN_DIR OUT_DIR   # a training checkpoint -> HF model directory (cli/export.py)
    mert-fast make-probe-data OUT_DIR    # labelled notes and chords for probing      (cli/make_probe_data.py)
    mert-fast probe MANIFEST.csv --features MODEL_DIR --out DIR   # MARBLE-style probes of frozen features
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from mert_fast.cli import (
    cqt,
    export,
    extract,
    fit_teacher,
    make_corpus,
    make_probe_data,
    probe,
)
from mert_fast.cli.common import PROG

__all__ = ["PROG", "build_parser", "main"]

logger = logging.getLogger(__name__)

#: The subcommands, in the order ``mert-fast --help`` lists them.
SUBCOMMANDS = (cqt, extract, make_corpus, fit_teacher, export, make_probe_data, probe)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Fast kernels, models and training for MERT-style self-supervised music models.",
    )
    parser.add_argument(
        "--log-level",
        default="WARNING",
        type=str.upper,
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="logging verbosity (default: %(default)s); DEBUG also logs the traceback of a failed command",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in SUBCOMMANDS:
        module.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``mert-fast`` with ``argv`` (default: ``sys.argv[1:]``); returns 0, or exits with status 2 on error."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("mert_fast").setLevel(args.log_level)
    try:
        return args.func(args)
    except (OSError, ValueError) as exc:
        logger.debug("%s %s failed", PROG, args.command, exc_info=True)
        message = " ".join(str(exc).split())  # one line, whatever the library's message holds
        print(f"{PROG} {args.command}: error: {message}", file=sys.stderr)
        raise SystemExit(2) from None
