"""The demo clip: a short, deterministic piece of music synthesized on the spot, so that examples and tests need
no downloads (re-exported as :func:`mert_fast.audio.synth_demo`)."""

from __future__ import annotations

import math

import numpy as np
import torch

from mert_fast._checks import check_float

__all__ = ["synth_demo"]

_RATE = "a positive number of samples per second"

# The demo piece: I-vi-IV-V in C major (C, Am, F, G), one chord per 1.5 s, a bass note on each root and a melody
# of eighth notes over it (MIDI note numbers; A4 = 69 = 440 Hz).
_CHORD_SECONDS = 1.5
_PROGRESSION = (
    (36, (60, 64, 67), (76, 79, 84, 79)),  # C major: C2 | C4 E4 G4 | E5 G5 C6 G5
    (33, (57, 60, 64), (81, 76, 72, 76)),  # A minor: A1 | A3 C4 E4 | A5 E5 C5 E5
    (29, (53, 57, 60), (77, 81, 84, 81)),  # F major: F1 | F3 A3 C4 | F5 A5 C6 A5
    (31, (55, 59, 62), (79, 74, 71, 74)),  # G major: G1 | G3 B3 D4 | G5 D5 B4 D5
)
# Per voice: gain, relative amplitude of each harmonic, decay time (s) of the fundamental, release (s).
# The gains keep the sum of every partial's peak below 1 (0.27 + 0.33 + 0.28), so no sample can clip.
_BASS = (0.12, (1.0, 0.5, 1 / 3, 0.25, 0.2), 1.2, 0.08)
_PAD = (0.05, (1.0, 0.6, 0.36, 0.216, 0.1296), 1.6, 0.08)
_LEAD = (0.15, (1.0, 0.5, 0.25, 0.125), 0.5, 0.04)
_ATTACK = 0.012


def _note(midi: int, n_samples: int, slot: int, sample_rate: float, voice: tuple) -> np.ndarray:
    """One note of ``slot`` samples (only the first ``n_samples`` rendered): decaying harmonics, soft edges."""
    gain, harmonics, decay, release = voice
    t = np.arange(n_samples) / sample_rate
    freq = 440.0 * 2.0 ** ((midi - 69) / 12)
    tone = np.zeros(n_samples)
    for h, amp in enumerate(harmonics, start=1):
        if h * freq >= 0.45 * sample_rate:
            break
        # higher harmonics die away sooner, as on a plucked or struck string
        tone += amp * np.exp(-t * math.sqrt(h) / decay) * np.sin(2 * math.pi * h * freq * t)
    # raised-cosine attack and release, so notes start and stop without clicks
    n_attack = max(1, round(_ATTACK * sample_rate))
    n_release = max(1, round(release * sample_rate))
    env = np.ones(n_samples)
    ramp = 0.5 - 0.5 * np.cos(np.pi * np.arange(n_attack) / n_attack)
    env[: min(n_attack, n_samples)] = ramp[:n_samples]
    start = slot - n_release
    fall = 0.5 + 0.5 * np.cos(np.pi * np.arange(n_release) / n_release)
    if start < n_samples:
        env[max(start, 0) :] *= fall[max(0, -start) : n_samples - start]
    return gain * tone * env


def synth_demo(sample_rate: float = 24000, seconds: float = 6.0) -> torch.Tensor:
    """A short piece of music synthesized on the spot: a I-vi-IV-V chord progression in C major with a bass line
    and a melody, built from notes with decaying harmonics and soft attacks and releases.

    Deterministic (no randomness), and a shorter clip is a prefix of a longer one; the progression repeats every
    6 s. Samples stay strictly inside [-1, 1] (the peak is about 0.5).

    Args:
        sample_rate: samples per second (> 0).
        seconds: length (> 0).

    Returns:
        float32 ``(round(seconds * sample_rate),)``.
    """
    check_float("sample_rate", sample_rate, min=0, exclusive_min=True, finite=True, expected=_RATE)
    check_float("seconds", seconds, min=0, exclusive_min=True, finite=True, expected="a positive duration")
    total = round(seconds * sample_rate)
    if total == 0:
        raise ValueError(f"seconds={seconds} at sample_rate={sample_rate} gives no samples")
    out = np.zeros(total)

    def add(start_s: float, length_s: float, midi: int, voice: tuple) -> None:
        n0, n1 = round(start_s * sample_rate), round((start_s + length_s) * sample_rate)
        if n0 < total:
            out[n0 : min(n1, total)] += _note(midi, min(n1, total) - n0, n1 - n0, sample_rate, voice)

    eighth = _CHORD_SECONDS / 4
    for i in range(math.ceil(total / (_CHORD_SECONDS * sample_rate))):
        bass, chord, melody = _PROGRESSION[i % len(_PROGRESSION)]
        t0 = i * _CHORD_SECONDS
        add(t0, _CHORD_SECONDS, bass, _BASS)
        for midi in chord:
            add(t0, _CHORD_SECONDS, midi, _PAD)
        for j, midi in enumerate(melody):
            add(t0 + j * eighth, eighth, midi, _LEAD)
    return torch.from_numpy(out.astype(np.float32))
