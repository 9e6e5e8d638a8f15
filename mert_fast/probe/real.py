"""A probe set of real music: public-domain scores from music21's corpus, rendered with fluidsynth.

``make_real_probe_data`` picks pieces by composers with many pieces in music21's bundled corpus (default
:data:`COMPOSERS`: Bach chorales, Palestrina mass movements, Monteverdi madrigals, Mozart string-quartet movements)
and renders clips of ``seconds`` (default 10 s) from them through a General MIDI soundfont. Each clip is one window of
one piece, every part played by one GM program, transposed and at a tempo of its own. Four multi-class tasks, one
manifest each (CSV ``path,label,split``, paths relative to ``out_dir``):

================  ==================================================================================
``key.csv``       global key of the piece after transposition: 24 classes, e.g. ``C# minor``
``instrument.csv`` the family of the GM program that plays the clip (:data:`FAMILY_PROGRAMS`, 7 classes)
``program.csv``   the GM program itself (:data:`PROGRAMS`, 20 classes): a finer timbre task than the family
``composer.csv``  the composer (:data:`COMPOSERS`)
``ensemble.csv``  with ``ensemble``: the families sounding in the clip (multi-label, ``;``-separated)
================  ==================================================================================

How the labels and clips are made:

- Pieces: the composer's scores (MusicXML and Humdrum files; Roman-numeral analyses and superseded ``_old``
  versions left out), in an order shuffled by ``seed``, are parsed one by one and kept when music21's key analysis
  of the whole score (``score.analyze("key")``, Krumhansl-Schmuckler) names a key with the same number of sharps or
  flats as the score's first key signature, so the key label is one the analysis and the notation agree on (modal
  pieces whose final the analysis misreads are skipped), up to ``pieces_per_composer`` pieces.
- Key: the piece's key moved by the clip's transposition. Transpositions are assigned so that, within each split
  and mode, the target tonics run through all 12 in turn (balanced and not tied to a piece); the shift is the
  nearest one (-6 to +5 semitones). A window can modulate away from the global key, so ``key.csv`` keeps only the
  clips whose own notes, analysed the same way, give the piece's key (63% of the default set's 10 s clips);
  ``instrument.csv``, ``program.csv`` and ``composer.csv`` list every clip.
- Instrument: the families take turns within each composer (so no composer is tied to a family); the program is
  drawn from the family.
- Ensembles (``ensemble=True``, ``make-probe-data --real --ensemble``): each part gets an instrument of its own,
  on a MIDI channel of its own. The score's top part keeps the clip's family and program (in turn as above); 2-4
  families in all, each playing at least one part, the others drawn from the remaining families. ``instrument.csv``
  and ``program.csv`` then name the top sounding part's, and ``ensemble.csv`` lists every family sounding in the
  clip: recognising instruments in a mixture, as MARBLE's instrument task does, where a single instrument's timbre
  leaves a probe little to gain. Its windows, keys, tempi and velocities are those of the same seed without it.
- Renders (``renders=N``, ``make-corpus --real --renders N``): each clip is written N times, render 0 as above and
  render ``k`` as ``<name>.r<k>.<format>``: the same events (window, transposition, tempo, velocities, level) with
  the top part on the family ``k`` places further in the turn and, in ensembles, the other parts drawn afresh. Two
  renders of a clip differ in their instruments only (``train.py --paired-renders`` contrasts them). With
  ``render_vary="notes"`` render ``k`` keeps render 0's instruments instead and plays another window of the piece,
  transposed and at a tempo of its own; with ``render_vary="piece"``, a window of another piece of the split; with
  ``render_vary="part"``, render 0 with one sounding part on another instrument; with ``render_vary="solo"``, the
  top sounding part of render 0 alone (its stem in the mixture).
- Tempo: scores notate at different note values (Palestrina in half notes, Mozart in sixteenths), so the tempo is
  set from the piece's median time between onsets: each clip draws a target of 0.18-0.40 s between onsets, clamped
  to 40-160 quarter notes per minute.
- Window: a seeded note onset inside the piece; notes still sounding from before the window start at 0. Clips are
  cut to ``seconds`` with a 50 ms fade and peak-normalised to a seeded level (0.5-0.9). Velocities are drawn per
  part (60-100) with a little jitter per note.

Splits are by piece: each composer's pieces go 60/20/20 % to train/valid/test (at least one each from 3 pieces on),
so no piece is in two splits. Clip ``j`` of a composer depends only on ``(seed, composer, j)`` and the pieces
chosen; the files and manifests are identical across runs with the same music21 corpus, soundfont and fluidsynth,
whose versions ``probe_data.json`` records, with every clip's parameters.

Needs music21 (``pip install 'mert_fast[probe]'``), the ``fluidsynth`` program and a General MIDI soundfont
(Debian: ``fluidsynth fluid-soundfont-gm``).
"""

