"""How a real-music clip sounds: the instrument families and their General MIDI programs, the window and tempo of
a clip, an ensemble's instruments (one a part), and the render through fluidsynth. :mod:`mert_fast.probe.real`
chooses the pieces and writes the sets and their labels; its docstring says how each draw is made."""

from __future__ import annotations

import numpy as np

from mert_fast.synth.midi import render_midi

__all__ = [
    "CHANNELS",
    "FAMILIES",
    "FAMILY_PROGRAMS",
    "PROGRAMS",
    "PROGRAM_NAMES",
    "RENDER_VARY",
    "clip_window",
    "ensemble_parts",
    "recast_part",
    "render_clip",
]

#: General MIDI programs (0-based) of each instrument family; families chosen to sound clearly different.
FAMILY_PROGRAMS = {
    "keyboard": (0, 1, 2),
    "organ": (19, 20),
    "guitar": (24, 25),
    "strings": (40, 42, 48, 49),
    "brass": (56, 57, 61),
    "woodwinds": (68, 70, 73, 74),
    "mallets": (11, 12),
}
FAMILIES = tuple(FAMILY_PROGRAMS)
#: The label of each program of :data:`FAMILY_PROGRAMS` in ``program.csv`` (General MIDI's names, shortened).
PROGRAM_NAMES = {
    0: "acoustic grand piano", 1: "bright acoustic piano", 2: "electric grand piano",
    19: "church organ", 20: "reed organ",
    24: "nylon guitar", 25: "steel guitar",
    40: "violin", 42: "cello", 48: "string ensemble 1", 49: "string ensemble 2",
    56: "trumpet", 57: "trombone", 61: "brass section",
    68: "oboe", 70: "bassoon", 73: "flute", 74: "recorder",
    11: "vibraphone", 12: "marimba",
}  # fmt: skip
PROGRAMS = tuple(PROGRAM_NAMES[p] for ps in FAMILY_PROGRAMS.values() for p in ps)

IOI_SECONDS = (0.18, 0.40)
BPM = (40.0, 160.0)
FADE_S = 0.05
#: What the renders ``k >= 1`` of a clip change (``make_real_probe_data(render_vary=...)``, ``--render-vary``).
RENDER_VARY = ("instruments", "notes", "piece", "part", "solo")
#: MIDI channels an ensemble's parts are played on (channel 9 is General MIDI's drum kit).
CHANNELS = tuple(c for c in range(16) if c != 9)
#: An ensemble clip (``ensemble=True``) has this many families at most (fewer when the piece has fewer parts).
MAX_ENSEMBLE_FAMILIES = 4


def clip_window(
    piece: dict, rng: np.random.Generator, seconds: float
) -> tuple[float, float, list[tuple[float, float, int, int]]]:
    """Tempo (seconds per quarter), window start (quarters) and the notes of one window, in quarters from its start."""
    target = float(rng.uniform(*IOI_SECONDS))
    bpm = float(np.clip(60.0 * piece["median_ioi_q"] / target, *BPM))
    spq = 60.0 / bpm
    span_q = seconds / spq
    onsets = np.unique([n[0] for n in piece["notes"]])
    starts = onsets[onsets <= max(0.0, piece["length_q"] - span_q)]
    start = float(starts[int(rng.integers(len(starts)))]) if len(starts) else 0.0
    window = []
    for onset, dur, midi, part in piece["notes"]:
        if onset >= start + span_q:
            break
        end = min(onset + dur, start + span_q)
        if end > start:
            begin = max(onset, start)
            window.append((begin - start, end - begin, midi, part))
    return spq, start, window


