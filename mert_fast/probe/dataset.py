"""A small labelled probe set of single notes and chords, synthesized on the spot (no downloads).

Two clip sets, each clip a mono file of ``seconds`` at ``sample_rate``:

- ``audio/notes/note_NNNNN.<format>``: one note. Every (pitch class x instrument family) cell gets
  ``notes_per_cell`` clips: 12 pitch classes (``C``, ``C#``, ..., ``B``) x 9 families with NSynth's names
  (:data:`FAMILIES`). The octave is random inside the family's playing range (:data:`FAMILY_RANGES`: every pitch
  class occurs in at least two octaves of every family, so pitch class has to be recognised across octaves), as
  are velocity, note length (0.8-1.6 s, then the release), onset (0-0.2 s), a light reverb and the peak level
  (0.5-0.9). Every clip is its own instrument instance: timbre parameters are drawn from the family's ranges.
- ``audio/chords/chord_NNNNN.<format>``: a chord struck at once (guitars strum over a few ms). Every (quality x
  root) cell gets ``chords_per_cell`` clips: 6 qualities (:data:`QUALITIES`) x 12 roots, in root position or an
  inversion, closed, open or with the bass doubled (up to ~1.5 octaves), played by a random polyphonic family
  (:data:`CHORD_FAMILIES`).

Clip ``i`` of a set belongs to cell ``i % n_cells`` and depends only on ``(seed, set, i)``: more clips per cell
add clips without changing the existing ones, and two runs give identical files.

Five manifests, CSV ``path,label,split`` with paths relative to ``out_dir``:

========================  ======  ===========  ==================================================
file                      clips   task         label
========================  ======  ===========  ==================================================
``pitch_class.csv``       notes   multi-class  pitch-class name, e.g. ``C#``
``instrument.csv``        notes   multi-class  family, e.g. ``flute``
``pitch.csv``             notes   regression   the MIDI note number, e.g. ``61``
``chord_quality.csv``     chords  multi-class  quality, e.g. ``minor``
``chord_notes.csv``       chords  multi-label  the pitch classes present, from C upward, e.g. ``C;E;G``
========================  ======  ===========  ==================================================

Splits are fixed and stratified: inside every cell, 60/20/20 % of the clips (10 give 6/2/2; at least one each for
valid and test from 3 clips on, smaller cells are train only) go to ``train``/``valid``/``test``, which ones chosen
by the seed; a clip has the same split in every manifest of its set. ``probe_data.json`` records the seed, sample
rate, length, the source (the numpy synthesizer, or fluidsynth and its soundfont), the counts per task and split,
the label lists and every clip's generation parameters.

Sources: ``"numpy"`` renders with the synthesizer of :mod:`mert_fast.synth` and one timbre model per family;
``"fluidsynth"`` renders the same notes through a General MIDI soundfont with a random program of the family
(:data:`GM_PROGRAMS`); ``"auto"`` picks fluidsynth when it and a soundfont are installed.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mert_fast._checks import check_int
from mert_fast.synth.corpus import check_clip_args, write_clip
from mert_fast.synth.families import FAMILY_TIMBRES
from mert_fast.synth.midi import fluidsynth_soundfont, render_midi
from mert_fast.synth.sounds import envelope, finish, fit_length, noise_band, render_note, reverb

__all__ = [
    "CHORD_FAMILIES",
    "CHORD_INTERVALS",
    "FAMILIES",
    "FAMILY_RANGES",
    "GM_CHORD_PROGRAMS",
    "GM_PROGRAMS",
    "PITCH_CLASSES",
    "QUALITIES",
    "make_probe_data",
]

logger = logging.getLogger(__name__)

PITCH_CLASSES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
FAMILIES = ("bass", "brass", "flute", "guitar", "keyboard", "mallet", "organ", "reed", "string")
#: The families that play chords.
CHORD_FAMILIES = ("keyboard", "organ", "guitar", "string", "mallet", "brass", "reed")
#: Semitones above the root.
CHORD_INTERVALS = {
    "major": (0, 4, 7),
    "minor": (0, 3, 7),
    "diminished": (0, 3, 6),
    "augmented": (0, 4, 8),
    "sus4": (0, 5, 7),
    "dominant7": (0, 4, 7, 10),
}
QUALITIES = tuple(CHORD_INTERVALS)
#: Lowest and highest MIDI note of a single note, per family (inclusive; at least 2 octaves + a fifth wide).
FAMILY_RANGES = {
    "bass": (28, 55),
    "brass": (52, 82),
    "flute": (60, 96),
    "guitar": (40, 76),
    "keyboard": (36, 96),
    "mallet": (48, 89),
    "organ": (36, 84),
    "reed": (50, 84),
    "string": (40, 88),
}
#: General MIDI programs (0-based) that render each family, chosen from the family's GM range by what the labels
#: promise, measured on FluidR3_GM: every note sounds at its labelled pitch (not so: the 16' drawbar and rock organs,
#: clarinet, baritone sax, contrabass, tremolo strings, harp, timpani, slap bass, overdriven and harmonics guitars,
#: glockenspiel, tubular bells, dulcimer), organs sustain (not so: percussive organ, accordions, harmonica), brass is
#: bright (not so: French horn, synth brass; the tuba is silent above its range), and chords put their own pitch
#: classes on top of the chroma (often not so: harpsichord, clavinet, tenor sax, oboe; see GM_CHORD_PROGRAMS).
GM_PROGRAMS = {
    "keyboard": (0, 1, 2, 3, 4, 5),
    "mallet": (8, 10, 11, 12, 13),
    "organ": (19, 20),
    "guitar": (24, 25, 28),
    "bass": (32, 33, 34, 35),
    "string": (40, 41, 42, 48, 49, 50),
    "brass": (56, 57, 59, 61),
    "reed": (64, 65, 69, 70),
    "flute": (72, 73, 74, 75, 76, 77, 78, 79),
}
#: Where chords need other programs than single notes: the bright trumpet and brass section, and the English horn,
#: often put an upper partial of a chord tone above another chord tone (FluidR3_GM, 10 chords each: 5 of 10 hits
#: for the trumpet and the brass section, 7 for the English horn; 7-10 for the programs kept here).
GM_CHORD_PROGRAMS = {**GM_PROGRAMS, "brass": (57, 59), "reed": (64, 65, 70)}
_CHORD_LOW = {"keyboard": 48, "organ": 48, "guitar": 40, "string": 48, "mallet": 53, "brass": 48, "reed": 50}
_SET_IDS = {"notes": 0, "chords": 1}  # clip i of a set is seeded by (seed, set id, i); its splits by (seed, 100 + id)
_N_CELLS = {"notes": len(PITCH_CLASSES) * len(FAMILIES), "chords": len(QUALITIES) * len(PITCH_CLASSES)}
_SOURCES = ("auto", "numpy", "fluidsynth")
_SPLIT_NAMES = ("train", "valid", "test")


def _pc_names(midis: list[int]) -> str:
    return ";".join(PITCH_CLASSES[p] for p in sorted({m % 12 for m in midis}))


# name -> (clip set, task type, label of a clip record)
_TASKS: dict[str, tuple[str, str, Callable[[dict], str]]] = {
    "pitch_class": ("notes", "multiclass", lambda c: PITCH_CLASSES[c["midi"][0] % 12]),
    "instrument": ("notes", "multiclass", lambda c: c["family"]),
    "chord_quality": ("chords", "multiclass", lambda c: c["quality"]),
    "chord_notes": ("chords", "multilabel", lambda c: _pc_names(c["midi"])),
    "pitch": ("notes", "regression", lambda c: str(c["midi"][0])),
}
_LABELS = {
    "pitch_class": PITCH_CLASSES,
    "instrument": FAMILIES,
    "chord_quality": QUALITIES,
    "chord_notes": PITCH_CLASSES,
}

# ------------------------------------------------------------------------------------------------ clips


def _note_params(rng: np.random.Generator, i: int, seconds: float) -> dict:
    cell = i % _N_CELLS["notes"]
    pc, family = cell // len(FAMILIES), FAMILIES[cell % len(FAMILIES)]
    low, high = FAMILY_RANGES[family]
    midi = int(rng.choice([m for m in range(low, high + 1) if m % 12 == pc]))
    onset = float(rng.uniform(0.0, 0.2))
    gate = min(float(rng.uniform(0.8, 1.6)), max(0.1, seconds - onset - 0.15))  # short clips: still a release
    velocity = int(rng.integers(50, 121))
    program = GM_PROGRAMS[family][int(rng.integers(len(GM_PROGRAMS[family])))]
    return {
        "family": family,
        "pitch_class": PITCH_CLASSES[pc],
        "midi": [midi],
        "velocity": [velocity],
        "onsets": [round(onset, 4)],
        "gate": round(gate, 4),
        "program": program,
    }


def _chord_params(rng: np.random.Generator, i: int, seconds: float) -> dict:
    cell = i % _N_CELLS["chords"]
    quality, root = QUALITIES[cell // len(PITCH_CLASSES)], cell % len(PITCH_CLASSES)
    family = CHORD_FAMILIES[int(rng.integers(len(CHORD_FAMILIES)))]
    intervals = CHORD_INTERVALS[quality]
    inversion = int(rng.integers(len(intervals)))
    tones = sorted(iv + 12 * (k < inversion) for k, iv in enumerate(intervals))
    voicing = ("closed", "open", "doubled")[int(rng.integers(3))]
    if voicing == "open":  # the second-lowest tone an octave up
        tones = sorted([tones[0], tones[1] + 12, *tones[2:]])
    elif voicing == "doubled":  # the bass note doubled an octave up
        tones = sorted([*tones, tones[0] + 12])
    offsets = [t - tones[0] for t in tones]
    base = _CHORD_LOW[family]
    lowest = base + (root + tones[0] - base) % 12
    if rng.random() < 0.5 and lowest + 12 + offsets[-1] <= 96:
        lowest += 12
    onset = float(rng.uniform(0.0, 0.2))
    strum = float(rng.uniform(0.005, 0.03)) if family == "guitar" else 0.0
    gate = min(float(rng.uniform(0.8, 1.6)), max(0.1, seconds - onset - strum * len(offsets) - 0.15))
    level = int(rng.integers(50, 116))
    velocity = [int(np.clip(level + rng.integers(-8, 9), 1, 127)) for _ in offsets]
    program = GM_CHORD_PROGRAMS[family][int(rng.integers(len(GM_CHORD_PROGRAMS[family])))]
    return {
        "family": family,
        "quality": quality,
        "root": PITCH_CLASSES[root],
        "inversion": inversion,
        "voicing": voicing,
        "midi": [lowest + o for o in offsets],
        "velocity": velocity,
        "onsets": [round(onset + k * strum, 4) for k in range(len(offsets))],
        "gate": round(gate, 4),
        "program": program,
    }


def _render_numpy(rng: np.random.Generator, p: dict, seconds: float, sr: int) -> np.ndarray:
    tim = FAMILY_TIMBRES[p["family"]](rng)
    mix = np.zeros(round(seconds * sr))
    for midi, vel, onset in zip(p["midi"], p["velocity"], p["onsets"], strict=True):
        x = render_note(midi, p["gate"], vel / 127, tim, sr)
        if p["family"] == "flute":  # breath noise following the note's envelope
            env = envelope(len(x), max(1, round(p["gate"] * sr)), sr, tim)
            noise = noise_band(rng, len(x), sr, min(1500.0, 0.2 * sr), min(6000.0, 0.45 * sr))
            x = x + rng.uniform(0.02, 0.05) * (vel / 127) * env * noise
        start = round(onset * sr)
        n = min(len(x), len(mix) - start)
        mix[start : start + n] += x[:n]
    return finish(rng, reverb(rng, mix, sr), sr, [])


def _render_fluidsynth(rng: np.random.Generator, p: dict, seconds: float, sr: int, soundfont: Path) -> np.ndarray:
    notes = [
        (onset, p["gate"], 0, midi, vel) for midi, vel, onset in zip(p["midi"], p["velocity"], p["onsets"], strict=True)
    ]
    x = render_midi(
        notes, tempo=120.0, programs={0: p["program"]}, volumes={0: 100}, sample_rate=sr, soundfont=soundfont
    )
    x = fit_length(np.asarray(x, dtype=np.float64), round(seconds * sr))
    return finish(rng, reverb(rng, x, sr), sr, [])


def _splits(seed: int, set_id: int, n_cells: int, per_cell: int) -> list[str]:
    """Split of every clip: within each cell, a seeded choice of 60/20/20 % of its clips."""
    n_eval = max(1, round(0.2 * per_cell)) if per_cell >= 3 else 0
    names = ["valid"] * n_eval + ["test"] * n_eval + ["train"] * (per_cell - 2 * n_eval)
    out = [""] * (n_cells * per_cell)
    for cell in range(n_cells):
        order = np.random.default_rng(np.random.SeedSequence([seed, 100 + set_id, cell])).permutation(per_cell)
        for replicate, k in enumerate(order):
            out[replicate * n_cells + cell] = names[k]
    return out


# ------------------------------------------------------------------------------------------------ the probe set


def _check_args(
    seed: int, sample_rate: int, seconds: float, notes_per_cell: int, chords_per_cell: int, source: str, fmt: str
) -> None:
    for name, value in (("notes_per_cell", notes_per_cell), ("chords_per_cell", chords_per_cell)):
        check_int(name, value, min=1, expected="a positive integer")
    check_int("seed", seed, min=0)
    check_clip_args(seconds, sample_rate, fmt, source)
    if seconds < 0.5:
        raise ValueError(f"seconds must be >= 0.5 (a note and its release); got {seconds!r}")


def _write_clip_set(
    out: Path,
    set_name: str,
    seed: int,
    per_cell: int,
    sample_rate: int,
    seconds: float,
    soundfont: Path | None,
    fmt: str,
) -> list[dict]:
    """Render and write the clips of set ``set_name`` (``"notes"`` or ``"chords"``) under ``out/audio/<set_name>``;
    return one record per clip: its path relative to ``out``, its split and its parameters."""
    set_id = _SET_IDS[set_name]
    n_cells = _N_CELLS[set_name]
    make_params = {"notes": _note_params, "chords": _chord_params}[set_name]
    splits = _splits(seed, set_id, n_cells, per_cell)
    (out / "audio" / set_name).mkdir(parents=True, exist_ok=True)
    clips = []
    for i in range(n_cells * per_cell):
        rng = np.random.default_rng(np.random.SeedSequence([seed, set_id, i]))
        params = make_params(rng, i, float(seconds))
        if soundfont is not None:
            audio = _render_fluidsynth(rng, params, seconds, sample_rate, soundfont)
        else:
            audio = _render_numpy(rng, params, seconds, sample_rate)
            del params["program"]
        rel = f"audio/{set_name}/{set_name[:-1]}_{i:05d}.{fmt}"
        write_clip(out / rel, audio, sample_rate, fmt)
        clips.append({"path": rel, "split": splits[i], **params})
    logger.info("%s: %d clips written", set_name, len(clips))
    return clips


def _write_task_manifests(out: Path, clips: dict[str, list[dict]]) -> tuple[dict[str, Path], dict, dict]:
    """Write ``out/<task>.csv`` (``path,label,split``) for every task; return the manifests, the clip counts per
    split and the task descriptions, each by task name."""
    manifests, counts, tasks = {}, {}, {}
    for task, (set_name, kind, label) in _TASKS.items():
        manifests[task] = out / f"{task}.csv"
        with open(manifests[task], "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "label", "split"])
            writer.writerows([c["path"], label(c), c["split"]] for c in clips[set_name])
        counts[task] = {s: sum(c["split"] == s for c in clips[set_name]) for s in _SPLIT_NAMES}
        tasks[task] = {
            "manifest": manifests[task].name,
            "clips": set_name,
            "type": kind,
            "labels": list(_LABELS[task]) if task in _LABELS else None,
        }
    return manifests, counts, tasks


def make_probe_data(
    out_dir: str | os.PathLike,
    *,
    seed: int = 0,
    sample_rate: int = 24000,
    seconds: float = 2.0,
    notes_per_cell: int = 10,
    chords_per_cell: int = 10,
    source: str = "auto",
    format: str = "flac",  # noqa: A002  (mirrors make_corpus and the CLI's --format)
) -> dict[str, Path]:
    """Write the labelled probe set of notes and chords (see the module docstring) into ``out_dir``.

    Args:
        out_dir: folder to write into (created; files of the same names are overwritten).
        seed: clip ``i`` of a set depends on ``(seed, set, i)`` only; the splits on ``seed`` and the cell sizes.
        sample_rate: Hz, an integer >= 8000 (24000 for MERT-v1, 16000 for MERT-v0 / music2vec).
        seconds: length of every clip, >= 0.5.
        notes_per_cell: note clips per (pitch class x family) cell: ``108 * notes_per_cell`` clips.
        chords_per_cell: chord clips per (quality x root) cell: ``72 * chords_per_cell`` clips.
        source: ``"numpy"`` (built-in synthesizer), ``"fluidsynth"`` (General MIDI soundfont; needs the
            ``fluidsynth`` program and a soundfont) or ``"auto"`` (fluidsynth when available, numpy otherwise).
        format: ``"flac"`` or ``"wav"`` (16-bit PCM, mono).

    Returns:
        The manifests by task name: ``pitch_class``, ``instrument``, ``chord_quality``, ``chord_notes`` and
        ``pitch``, each ``out_dir/<task>.csv`` with ``path,label,split`` rows (paths relative to ``out_dir``).

    Raises:
        ValueError: a bad argument (named in the message), or ``source="fluidsynth"`` without fluidsynth or a
            soundfont.
        RuntimeError: fluidsynth ran but failed.
    """
    _check_args(seed, sample_rate, seconds, notes_per_cell, chords_per_cell, source, format)
    soundfont = fluidsynth_soundfont(source)
    use_fluidsynth = soundfont is not None
    if min(notes_per_cell, chords_per_cell) < 3:
        logger.warning("cells of fewer than 3 clips go to train only: no valid or test clips for them")
    out = Path(out_dir)
    sizes = {"notes": notes_per_cell, "chords": chords_per_cell}
    rendered_by = f"fluidsynth with {soundfont}" if use_fluidsynth else "the numpy synthesizer"
    logger.info("writing the probe set (%.2f s clips at %d Hz, %s) to %s", seconds, sample_rate, rendered_by, out)
    clips = {
        set_name: _write_clip_set(out, set_name, seed, sizes[set_name], sample_rate, seconds, soundfont, format)
        for set_name in _SET_IDS
    }
    manifests, counts, tasks = _write_task_manifests(out, clips)
    meta = {
        "seed": seed,
        "sample_rate": sample_rate,
        "seconds": seconds,
        "format": format,
        "source": "fluidsynth" if use_fluidsynth else "numpy",
        "soundfont": str(soundfont) if soundfont else None,
        "notes_per_cell": notes_per_cell,
        "chords_per_cell": chords_per_cell,
        "tasks": tasks,
        "counts": counts,
        "clips": clips,
    }
    (out / "probe_data.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    return manifests
