"""What several ``mert-fast`` subcommands share: the program name, MERT's sample rate, argument types and the
arguments more than one subcommand takes."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

import torch

PROG = "mert-fast"

MERT_SAMPLE_RATE = 24000


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {text!r}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number; got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number; got {text!r}")
    return value


def parse_device(name: str) -> torch.device:
    """A usable torch device from ``--device``, or ValueError."""
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"--device: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no CUDA GPU is visible")
    return device


def add_command(
    commands: argparse._SubParsersAction,
    name: str,
    run: Callable[[argparse.Namespace], int],
    *,
    help: str,
    description: str,
) -> argparse.ArgumentParser:
    """The parser of subcommand ``name``, which runs ``run(args)``."""
    p = commands.add_parser(name, help=help, description=description)
    p.set_defaults(func=run)
    return p


def add_sample_rate(
    p: argparse.ArgumentParser, help: str = "Hz (default: %(default)s)", default: int | None = MERT_SAMPLE_RATE
) -> None:
    """``--sample-rate`` in Hz, a positive integer."""
    p.add_argument("--sample-rate", type=positive_int, default=default, help=help)


def add_render_options(p: argparse.ArgumentParser, source_help: str = "renderer (default: auto)") -> None:
    """``--format`` and ``--source`` of the subcommands that write synthesized audio."""
    p.add_argument("--format", choices=("flac", "wav"), default="flac", help="file format (default: %(default)s)")
    p.add_argument("--source", choices=("auto", "numpy", "fluidsynth"), default="auto", help=source_help)


def add_exclude_probe_set(p: argparse.ArgumentParser, help: str) -> None:
    """``--exclude-probe-set DIR`` (repeatable): folders whose music21 pieces a new real-music set leaves out."""
    p.add_argument("--exclude-probe-set", action="append", default=[], metavar="DIR", help=help)


def excluded_pieces(probe_dirs: list[str]) -> set[str]:
    """Every piece of the ``--exclude-probe-set`` folders; a folder that is not a real-music set ends the program
    with an error naming the flag."""
    from mert_fast.probe.real import pieces_of_sets

    try:
        return pieces_of_sets(probe_dirs)
    except ValueError as exc:
        raise SystemExit(f"error: --exclude-probe-set: {exc}") from None