def render_clip(
    window: list,
    spq: float,
    semitones: int,
    programs: tuple[int, ...],
    rng: np.random.Generator,
    seconds: float,
    sr: int,
    sf2,
    solo: int | None = None,
) -> np.ndarray:
    """One clip: every part on MIDI channel 0 with ``programs[0]`` when ``programs`` has one program, else part
    ``k`` on channel ``CHANNELS[k % 15]`` with ``programs[k]`` (parts 15 channels apart have one program: see
    :func:`ensemble_parts`). ``solo``: play only the events on part ``solo``'s channel, with the velocities and
    level the whole clip draws (the stem of that part in the clip's mixture, up to the level)."""
    n_parts = 1 + max((n[3] for n in window), default=0)
    part_velocity = rng.integers(60, 101, n_parts)
    events = []
    for onset, dur, midi, part in window:
        key = midi + semitones
        while key < 12:
            key += 12
        while key > 119:
            key -= 12
        velocity = int(np.clip(part_velocity[part] + rng.integers(-6, 7), 1, 127))
        channel = 0 if len(programs) == 1 else CHANNELS[part % len(CHANNELS)]
        events.append((onset * spq, dur * spq, channel, key, velocity))
    if solo is not None:
        events = [e for e in events if e[2] == CHANNELS[solo % len(CHANNELS)]]
    if len(programs) == 1:
        channels = {0: programs[0]}
    else:
        channels = {CHANNELS[k % len(CHANNELS)]: p for k, p in enumerate(programs)}
    x = render_midi(events, tempo=120.0, programs=channels, volumes=dict.fromkeys(channels, 100), sample_rate=sr,
                    soundfont=sf2)  # fmt: skip
    total = round(seconds * sr)
    x = np.concatenate([np.asarray(x, dtype=np.float64)[:total], np.zeros(max(0, total - len(x)))])
    fade = min(total, round(FADE_S * sr))
    x[total - fade :] *= np.linspace(1.0, 0.0, fade)
    peak = float(np.abs(x).max())
    if peak > 0:
        x *= float(rng.uniform(0.5, 0.9)) / peak
    return x


def ensemble_parts(
    family: str, program: int, n_parts: int, rng: np.random.Generator
) -> tuple[list[str], tuple[int, ...]]:
    """The family and GM program of each of ``n_parts`` parts of an ensemble clip: part 0 (the score's top part)
    keeps ``family`` and ``program``; 2 to :data:`MAX_ENSEMBLE_FAMILIES` families in all (at most one a part), each
    playing at least one part, the others drawn from the rest, their programs from their families."""
    if n_parts < 2:
        return [family], (program,)
    drawn = min(n_parts, len(CHANNELS))
    others = [FAMILIES[k] for k in rng.permutation(len(FAMILIES)) if FAMILIES[k] != family]
    n_families = int(rng.integers(2, min(MAX_ENSEMBLE_FAMILIES, drawn) + 1))
    chosen = [family, *others[: n_families - 1]]
    rest = list(range(1, n_families)) + [int(k) for k in rng.integers(0, n_families, drawn - n_families)]
    part_family = [family] + [chosen[k] for k in rng.permutation(rest)]
    programs = [program] + [
        int(FAMILY_PROGRAMS[f][int(rng.integers(len(FAMILY_PROGRAMS[f])))]) for f in part_family[1:]
    ]
    # more parts than MIDI channels: part k doubles part k mod 15, which shares its channel (:func:`render_clip`)
    part_family += [part_family[k % drawn] for k in range(drawn, n_parts)]
    programs += [programs[k % drawn] for k in range(drawn, n_parts)]
    return part_family, tuple(programs)


def recast_part(
    part_family: list[str], programs: tuple[int, ...], sounding: list[int], rng: np.random.Generator
) -> tuple[list[str], tuple[int, ...], int]:
    """An ensemble with one of its ``sounding`` parts (drawn) on another instrument: a family none of the sounding
    parts plays (any other family when they play them all), a program drawn from it; parts sharing that part's MIDI
    channel (:func:`render_clip`) change with it. Returns the new families and programs and the part recast."""
    q = sounding[int(rng.integers(len(sounding)))]
    playing = {part_family[p] for p in sounding}
    choices = [f for f in FAMILIES if f not in playing] or [f for f in FAMILIES if f != part_family[q]]
    family = choices[int(rng.integers(len(choices)))]
    program = int(FAMILY_PROGRAMS[family][int(rng.integers(len(FAMILY_PROGRAMS[family])))])
    families, recast = list(part_family), list(programs)
    for p in range(len(families)):
        if p % len(CHANNELS) == q % len(CHANNELS):
            families[p], recast[p] = family, program
    return families, tuple(recast), q
