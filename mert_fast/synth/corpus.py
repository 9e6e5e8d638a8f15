"""A synthetic music corpus, generated on the spot: a first pre-training run needs no downloads.

Each clip is a short piece composed at random and rendered in numpy: a chord progression in a random key, mode
and tempo; a melody built from a motif that repeats over the chords with variations; a bass line; sustained or
stabbed chords; sometimes an arpeggio; and drums (a kick from a decaying sine sweep, a snare from filtered noise
and a tone, hi-hats from high-passed noise) on a 16th-note grid with fills, swing and timing jitter. Timbres
differ per part and per clip (harmonic profiles from sine-like to saw-, square- and triangle-like, organ
drawbars, plucked strings whose upper partials fade first, bells and bars with inharmonic partials) with ADSR
envelopes and vibrato; a short synthetic reverb, the occasional silence gap, and a peak between 0.5 and 0.9.
The sounds themselves (timbres, notes, drums, room) are :mod:`mert_fast.synth.sounds`; this module composes.

Clip ``i`` of seed ``s`` depends on ``(s, i)`` only (not on how many clips are made) and is the same on every
run with the same numpy version. 64 clips of 8 s take a few seconds on one core.

Optional richer source: when the ``fluidsynth`` program and a General MIDI soundfont are installed (Debian:
``apt-get install fluidsynth fluid-soundfont-gm``; or name the ``.sf2`` file in ``MERT_FAST_SOUNDFONT``),
``source="fluidsynth"`` renders the same compositions as MIDI with sampled instruments. ``source="auto"`` (the
default) uses fluidsynth when both are present and the numpy synthesizer otherwise.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile as sf

from mert_fast._checks import check_float, check_int
from mert_fast.synth.midi import fluidsynth_soundfont, render_midi
from mert_fast.synth.sounds import (
    CLOSED_HAT,
    CRASH,
    KICK,
    OPEN_HAT,
    PART_TIMBRES,
    SNARE,
    drum_kit,
    finish,
    fit_length,
    mix_in,
    part_timbre,
    render_note,
    reverb,
)

__all__ = ["FORMATS", "SOURCES", "check_clip_args", "make_corpus", "synth_clip", "write_clip"]

logger = logging.getLogger(__name__)

#: Audio file formats written: name -> (libsndfile container, subtype).
FORMATS = {"flac": ("FLAC", "PCM_16"), "wav": ("WAV", "PCM_16")}
#: Renderer choices: the numpy synthesizer, fluidsynth with a General MIDI soundfont, or fluidsynth when available.
SOURCES = ("auto", "numpy", "fluidsynth")

# ------------------------------------------------------------------------------------------------ composition

_SCALES = {
    "major": (0, 2, 4, 5, 7, 9, 11),
    "minor": (0, 2, 3, 5, 7, 8, 10),
    "dorian": (0, 2, 3, 5, 7, 9, 10),
    "mixolydian": (0, 2, 4, 5, 7, 9, 10),
    "harmonic minor": (0, 2, 3, 5, 7, 8, 11),
}
# Scale degrees (0 = tonic) of common four-chord progressions.
_PROGRESSIONS = (
    (0, 4, 5, 3),  # I V vi IV
    (0, 5, 3, 4),  # I vi IV V
    (0, 3, 4, 0),  # I IV V I
    (5, 3, 0, 4),  # vi IV I V
    (1, 4, 0, 0),  # ii V I I
    (0, 6, 5, 4),  # i VII VI V (in minor)
    (0, 3, 0, 4),  # I IV I V
    (0, 0, 3, 3),  # a slow vamp
)
# Melody durations in 16th notes and their weights per rhythmic style.
_DURATIONS = (1, 2, 3, 4, 6, 8)
_RHYTHM_STYLES = (
    (0.30, 0.40, 0.10, 0.20, 0.00, 0.00),  # busy
    (0.00, 0.45, 0.10, 0.35, 0.05, 0.05),  # medium
    (0.00, 0.15, 0.05, 0.40, 0.20, 0.20),  # sparse
)
# General MIDI percussion keys: they name the drum events in the score for both renderers.
_PARTS = ("lead", "pad", "bass", "arp", "drums")


@dataclasses.dataclass
class _Score:
    """A composed clip: note events ``(start_s, gate_s, midi, velocity, part)`` and what the clip is made of."""

    tempo: float
    key: int
    scale: str
    parts: tuple[str, ...]
    events: list[tuple[float, float, float, float, str]]
    gaps: list[tuple[float, float]]


def _degree_to_midi(degree: int, scale: Sequence[int], tonic: int) -> int:
    return tonic + scale[degree % 7] + 12 * (degree // 7)


def _fold(midi: int, low: int, high: int) -> int:
    """Move ``midi`` by octaves into ``[low, high)``."""
    while midi < low:
        midi += 12
    while midi >= high:
        midi -= 12
    return midi


_Event = tuple[float, float, float, float, str]
_Chord = tuple[int, int, int]  # (first step, steps, degree)


@dataclasses.dataclass
class _Sheet:
    """The time grid of a clip being composed, and the note events written on it so far."""

    rng: np.random.Generator
    seconds: float
    steps_per_bar: int
    six: float  # one 16th note, in seconds
    offset: float  # the clip starts this far into the first bar
    swing: bool
    entry: dict[str, int]  # the bar each part comes in at
    events: list[_Event] = dataclasses.field(default_factory=list)

    def when(self, step: int) -> float:
        """Seconds from the clip's start of absolute 16th ``step``, with swing and a few ms of jitter."""
        t = step * self.six - self.offset
        if self.swing and step % 2:
            t += self.six / 3
        return t + float(self.rng.normal(0.0, 0.004))

    def note(self, step: int, length: int, midi: float, vel: float, part: str, legato: float = 0.9) -> None:
        """Add a note of ``length`` 16ths at ``step`` unless its part has not come in yet or it is outside the clip."""
        if step // self.steps_per_bar < self.entry.get(part, 0):
            return
        start = self.when(step)
        gate = max(length * self.six * legato, 0.03)
        if start + gate > 0 and start < self.seconds:
            self.events.append((start, gate, float(midi), float(np.clip(vel, 0.05, 1.0)), part))