from __future__ import annotations

import copy
import csv
import hashlib
import json
import logging
import os
import shutil
import subprocess
import time
import zlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import soundfile as sf

from mert_fast._checks import check_float, check_int
from mert_fast.audio import render_suffix
from mert_fast.probe.real_render import (
    CHANNELS,
    FAMILIES,
    FAMILY_PROGRAMS,
    PROGRAM_NAMES,
    PROGRAMS,
    RENDER_VARY,
    clip_window,
    ensemble_parts,
    recast_part,
    render_clip,
)
from mert_fast.synth.midi import fluidsynth_soundfont

__all__ = [
    "COMPOSERS",
    "CORPUS_COMPOSERS",
    "FAMILY_PROGRAMS",
    "KEYS",
    "PROGRAMS",
    "make_real_corpus",
    "make_real_probe_data",
    "piece_notes",
    "pieces_of_sets",
    "probe_set_pieces",
    "require_music21",
]

logger = logging.getLogger(__name__)

#: Composers of music21's corpus with many pieces (usable at seed 0: Bach and Palestrina 40, Monteverdi 21, Mozart 16).
COMPOSERS = ("bach", "palestrina", "monteverdi", "mozart")
#: Composers of a real-music pre-training corpus (``mert-fast make-corpus --real``): Bach chorales other than the
#: probe set's, Haydn string quartets and trecento songs (at seed 7: 40, 9 and 29 usable pieces).
CORPUS_COMPOSERS = ("bach", "haydn", "trecento")
PITCH_CLASSES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
MODES = ("major", "minor")
#: The 24 key labels, ``"<tonic> <mode>"`` with sharp names.
KEYS = tuple(f"{pc} {mode}" for mode in MODES for pc in PITCH_CLASSES)
_SUFFIXES = (".mxl", ".krn", ".xml", ".musicxml")
_SPLITS = ("train", "valid", "test")


def require_music21():
    """The ``music21`` module, or an ImportError saying how to install it."""
    try:
        import music21
    except ImportError as exc:
        raise ImportError(
            "make-probe-data --real needs music21 (its corpus of public-domain scores): "
            "pip install 'mert_fast[probe]'  (or: pip install music21)"
        ) from exc
    return music21


def _fluidsynth_version() -> str:
    exe = shutil.which("fluidsynth")
    if exe is None:
        return "unknown"
    try:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return next((line.strip() for line in out.splitlines() if "version" in line.lower()), out.strip()[:100])


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _key_of(key) -> tuple[int, str]:
    return int(key.tonic.pitchClass), str(key.mode)


def key_name(tonic: int, mode: str) -> str:
    return f"{PITCH_CLASSES[tonic % 12]} {mode}"


def piece_notes(score) -> list[tuple[float, float, int, int]]:
    """``(onset_q, duration_q, midi, part)`` of every sounding note of a music21 score (ties merged), in quarter
    notes from the start, sorted by onset."""
    notes = []
    parts = list(score.parts) or [score]
    for k, part in enumerate(parts):
        for n in part.stripTies().flatten().notes:
            dur = float(n.quarterLength)
            if dur <= 0:
                continue
            for p in n.pitches:
                notes.append((float(n.offset), dur, int(round(p.ps)), k))
    notes.sort()
    return notes


def _key_of_notes(notes: list[tuple[float, float, int, int]]):
    """music21's key analysis of a list of ``(onset_q, duration_q, midi, part)`` notes."""
    from music21 import note, stream

    s = stream.Stream()
    for onset, dur, midi, _ in notes:
        s.insert(onset, note.Note(midi, quarterLength=dur))
    return s.analyze("key")


