"""``mert-fast make-probe-data``: a small labelled set of notes and chords for ``mert-fast probe``."""

from __future__ import annotations

import argparse

from mert_fast.cli.common import (
    add_command,
    add_exclude_probe_set,
    add_render_options,
    add_sample_rate,
    excluded_pieces,
    positive_float,
    positive_int,
)

_DESCRIPTION = (
    "Render single notes (12 pitch classes x 9 instrument families) and chords (6 qualities x 12 "
    "roots) into OUT_DIR/audio, with fixed train/valid/test splits and one manifest per task: pitch_class.csv, "
    "instrument.csv, chord_quality.csv (multi-class), chord_notes.csv (multi-label) and pitch.csv (regression). "
    "Uses fluidsynth with a General MIDI soundfont when both are installed (--source auto), else the built-in "
    "numpy synthesizer."
)

#: The options that only ``--real`` takes.
_REAL_ONLY = ("composers", "pieces_per_composer", "clips_per_composer", "exclude_probe_set", "ensemble")


def run(args: argparse.Namespace) -> int:
    from mert_fast.probe.dataset import make_probe_data
    from mert_fast.probe.real import make_real_probe_data

    real_only = {k: v for k in _REAL_ONLY if (v := getattr(args, k)) not in (None, [], False)}
    common = {"seed": args.seed, "sample_rate": args.sample_rate, "format": args.format}
    if args.real:
        real_only.pop("exclude_probe_set", None)
        if "composers" in real_only:
            real_only["composers"] = tuple(c.strip() for c in args.composers.split(",") if c.strip())
        exclude = excluded_pieces(args.exclude_probe_set)
        manifests = make_real_probe_data(
            args.out_dir, seconds=args.seconds or 10.0, exclude_pieces=exclude, **common, **real_only
        )
    elif real_only:
        raise SystemExit(f"error: --{next(iter(real_only)).replace('_', '-')} needs --real")
    else:
        manifests = make_probe_data(
            args.out_dir,
            seconds=args.seconds or 2.0,
            notes_per_cell=args.notes_per_cell,
            chords_per_cell=args.chords_per_cell,
            source=args.source,
            **common,
        )
    print(f"{args.out_dir}: probe tasks " + ", ".join(f"{name} ({path.name})" for name, path in manifests.items()))
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    p = add_command(
        commands,
        "make-probe-data",
        run,
        help="write a small labelled set of notes and chords (pitch class, instrument family, chord quality) for "
        "mert-fast probe",
        description=_DESCRIPTION,
    )
    p.add_argument("out_dir", metavar="OUT_DIR", help="output folder (created)")
    p.add_argument("--seed", type=int, default=0, help="data seed (default: %(default)s; it fixes the splits)")
    add_sample_rate(p)
    p.add_argument("--seconds", type=positive_float, default=None, help="seconds per clip (default: 2; --real: 10)")
    p.add_argument(
        "--real",
        action="store_true",
        help="key/instrument/composer clips of music21's public-domain "
        "scores rendered with fluidsynth (needs pip install 'mert_fast[probe]'); see mert_fast.probe.real",
    )
    p.add_argument("--composers", default=None, metavar="A,B",
                   help="with --real: music21 corpus composers, comma-separated (default: bach, palestrina, "
                   "monteverdi, mozart)")  # fmt: skip
    p.add_argument("--pieces-per-composer", type=positive_int, default=None,
                   help="with --real: at most this many pieces per composer (default: 40)")  # fmt: skip
    p.add_argument("--clips-per-composer", type=positive_int, default=None,
                   help="with --real: clips per composer, spread over its pieces (default: 120)")  # fmt: skip
    p.add_argument("--ensemble", action="store_true",
                   help="with --real: each part on an instrument of its own (2-4 families a clip) and a multi-label "
                   "ensemble.csv of the families sounding")  # fmt: skip
    add_exclude_probe_set(p, "with --real: leave out every piece of this --real set or make-corpus --real folder, "
                          "e.g. for a fresh confirmation set (repeatable)")  # fmt: skip
    p.add_argument(
        "--notes-per-cell", type=positive_int, default=10, help="notes per pitch class and family (default: 10)"
    )
    p.add_argument("--chords-per-cell", type=positive_int, default=10, help="chords per quality and root (default: 10)")
    add_render_options(p)