def _choose_parts(rng: np.random.Generator) -> tuple[str, ...]:
    """The parts playing: at least two, one of them melodic or harmonic (lead, pad or arp)."""
    present = {p: rng.random() < q for p, q in zip(_PARTS, (0.85, 0.7, 0.8, 0.35, 0.75), strict=True)}
    if not (present["lead"] or present["pad"] or present["arp"]):
        present[str(rng.choice(["lead", "pad", "arp"]))] = True
    if sum(present.values()) < 2:
        present[str(rng.choice([p for p in _PARTS if not present[p]]))] = True
    return tuple(p for p in _PARTS if present[p])


def _write_pad(sheet: _Sheet, chords: list[_Chord], scale: Sequence[int], tonic: int) -> None:
    rng = sheet.rng
    stabs = rng.random() < 0.3
    seventh = rng.random() < 0.3
    for first, length, deg in chords:
        degrees = [deg, deg + 2, deg + 4] + ([deg + 6] if seventh else [])
        midis = [_fold(_degree_to_midi(d, scale, tonic), 53, 77) for d in degrees]
        if stabs:
            for beat in range(1, length // 4, 2):
                for m in midis:
                    sheet.note(first + 4 * beat, 2, m, rng.uniform(0.5, 0.8), "pad", legato=0.8)
        else:
            for m in midis:
                sheet.note(first, length, m, rng.uniform(0.45, 0.7), "pad", legato=0.97)


def _write_bass(sheet: _Sheet, chords: list[_Chord], scale: Sequence[int], tonic: int) -> None:
    note = sheet.note
    pattern = int(sheet.rng.integers(5))
    for first, length, deg in chords:
        root = _fold(_degree_to_midi(deg, scale, tonic - 12), 28, 52)
        fifth = _fold(_degree_to_midi(deg + 4, scale, tonic - 12), 28, 55)
        if pattern == 0:  # one long note per chord
            note(first, length, root, 0.8, "bass")
        elif pattern == 1:  # quarter-note roots
            for s in range(0, length, 4):
                note(first + s, 4, root, 0.7 + 0.2 * (s == 0), "bass", legato=0.8)
        elif pattern == 2:  # root and fifth
            for i, s in enumerate(range(0, length, 4)):
                note(first + s, 4, fifth if i % 2 else root, 0.75, "bass", legato=0.85)
        elif pattern == 3:  # pulsing eighths in octaves
            for i, s in enumerate(range(0, length, 2)):
                note(first + s, 2, root + 12 * (i % 2), 0.6 + 0.2 * (i % 4 == 0), "bass", legato=0.7)
        else:  # syncopated
            for s in (0, 3, 6, 8, 11, 14):
                if s < length:
                    note(first + s, 2, root + 12 * (s == 11), 0.7 + 0.2 * (s == 0), "bass", legato=0.8)


def _write_arp(sheet: _Sheet, chords: list[_Chord], scale: Sequence[int], tonic: int) -> None:
    rng = sheet.rng
    rate = 2 if rng.random() < 0.6 else 1
    shape = int(rng.integers(3))
    for first, length, deg in chords:
        tones = [_fold(_degree_to_midi(d, scale, tonic + 12), 60, 84) for d in (deg, deg + 2, deg + 4)]
        tones = sorted(tones) + [sorted(tones)[0] + 12]
        cycle = tones if shape == 0 else tones[::-1] if shape == 1 else tones + tones[-2:0:-1]
        for i, s in enumerate(range(0, length, rate)):
            sheet.note(first + s, rate, cycle[i % len(cycle)], 0.5 + 0.2 * (s % 4 == 0), "arp", legato=0.75)


def _lead_motif(rng: np.random.Generator, weights: np.ndarray, steps: int) -> list[tuple[int, int, int | None]]:
    """A motif of ``steps`` 16ths: (step in the motif, length, degree relative to the chord root or None for a
    rest)."""
    motif, s, rel = [], 0, int(rng.choice([0, 2, 4]))
    while s < steps:
        d = int(rng.choice(_DURATIONS, p=weights / weights.sum()))
        if rng.random() < 0.15:
            motif.append((s, d, None))
        else:
            motif.append((s, d, rel))
            rel = int(np.clip(rel + rng.choice([-2, -1, 0, 1, 2, 3, -3, 4]), -3, 9))
        s += d
    return motif


def _write_lead(sheet: _Sheet, chords: list[_Chord], scale: Sequence[int], tonic: int, n_bars: int) -> None:
    rng, steps_per_bar = sheet.rng, sheet.steps_per_bar
    weights = np.asarray(_RHYTHM_STYLES[int(rng.integers(len(_RHYTHM_STYLES)))])
    motif_bars = 2 if rng.random() < 0.4 else 1
    motif = _lead_motif(rng, weights, motif_bars * steps_per_bar)
    chord_at = {}
    for first, length, deg in chords:
        for s in range(first, first + length):
            chord_at[s] = deg
    for b in range(0, n_bars, motif_bars):
        if b and rng.random() < 0.25:
            motif = _lead_motif(rng, weights, motif_bars * steps_per_bar)
        base = b * steps_per_bar
        for s, d, rel in motif:
            if rel is None or base + s not in chord_at:
                continue
            rel_var = rel + (int(rng.choice([-1, 1])) if rng.random() < 0.15 else 0)
            midi = _fold(_degree_to_midi(chord_at[base + s] + rel_var, scale, tonic + 24), 60, 89)
            vel = 0.65 + 0.25 * (s % 4 == 0) + rng.normal(0, 0.05)
            sheet.note(base + s, d, midi, vel, "lead", legato=float(rng.uniform(0.6, 0.95)))


def _drum_bar(rng: np.random.Generator, style: int, beats: int, bar: int, steps_per_bar: int) -> tuple[list, list]:
    """The kick and snare steps of one bar in drum ``style``."""
    kicks: list[int] = [0]
    snares: list[int] = []
    if beats == 3:
        snares = [4, 8]
    elif style == 0:  # rock
        kicks, snares = [0, 8] + ([10] if rng.random() < 0.5 else []), [4, 12]
    elif style == 1:  # four on the floor
        kicks, snares = [0, 4, 8, 12], [4, 12]
    elif style == 2:  # half time
        kicks, snares = [0] + ([7] if rng.random() < 0.5 else []), [8]
    elif style == 3:  # breakbeat
        kicks, snares = [0, 6, 10], [4, 12]
    else:  # sparse
        kicks, snares = [0], [12] if rng.random() < 0.5 else []
    if bar % 4 == 3 and rng.random() < 0.5:  # a fill at the end of a phrase
        snares = snares + [s for s in (13, 14, 15) if s < steps_per_bar and rng.random() < 0.7]
    return kicks, snares


def _write_drums(sheet: _Sheet, beats: int, n_bars: int) -> None:
    rng, steps_per_bar, note = sheet.rng, sheet.steps_per_bar, sheet.note
    style = int(rng.integers(5))
    hat_rate = 1 if style == 3 or rng.random() < 0.25 else 2
    for b in range(n_bars):
        base = b * steps_per_bar
        kicks, snares = _drum_bar(rng, style, beats, b, steps_per_bar)
        for s in kicks:
            note(base + s, 2, KICK, 0.9 + rng.normal(0, 0.05), "drums")
        for s in snares:
            note(base + s, 2, SNARE, (0.85 if s % 4 == 0 else 0.5) + rng.normal(0, 0.05), "drums")
        for s in range(0, steps_per_bar, hat_rate):
            if rng.random() < 0.08:
                continue
            open_hat = style == 1 and s % 4 == 2
            vel = (0.6 if s % 4 == 0 else 0.4) + rng.normal(0, 0.05)
            note(base + s, 1, OPEN_HAT if open_hat else CLOSED_HAT, vel, "drums")
        if b == 0 and rng.random() < 0.3:
            note(base, 4, CRASH, 0.7, "drums")


def _compose(rng: np.random.Generator, seconds: float) -> _Score:
    tempo = float(rng.uniform(72.0, 168.0))
    beats = 3 if rng.random() < 0.15 else 4
    steps_per_bar = 4 * beats
    six = 60.0 / tempo / 4  # one 16th note, in seconds
    offset = int(rng.integers(0, steps_per_bar)) * six  # the clip starts somewhere inside a bar
    n_bars = math.ceil((seconds + offset) / (steps_per_bar * six)) + 1
    key = int(rng.integers(0, 12))
    scale_name = str(rng.choice(list(_SCALES)))
    scale = _SCALES[scale_name]
    prog = list(_PROGRESSIONS[int(rng.integers(len(_PROGRESSIONS)))])
    shift = int(rng.integers(0, 4)) if rng.random() < 0.3 else 0
    prog = prog[shift:] + prog[:shift]
    two_chords = beats == 4 and tempo < 110 and rng.random() < 0.35
    swing = rng.random() < 0.2

    chord_steps = steps_per_bar // 2 if two_chords else steps_per_bar
    chords = [(k * chord_steps, chord_steps, prog[k % len(prog)]) for k in range(n_bars * steps_per_bar // chord_steps)]
    parts = _choose_parts(rng)
    # a part may come in a bar late, as in an arrangement
    entry = {p: (1 if rng.random() < 0.25 else 0) for p in parts}
    sheet = _Sheet(rng, seconds, steps_per_bar, six, offset, swing, entry)

    tonic = 48 + key
    if "pad" in parts:
        _write_pad(sheet, chords, scale, tonic)
    if "bass" in parts:
        _write_bass(sheet, chords, scale, tonic)
    if "arp" in parts:
        _write_arp(sheet, chords, scale, tonic)
    if "lead" in parts:
        _write_lead(sheet, chords, scale, tonic, n_bars)
    if "drums" in parts:
        _write_drums(sheet, beats, n_bars)

    gaps = []
    if rng.random() < 0.25:
        length = float(rng.uniform(0.3, 1.5))
        start = float(rng.uniform(0.0, max(seconds - length, 0.0)))
        gaps.append((start, length))
    sheet.events.sort(key=lambda e: (e[0], e[2]))
    return _Score(tempo, key, scale_name, parts, sheet.events, gaps)


def _render_numpy(rng: np.random.Generator, score: _Score, seconds: float, sr: float) -> np.ndarray:
    total = round(seconds * sr)
    mix = np.zeros(total)
    timbres = {p: part_timbre(str(rng.choice(PART_TIMBRES[p])), rng, p) for p in score.parts if p != "drums"}
    gains = {"lead": rng.uniform(0.7, 1.0), "pad": rng.uniform(0.25, 0.5), "bass": rng.uniform(0.6, 0.9)}
    gains |= {"arp": rng.uniform(0.3, 0.5), "drums": rng.uniform(0.6, 1.0)}
    kit = drum_kit(rng, sr) if "drums" in score.parts else {}
    for start, gate, midi, vel, part in score.events:
        if part == "drums":
            x = kit[int(midi)] * vel
        else:
            x = render_note(midi, gate, vel, timbres[part], sr)
        mix_in(mix, round(start * sr), gains[part] * x)
    return finish(rng, reverb(rng, mix, sr), sr, score.gaps)


def _clip_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFFFFFFFFFF, int(index)]))


