"""The probe data set: manifests, files, stratified splits, labels against the audio (pitch, chord notes, timbre),
determinism, argument checks and the fluidsynth path (with a stand-in renderer).

The set is built with the numpy synthesizer and, where the machine has fluidsynth and a General MIDI soundfont,
with fluidsynth too: every test of the audio holds for each renderer present, or names the one it checks."""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from mert_fast.probe import dataset as data
from mert_fast.probe import make_probe_data
from mert_fast.probe.dataset import CHORD_FAMILIES, CHORD_INTERVALS, FAMILIES, FAMILY_RANGES, PITCH_CLASSES, QUALITIES
from mert_fast.synth import midi

SR, SECONDS, PER_CELL = 16000, 1.0, 3
TASKS = {"pitch_class": "notes", "instrument": "notes", "pitch": "notes", "chord_quality": "chords",
         "chord_notes": "chords"}  # fmt: skip
HARMONIC = ("bass", "brass", "flute", "guitar", "keyboard", "organ", "reed", "string")


RENDERERS = [
    "numpy",
    pytest.param("fluidsynth", marks=pytest.mark.skipif(not midi.fluidsynth_available(), reason="no fluidsynth")),
]
_BUILT: dict[str, tuple[Path, dict, dict]] = {}


def _build(tmp_path_factory, source: str) -> tuple[Path, dict, dict]:
    if source not in _BUILT:
        out = tmp_path_factory.mktemp(f"probe_{source}")
        manifests = make_probe_data(
            out, seed=0, sample_rate=SR, seconds=SECONDS, notes_per_cell=PER_CELL, chords_per_cell=PER_CELL,
            source=source,
        )  # fmt: skip
        _BUILT[source] = out, manifests, json.loads((out / "probe_data.json").read_text())
    return _BUILT[source]


@pytest.fixture(scope="module", params=RENDERERS)
def probe(request, tmp_path_factory):
    """(out, manifests, meta) of the set rendered by each renderer present; ``meta["source"]`` names it."""
    return _build(tmp_path_factory, request.param)


@pytest.fixture(scope="module")
def numpy_probe(tmp_path_factory):
    """The set rendered by the numpy synthesizer, for the tests that check that renderer's own properties."""
    return _build(tmp_path_factory, "numpy")


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ["path", "label", "split"]
        return list(reader)


def _midi_hz(midi: float) -> float:
    return 440.0 * 2.0 ** ((midi - 69.0) / 12.0)


def _spectrum(x: np.ndarray, sr: int, n: int = 1 << 16) -> tuple[np.ndarray, np.ndarray]:
    return np.fft.rfftfreq(n, 1.0 / sr), np.abs(np.fft.rfft(x * np.hanning(len(x)), n))


def _f0(x: np.ndarray, sr: int, fmin: float = 30.0) -> float:
    """Harmonic product spectrum (3 harmonics) for the candidate, the spectral peak near it (parabolic
    interpolation), then down an octave while a strong peak sits there (the fundamental)."""
    f, spec = _spectrum(x, sr)
    logspec = np.log(spec + 1e-3 * spec.max())
    cand = np.flatnonzero((f >= fmin) & (f <= 0.15 * sr))
    score = sum(np.interp(h * f[cand], f, logspec) for h in (1, 2, 3))

    def peak(fc: float) -> tuple[float, float]:
        lo, hi = np.searchsorted(f, [fc * 0.97, fc * 1.03])
        j = lo + int(np.argmax(spec[lo:hi]))
        a, b, c = np.log(spec[j - 1 : j + 2] + 1e-12)
        return f[j] + 0.5 * (a - c) / (a - 2 * b + c) * (f[1] - f[0]), spec[j]

    f0, level = peak(f[cand[np.argmax(score)]])
    while f0 / 2 >= fmin:
        sub, sub_level = peak(f0 / 2)
        if sub_level < 0.2 * level:
            break
        f0, level = sub, sub_level
    return float(f0)


