"""``mert-fast cqt``: a picture of the CQT MERT trains on (its musical teacher's target)."""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path

import numpy as np

from mert_fast.cli.common import add_command, add_sample_rate, parse_device

logger = logging.getLogger(__name__)

#: Dynamic range of the CQT picture: magnitudes below this many dB under the clip's peak are drawn as the floor.
_DB_RANGE = 80.0
_NOTE_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")


def _midi(freq: np.ndarray) -> np.ndarray:
    """Fractional MIDI note numbers (A4 = 69 = 440 Hz)."""
    return 69.0 + 12.0 * np.log2(freq / 440.0)


def note_name(freq: float) -> str:
    """The nearest equal-tempered note to ``freq`` Hz, e.g. ``"A4"`` for 440, ``"C1"`` for 32.7."""
    m = int(np.round(_midi(np.asarray(freq, dtype=np.float64))))
    return f"{_NOTE_NAMES[m % 12]}{m // 12 - 1}"


def c_ticks(freqs: np.ndarray) -> tuple[list[int], list[str]]:
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
    ticks, labels = c_ticks(freqs)
    ax.set_yticks(ticks, labels)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("note (A4 = 440 Hz)")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="magnitude (dB re. max)")
    fig.savefig(out, format="png")


_DESCRIPTION = (
    "Decode AUDIO_FILE (24 kHz mono), compute MERT's CQT (336 bins, 48 per octave from C1, hop 320) "
    "and draw its log-magnitude with note names. Without a file, a synthesized demo clip is used."
)


def run(args: argparse.Namespace) -> int:
    from mert_fast.audio import load_audio, synth_demo
    from mert_fast.ops import cqt
    from mert_fast.ops.reference import MERT_CQT, cqt_frequencies

    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise ValueError(f"--out must name a .png file; got {args.out!r}")
    device = parse_device(args.device)
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


def register(commands: argparse._SubParsersAction) -> None:
    p = add_command(
        commands,
        "cqt",
        run,
        help="draw the constant-Q transform MERT trains on (its musical teacher) as a PNG",
        description=_DESCRIPTION,
    )
    p.add_argument("audio", nargs="?", metavar="AUDIO_FILE", help="WAV, FLAC, OGG or MP3 (default: synthesized demo)")
    p.add_argument("--out", default="cqt.png", help="output PNG path (default: %(default)s)")
    add_sample_rate(p, "decode and analyse at this rate in Hz (default: %(default)s, MERT's)")
    p.add_argument("--device", default="cpu", help="torch device for the transform, e.g. cpu or cuda (default: cpu)")