def synth_clip(index: int, seconds: float = 8.0, sample_rate: int = 24000, seed: int = 0) -> np.ndarray:
    """Compose and render clip ``index`` of the synthetic corpus of ``seed`` with the numpy synthesizer.

    Returns:
        float32 ``(round(seconds * sample_rate),)``, mono, peak in [0.5, 0.9] (unless the clip is silent).
    """
    check_int("index", index, min=0)
    _check_args(1, seconds, sample_rate, "flac", "numpy")
    rng = _clip_rng(seed, index)
    score = _compose(rng, seconds)
    return _render_numpy(rng, score, seconds, sample_rate)


# ------------------------------------------------------------------------------------------------ fluidsynth


# General MIDI programs per part, for the fluidsynth renderer.
_GM_PROGRAMS = {
    "lead": (0, 11, 24, 56, 65, 73, 80, 81),  # piano, vibraphone, guitar, trumpet, sax, flute, square, saw leads
    "pad": (0, 4, 19, 48, 49, 88, 89, 91),  # piano, e-piano, organ, strings, warm/new-age pads
    "bass": (32, 33, 34, 38, 39),  # acoustic, finger, pick and synth basses
    "arp": (4, 8, 11, 12, 46),  # e-piano, celesta, vibraphone, marimba, harp
}
_CHANNELS = {"lead": 0, "pad": 1, "bass": 2, "arp": 3, "drums": 9}