def _chroma(x: np.ndarray, sr: int) -> np.ndarray:
    """Spectral energy per pitch class (0 = C) between 60 Hz and 2 kHz."""
    f, spec = _spectrum(x, sr, len(x))
    keep = (f > 60) & (f < 2000)
    pc = np.round(12 * np.log2(f[keep] / 440.0) + 69).astype(int) % 12
    return np.bincount(pc, weights=spec[keep] ** 2, minlength=12)


def _read(out: Path, clip: dict) -> np.ndarray:
    x, sr = sf.read(out / clip["path"])
    assert sr == SR
    return x


# ------------------------------------------------------------------------------------------------ files


def test_manifests_headers_rows_and_labels(probe, request):
    out, manifests, meta = probe
    assert list(manifests) == ["pitch_class", "instrument", "chord_quality", "chord_notes", "pitch"]
    sizes = {"notes": 12 * 9 * PER_CELL, "chords": 6 * 12 * PER_CELL}
    allowed = {"pitch_class": set(PITCH_CLASSES), "instrument": set(FAMILIES), "chord_quality": set(QUALITIES)}
    for task, set_name in TASKS.items():
        assert manifests[task] == out / f"{task}.csv"
        rows = _rows(manifests[task])
        assert len(rows) == sizes[set_name] == len(meta["clips"][set_name])
        assert [r["path"] for r in rows] == [c["path"] for c in meta["clips"][set_name]]
        assert all(r["path"].startswith(f"audio/{set_name}/") and r["path"].endswith(".flac") for r in rows)
        for r in rows:
            if task in allowed:
                assert r["label"] in allowed[task]
            elif task == "pitch":
                assert r["label"] == str(int(r["label"])) and 28 <= int(r["label"]) <= 96
            else:
                names = r["label"].split(";")
                assert len(names) >= 3 and names == sorted(names, key=PITCH_CLASSES.index)
        assert meta["counts"][task] == dict(Counter(r["split"] for r in rows))
        assert meta["tasks"][task]["manifest"] == f"{task}.csv"
    assert Counter(r["label"] for r in _rows(manifests["instrument"])) == {f: 12 * PER_CELL for f in FAMILIES}
    assert Counter(r["label"] for r in _rows(manifests["chord_quality"])) == {q: 12 * PER_CELL for q in QUALITIES}
    assert meta["tasks"]["pitch"]["type"] == "regression" and meta["tasks"]["chord_notes"]["type"] == "multilabel"
    source = request.node.callspec.params["probe"]
    assert (meta["seed"], meta["sample_rate"], meta["seconds"], meta["source"]) == (0, SR, SECONDS, source)


def test_every_file_decodes_to_the_clip_format(probe):
    out, _, meta = probe
    for clip in meta["clips"]["notes"] + meta["clips"]["chords"]:
        info = sf.info(out / clip["path"])
        assert (info.samplerate, info.channels, info.frames, info.format) == (SR, 1, round(SR * SECONDS), "FLAC")
        x = _read(out, clip)
        assert np.isfinite(x).all()
        assert 0.5 - 1e-3 <= np.abs(x).max() <= 0.9 + 1e-3  # the level is drawn in [0.5, 0.9]
        assert np.sqrt(np.mean(x**2)) > 0.01


def test_splits_are_fixed_stratified_and_shared_by_a_sets_manifests(probe):
    out, manifests, meta = probe
    by_cell = {"notes": lambda c: (c["pitch_class"], c["family"]), "chords": lambda c: (c["quality"], c["root"])}
    for set_name, cell_of in by_cell.items():
        cells: dict[tuple, Counter] = {}
        for clip in meta["clips"][set_name]:
            cells.setdefault(cell_of(clip), Counter())[clip["split"]] += 1
        assert len(cells) == (108 if set_name == "notes" else 72)
        assert all(c == {"train": 1, "valid": 1, "test": 1} for c in cells.values())
        splits = [[r["split"] for r in _rows(manifests[t])] for t, s in TASKS.items() if s == set_name]
        assert all(s == [c["split"] for c in meta["clips"][set_name]] for s in splits)
    # the fractions for other cell sizes, and the seed choosing which clips
    for per_cell, want in ((10, (6, 2, 2)), (5, (3, 1, 1)), (7, (5, 1, 1)), (2, (2, 0, 0)), (1, (1, 0, 0))):
        splits = data._splits(0, 0, 4, per_cell)
        for cell in range(4):
            got = Counter(splits[cell::4])
            assert (got["train"], got["valid"], got["test"]) == want
    assert data._splits(0, 0, 20, 10) != data._splits(1, 0, 20, 10)