def _candidates(composer: str, seed: int) -> list[str]:
    """The composer's score files as paths inside music21's corpus, in an order shuffled by ``seed``."""
    from music21 import corpus
    from music21.common import getCorpusFilePath

    root = Path(getCorpusFilePath())
    rel = sorted(
        {
            Path(p).relative_to(root).as_posix()
            for p in corpus.getComposer(composer)
            if Path(p).suffix.lower() in _SUFFIXES and not Path(p).stem.endswith("_old")
        }
    )
    if not rel:
        raise ValueError(f"music21's corpus has no scores by {composer!r}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(composer.encode()), 1]))
    order = rng.permutation(len(rel))
    return [rel[i] for i in order]


def _load_piece(rel: str) -> dict | None:
    """Parse ``rel`` (a path inside music21's corpus); None when it is unusable (no notes, no key signature, or a
    key analysis that disagrees with the signature)."""
    from music21 import corpus

    try:
        score = corpus.parse(rel)
    except Exception as exc:  # noqa: BLE001  (a corpus file music21 cannot read is skipped, not fatal)
        logger.warning("skipping %s: music21 cannot parse it (%s)", rel, exc)
        return None
    notes = piece_notes(score)
    signature = next(iter(score.recurse().getElementsByClass("KeySignature")), None)
    if len(notes) < 16 or signature is None:
        return None
    key = score.analyze("key")
    if int(key.sharps) != int(signature.sharps):
        return None
    onsets = np.unique([n[0] for n in notes])
    ioi = float(np.median(np.diff(onsets))) if len(onsets) > 1 else 1.0
    tonic, mode = _key_of(key)
    return {
        "path": rel,
        "key": key_name(tonic, mode),
        "tonic": tonic,
        "mode": mode,
        "key_correlation": round(float(key.correlationCoefficient), 4),
        "signature_sharps": int(signature.sharps),
        "median_ioi_q": ioi,
        "length_q": float(max(o + d for o, d, _, _ in notes)),
        "parts": int(max(n[3] for n in notes) + 1),
        "notes": notes,
    }


def _choose_pieces(composer: str, seed: int, n: int, exclude: frozenset[str] = frozenset()) -> list[dict]:
    chosen = []
    for rel in _candidates(composer, seed):
        if rel in exclude:
            continue
        piece = _load_piece(rel)
        if piece is not None:
            chosen.append(piece)
            if len(chosen) == n:
                break
    if not chosen:
        raise ValueError(f"no usable piece by {composer!r} in music21's corpus")
    if len(chosen) < n:
        logger.info("%s: %d usable pieces (asked for %d)", composer, len(chosen), n)
    return chosen


def _piece_splits(seed: int, composer: str, n: int) -> list[str]:
    n_eval = max(1, round(0.2 * n)) if n >= 3 else 0
    names = ["valid"] * n_eval + ["test"] * n_eval + ["train"] * (n - 2 * n_eval)
    order = np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(composer.encode()), 2])).permutation(n)
    return [names[k] for k in order]


def _check_args(seed, sample_rate, seconds, composers, pieces_per_composer, clips_per_composer, fmt) -> None:
    for name, value in (
        ("seed", seed),
        ("pieces_per_composer", pieces_per_composer),
        ("clips_per_composer", clips_per_composer),
        ("sample_rate", sample_rate),
    ):
        check_int(name, value, min=0 if name == "seed" else 1)
    if sample_rate < 8000:
        raise ValueError(f"sample_rate must be >= 8000 Hz; got {sample_rate!r}")
    check_float("seconds", seconds, min=1.0, max=120.0, expected="between 1 and 120")
    if fmt not in ("flac", "wav"):
        raise ValueError(f"format must be 'flac' or 'wav'; got {fmt!r}")
    if not composers or len(set(composers)) != len(composers):
        raise ValueError(f"composers must be distinct names; got {composers!r}")


def _choose_split_pieces(composer: str, seed: int, pieces_per_composer: int, exclude: frozenset[str]) -> list[dict]:
    """The pieces of ``composer`` in the set (none of ``exclude``), each with its ``split``."""
    chosen = _choose_pieces(composer, seed, pieces_per_composer, exclude)
    for piece, split in zip(chosen, _piece_splits(seed, composer, len(chosen)), strict=True):
        piece["split"] = split
    return chosen


