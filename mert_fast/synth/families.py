"""Timbre models of nine instrument families (NSynth's names: bass, brass, flute, guitar, keyboard, mallet, organ,
reed, string) for the numpy synthesizer: every call draws a new instrument instance from the family's ranges of
partials, envelope and vibrato. The probe set (:mod:`mert_fast.probe.dataset`) plays its notes and chords with them.
"""

from __future__ import annotations

import numpy as np

from mert_fast.synth.sounds import Timbre

__all__ = ["FAMILY_TIMBRES"]

_H = np.arange(1, 17, dtype=np.float64)


def _harmonic(
    amps: np.ndarray,
    rng: np.random.Generator,
    attack: tuple,
    decay: tuple,
    sustain: tuple,
    release: tuple,
    vib_cents: tuple = (0.0, 0.0),
    vib_rate: tuple = (4.5, 6.5),
    tilt: tuple = (0.0, 0.0),
) -> Timbre:
    """A harmonic timbre with envelope and vibrato parameters drawn uniformly from the given ``(low, high)``."""
    amps = np.asarray(amps, dtype=np.float64)
    amps = amps / np.abs(amps).sum() * 1.5  # the level convention of part_timbre
    draw = [float(rng.uniform(*r)) for r in (tilt, attack, decay, sustain, release, vib_cents, vib_rate)]
    return Timbre(np.arange(1.0, len(amps) + 1), amps, True, *draw)


def _keyboard(rng: np.random.Generator) -> Timbre:
    amps = _H ** -rng.uniform(1.0, 1.5) * rng.uniform(0.6, 1.0, len(_H))  # hammered: bright, uneven partials
    return _harmonic(amps, rng, (0.002, 0.008), (0.5, 1.5), (0.0, 0.0), (0.1, 0.3), tilt=(1.0, 4.0))


def _organ(rng: np.random.Generator) -> Timbre:
    amps = np.zeros(8)
    for k in (0, 1, 2, 3, 5, 7):  # drawbars 8', 4', 2 2/3', 2', 1 1/3', 1' (harmonics 1, 2, 3, 4, 6, 8)
        amps[k] = rng.uniform(0.0, 0.8) if k else 1.0
    leslie = (4.0, 12.0) if rng.random() < 0.4 else (0.0, 0.0)
    return _harmonic(amps, rng, (0.004, 0.015), (1.0, 1.0), (1.0, 1.0), (0.03, 0.1), leslie, (5.5, 7.0))


def _guitar(rng: np.random.Generator) -> Timbre:
    where = rng.uniform(0.08, 0.3)  # plucking point: a comb over the partials
    amps = _H ** -rng.uniform(0.8, 1.2) * (np.abs(np.sin(np.pi * _H * where)) + 0.05)
    return _harmonic(amps, rng, (0.002, 0.005), (0.6, 1.5), (0.0, 0.0), (0.05, 0.15), tilt=(3.0, 8.0))


def _bass(rng: np.random.Generator) -> Timbre:
    if rng.random() < 0.5:  # plucked electric / upright
        amps = _H[:10] ** -rng.uniform(1.0, 1.5)
        return _harmonic(amps, rng, (0.003, 0.01), (0.8, 2.0), (0.0, 0.0), (0.05, 0.15), tilt=(2.0, 6.0))
    amps = np.array([1.0, rng.uniform(0.1, 0.4), rng.uniform(0.0, 0.15), rng.uniform(0.0, 0.05)])  # sine-ish synth
    return _harmonic(amps, rng, (0.005, 0.02), (0.2, 0.6), (0.6, 0.9), (0.05, 0.15))


def _string(rng: np.random.Generator) -> Timbre:
    amps = _H ** -rng.uniform(0.9, 1.3)  # bowed: saw-like
    return _harmonic(amps, rng, (0.08, 0.25), (0.3, 0.8), (0.75, 0.95), (0.15, 0.4), (10.0, 25.0), (5.0, 6.5))


def _brass(rng: np.random.Generator) -> Timbre:
    amps = _H[:12] ** -rng.uniform(0.5, 0.9)  # saw-like and bright
    return _harmonic(amps, rng, (0.03, 0.08), (0.1, 0.3), (0.7, 0.9), (0.05, 0.15), (0.0, 10.0))


def _reed(rng: np.random.Generator) -> Timbre:
    if rng.random() < 0.5:  # clarinet: odd harmonics dominate
        amps = np.where(_H % 2 == 1, 1.0, rng.uniform(0.02, 0.1)) / _H
    else:  # saxophone: a full spectrum
        amps = _H[:14] ** -rng.uniform(0.7, 1.0)
    return _harmonic(amps, rng, (0.02, 0.06), (0.2, 0.5), (0.75, 0.95), (0.05, 0.15), (0.0, 15.0))


def _flute(rng: np.random.Generator) -> Timbre:
    amps = np.array([1.0, rng.uniform(0.05, 0.3), rng.uniform(0.02, 0.12), rng.uniform(0.0, 0.05)])
    return _harmonic(amps, rng, (0.05, 0.12), (0.3, 0.3), (0.8, 0.95), (0.08, 0.2), (10.0, 25.0), (4.5, 5.5))


def _mallet(rng: np.random.Generator) -> Timbre:
    """A struck bar: marimba (partials 1, 3.93, 9.54) or vibraphone-like (1, 2.76, 5.4), upper partials dying first."""
    if rng.random() < 0.5:
        ratios, decay, partial_decay, release = np.array([1.0, 3.93, 9.54]), rng.uniform(0.15, 0.5), 1.0, 0.05
    else:
        ratios, decay, partial_decay, release = np.array([1.0, 2.76, 5.4]), rng.uniform(0.6, 1.5), 0.8, 0.3
    amps = np.array([1.0, rng.uniform(0.1, 0.5), rng.uniform(0.05, 0.15)])
    amps = amps / amps.sum() * 1.5
    return Timbre(ratios, amps, False, 0.0, 0.002, float(decay), 0.0, release, 0.0, 0.0, partial_decay)


#: A random instrument instance of each family: ``FAMILY_TIMBRES[family](rng)``.
FAMILY_TIMBRES = {
    "bass": _bass,
    "brass": _brass,
    "flute": _flute,
    "guitar": _guitar,
    "keyboard": _keyboard,
    "mallet": _mallet,
    "organ": _organ,
    "reed": _reed,
    "string": _string,
}
