"""Instrument sounds of the numpy synthesizer: harmonic and inharmonic timbres with ADSR envelopes and vibrato,
a drum kit made from sweeps and filtered noise, a synthetic room, and the final level. Shared by the synthetic
pre-training corpus (:mod:`mert_fast.synth.corpus`), the instrument families (:mod:`mert_fast.synth.families`)
and the probe set (:mod:`mert_fast.probe.dataset`)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

__all__ = [
    "CLOSED_HAT",
    "CRASH",
    "KICK",
    "OPEN_HAT",
    "PART_TIMBRES",
    "SNARE",
    "Timbre",
    "drum_kit",
    "envelope",
    "finish",
    "fit_length",
    "mix_in",
    "noise_band",
    "part_timbre",
    "render_note",
    "reverb",
]

#: General MIDI percussion keys of the drum kit.
KICK, SNARE, CLOSED_HAT, OPEN_HAT, CRASH = 36, 38, 42, 46, 49


@dataclasses.dataclass
class Timbre:
    """What :func:`render_note` plays: the partials, their decay, the ADSR envelope and the vibrato."""

    ratios: np.ndarray  # partial frequencies / fundamental
    amps: np.ndarray  # partial amplitudes
    harmonic: bool  # ratios are 1, 2, ..., K: rendered by the Chebyshev recursion
    tilt: float  # extra decay rate (1/s) per partial step: upper partials fade first, as on struck strings
    attack: float  # s
    decay: float  # time constant (s) from full level toward the sustain level
    sustain: float  # level in [0, 1]
    release: float  # s
    vib_cents: float  # vibrato depth
    vib_rate: float  # Hz
    partial_decay: float = 0.0  # inharmonic partial k decays with time constant decay / ratio_k**partial_decay


def part_timbre(kind: str, rng: np.random.Generator, part: str) -> Timbre:
    """A random instance of timbre ``kind`` (a name of :data:`PART_TIMBRES`) for a part of the corpus
    (``"lead"``, ``"pad"``, ``"bass"`` or ``"arp"``: the part sets the envelope's character)."""
    h = np.arange(1, 17, dtype=np.float64)
    tilt = 0.0
    if kind == "sine":
        amps = np.array([1.0, rng.uniform(0.0, 0.2), rng.uniform(0.0, 0.08)])
    elif kind == "saw":
        amps = h ** -rng.uniform(0.9, 1.4)
    elif kind == "square":
        amps = np.where(h % 2 == 1, h ** -rng.uniform(0.9, 1.2), 0.0)[:15]
    elif kind == "triangle":
        amps = np.where(h % 2 == 1, (-1.0) ** ((h - 1) // 2) * h**-2.0, 0.0)[:11]
    elif kind == "organ":
        amps = np.zeros(8)
        for k in (0, 1, 2, 3, 5, 7):  # 8', 4', 2 2/3', 2', 1 1/3', 1' drawbars (harmonics 1, 2, 3, 4, 6, 8)
            amps[k] = rng.uniform(0.0, 1.0) if k else 1.0
    elif kind == "pluck":
        amps = h[:16] ** -rng.uniform(0.8, 1.2)
        tilt = float(rng.uniform(2.0, 8.0))
    elif kind == "reed":
        amps = np.where(h % 2 == 1, h**-1.0, 0.2 * h**-1.5)[:12]
    elif kind == "bell":  # Risset's bell partials, each with its own decay
        ratios = np.array([0.56, 0.92, 1.19, 1.71, 2.0, 2.74, 3.0, 3.76, 4.07])
        amps = np.array([1.0, 0.67, 1.0, 1.8, 2.67, 1.67, 1.46, 1.33, 1.33])
        amps = amps / amps.sum() * 1.5
        return Timbre(ratios, amps, False, 0.0, 0.002, rng.uniform(0.6, 1.6), 0.0, 0.3, 0.0, 0.0, 0.8)
    elif kind == "bar":  # marimba-like: a struck bar's partials
        ratios = np.array([1.0, 3.93, 9.54])
        amps = np.array([1.0, rng.uniform(0.2, 0.5), rng.uniform(0.05, 0.15)])
        amps = amps / amps.sum() * 1.5
        return Timbre(ratios, amps, False, 0.0, 0.002, rng.uniform(0.15, 0.5), 0.0, 0.05, 0.0, 0.0, 1.0)
    else:
        raise ValueError(f"unknown timbre {kind!r}")
    amps = amps / np.abs(amps).sum() * 1.5  # the same peak level for every timbre
    percussive = kind == "pluck" or (part in ("arp", "bass") and rng.random() < 0.4)
    attack = float(rng.uniform(0.003, 0.015) if percussive or part != "pad" else rng.uniform(0.03, 0.4))
    decay = float(rng.uniform(0.2, 0.9) if percussive else rng.uniform(0.1, 0.6))
    sustain = 0.0 if percussive else float(rng.uniform(0.5, 0.9))
    release = float(rng.uniform(0.02, 0.1) if part != "pad" else rng.uniform(0.1, 0.5))
    vibrato = part == "lead" and not percussive and rng.random() < 0.6
    vib_cents = float(rng.uniform(8.0, 30.0)) if vibrato else 0.0
    ratios = np.arange(1, len(amps) + 1, dtype=np.float64)
    return Timbre(ratios, amps, True, tilt, attack, decay, sustain, release, vib_cents, float(rng.uniform(4.5, 6.5)))


#: The timbre kinds each part of a corpus clip may be played with.
PART_TIMBRES = {
    "lead": ("sine", "saw", "square", "triangle", "pluck", "reed", "organ", "bell", "bar"),
    "pad": ("saw", "square", "organ", "triangle", "sine", "reed"),
    "bass": ("sine", "saw", "square", "pluck", "triangle"),
    "arp": ("pluck", "bell", "bar", "square", "sine", "triangle"),
}


def envelope(n: int, gate: int, sr: float, tim: Timbre) -> np.ndarray:
    """ADSR: raised-cosine attack, exponential decay to the sustain level, raised-cosine release after the gate."""
    t = np.arange(n, dtype=np.float32) / np.float32(sr)
    env = np.exp(-np.maximum(t - np.float32(tim.attack), 0.0) / np.float32(tim.decay))
    env = np.float32(tim.sustain) + np.float32(1.0 - tim.sustain) * env
    n_attack = min(max(1, round(tim.attack * sr)), n)
    env[:n_attack] *= 0.5 - 0.5 * np.cos(np.pi * np.arange(n_attack) / n_attack)
    if gate < n:
        fall = 0.5 + 0.5 * np.cos(np.pi * np.arange(n - gate) / (n - gate))
        env[gate:] = env[gate - 1 if gate else 0] * fall
    return env


def render_note(midi: float, gate_s: float, vel: float, tim: Timbre, sr: float) -> np.ndarray:
    """One note of MIDI pitch ``midi`` (fractional allowed) held ``gate_s`` seconds at velocity ``vel`` (0-1),
    then released: float ``(gate + release samples,)``."""
    gate = max(1, round(gate_s * sr))
    n = gate + max(1, round(tim.release * sr))
    f0 = 440.0 * 2.0 ** ((midi - 69.0) / 12.0)
    t = np.arange(n) / sr
    if tim.vib_cents > 0:
        depth = (2.0 ** (tim.vib_cents / 1200.0) - 1.0) * np.minimum(t / 0.3, 1.0)  # vibrato fades in
        freq = f0 * (1.0 + depth * np.sin(2 * np.pi * tim.vib_rate * t))
        phase = 2 * np.pi / sr * np.cumsum(freq)
    else:
        phase = 2 * np.pi * f0 * t
    nyquist = 0.45 * sr / (f0 * (1.0 + tim.vib_cents / 1000.0))
    out = np.zeros(n)
    if tim.harmonic:
        # the partials below Nyquist from the Chebyshev recursion sin((h+1)x) = 2 cos(x) sin(hx) - sin((h-1)x):
        # one multiply-add per partial instead of a sine (faster here than a wavetable: numpy gathers are slow).
        # float32 is plenty for audio and twice as fast (the phase stays float64); in place, no temporaries
        k = min(len(tim.amps), max(1, int(nyquist)))
        wrapped = np.mod(phase, 2 * np.pi).astype(np.float32)
        c2 = np.cos(wrapped)
        c2 *= 2.0
        prev, cur, nxt = np.zeros(n, np.float32), np.sin(wrapped), np.empty(n, np.float32)
        scratch, acc = np.empty(n, np.float32), np.zeros(n, np.float32)
        # upper partials fading first (plucked strings): partial h is weighted by exp(-tilt * t) ** (h - 1)
        tilt = np.exp(-t * tim.tilt).astype(np.float32) if tim.tilt else None
        weight = np.ones(n, np.float32) if tilt is not None else None
        for i in range(k):
            if i:
                np.multiply(c2, cur, out=nxt)
                nxt -= prev
                prev, cur, nxt = cur, nxt, prev
                if weight is not None:
                    weight *= tilt
            a = np.float32(tim.amps[i])
            if a:
                np.multiply(cur if weight is None else weight, a, out=scratch)
                if weight is not None:
                    scratch *= cur
                acc += scratch
        out = acc
    else:
        for ratio, a in zip(tim.ratios, tim.amps, strict=True):
            if ratio < nyquist:
                decay = np.exp(-t * ratio**tim.partial_decay / tim.decay)
                out += a * decay * np.sin(ratio * phase)
    return vel * out * envelope(n, gate, sr, tim)


def noise_band(rng: np.random.Generator, n: int, sr: float, low: float, high: float) -> np.ndarray:
    """White noise band-limited to [low, high] Hz with soft (Gaussian in log-frequency) edges, unit RMS."""
    m = 1 << max(n - 1, 1).bit_length()  # a power of two: pocketfft is slow on sizes with large prime factors
    spec = np.fft.rfft(rng.standard_normal(m))
    f = np.fft.rfftfreq(m, 1.0 / sr)
    logf = np.log2(np.maximum(f, 1.0))
    gain = np.ones_like(f)
    gain *= np.where(logf < math.log2(low), np.exp(-0.5 * ((logf - math.log2(low)) / 0.5) ** 2), 1.0)
    gain *= np.where(logf > math.log2(high), np.exp(-0.5 * ((logf - math.log2(high)) / 0.5) ** 2), 1.0)
    x = np.fft.irfft(spec * gain, m)[:n]
    return x / (np.sqrt(np.mean(x**2)) + 1e-12)


def _decaying(tau: float, sr: float) -> tuple[np.ndarray, np.ndarray]:
    """Time axis and exponential envelope of a sound lasting 7 time constants (to -60 dB), with a 5 ms fade out."""
    n = max(round(7 * tau * sr), 8)
    t = np.arange(n) / sr
    env = np.exp(-t / tau)
    m = min(n // 2, round(0.005 * sr))
    env[n - m :] *= np.linspace(1.0, 0.0, m)
    return t, env


def drum_kit(rng: np.random.Generator, sr: float) -> dict[int, np.ndarray]:
    """One sample per drum for this clip's kit: kick, snare, closed and open hi-hat, crash."""
    kit = {}
    t, env = _decaying(rng.uniform(0.08, 0.25), sr)
    f_hi, f_lo = rng.uniform(110.0, 180.0), rng.uniform(40.0, 60.0)
    freq = f_lo + (f_hi - f_lo) * np.exp(-t / rng.uniform(0.02, 0.06))  # the pitch drops as the skin relaxes
    body = np.sin(2 * np.pi / sr * np.cumsum(freq)) * env
    m = round(0.003 * sr)
    body[:m] += rng.standard_normal(m) * 0.3 * np.linspace(1.0, 0.0, m)  # the beater's click
    drive = rng.uniform(1.0, 3.0)
    kit[KICK] = np.tanh(drive * body) / math.tanh(drive)

    t, env = _decaying(rng.uniform(0.05, 0.15), sr)
    centre = rng.uniform(1500.0, min(5000.0, 0.2 * sr))
    noise = noise_band(rng, len(t), sr, centre / 2, centre * 2) * env
    tone = np.sin(2 * np.pi * rng.uniform(170.0, 250.0) * t) * np.exp(-t / 0.05) * env / env.max()
    mix = rng.uniform(0.2, 0.6)
    kit[SNARE] = 0.3 * ((1 - mix) * noise + mix * 3.0 * tone)

    cutoff = rng.uniform(0.6, 1.0) * min(10000.0, 0.4 * sr)
    for key, tau in ((CLOSED_HAT, rng.uniform(0.01, 0.03)), (OPEN_HAT, rng.uniform(0.1, 0.25))):
        t, env = _decaying(tau, sr)
        kit[key] = 0.12 * noise_band(rng, len(t), sr, cutoff, 0.49 * sr) * env
    t, env = _decaying(rng.uniform(0.3, 0.6), sr)
    kit[CRASH] = 0.1 * noise_band(rng, len(t), sr, 0.5 * cutoff, 0.49 * sr) * env
    return kit


def mix_in(out: np.ndarray, start: int, x: np.ndarray) -> None:
    """Add ``x`` into ``out`` from sample ``start`` on (negative allowed), cut to ``out``'s bounds."""
    lo, hi = max(start, 0), min(start + len(x), len(out))
    if lo < hi:
        out[lo:hi] += x[lo - start : hi - start]


def reverb(rng: np.random.Generator, x: np.ndarray, sr: float) -> np.ndarray:
    """A synthetic room: exponentially decaying noise as impulse response, mixed in at a random level."""
    rt60 = rng.uniform(0.2, 1.5)
    n_ir = round(min(rt60, 1.0) * sr)
    t = np.arange(n_ir) / sr
    ir = rng.standard_normal(n_ir) * np.exp(-6.9 * t / rt60)
    ir /= np.sqrt(np.sum(ir**2))
    n_fft = 1 << (len(x) + n_ir - 1).bit_length()
    x32, ir32 = x.astype(np.float32), ir.astype(np.float32)  # single-precision FFTs: half the time, inaudible
    wet = np.fft.irfft(np.fft.rfft(x32, n_fft) * np.fft.rfft(ir32, n_fft), n_fft)[: len(x)]
    return x + rng.uniform(0.05, 0.35) * wet


def finish(rng: np.random.Generator, x: np.ndarray, sr: float, gaps: Sequence[tuple[float, float]]) -> np.ndarray:
    """Silence the gaps (10 ms fades) and scale the peak to a random level in [0.5, 0.9]."""
    for start_s, length_s in gaps:
        gain = np.ones(len(x))
        a, b = round(start_s * sr), round((start_s + length_s) * sr)
        fade = max(1, round(0.01 * sr))
        gain[a:b] = 0.0
        gain[max(a - fade, 0) : a] = np.linspace(1.0, 0.0, fade)[fade - (a - max(a - fade, 0)) :]
        gain[b : b + fade] = np.linspace(0.0, 1.0, fade)[: len(gain[b : b + fade])]
        x = x * gain
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    target = rng.uniform(0.5, 0.9)
    return (x * (target / peak) if peak > 0 else x).astype(np.float32)


def fit_length(x: np.ndarray, n: int) -> np.ndarray:
    """``x`` cut or zero-padded to ``n`` samples."""
    return np.concatenate([x[:n], np.zeros(max(0, n - len(x)))])