def _write_composer_clips(
    out: Path,
    composer: str,
    pieces: list[dict],
    n_clips: int,
    seed: int,
    tonic_start: np.ndarray,
    turn: dict[tuple[str, str], int],
    sample_rate: int,
    seconds: float,
    soundfont: Path,
    fmt: str,
    ensemble: bool = False,
    renders: int = 1,
    vary: str = "instruments",
) -> list[dict]:
    """Render and write the ``n_clips`` clips of ``composer`` (spread evenly over its ``pieces``) under
    ``out/audio/<composer>``, and return their records. Each clip is transposed to the next tonic of its
    (split, mode) in turn, counted in ``turn`` (updated) from ``tonic_start``. ``ensemble``: each part played by
    an instrument of its own (:func:`~mert_fast.probe.real_render.ensemble_parts`, from a generator of its own,
    so the windows, keys and tempi are those of the same clip without it). ``renders``: each clip is written that
    many times, varied as ``vary`` says (``render_vary`` of :func:`make_real_probe_data`)."""
    crc = zlib.crc32(composer.encode())
    family_start = int(np.random.default_rng(np.random.SeedSequence([seed, crc, 4])).integers(len(FAMILIES)))
    (out / "audio" / composer).mkdir(parents=True, exist_ok=True)
    clips = []
    for j in range(n_clips):
        piece = pieces[j % len(pieces)]
        rng = np.random.default_rng(np.random.SeedSequence([seed, crc, 0, j]))
        split, mode = piece["split"], piece["mode"]
        tonic = int(tonic_start[MODES.index(mode)] + turn[split, mode]) % 12
        turn[split, mode] += 1
        semitones = (tonic - piece["tonic"] + 6) % 12 - 6
        turn_family = FAMILIES[(family_start + j) % len(FAMILIES)]
        turn_program = int(FAMILY_PROGRAMS[turn_family][int(rng.integers(len(FAMILY_PROGRAMS[turn_family])))])
        spq, start, window = clip_window(piece, rng, seconds)
        render_rng = copy.deepcopy(rng)  # every render of the clip draws the same velocities and level
        for k in range(renders):
            family, program, ensemble_key, source = turn_family, turn_program, [seed, crc, 5, j], piece
            if k and vary == "instruments":  # the same window on another top family, the rest drawn afresh
                family = FAMILIES[(family_start + j + k) % len(FAMILIES)]
                program_rng = np.random.default_rng(np.random.SeedSequence([seed, crc, 6, j, k]))
                program = int(FAMILY_PROGRAMS[family][int(program_rng.integers(len(FAMILY_PROGRAMS[family])))])
                ensemble_key = [seed, crc, 5, j, k]
            elif k and vary in ("notes", "piece"):  # the same instruments on another window (of another piece)
                view_rng = np.random.default_rng(np.random.SeedSequence([seed, crc, 7, j, k]))
                others = [p for p in pieces if p["split"] == split and p is not piece] if vary == "piece" else []
                source = others[int(view_rng.integers(len(others)))] if others else piece
                spq, start, window = clip_window(source, view_rng, seconds)
                semitones = int(view_rng.integers(-6, 6))
                tonic, mode = (source["tonic"] + semitones) % 12, source["mode"]
                render_rng = view_rng
            window_key = _key_of_notes(window) if window else None
            own = key_name(*_key_of(window_key)) if window_key is not None else None
            programs, families = (program,), [family]
            if ensemble:
                ensemble_rng = np.random.default_rng(np.random.SeedSequence(ensemble_key))
                part_family, programs = ensemble_parts(family, program, piece["parts"], ensemble_rng)
                # another piece's part p plays what part p (mod the clip's parts) plays in render 0
                part_family = [part_family[p % len(part_family)] for p in range(source["parts"])]
                programs = tuple(programs[p % len(programs)] for p in range(source["parts"]))
                sounding = sorted({n[3] for n in window}) or [0]
                if k and vary == "part":  # the same events with one sounding part on another instrument
                    part_rng = np.random.default_rng(np.random.SeedSequence([seed, crc, 8, j, k]))
                    part_family, programs, recast = recast_part(part_family, programs, sounding, part_rng)
                family, program = part_family[sounding[0]], programs[sounding[0]]
                if k and vary == "solo":  # the top sounding part's stem: the parts on its channel
                    sounding = [p for p in sounding if p % len(CHANNELS) == sounding[0] % len(CHANNELS)]
                families = sorted({part_family[p] for p in sounding}, key=FAMILIES.index)
            audio = render_clip(
                window, spq, semitones, programs, rng if k == 0 else copy.deepcopy(render_rng), seconds, sample_rate,
                soundfont, solo=sounding[0] if ensemble and k and vary == "solo" else None,
            )  # fmt: skip
            rel = f"audio/{composer}/{composer}_{j:05d}{render_suffix(k)}.{fmt}"
            sf.write(out / rel, audio, sample_rate, format=fmt.upper(), subtype="PCM_16")
            clips.append({
                "path": rel,
                "split": split,
                "composer": composer,
                "piece": source["path"],
                "key": key_name(tonic, mode),
                "piece_key": source["key"],
                "semitones": int(semitones),
                "window_key": own,
                "window_key_agrees": own == source["key"],
                "family": family,
                "program": program,
                **({"families": families, "part_programs": list(programs)} if ensemble else {}),
                **({"render": k} if renders > 1 else {}),
                **({"recast_part": recast} if k and vary == "part" else {}),
                "bpm": round(60.0 / spq, 3),
                "start_q": round(start, 4),
                "notes": len(window),
            })  # fmt: skip
    return clips