def test_labels_agree_with_the_generation_parameters(probe):
    _, _, meta = probe
    fluidsynth = meta["source"] == "fluidsynth"
    for set_name, programs in (("notes", data.GM_PROGRAMS), ("chords", data.GM_CHORD_PROGRAMS)):
        for clip in meta["clips"][set_name]:  # a GM program is recorded where one rendered
            assert clip.get("program", -1) in (programs[clip["family"]] if fluidsynth else [-1])
    for clip in meta["clips"]["notes"]:
        (midi,) = clip["midi"]
        low, high = FAMILY_RANGES[clip["family"]]
        assert low <= midi <= high and PITCH_CLASSES[midi % 12] == clip["pitch_class"]
        assert 50 <= clip["velocity"][0] <= 120 and 0 <= clip["onsets"][0] <= 0.2
    octaves = Counter((c["family"], c["pitch_class"], c["midi"][0] // 12) for c in meta["clips"]["notes"])
    assert len({(f, pc) for f, pc, _ in octaves}) == 108 and len(octaves) > 150  # octaves do vary within a cell
    for family, (low, high) in FAMILY_RANGES.items():  # every pitch class playable in >= 2 octaves
        assert all(sum(m % 12 == pc for m in range(low, high + 1)) >= 2 for pc in range(12)), family
    assert max(FAMILY_RANGES["bass"]) < min(FAMILY_RANGES["flute"])
    inversions, voicings = Counter(), Counter()
    for clip in meta["clips"]["chords"]:
        root, intervals = PITCH_CLASSES.index(clip["root"]), CHORD_INTERVALS[clip["quality"]]
        midis = clip["midi"]
        assert clip["family"] in CHORD_FAMILIES and midis == sorted(midis) and midis[-1] - midis[0] <= 24
        assert {m % 12 for m in midis} == {(root + i) % 12 for i in intervals}
        assert midis[0] % 12 == (root + intervals[clip["inversion"]]) % 12  # the inversion's bass note
        assert all(1 <= v <= 127 for v in clip["velocity"]) and len(clip["velocity"]) == len(midis)
        strum = np.diff(clip["onsets"])
        assert np.all(strum > 0) if clip["family"] == "guitar" else np.all(strum == 0)
        inversions[clip["inversion"]] += 1
        voicings[clip["voicing"]] += 1
    assert set(inversions) == {0, 1, 2, 3} and set(voicings) == {"closed", "open", "doubled"}


def test_chord_notes_labels_are_the_pitch_classes_of_the_chord(probe):
    out, manifests, meta = probe
    for row, clip in zip(_rows(manifests["chord_notes"]), meta["clips"]["chords"], strict=True):
        names = set(row["label"].split(";"))
        assert names == {PITCH_CLASSES[m % 12] for m in clip["midi"]}
        assert len(names) == len(CHORD_INTERVALS[clip["quality"]])
    first = _rows(manifests["chord_notes"])[0]  # clip 0: C major
    assert first["label"] == "C;E;G"


def test_deterministic_and_clip_i_independent_of_cell_size(numpy_probe, tmp_path, monkeypatch):
    out, _, meta = numpy_probe
    kwargs = {"sample_rate": SR, "seconds": SECONDS, "notes_per_cell": 1, "chords_per_cell": 1}
    make_probe_data(tmp_path / "a", source="numpy", **kwargs)
    monkeypatch.setattr(midi, "fluidsynth_available", lambda: False)
    make_probe_data(tmp_path / "b", source="auto", **kwargs)  # auto falls back to numpy: the same files
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) == 108 + 72 + 5 + 1
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    small = json.loads((tmp_path / "a" / "probe_data.json").read_text())
    for set_name in ("notes", "chords"):  # the first clips of the 3-per-cell set are the 1-per-cell set
        for clip, big in zip(small["clips"][set_name], meta["clips"][set_name], strict=False):
            assert {k: v for k, v in clip.items() if k != "split"} == {k: v for k, v in big.items() if k != "split"}
            assert (tmp_path / "a" / clip["path"]).read_bytes() == (out / big["path"]).read_bytes()
    make_probe_data(tmp_path / "c", seed=1, **kwargs)
    other = json.loads((tmp_path / "c" / "probe_data.json").read_text())
    assert [c["midi"] for c in other["clips"]["notes"]] != [c["midi"] for c in small["clips"]["notes"]]


# ------------------------------------------------------------------------------------------------ the audio


def test_rendered_notes_have_the_labelled_pitch(probe):
    """The regression label is the sounding MIDI note: within 50 cents, octave errors count as errors."""
    out, _, meta = probe
    errors: dict[str, list[float]] = {}
    for clip in meta["clips"]["notes"]:
        x = _read(out, clip)
        if clip["family"] == "mallet":  # inharmonic bar: the fundamental is the strongest partial
            f, spec = _spectrum(x, SR)
            f0 = f[np.argmax(spec)]
        else:
            f0 = _f0(x, SR)
        errors.setdefault(clip["family"], []).append(1200 * math.log2(f0 / _midi_hz(clip["midi"][0])))
    assert set(errors) == set(FAMILIES)
    for family, cents in errors.items():
        assert np.max(np.abs(cents)) < 50, (family, np.round(cents, 1))


def test_chord_chroma_has_the_chords_pitch_classes_on_top(probe):
    out, _, meta = probe
    hits: dict[str, list[bool]] = {}
    for clip in meta["clips"]["chords"]:
        want = {m % 12 for m in clip["midi"]}
        top = set(np.argsort(_chroma(_read(out, clip), SR))[::-1][: len(want)].tolist())
        hits.setdefault(clip["family"], []).append(top == want)
    # the numpy synthesizer's decaying harmonic spectra: the notes dominate the chroma of every keyboard, string and
    # guitar chord; sampled strings and strummed guitars put an upper partial on top now and then (FluidR3_GM,
    # 10 chords per program: 9-10 of 10 for the string programs, 7-8 for the guitars), sampled pianos never
    strict = ("keyboard", "string", "guitar") if meta["source"] == "numpy" else ("keyboard",)
    for family in strict:
        assert all(hits[family]), family
    # organ drawbars and bright brass can put a note's twelfth above a chord tone now and then
    assert np.mean([h for v in hits.values() for h in v]) > 0.9


def _envelope_db(x: np.ndarray, sr: int) -> np.ndarray:
    frames = x[: len(x) // 320 * 320].reshape(-1, 320)
    return 20 * np.log10(np.sqrt(np.mean(frames**2, axis=1)) + 1e-9)


def test_families_sound_different(probe):
    """Organ notes sustain, mallet notes decay; strings swell in, guitars start at once; brass is brighter than
    flute (spectral centroid over f0)."""
    out, _, meta = probe
    sustain, rise, brightness = {}, {}, {}
    for clip in meta["clips"]["notes"]:
        x = _read(out, clip)
        env = _envelope_db(x, SR)  # 20 ms frames
        onset = round(clip["onsets"][0] / 0.02)
        family = clip["family"]
        sustain.setdefault(family, []).append(env[onset + 20] - env[onset : onset + 5].max())  # 0.4 s in
        peak = int(np.argmax(env))
        rise.setdefault(family, []).append((peak - np.argmax(env > env[peak] - 30)) * 0.02)
        f, spec = _spectrum(x, SR)
        brightness.setdefault(family, []).append(np.sum(f * spec**2) / np.sum(spec**2) / _midi_hz(clip["midi"][0]))
    assert min(sustain["organ"]) > -3 and np.median(sustain["mallet"]) < -8
    assert np.median(rise["string"]) > 0.1 > np.median(rise["guitar"])
    assert np.median(brightness["brass"]) > 2 * np.median(brightness["flute"])


# ------------------------------------------------------------------------------------------------ arguments, fluidsynth


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"notes_per_cell": 0}, "notes_per_cell"),
        ({"chords_per_cell": 1.5}, "chords_per_cell"),
        ({"seed": -1}, "seed"),
        ({"sample_rate": 7999}, "sample_rate"),
        ({"sample_rate": 16000.0}, "sample_rate"),
        ({"seconds": 0.4}, "seconds"),
        ({"seconds": float("nan")}, "seconds"),
        ({"format": "mp3"}, "format"),
        ({"source": "midi"}, "source"),
    ],
)
def test_bad_arguments_are_named(tmp_path, kwargs, name):
    with pytest.raises(ValueError, match=name):
        make_probe_data(tmp_path, **kwargs)
    assert not any(tmp_path.iterdir())


