"""Standard MIDI files and the optional fluidsynth renderer of the synthetic corpus (:mod:`mert_fast.synth.corpus`)
and the probe set (:mod:`mert_fast.probe.dataset`).

fluidsynth and a General MIDI soundfont (Debian's ``fluidsynth`` and ``fluid-soundfont-gm``) are optional: when
both are present, ``make_corpus(source="auto")`` and ``make_probe_data(source="auto")`` render through them;
otherwise the numpy synthesizer is used.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

__all__ = [
    "SOUNDFONT_PATHS",
    "find_soundfont",
    "fluidsynth_available",
    "fluidsynth_soundfont",
    "render_midi",
    "write_midi",
]

#: Where Debian/Ubuntu/Fedora/Arch put a General MIDI soundfont (``MERT_FAST_SOUNDFONT`` is tried first).
SOUNDFONT_PATHS = (
    "/usr/share/sounds/sf2/FluidR3_GM.sf2",
    "/usr/share/sounds/sf2/default-GM.sf2",
    "/usr/share/soundfonts/FluidR3_GM.sf2",
    "/usr/share/soundfonts/default.sf2",
    "/usr/share/soundfonts/FluidR3_GM2-2.sf2",
    "/usr/share/sounds/sf2/TimGM6mb.sf2",
)


def find_soundfont() -> Path | None:
    """A General MIDI ``.sf2`` soundfont: ``$MERT_FAST_SOUNDFONT`` if set, else the first of
    :data:`SOUNDFONT_PATHS` that exists; ``None`` when there is none."""
    env = os.environ.get("MERT_FAST_SOUNDFONT")
    for candidate in ([env] if env else []) + list(SOUNDFONT_PATHS):
        if Path(candidate).is_file():
            return Path(candidate)
    return None


def fluidsynth_available() -> bool:
    """Whether ``source="fluidsynth"`` can run: the ``fluidsynth`` program is on ``PATH`` and a soundfont exists."""
    return shutil.which("fluidsynth") is not None and find_soundfont() is not None


def fluidsynth_soundfont(source: str) -> Path | None:
    """The soundfont to render with for a renderer choice (``"auto"``, ``"numpy"`` or ``"fluidsynth"``), or None for
    the numpy synthesizer: ``"auto"`` uses fluidsynth when :func:`fluidsynth_available`.

    Raises:
        ValueError: ``source="fluidsynth"`` without the program or a soundfont (saying what to install).
    """
    if source == "numpy" or (source == "auto" and not fluidsynth_available()):
        return None
    if not fluidsynth_available():
        raise ValueError(
            "source='fluidsynth' needs the fluidsynth program on PATH and a General MIDI soundfont "
            f"(found program: {shutil.which('fluidsynth') is not None}, soundfont: {find_soundfont()}); "
            "install e.g. Debian's fluidsynth and fluid-soundfont-gm, set MERT_FAST_SOUNDFONT, or use source='numpy'"
        )
    return find_soundfont()


def _vlq(value: int) -> bytes:
    """A MIDI variable-length quantity."""
    out = [value & 0x7F]
    value >>= 7
    while value:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    return bytes(reversed(out))


def write_midi(
    path: str | os.PathLike,
    notes: Sequence[tuple[float, float, int, int, int]],
    *,
    tempo: float = 120.0,
    programs: dict[int, int] | None = None,
    volumes: dict[int, int] | None = None,
) -> None:
    """Write a format-0 Standard MIDI File.

    Args:
        path: output ``.mid`` path.
        notes: ``(start_s, duration_s, channel 0-15, key 0-127, velocity 1-127)``; channel 9 is percussion.
        tempo: beats per minute (only sets the tick rate: times are given in seconds).
        programs: General MIDI program (0-127) per channel.
        volumes: channel volume (controller 7, 0-127) per channel.
    """
    division = 480
    ticks_per_s = tempo / 60.0 * division
    timed: list[tuple[int, int, bytes]] = []  # (tick, order: note-offs first, message)
    for channel, program in (programs or {}).items():
        timed.append((0, 0, bytes([0xC0 | channel, program & 0x7F])))
    for channel, volume in (volumes or {}).items():
        timed.append((0, 0, bytes([0xB0 | channel, 7, volume & 0x7F])))
    for start, duration, channel, key, velocity in notes:
        on = max(0, round(start * ticks_per_s))
        off = max(on + 1, round((start + duration) * ticks_per_s))
        timed.append((on, 2, bytes([0x90 | channel, key & 0x7F, max(1, min(127, velocity))])))
        timed.append((off, 1, bytes([0x80 | channel, key & 0x7F, 0])))
    timed.sort(key=lambda e: (e[0], e[1]))
    usec = round(60_000_000 / tempo)
    track = bytearray(b"\x00\xff\x51\x03" + usec.to_bytes(3, "big"))
    tick = 0
    for t, _, message in timed:
        track += _vlq(t - tick) + message
        tick = t
    track += b"\x00\xff\x2f\x00"
    with open(path, "wb") as f:
        f.write(b"MThd" + struct.pack(">IHHH", 6, 0, 1, division))
        f.write(b"MTrk" + struct.pack(">I", len(track)) + bytes(track))


def render_midi(
    notes: Sequence[tuple[float, float, int, int, int]],
    *,
    tempo: float,
    programs: dict[int, int],
    volumes: dict[int, int],
    sample_rate: int,
    soundfont: str | os.PathLike,
) -> np.ndarray:
    """Render ``notes`` (as for :func:`write_midi`) with fluidsynth: mono float64 at ``sample_rate``, channels
    averaged. A failure of fluidsynth is a RuntimeError carrying its message."""
    with tempfile.TemporaryDirectory(prefix="mert_fast_midi_") as tmp:
        mid, wav = Path(tmp) / "clip.mid", Path(tmp) / "clip.wav"
        write_midi(mid, notes, tempo=tempo, programs=programs, volumes=volumes)
        cmd = ["fluidsynth", "-ni", "-q", "-g", "0.6", "-r", str(int(sample_rate)), "-F", str(wav), str(soundfont),
               str(mid)]  # fmt: skip
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise RuntimeError(f"fluidsynth failed: {exc}") from exc
        if done.returncode != 0 or not wav.is_file():
            raise RuntimeError(f"fluidsynth failed (exit {done.returncode}): {done.stderr.strip()[-500:]}")
        data, rate = sf.read(wav, dtype="float64", always_2d=True)
    x = data.mean(axis=1)
    if rate != sample_rate:
        x = soxr.resample(x, rate, sample_rate, quality="HQ")
    return x