def _task_rows(clips: list[dict]) -> dict[str, list[tuple[str, str, str]]]:
    """The ``(path, label, split)`` rows of each task. Key clips are those whose window agrees with the piece's
    key; valid/test clips of a key absent from train are left out. Ensemble clips also give ``ensemble`` rows,
    the families sounding in the clip joined by ``;`` (multi-label)."""
    rows = {
        "key": [(c["path"], c["key"], c["split"]) for c in clips if c["window_key_agrees"]],
        "instrument": [(c["path"], c["family"], c["split"]) for c in clips],
        "program": [(c["path"], PROGRAM_NAMES[c["program"]], c["split"]) for c in clips],
        "composer": [(c["path"], c["composer"], c["split"]) for c in clips],
    }
    if clips and "families" in clips[0]:
        rows["ensemble"] = [(c["path"], ";".join(c["families"]), c["split"]) for c in clips]
    train_keys = {label for _, label, split in rows["key"] if split == "train"}
    unseen = [r for r in rows["key"] if r[2] != "train" and r[1] not in train_keys]
    if unseen:  # a probe cannot score a class it never trained on
        logger.warning("key.csv: %d valid/test clips of keys absent from train left out", len(unseen))
        rows["key"] = [r for r in rows["key"] if r[2] == "train" or r[1] in train_keys]
    return rows