def test_fluidsynth_requested_but_missing_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(midi, "fluidsynth_available", lambda: False)
    with pytest.raises(ValueError, match="fluidsynth.*install"):
        make_probe_data(tmp_path, source="fluidsynth")


def test_fluidsynth_path_with_a_stand_in_renderer(tmp_path, monkeypatch):
    soundfont = tmp_path / "gm.sf2"
    calls = []

    def fake_render(notes, *, tempo, programs, volumes, sample_rate, soundfont):
        calls.append({"notes": notes, "programs": programs, "sample_rate": sample_rate, "soundfont": soundfont})
        t = np.arange(round(sample_rate * (0.3 + 0.5 * (len(calls) % 2)))) / sample_rate  # shorter / longer
        return 0.2 * np.sin(2 * np.pi * _midi_hz(notes[0][3]) * t)

    monkeypatch.setattr(midi, "fluidsynth_available", lambda: True)
    monkeypatch.setattr(midi, "find_soundfont", lambda: soundfont)
    monkeypatch.setattr(data, "render_midi", fake_render)
    make_probe_data(tmp_path / "out", sample_rate=SR, seconds=0.6, notes_per_cell=1, chords_per_cell=1,
                    source="fluidsynth", format="wav")  # fmt: skip
    meta = json.loads((tmp_path / "out" / "probe_data.json").read_text())
    assert (meta["source"], meta["soundfont"]) == ("fluidsynth", str(soundfont))
    clips = meta["clips"]["notes"] + meta["clips"]["chords"]
    assert len(calls) == len(clips) == 108 + 72
    programs = Counter()
    for clip, call in zip(clips, calls, strict=True):
        table = data.GM_CHORD_PROGRAMS if "quality" in clip else data.GM_PROGRAMS
        assert call["programs"] == {0: clip["program"]} and clip["program"] in table[clip["family"]]
        assert (call["sample_rate"], call["soundfont"]) == (SR, soundfont)
        starts, durations, channels, keys, velocities = zip(*call["notes"], strict=True)
        assert set(channels) == {0} and list(keys) == clip["midi"] and list(velocities) == clip["velocity"]
        assert list(starts) == clip["onsets"] and set(durations) == {clip["gate"]}
        programs[clip["family"], clip["program"]] += 1
        x, sr = sf.read(tmp_path / "out" / clip["path"])
        assert sr == SR and x.shape == (round(0.6 * SR),) and 0.5 - 1e-3 <= np.abs(x).max() <= 0.9 + 1e-3
        f, spec = _spectrum(x, SR)
        assert abs(1200 * math.log2(f[np.argmax(spec)] / _midi_hz(clip["midi"][0]))) < 50
    assert len(programs) > 35  # programs vary within families
