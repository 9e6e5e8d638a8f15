"""The synthetic music corpus: valid files, determinism, musical variety, the timbres and drums, MIDI, the CLI."""

from __future__ import annotations

import csv
import os
import sys
import time

import numpy as np
import pytest
import soundfile as sf

from mert_fast.cli import main
from mert_fast.synth import corpus as synth
from mert_fast.synth import fluidsynth_available, make_corpus, midi, sounds, synth_clip, write_midi

SR = 24000


def _band_energy(x: np.ndarray, sr: float, low: float, high: float) -> float:
    spec = np.abs(np.fft.rfft(x)) ** 2
    f = np.fft.rfftfreq(len(x), 1.0 / sr)
    return float(spec[(f >= low) & (f < high)].sum() / spec.sum())


def _centroid(x: np.ndarray, sr: float) -> float:
    frames = x[: len(x) // 1024 * 1024].reshape(-1, 1024) * np.hanning(1024)
    spec = np.abs(np.fft.rfft(frames, axis=1))
    f = np.fft.rfftfreq(1024, 1.0 / sr)
    return float((spec * f).sum() / spec.sum())


def _onsets(x: np.ndarray, sr: float) -> int:
    """Onsets by half-wave-rectified log-spectral flux, peaks above an adaptive threshold, >= 50 ms apart."""
    hop = 256
    frames = np.lib.stride_tricks.sliding_window_view(x, 1024)[::hop] * np.hanning(1024)
    logspec = np.log1p(100 * np.abs(np.fft.rfft(frames, axis=1)))
    flux = np.maximum(np.diff(logspec, axis=0), 0).sum(axis=1)
    thresh = np.convolve(flux, np.ones(15) / 15, mode="same") + 0.5 * flux.std()
    peaks = [
        i for i in range(1, len(flux) - 1) if flux[i] > thresh[i] and flux[i] >= flux[i - 1] and flux[i] > flux[i + 1]
    ]
    kept: list[int] = []
    for p in peaks:
        if not kept or (p - kept[-1]) * hop / sr >= 0.05:
            kept.append(p)
    return len(kept)


def _chroma_peak(x: np.ndarray, sr: float) -> int:
    """The strongest pitch class (0 = C) of the clip's spectrum between 100 Hz and 2 kHz."""
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x)))) ** 2
    f = np.fft.rfftfreq(len(x), 1.0 / sr)
    keep = (f > 100) & (f < 2000)
    pc = np.round(12 * np.log2(f[keep] / 440.0) + 69).astype(int) % 12
    return int(np.argmax(np.bincount(pc, weights=spec[keep], minlength=12)))


# ------------------------------------------------------------------------------------------------ files


@pytest.mark.parametrize(("fmt", "sample_rate", "seconds"), [("flac", 24000, 3.0), ("wav", 16000, 2.37)])
def test_files_are_valid_audio(tmp_path, fmt, sample_rate, seconds):
    paths = make_corpus(tmp_path, n_clips=3, seconds=seconds, sample_rate=sample_rate, format=fmt, source="numpy")
    assert [p.name for p in paths] == [f"clip_{i:05d}.{fmt}" for i in range(3)]
    with open(tmp_path / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["path"] for r in rows] == [p.name for p in paths]
    for path, row in zip(paths, rows, strict=True):
        info = sf.info(path)
        assert info.format == fmt.upper() and info.subtype == "PCM_16"
        assert info.samplerate == sample_rate and info.channels == 1
        assert info.frames == round(seconds * sample_rate)
        assert float(row["seconds"]) == pytest.approx(info.frames / sample_rate, abs=1e-6)
        x, _ = sf.read(path, dtype="float64")
        assert np.isfinite(x).all()
        assert 0.5 - 1e-3 <= np.abs(x).max() <= 0.9 + 1e-3  # normalised, never clipped
        assert x.std() > 0.02  # not silence


def test_clip_depends_on_seed_and_index_only(tmp_path):
    a = make_corpus(tmp_path / "a", n_clips=2, seconds=3.0, seed=7, source="numpy")
    b = make_corpus(tmp_path / "b", n_clips=3, seconds=3.0, seed=7, source="numpy")
    c = make_corpus(tmp_path / "c", n_clips=2, seconds=3.0, seed=8, source="numpy")
    for pa, pb in zip(a, b[:2], strict=True):
        assert pa.read_bytes() == pb.read_bytes()  # byte-identical files
    # the file holds synth_clip's samples, quantised to 16 bits
    np.testing.assert_allclose(sf.read(a[1])[0], synth_clip(1, 3.0, SR, seed=7), rtol=0, atol=2 / 32768)
    for pa, pc in zip(a, c, strict=True):
        assert not np.allclose(sf.read(pa)[0], sf.read(pc)[0])  # another seed, other music
    assert not np.allclose(sf.read(b[0])[0], sf.read(b[1])[0])