def _write_task_manifests(out: Path, rows: dict[str, list]) -> tuple[dict[str, Path], dict[str, dict[str, int]]]:
    """Write ``out/<task>.csv`` (``path,label,split``) for every task; return the manifests and the row counts
    per split, by task."""
    manifests, counts = {}, {}
    for task, task_rows in rows.items():
        manifests[task] = out / f"{task}.csv"
        with open(manifests[task], "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "label", "split"])
            writer.writerows(task_rows)
        counts[task] = {s: sum(r[2] == s for r in task_rows) for s in _SPLITS}
    return manifests, counts


def probe_set_pieces(probe_dir: str | os.PathLike) -> set[str]:
    """The music21 corpus paths of every piece a set made by :func:`make_real_probe_data` uses (all splits); a
    corpus made by :func:`make_real_corpus` is such a set too."""
    meta_path = Path(probe_dir) / "probe_data.json"
    if not meta_path.is_file():
        where = os.fspath(probe_dir)
        raise ValueError(f"probe_dir: no probe_data.json in {where!r} (expected a make-probe-data --real set)")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if "pieces" not in meta:
        raise ValueError(f"probe_dir: {os.fspath(meta_path)!r} is not a real-music set (it lists no pieces)")
    return {p["path"] for ps in meta["pieces"].values() for p in ps}


def pieces_of_sets(probe_dirs: Iterable[str | os.PathLike], name: str = "probe_dirs") -> set[str]:
    """:func:`probe_set_pieces` of every folder of ``probe_dirs`` together (the pieces to leave out of a new set);
    ``name``: the argument an error names."""
    if isinstance(probe_dirs, (str, os.PathLike)):
        raise TypeError(f"{name} must be a collection of probe-set folders, not one path")
    pieces: set[str] = set()
    for probe_dir in probe_dirs:
        pieces |= probe_set_pieces(probe_dir)
    return pieces


def make_real_probe_data(
    out_dir: str | os.PathLike,
    *,
    seed: int = 0,
    sample_rate: int = 24000,
    seconds: float = 10.0,
    composers: tuple[str, ...] = COMPOSERS,
    pieces_per_composer: int = 40,
    clips_per_composer: int = 120,
    format: str = "flac",  # noqa: A002  (mirrors make_probe_data and the CLI's --format)
    exclude_pieces: Iterable[str] = (),
    ensemble: bool = False,
    renders: int = 1,
    render_vary: str = "instruments",
) -> dict[str, Path]:
    """Write the real-music probe set (see the module docstring) into ``out_dir``.

    Args:
        out_dir: folder to write into (created; files of the same names are overwritten).
        seed: fixes the pieces chosen, the splits and every clip.
        sample_rate: Hz of the files (24000 for MERT-v1; ``mert-fast probe`` resamples as its features need).
        seconds: clip length, 1-120 s.
        composers: names of music21 corpus composers (default :data:`COMPOSERS`).
        pieces_per_composer: at most this many pieces per composer (fewer when the corpus has fewer usable ones).
        clips_per_composer: clips per composer, spread evenly over its pieces.
        format: ``"flac"`` or ``"wav"`` (16-bit PCM, mono).
        exclude_pieces: music21 corpus paths never to use (e.g. :func:`probe_set_pieces` of a probe set, so that a
            pre-training corpus made with this function shares no piece with it).
        ensemble: play each part of a clip on an instrument of its own, 2-4 families a clip (the module docstring's
            "Ensembles"); adds the multi-label ``ensemble`` task.
        renders: write each clip this many times: render 0 as above, render ``k >= 1`` (``<name>.r<k>.<format>``)
            the same notes (window, transposition, tempo, velocities and level) with the top part on the next
            family but ``k`` in the clip's turn and the rest of the ensemble drawn afresh, so that the renders of a
            clip differ in their instruments only. Every render is a row of the manifests, in its clip's split; the
            renders of one clip are what ``train.py --paired-renders`` contrasts.
        render_vary: what renders ``k >= 1`` change: ``"instruments"`` (above) or ``"notes"``: the instruments of
            render 0 (every part's program) on another window of the piece, drawn with its tempo from a generator of
            its own, transposed by a random -6 to +5 semitones (its ``key`` label follows), at its own velocities
            and level: what two far-apart excerpts of one recording share. ``"piece"``: the same, on a window of
            another piece of the clip's composer and split (drawn with the window; part ``p`` of that piece plays
            render 0's program of part ``p`` modulo the clip's parts), so that only the instruments are shared; the
            clip's own piece when its split has no other. ``"part"`` (ensembles only): render 0's events and
            instruments with one sounding part, drawn, on a family no sounding part plays
            (:func:`~mert_fast.probe.real_render.recast_part`; the record's ``recast_part``), so that a pair differs
            in one instrument. ``"solo"`` (ensembles only): render 0's top sounding part alone, at the clip's
            velocities and level (its stem; the record's ``families`` is that part's family alone), the teachers'
            input for ``train.py --teacher-view second``.

    Returns:
        The manifests by task: ``key``, ``instrument``, ``program`` and ``composer`` (``out_dir/<task>.csv``), and
        ``ensemble`` when ``ensemble``.

    Raises:
        ImportError: music21 is not installed (the message says how to install it).
        ValueError: a bad argument, or no fluidsynth program or soundfont (the message says what to install).
        RuntimeError: fluidsynth ran but failed.
    """
    _check_args(seed, sample_rate, seconds, composers, pieces_per_composer, clips_per_composer, format)
    if not isinstance(ensemble, bool):
        raise TypeError(f"ensemble must be a bool; got {ensemble!r}")
    check_int("renders", renders, min=1, max=len(FAMILIES))
    if render_vary not in RENDER_VARY:
        raise ValueError(f"render_vary must be one of {', '.join(RENDER_VARY)}; got {render_vary!r}")
    if render_vary in ("part", "solo") and not ensemble:
        what = "recasts one part" if render_vary == "part" else "plays the top part alone"
        raise ValueError(f"render_vary: {render_vary!r} {what} of an ensemble; set ensemble")
    if isinstance(exclude_pieces, str):
        raise TypeError("exclude_pieces must be a collection of music21 corpus paths, not one string")
    exclude = frozenset(exclude_pieces)
    music21 = require_music21()
    soundfont = fluidsynth_soundfont("fluidsynth")
    t0 = time.perf_counter()
    out = Path(out_dir)
    pieces: dict[str, list[dict]] = {}
    for composer in composers:
        pieces[composer] = _choose_split_pieces(composer, seed, pieces_per_composer, exclude)
        logger.info("%s: %d pieces (%.0f s)", composer, len(pieces[composer]), time.perf_counter() - t0)

    tonic_start = np.random.default_rng(np.random.SeedSequence([seed, 3])).integers(12, size=len(MODES))
    turn = {(s, m): 0 for s in _SPLITS for m in MODES}
    clips = []
    for composer in composers:
        clip_args = (seed, tonic_start, turn, sample_rate, float(seconds), soundfont, format, ensemble, renders,
                     render_vary)  # fmt: skip
        clips += _write_composer_clips(out, composer, pieces[composer], clips_per_composer, *clip_args)
        logger.info("%s: %d clips written (%.0f s)", composer, clips_per_composer, time.perf_counter() - t0)
    manifests, counts = _write_task_manifests(out, _task_rows(clips))
    meta = {
        "seed": seed,
        "sample_rate": sample_rate,
        "seconds": seconds,
        "format": format,
        "source": "music21 corpus rendered with fluidsynth",
        "music21": music21.__version__,
        "fluidsynth": _fluidsynth_version(),
        "soundfont": {"path": str(soundfont), "sha256": _sha256(Path(soundfont))},
        "composers": list(composers),
        "excluded_pieces": sorted(exclude),
        "families": {f: list(p) for f, p in FAMILY_PROGRAMS.items()},
        "tasks": {
            "key": {"manifest": "key.csv", "type": "multiclass", "labels": list(KEYS)},
            "instrument": {"manifest": "instrument.csv", "type": "multiclass", "labels": list(FAMILIES)},
            "program": {"manifest": "program.csv", "type": "multiclass", "labels": list(PROGRAMS)},
            "composer": {"manifest": "composer.csv", "type": "multiclass", "labels": list(composers)},
        }
        | (
            {"ensemble": {"manifest": "ensemble.csv", "type": "multilabel", "labels": list(FAMILIES)}}
            if ensemble
            else {}
        ),
        "ensemble": ensemble,
        "renders": renders,
        **({"render_vary": render_vary} if renders > 1 else {}),
        "counts": counts,
        "pieces": {c: [{k: v for k, v in p.items() if k != "notes"} for p in ps] for c, ps in pieces.items()},
        "clips": clips,
    }
    (out / "probe_data.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    logger.info("real probe set: %d clips in %.0f s (%s)", len(clips), time.perf_counter() - t0, counts)
    return manifests


def make_real_corpus(
    out_dir: str | os.PathLike,
    clips: int,
    *,
    exclude_probe_sets: Iterable[str | os.PathLike] = (),
    seed: int = 7,
    seconds: float = 10.0,
    sample_rate: int = 24000,
    format: str = "flac",  # noqa: A002  (mirrors make_real_probe_data)
    ensemble: bool = False,
    renders: int = 1,
    render_vary: str = "instruments",
) -> Path:
    """A real-music pre-training corpus (``mert-fast make-corpus --real``): :func:`make_real_probe_data` over
    :data:`CORPUS_COMPOSERS`, ``clips`` split evenly over them (rounded up), leaving out every piece of each folder
    in ``exclude_probe_sets`` (sets made by :func:`make_real_probe_data`). ``ensemble``: every part on an instrument
    of its own (mixtures of 2-4 families; the same pieces, windows, keys and tempi as without it). ``renders``: each
    clip that many times, varied as ``render_vary`` says (:func:`make_real_probe_data`; ``clips`` counts render 0
    only). Returns ``out_dir/audio``, the folder to train on
    (``train.py --data``)."""
    check_int("clips", clips, min=1)
    exclude = pieces_of_sets(exclude_probe_sets, "exclude_probe_sets")
    make_real_probe_data(
        out_dir,
        seed=seed,
        sample_rate=sample_rate,
        seconds=seconds,
        composers=CORPUS_COMPOSERS,
        clips_per_composer=-(-clips // len(CORPUS_COMPOSERS)),
        format=format,
        exclude_pieces=exclude,
        ensemble=ensemble,
        renders=renders,
        render_vary=render_vary,
    )
    return Path(out_dir) / "audio"