def _render_fluidsynth(rng: np.random.Generator, score: _Score, seconds: float, sr: int, soundfont: Path) -> np.ndarray:
    programs = {_CHANNELS[p]: int(rng.choice(_GM_PROGRAMS[p])) for p in score.parts if p != "drums"}
    volumes = {_CHANNELS[p]: int(rng.integers(70, 120)) for p in score.parts}
    notes = []
    for start, gate, midi, vel, part in score.events:
        if start < 0:  # the clip starts mid-note: keep the rest of it
            gate, start = gate + start, 0.0
        notes.append((start, gate, _CHANNELS[part], int(round(midi)), round(vel * 127)))
    x = render_midi(notes, tempo=score.tempo, programs=programs, volumes=volumes, sample_rate=sr, soundfont=soundfont)
    return finish(rng, fit_length(x, round(seconds * sr)), sr, score.gaps)


# ------------------------------------------------------------------------------------------------ the corpus


def check_clip_args(seconds: float, sample_rate: int, fmt: str, source: str) -> None:
    """Check the clip length, sample rate (an integer >= 8000), file format (:data:`FORMATS`) and renderer
    (:data:`SOURCES`) of a synthesized clip set.

    Raises:
        ValueError: naming the argument and what it must be.
    """
    check_float("seconds", seconds, min=0, exclusive_min=True, finite=True)
    check_int("sample_rate", sample_rate, min=8000, expected="an integer >= 8000 (Hz)")
    if round(seconds * sample_rate) < 1:
        raise ValueError(f"seconds={seconds} at sample_rate={sample_rate} gives no samples")
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {sorted(FORMATS)}; got {fmt!r}")
    if source not in SOURCES:
        raise ValueError(f"source must be one of {list(SOURCES)}; got {source!r}")