def test_variety_across_clips():
    clips = [synth_clip(i, seconds=6.0, seed=11) for i in range(12)]
    centroids = [_centroid(x, SR) for x in clips]
    onsets = [_onsets(x, SR) for x in clips]
    keys = {_chroma_peak(x, SR) for x in clips}
    assert max(centroids) / min(centroids) > 1.5, centroids  # timbre and instrumentation differ
    assert len(set(onsets)) >= 5 and max(onsets) >= 2 * min(onsets), onsets  # tempo and rhythm differ
    assert min(onsets) >= 3, onsets  # every clip has notes
    assert len(keys) >= 4, keys  # keys differ

    # silence gaps: some clips have one (>= 0.25 s of exact zeros), most do not
    def longest_zero_run(x: np.ndarray) -> int:
        z = np.concatenate([[0], (x == 0).astype(np.int8), [0]])
        edges = np.flatnonzero(np.diff(z))
        return int((edges[1::2] - edges[::2]).max()) if len(edges) else 0

    gaps = [longest_zero_run(x) >= 0.25 * SR for x in clips]
    assert 1 <= sum(gaps) <= 8, gaps


def test_compositions_vary():
    scores = [synth._compose(synth._clip_rng(3, i), 8.0) for i in range(24)]
    tempos = [s.tempo for s in scores]
    assert max(tempos) - min(tempos) > 40
    assert len({s.key for s in scores}) >= 6 and len({s.scale for s in scores}) >= 3
    for part in ("lead", "pad", "bass", "arp", "drums"):
        present = sum(part in s.parts for s in scores)
        assert 0 < present < len(scores), part
    for s in scores:
        assert len(s.parts) >= 2 and {"lead", "pad", "arp"} & set(s.parts)
        assert all(-1.0 < start < 8.0 and gate > 0 for start, gate, *_ in s.events)
        drums = {int(m) for _, _, m, _, p in s.events if p == "drums"}
        assert drums <= {sounds.KICK, sounds.SNARE, sounds.CLOSED_HAT, sounds.OPEN_HAT, sounds.CRASH}


# ------------------------------------------------------------------------------------------------ sounds


@pytest.mark.parametrize("kind", ["saw", "square", "triangle", "organ", "pluck", "reed"])
@pytest.mark.parametrize("midi", [33.0, 79.0])
def test_harmonic_note_matches_direct_sum_of_partials(kind, midi):
    """The float32 Chebyshev recursion equals a float64 sum of sines (band-limited below 0.45 x the rate)."""
    rng = np.random.default_rng(int(midi) * 7 + len(kind))
    tim = sounds.part_timbre(kind, rng, "bass")
    tim.vib_cents = 0.0
    x = sounds.render_note(midi, 0.4, 0.8, tim, SR)
    t = np.arange(len(x)) / SR
    f0 = 440.0 * 2 ** ((midi - 69) / 12)
    ref = np.zeros(len(x))
    for h, a in enumerate(tim.amps, start=1):
        if h * f0 < 0.45 * SR:
            ref += a * np.exp(-t * tim.tilt * (h - 1)) * np.sin(2 * np.pi * h * f0 * t)
    ref *= 0.8 * sounds.envelope(len(x), round(0.4 * SR), SR, tim)
    assert np.abs(x - ref).max() <= 1e-4 * np.abs(ref).max()
    spec = np.abs(np.fft.rfft(x))
    f = np.fft.rfftfreq(len(x), 1 / SR)
    assert spec[f > 0.46 * SR].max() < 1e-3 * spec.max()  # nothing aliased above the partials kept


def test_vibrato_and_bell_pitch():
    rng = np.random.default_rng(5)
    tim = sounds.part_timbre("sine", rng, "lead")
    tim.vib_cents, tim.sustain, tim.amps = 25.0, 1.0, np.array([1.0])
    x = sounds.render_note(69.0, 1.0, 1.0, tim, SR)
    # instantaneous frequency from zero crossings: centred on 440 Hz and swinging by about +-25 cents
    up = np.flatnonzero((x[:-1] < 0) & (x[1:] >= 0))[20:-20]
    up = up + x[up] / (x[up] - x[up + 1])  # sub-sample crossing by linear interpolation
    freq = SR / np.diff(up)
    assert abs(np.median(freq) - 440.0) < 2.0
    assert 1.005 < freq.max() / 440.0 < 1.03 and 0.97 < freq.min() / 440.0 < 0.995
    bell = sounds.part_timbre("bell", rng, "lead")
    y = sounds.render_note(69.0, 0.5, 1.0, bell, SR)
    spec = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    f = np.fft.rfftfreq(len(y), 1 / SR)
    peak = f[np.argmax(spec)]
    ratios = peak / 440.0
    assert np.min(np.abs(sounds.part_timbre("bell", rng, "lead").ratios - ratios)) < 0.01  # an inharmonic partial


