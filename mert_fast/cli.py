"""The ``mert-fast`` command line.

One function per subcommand (``_cmd_<name>``), registered in :func:`build_parser`. A subcommand raises
``ValueError`` or ``OSError`` for a problem with its input; :func:`main` turns that into a one-line
``mert-fast <command>: error: ...`` on stderr and exit status 2, as argparse does for usage errors.

    mert-fast cqt [AUDIO_FILE] --out cqt.png      # picture of MERT's CQT teacher target
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger(__name__)

PROG = "mert-fast"

# MERT's musical teacher (DESIGN.md): nnAudio CQT1992v2 at 24 kHz, hop 320, 336 bins from C1, 48 per octave.
MERT_SAMPLE_RATE = 24000
MERT_CQT = {"hop_length": 320, "fmin": 32.7, "n_bins": 336, "bins_per_octave": 48}

#: Dynamic range of the CQT picture: magnitudes below this many dB under the clip's peak are drawn as the floor.
_DB_RANGE = 80.0
_NOTE_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {text!r}")
    return value


def _device(name: str) -> torch.device:
    """A usable torch device from ``--device``, or ValueError."""
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"--device: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no CUDA GPU is visible")
    return device


def _midi(freq: np.ndarray) -> np.ndarray:
    """Fractional MIDI note numbers (A4 = 69 = 440 Hz)."""
    return 69.0 + 12.0 * np.log2(freq / 440.0)


def note_name(freq: float) -> str:
    """The nearest equal-tempered note to ``freq`` Hz, e.g. ``"A4"`` for 440, ``"C1"`` for 32.7."""
    m = int(np.round(_midi(np.asarray(freq, dtype=np.float64))))
    return f"{_NOTE_NAMES[m % 12]}{m // 12 - 1}"


def _c_ticks(freqs: np.ndarray) -> tuple[list[int], list[str]]:
    """Bin indices and labels of every C within the bins (the bin nearest each C, within half a bin)."""
    midi = _midi(freqs)
    half_bin = (midi[1] - midi[0]) / 2 if len(midi) > 1 else 0.5
    ticks, labels = [], []
    for m in range(math.ceil(midi[0] - half_bin), math.floor(midi[-1] + half_bin) + 1):
        if m % 12:
            continue
        k = int(np.argmin(np.abs(midi - m)))
        if abs(midi[k] - m) <= half_bin + 1e-6:
            ticks.append(k)
            labels.append(note_name(440.0 * 2.0 ** ((m - 69) / 12)))
    return ticks, labels


def _plot_cqt(mag: np.ndarray, freqs: np.ndarray, seconds_per_frame: float, title: str, out: Path) -> None:
    """Write the log-magnitude of a ``(n_bins, frames)`` CQT as a PNG, notes on y and seconds on x."""
    # pyplot-free figure: no global backend switch, nothing shown
    from matplotlib.figure import Figure

    peak = float(mag.max())
    ref = peak if peak > 0 else 1.0
    db = 20.0 * np.log10(np.maximum(mag / ref, 10.0 ** (-_DB_RANGE / 20.0)))
    n_bins, n_frames = mag.shape
    fig = Figure(figsize=(10, 5.5), dpi=110, layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(
        db,
        origin="lower",
        aspect="auto",
        interpolation="nearest",
        cmap="magma",
        vmin=-_DB_RANGE,
        vmax=0.0,
        extent=(-0.5 * seconds_per_frame, (n_frames - 0.5) * seconds_per_frame, -0.5, n_bins - 0.5),
    )
    ticks, labels = _c_ticks(freqs)
    ax.set_yticks(ticks, labels)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("note (A4 = 440 Hz)")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="magnitude (dB re. max)")
    fig.savefig(out, format="png")


def _cmd_cqt(args: argparse.Namespace) -> int:
    from mert_fast.audio import load_audio, synth_demo
    from mert_fast.ops import cqt
    from mert_fast.ops.reference import cqt_frequencies

    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise ValueError(f"--out must name a .png file; got {args.out!r}")
    device = _device(args.device)
    if args.audio is None:
        audio, name = synth_demo(args.sample_rate), "synthesized demo"
    else:
        audio, name = load_audio(args.audio, args.sample_rate), Path(args.audio).name
    logger.info("%s: %.2f s at %d Hz", name, audio.shape[-1] / args.sample_rate, args.sample_rate)
    spec = cqt(audio.to(device), sample_rate=args.sample_rate, **MERT_CQT)
    freqs = cqt_frequencies(MERT_CQT["fmin"], MERT_CQT["n_bins"], MERT_CQT["bins_per_octave"])
    title = (
        f"CQT of {name}: {MERT_CQT['n_bins']} bins, {MERT_CQT['bins_per_octave']} per octave, "
        f"hop {MERT_CQT['hop_length']} at {args.sample_rate} Hz"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    _plot_cqt(spec[0].cpu().numpy(), freqs, MERT_CQT["hop_length"] / args.sample_rate, title, out)
    print(f"{out}: CQT {tuple(spec.shape)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Fast kernels, models and training for MERT-style self-supervised music models."
    )
    parser.add_argument(
        "--log-level",
        default="WARNING",
        type=str.upper,
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="logging verbosity (default: %(default)s); DEBUG also logs the traceback of a failed command",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser(
        "cqt",
        help="draw the constant-Q transform MERT trains on (its musical teacher) as a PNG",
        description="Decode AUDIO_FILE (24 kHz mono), compute MERT's CQT (336 bins, 48 per octave from C1, hop 320) "
        "and draw its log-magnitude with note names. Without a file, a synthesized demo clip is used.",
    )
    p.add_argument("audio", nargs="?", metavar="AUDIO_FILE", help="WAV, FLAC, OGG or MP3 (default: synthesized demo)")
    p.add_argument("--out", default="cqt.png", help="output PNG path (default: %(default)s)")
    p.add_argument(
        "--sample-rate",
        type=_positive_int,
        default=MERT_SAMPLE_RATE,
        help="decode and analyse at this rate in Hz (default: %(default)s, MERT's)",
    )
    p.add_argument("--device", default="cpu", help="torch device for the transform, e.g. cpu or cuda (default: cpu)")
    p.set_defaults(func=_cmd_cqt)
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


if __name__ == "__main__":
    raise SystemExit(main())