def write_clip(path: str | os.PathLike, audio: np.ndarray, sample_rate: int, fmt: str) -> None:
    """Write a mono clip as 16-bit PCM in format ``fmt`` (a name of :data:`FORMATS`)."""
    container, subtype = FORMATS[fmt]
    sf.write(path, audio, sample_rate, format=container, subtype=subtype)


def _check_args(n_clips: int, seconds: float, sample_rate: int, fmt: str, source: str) -> None:
    check_int("n_clips", n_clips, min=1, expected="a positive integer")
    check_clip_args(seconds, sample_rate, fmt, source)


def make_corpus(
    out_dir: str | os.PathLike,
    n_clips: int = 64,
    seconds: float = 8.0,
    sample_rate: int = 24000,
    seed: int = 0,
    format: str = "flac",  # noqa: A002  (the public name mirrors the CLI's --format)
    source: str = "auto",
) -> list[Path]:
    """Write a synthetic music corpus: ``n_clips`` mono clips ``clip_00000.<format>``... and ``manifest.csv``.

    Args:
        out_dir: folder to write into (created; existing clips of the same names are overwritten).
        n_clips: number of clips.
        seconds: length of every clip.
        sample_rate: Hz (24000 for MERT-v1, 16000 for MERT-v0 / music2vec).
        seed: clip ``i`` depends on ``(seed, i)`` only.
        format: ``"flac"`` or ``"wav"`` (16-bit PCM).
        source: ``"numpy"`` (the built-in synthesizer), ``"fluidsynth"`` (General MIDI rendering; needs the
            ``fluidsynth`` program and a soundfont, see :func:`find_soundfont`) or ``"auto"`` (fluidsynth when
            available, numpy otherwise).

    Returns:
        The clip paths in order. ``out_dir/manifest.csv`` lists them (``path,seconds``; paths relative to
        ``out_dir``), so ``list_audio(out_dir / "manifest.csv")`` reads exactly this corpus.

    Raises:
        ValueError: a bad argument, or ``source="fluidsynth"`` without fluidsynth or a soundfont.
        RuntimeError: fluidsynth ran but failed.
    """
    _check_args(n_clips, seconds, sample_rate, format, source)
    soundfont = fluidsynth_soundfont(source)
    use_fluidsynth = soundfont is not None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    logger.info(
        "writing %d synthetic clips of %.2f s at %d Hz to %s (%s)",
        n_clips,
        seconds,
        sample_rate,
        out,
        f"fluidsynth, {soundfont}" if use_fluidsynth else "numpy synthesizer",
    )
    paths = []
    for i in range(n_clips):
        rng = _clip_rng(seed, i)
        score = _compose(rng, seconds)
        if use_fluidsynth:
            audio = _render_fluidsynth(rng, score, seconds, sample_rate, soundfont)
        else:
            audio = _render_numpy(rng, score, seconds, sample_rate)
        path = out / f"clip_{i:05d}.{format}"
        write_clip(path, audio, sample_rate, format)
        logger.debug(
            "%s: %.0f bpm, key %d %s, parts %s, %d events, gaps %s",
            path.name,
            score.tempo,
            score.key,
            score.scale,
            ",".join(score.parts),
            len(score.events),
            score.gaps,
        )
        paths.append(path)
    with open(out / "manifest.csv", "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "seconds"])
        for path in paths:
            writer.writerow([path.name, f"{round(seconds * sample_rate) / sample_rate:.6f}"])
    return paths