def test_drum_kit_spectra():
    kit = sounds.drum_kit(np.random.default_rng(2), SR)
    assert _band_energy(kit[sounds.KICK], SR, 20, 250) > 0.8  # a low, pitched thump
    assert _band_energy(kit[sounds.CLOSED_HAT], SR, 5000, SR / 2) > 0.8  # high-passed noise
    assert _band_energy(kit[sounds.OPEN_HAT], SR, 5000, SR / 2) > 0.8
    snare = kit[sounds.SNARE]
    assert _band_energy(snare, SR, 150, 300) > 0.05 and _band_energy(snare, SR, 700, 10000) > 0.3  # tone + noise
    for key, x in kit.items():
        x = np.abs(x)
        n = max(1, len(x) // 10)
        assert x[-n:].max() < 0.01 * x.max(), key  # decayed to silence: no click where the sample ends
        assert x[:n].max() == x.max(), key  # loudest at the start
    assert len(kit[sounds.CLOSED_HAT]) < len(kit[sounds.OPEN_HAT])


def test_speed():
    start = time.perf_counter()
    for i in range(16):
        synth_clip(i, seconds=8.0)
    elapsed = time.perf_counter() - start
    assert elapsed < 20.0, f"16 clips of 8 s took {elapsed:.1f} s"  # about 1 s on one core


# ------------------------------------------------------------------------------------------------ MIDI


def _parse_smf(data: bytes) -> tuple[tuple[int, int, int], list[tuple[int, bytes]]]:
    """A minimal Standard MIDI File reader: header fields and (absolute tick, event bytes) of one track."""
    assert data[:4] == b"MThd" and int.from_bytes(data[4:8], "big") == 6
    fmt, ntrks, division = (int.from_bytes(data[8 + 2 * k : 10 + 2 * k], "big") for k in range(3))
    assert data[14:18] == b"MTrk"
    length = int.from_bytes(data[18:22], "big")
    assert len(data) == 22 + length
    track, pos, tick, events = data[22:], 0, 0, []
    while pos < len(track):
        delta = 0
        while True:
            byte = track[pos]
            pos += 1
            delta = (delta << 7) | (byte & 0x7F)
            if not byte & 0x80:
                break
        tick += delta
        status = track[pos]
        if status == 0xFF:
            n = track[pos + 2]
            events.append((tick, track[pos : pos + 3 + n]))
            pos += 3 + n
        else:
            n = 2 if status & 0xF0 in (0xC0, 0xD0) else 3
            events.append((tick, track[pos : pos + n]))
            pos += n
    return (fmt, ntrks, division), events


def test_write_midi(tmp_path):
    notes = [(0.0, 0.5, 0, 60, 100), (0.25, 1.0, 9, 36, 127), (3.0, 0.1, 2, 40, 300), (100.0, 2.0, 1, 72, 1)]
    path = tmp_path / "x.mid"
    write_midi(path, notes, tempo=90.0, programs={0: 81, 2: 33}, volumes={9: 100})
    (fmt, ntrks, division), events = _parse_smf(path.read_bytes())
    assert (fmt, ntrks, division) == (0, 1, 480)
    ticks_per_s = 90.0 / 60 * 480
    assert events[0] == (0, b"\xff\x51\x03" + round(60e6 / 90).to_bytes(3, "big"))
    assert events[-1][1] == b"\xff\x2f\x00"
    assert (
        (0, bytes([0xC0, 81])) in events and (0, bytes([0xC2, 33])) in events and (0, bytes([0xB9, 7, 100])) in events
    )
    ons = [(t, e) for t, e in events if e[0] & 0xF0 == 0x90]
    offs = [(t, e) for t, e in events if e[0] & 0xF0 == 0x80]
    assert len(ons) == len(offs) == len(notes)
    for start, dur, ch, key, vel in notes:
        assert (round(start * ticks_per_s), bytes([0x90 | ch, key, min(vel, 127)])) in ons
        assert (round((start + dur) * ticks_per_s), bytes([0x80 | ch, key, 0])) in offs
    assert [t for t, _ in events] == sorted(t for t, _ in events)


def test_fluidsynth_missing_is_a_clear_error_and_auto_falls_back(tmp_path, monkeypatch):
    monkeypatch.setenv("MERT_FAST_SOUNDFONT", str(tmp_path / "none.sf2"))
    monkeypatch.setattr(midi, "SOUNDFONT_PATHS", ())
    assert not fluidsynth_available()
    with pytest.raises(ValueError, match="fluidsynth"):
        make_corpus(tmp_path / "f", n_clips=1, seconds=1.0, source="fluidsynth")
    auto = make_corpus(tmp_path / "a", n_clips=1, seconds=2.0, source="auto")
    plain = make_corpus(tmp_path / "n", n_clips=1, seconds=2.0, source="numpy")
    assert auto[0].read_bytes() == plain[0].read_bytes()


_FAKE_FLUIDSYNTH = """#!{python}
import sys
import numpy as np
import soundfile as sf
args = sys.argv[1:]
assert args[:2] == ["-ni", "-q"], args
out, rate = args[args.index("-F") + 1], int(args[args.index("-r") + 1])
soundfont, midi = args[-2:]
assert open(soundfont, "rb").read() == b"fake soundfont"
data = open(midi, "rb").read()
assert data[:4] == b"MThd" and b"MTrk" in data
# a stereo render that runs on past the clip (notes ring out): 440 Hz left, silence right, 1.5 s extra
n = int(round(float({seconds}) * rate)) + int(1.5 * rate)
left = 0.3 * np.sin(2 * np.pi * 440 * np.arange(n) / rate)
sf.write(out, np.stack([left, np.zeros(n)], axis=1), rate)
"""


def test_fluidsynth_plumbing_with_a_stand_in_program(tmp_path, monkeypatch):
    """The fluidsynth renderer's command line, MIDI hand-over, downmix, trim and normalisation, against a stand-in
    ``fluidsynth`` that checks its arguments and writes a known stereo render."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "fluidsynth"
    fake.write_text(_FAKE_FLUIDSYNTH.format(python=sys.executable, seconds=2.5))
    fake.chmod(0o755)
    soundfont = tmp_path / "gm.sf2"
    soundfont.write_bytes(b"fake soundfont")
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("MERT_FAST_SOUNDFONT", str(soundfont))
    assert fluidsynth_available() and midi.find_soundfont() == soundfont
    paths = make_corpus(tmp_path / "out", n_clips=2, seconds=2.5, sample_rate=16000, source="auto")
    for path in paths:
        x, sr = sf.read(path)
        assert sr == 16000 and x.shape == (40000,)
        assert 0.5 - 1e-3 <= np.abs(x).max() <= 0.9 + 1e-3
        nonzero = x[x != 0]  # the left channel's sine at half amplitude, rescaled (gaps aside)
        assert _band_energy(nonzero, sr, 430, 450) > 0.95


@pytest.mark.skipif(not fluidsynth_available(), reason="needs the fluidsynth program and a General MIDI soundfont")
def test_fluidsynth_corpus(tmp_path):
    paths = make_corpus(tmp_path, n_clips=2, seconds=3.0, sample_rate=SR, source="fluidsynth")
    for path in paths:
        x, sr = sf.read(path)
        assert sr == SR and x.ndim == 1 and len(x) == 3 * SR
        assert 0.5 - 1e-3 <= np.abs(x).max() <= 0.9 + 1e-3


def test_bad_arguments(tmp_path):
    for kwargs, name in (
        ({"n_clips": 0}, "n_clips"),
        ({"seconds": -1.0}, "seconds"),
        ({"seconds": float("nan")}, "seconds"),
        ({"sample_rate": 100}, "sample_rate"),
        ({"format": "mp3"}, "format"),
        ({"source": "guitar"}, "source"),
    ):
        with pytest.raises(ValueError, match=name):
            make_corpus(tmp_path, **kwargs)


# ------------------------------------------------------------------------------------------------ CLI


def test_cli_make_corpus(tmp_path, capsys):
    out = tmp_path / "corpus"
    argv = ["make-corpus", str(out), "--clips", "3", "--seconds", "2.5", "--sample-rate", "16000", "--seed", "4"]
    assert main([*argv, "--source", "numpy", "--format", "wav"]) == 0
    assert "3 clips" in capsys.readouterr().out
    files = sorted(p.name for p in out.iterdir())
    assert files == ["clip_00000.wav", "clip_00001.wav", "clip_00002.wav", "manifest.csv"]
    expected = make_corpus(
        tmp_path / "api", n_clips=3, seconds=2.5, sample_rate=16000, seed=4, format="wav", source="numpy"
    )
    for p in expected:
        assert (out / p.name).read_bytes() == p.read_bytes()
    with pytest.raises(SystemExit) as exc:
        main(["make-corpus", str(out), "--clips", "0"])
    assert exc.value.code == 2


def test_cli_help_lists_make_corpus(capsys):
    with pytest.raises(SystemExit):
        main(["make-corpus", "--help"])
    text = capsys.readouterr().out
    for flag in ("--clips", "--seconds", "--sample-rate", "--seed", "--format", "--source"):
        assert flag in text
