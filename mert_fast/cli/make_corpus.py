"""``mert-fast make-corpus``: a synthetic music corpus to pre-train on (no downloads)."""

from __future__ import annotations

import argparse
import json

from mert_fast.cli.common import (
    add_command,
    add_exclude_probe_set,
    add_render_options,
    add_sample_rate,
    excluded_pieces,
    positive_float,
    positive_int,
)
from mert_fast.probe.real_render import RENDER_VARY

_DESCRIPTION = (
    "Compose and render short pieces of music at random (chord progressions, melodies, bass lines, "
    "arpeggios and drums with varied tempo, key and timbre) into OUT_DIR as clip_NNNNN.flac, with a manifest.csv. "
    "Clip i depends on (--seed, i) only. Uses fluidsynth with a General MIDI soundfont when both are installed "
    "(--source auto), else the built-in numpy synthesizer. --real renders public-domain scores of music21's corpus "
    "instead (Bach chorales, Haydn quartets, trecento songs; 10 s clips under OUT_DIR/audio: train with "
    "--data OUT_DIR/audio); --exclude-probe-set leaves out every piece of a make-probe-data --real set, and "
    "--ensemble plays every part on an instrument of its own."
)


def run(args: argparse.Namespace) -> int:
    from mert_fast.synth import make_corpus

    if args.real:
        return _run_real(args)
    for flag in ("exclude_probe_set", "ensemble", "renders", "render_vary"):
        if getattr(args, flag):
            raise SystemExit(f"error: --{flag.replace('_', '-')} needs --real")
    paths = make_corpus(
        args.out_dir,
        n_clips=args.clips,
        seconds=args.seconds,
        sample_rate=args.sample_rate,
        seed=args.seed,
        format=args.format,
        source=args.source,
    )
    print(f"{args.out_dir}: {len(paths)} clips of {args.seconds:g} s at {args.sample_rate} Hz; manifest.csv lists them")
    return 0


def _run_real(args: argparse.Namespace) -> int:
    from mert_fast.probe.real import make_real_corpus

    excluded_pieces(args.exclude_probe_set)  # a bad folder ends here, naming the flag
    audio = make_real_corpus(
        args.out_dir,
        args.clips,
        exclude_probe_sets=args.exclude_probe_set,
        seed=args.seed,
        sample_rate=args.sample_rate,
        seconds=args.seconds,
        format=args.format,
        ensemble=args.ensemble,
        renders=args.renders or 1,
        render_vary=args.render_vary or "instruments",
    )
    meta = json.loads((audio.parent / "probe_data.json").read_text(encoding="utf-8"))
    excluded = len(meta["excluded_pieces"])
    kind = "ensembles of rendered scores" if args.ensemble else "rendered scores"
    renders = f", {meta['renders']} renders of each ({meta['render_vary']} vary)" if meta["renders"] > 1 else ""
    print(f"{audio}: {len(meta['clips'])} clips of {args.seconds:g} s of {kind}{renders} ({excluded} pieces excluded)")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    p = add_command(
        commands,
        "make-corpus",
        run,
        help="write a synthetic music corpus (notes, chords, drums; no downloads) for a first training run",
        description=_DESCRIPTION,
    )
    p.add_argument("out_dir", metavar="OUT_DIR", help="output folder (created)")
    p.add_argument("--clips", type=positive_int, default=64, help="number of clips (default: %(default)s)")
    p.add_argument("--seconds", type=positive_float, default=8.0, help="seconds per clip (default: %(default)s)")
    add_sample_rate(p, "Hz (default: %(default)s, MERT-v1's)")
    p.add_argument("--seed", type=int, default=0, help="corpus seed (default: %(default)s)")
    p.add_argument(
        "--real",
        action="store_true",
        help="render music21's public-domain scores with fluidsynth (needs pip install 'mert_fast[probe]', the "
        "fluidsynth program and a GM soundfont); --clips is split evenly over the composers",
    )
    p.add_argument(
        "--ensemble",
        action="store_true",
        help="with --real: each part on an instrument of its own (2-4 instrument families a clip) instead of one "
        "instrument a clip",
    )
    p.add_argument(
        "--renders",
        type=positive_int,
        default=None,
        metavar="N",
        help="with --real: write each clip N times (N <= 7; CLIP.r1.flac, ...), varied as --render-vary says, for "
        "train.py --paired-renders (default: 1)",
    )
    p.add_argument(
        "--render-vary",
        choices=RENDER_VARY,
        default=None,
        help="with --renders: what the renders after the first change: the instruments (the same notes, default) "
        "or the notes (the same instruments on another window of the piece, transposed, at another tempo) or the "
        "piece (the same on a window of another piece of the composer and split) or one part (with --ensemble: the "
        "same notes with one sounding part on another instrument) or solo (with --ensemble: the top sounding part "
        "alone, its stem, for train.py --teacher-view second)",
    )
    add_exclude_probe_set(p, "with --real: leave out every piece of this make-probe-data --real set (repeatable)")
    add_render_options(
        p,
        "renderer: fluidsynth (needs the program and a GM soundfont), numpy, or auto (default: fluidsynth when "
        "available)",
    )
