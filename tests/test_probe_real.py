"""``make-probe-data --real``: key / instrument / composer clips of music21's scores rendered with fluidsynth."""

from __future__ import annotations

import builtins
import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from mert_fast.probe.real import (
    FAMILY_PROGRAMS,
    KEYS,
    PITCH_CLASSES,
    PROGRAM_NAMES,
    PROGRAMS,
    make_real_corpus,
    make_real_probe_data,
)
from mert_fast.synth import fluidsynth_available

SR = 16000
SECONDS = 3.0


def _build(out):
    return make_real_probe_data(
        out, seed=3, sample_rate=SR, seconds=SECONDS, composers=("bach",), pieces_per_composer=3, clips_per_composer=6
    )


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Two builds of the same tiny set (3 chorales x 2 clips) into two folders."""
    pytest.importorskip("music21")
    if not fluidsynth_available():
        pytest.skip("fluidsynth or a General MIDI soundfont is not installed")
    a, b = tmp_path_factory.mktemp("real_a"), tmp_path_factory.mktemp("real_b")
    _build(a)
    _build(b)
    return a, b


def _rows(path):
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def _meta(out):
    return json.loads((out / "probe_data.json").read_text(encoding="utf-8"))


def _chroma(x: np.ndarray, sr: int) -> np.ndarray:
    """Energy per pitch class (C first) of the spectrum between 60 Hz and 2 kHz, from 4096-point frames."""
    n = 4096
    frames = np.lib.stride_tricks.sliding_window_view(x, n)[:: n // 2] * np.hanning(n)
    power = (np.abs(np.fft.rfft(frames, axis=1)) ** 2).sum(axis=0)
    freqs = np.fft.rfftfreq(n, 1 / sr)
    keep = (freqs > 60) & (freqs < 2000)
    pcs = np.round(12 * np.log2(freqs[keep] / 440.0) + 69).astype(int) % 12
    return np.bincount(pcs, weights=power[keep], minlength=12)


def test_manifests_and_audio_are_deterministic(built):
    a, b = built
    for name in ("key.csv", "instrument.csv", "program.csv", "composer.csv", "probe_data.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    for clip in _meta(a)["clips"]:
        xa, _ = sf.read(a / clip["path"])
        xb, _ = sf.read(b / clip["path"])
        np.testing.assert_array_equal(xa, xb)


def test_audio_is_at_the_rate_and_length_and_sounds(built):
    a, _ = built
    meta = _meta(a)
    assert meta["sample_rate"] == SR and len(meta["clips"]) == 6
    assert meta["music21"] and "version" in meta["fluidsynth"].lower() and meta["soundfont"]["sha256"]
    for clip in meta["clips"]:
        x, sr = sf.read(a / clip["path"])
        assert sr == SR and x.shape == (round(SECONDS * SR),)
        assert np.sqrt(np.mean(x**2)) > 0.01, clip


def test_split_by_piece(built):
    a, _ = built
    meta = _meta(a)
    split_of = {}
    for clip in meta["clips"]:
        assert split_of.setdefault(clip["piece"], clip["split"]) == clip["split"], clip["piece"]
    assert sorted(split_of.values()) == ["test", "train", "valid"]  # 3 pieces: one per split
    clips = {c["path"]: c for c in meta["clips"]}
    for task in ("key", "instrument", "program", "composer"):
        for row in _rows(a / f"{task}.csv"):
            assert row["split"] == clips[row["path"]]["split"]
    assert {r["path"] for r in _rows(a / "composer.csv")} == set(clips)


def test_program_labels_refine_the_family(built):
    """program.csv names the GM program each clip was rendered with, one of its instrument family's programs."""
    a, _ = built
    meta = _meta(a)
    clips = {c["path"]: c for c in meta["clips"]}
    family = {r["path"]: r["label"] for r in _rows(a / "instrument.csv")}
    program = {r["path"]: r["label"] for r in _rows(a / "program.csv")}
    assert set(program) == set(clips) and meta["tasks"]["program"]["labels"] == list(PROGRAMS)
    by_name = {name: p for p, name in PROGRAM_NAMES.items()}
    for path, clip in clips.items():
        assert by_name[program[path]] == clip["program"]
        assert clip["program"] in FAMILY_PROGRAMS[family[path]], (path, program[path], family[path])


def test_key_labels_follow_the_transposition(built):
    """The label is the key music21 finds in the score after music21 transposes it; and the rendered audio's
    chroma lines up with the score window's pitch classes moved by the same number of semitones."""
    from music21 import corpus

    a, _ = built
    meta = _meta(a)
    labels = {r["path"]: r["label"] for r in _rows(a / "key.csv")}
    shifts = set()
    for clip in meta["clips"]:
        score = corpus.parse(clip["piece"])
        key = score.transpose(clip["semitones"]).analyze("key")
        assert clip["key"] == f"{PITCH_CLASSES[key.tonic.pitchClass]} {key.mode}", clip
        assert clip["key"] in KEYS
        if clip["path"] in labels:
            assert labels[clip["path"]] == clip["key"]
        # the window's notes, duration-weighted, straight from the score
        span = SECONDS * clip["bpm"] / 60.0
        hist = np.zeros(12)
        for part in score.parts:
            for n in part.stripTies().flatten().notes:
                lo, hi = (
                    max(float(n.offset), clip["start_q"]),
                    min(float(n.offset + n.quarterLength), clip["start_q"] + span),
                )
                for p in n.pitches:
                    if hi > lo:
                        hist[(int(p.ps) + clip["semitones"]) % 12] += hi - lo
        x, sr = sf.read(a / clip["path"])
        chroma = _chroma(x, sr)
        corr = [np.dot(np.roll(hist, s), chroma) / np.linalg.norm(hist) for s in range(12)]
        assert int(np.argmax(corr)) == 0, (clip, np.round(corr / max(corr), 2))
        shifts.add(clip["semitones"])
    assert len(shifts) > 1


def test_missing_music21_says_what_to_install(tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_music21(name, *args, **kwargs):
        if name == "music21" or name.startswith("music21."):
            raise ImportError("No module named 'music21'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_music21)
    with pytest.raises(ImportError, match=r"pip install 'mert_fast\[probe\]'"):
        make_real_probe_data(tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_missing_fluidsynth_says_what_to_install(tmp_path, monkeypatch):
    pytest.importorskip("music21")
    monkeypatch.setattr(shutil, "which", lambda *args, **kwargs: None)
    with pytest.raises(ValueError, match="fluidsynth"):
        make_real_probe_data(tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_flag(monkeypatch, tmp_path):
    import mert_fast.probe.real as real
    from mert_fast.cli import main

    seen = {}

    def fake(out_dir, **kwargs):
        seen.update(kwargs, out_dir=out_dir)
        return {"key": tmp_path / "key.csv"}

    monkeypatch.setattr(real, "make_real_probe_data", fake)
    assert main(["make-probe-data", str(tmp_path), "--real", "--sample-rate", "16000"]) == 0
    assert seen["sample_rate"] == 16000 and seen["seconds"] == 10.0
    import mert_fast.probe.dataset as data

    seen.clear()
    monkeypatch.setattr(data, "make_probe_data", fake)
    assert main(["make-probe-data", str(tmp_path)]) == 0
    assert seen["seconds"] == 2.0 and "notes_per_cell" in seen  # without --real: the synthetic set, 2 s clips


def _recorded_ensembles(out: Path, clips: int, renders: int = 1, vary: str = "instruments") -> list[tuple[dict, list]]:
    """Build ``built``'s set with ``ensemble=True`` into ``out``; return the (channel -> program, events) of every
    fluidsynth render."""
    import mert_fast.probe.real_render as real_render

    recorded, render = [], real_render.render_midi

    def recording(events, **kwargs):
        recorded.append((dict(kwargs["programs"]), list(events)))
        return render(events, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(real_render, "render_midi", recording)
        make_real_probe_data(out, seed=3, sample_rate=SR, seconds=SECONDS, composers=("bach",), pieces_per_composer=3,
                             clips_per_composer=clips, ensemble=True, renders=renders, render_vary=vary)  # fmt: skip
    return recorded


@pytest.fixture(scope="module")
def ensemble_built(tmp_path_factory, built):
    """The set of ``built`` with ``ensemble=True``, and the (channel -> program, events) of every render."""
    out = tmp_path_factory.mktemp("real_ensemble")
    return out, _recorded_ensembles(out, 3)


def test_ensemble_parts_play_instruments_of_their_own(built, ensemble_built):
    """Each part is rendered on a channel of its own with its family's program; the windows, keys and tempi are
    the single-instrument set's; ``ensemble.csv`` lists the families of the parts sounding, ``instrument.csv``
    the top sounding part's; and the audio is not the single-instrument clip's."""
    from mert_fast.probe.real_render import FAMILIES

    single, (out, renders) = _meta(built[0]), ensemble_built
    meta = _meta(out)
    assert meta["ensemble"] is True and meta["tasks"]["ensemble"]["type"] == "multilabel"
    tags = {r["path"]: r["label"] for r in _rows(out / "ensemble.csv")}
    family = {r["path"]: r["label"] for r in _rows(out / "instrument.csv")}
    assert len(renders) == len(meta["clips"]) == 3  # clip j depends on (seed, composer, j): the first 3 of 6
    sizes = set()
    for clip, plain, (programs, events) in zip(meta["clips"], single["clips"][:3], renders, strict=True):
        for k in ("path", "piece", "key", "semitones", "bpm", "start_q", "notes", "split"):
            assert clip[k] == plain[k], k
        part_programs = clip["part_programs"]
        assert part_programs[0] == plain["program"]  # the top part keeps the single-instrument clip's program
        part_families = [next(f for f in FAMILIES if p in FAMILY_PROGRAMS[f]) for p in part_programs]
        assert 2 <= len(set(part_families)) <= 4  # a chorale has 4 parts
        assert sorted(programs.values()) == sorted(part_programs) and len(programs) == len(part_programs)
        sounding_programs = {programs[ch] for _, _, ch, _, _ in events}
        assert {next(f for f in FAMILIES if p in FAMILY_PROGRAMS[f]) for p in sounding_programs} == set(
            tags[clip["path"]].split(";"))  # fmt: skip
        assert clip["families"] == tags[clip["path"]].split(";")
        assert family[clip["path"]] == clip["family"] in clip["families"]
        sizes.add(len(clip["families"]))
        x, _ = sf.read(out / clip["path"])
        y, _ = sf.read(built[0] / plain["path"])
        assert np.abs(x - y).max() > 0.05
    assert max(sizes) >= 2


def test_renders_play_the_same_notes_on_other_instruments(ensemble_built, tmp_path):
    """``renders=2``: render 0 of each clip is the file ``renders=1`` writes, byte for byte; render 1
    (``NAME.r1.flac``) plays the same events (times, keys, velocities, channels) with another top family and its
    own ensemble, at the same level; both are rows of every manifest, in the clip's split."""
    single_out, _ = ensemble_built
    single = _meta(single_out)
    out = tmp_path / "renders"
    renders = _recorded_ensembles(out, 2, renders=2)
    meta = _meta(out)
    assert meta["renders"] == 2 and len(meta["clips"]) == len(renders) == 4
    families = {r["path"]: r["label"] for r in _rows(out / "instrument.csv")}
    splits = {r["path"]: r["split"] for r in _rows(out / "composer.csv")}
    for j in range(2):
        first, second = meta["clips"][2 * j], meta["clips"][2 * j + 1]
        assert (first["render"], second["render"]) == (0, 1)
        assert second["path"] == first["path"].replace(".flac", ".r1.flac")
        assert (out / first["path"]).read_bytes() == (single_out / single["clips"][j]["path"]).read_bytes()
        for k in ("piece", "key", "semitones", "bpm", "start_q", "notes", "split", "window_key"):
            assert first[k] == second[k], k
        assert first["part_programs"] != second["part_programs"] and second["family"] == families[second["path"]]
        assert first["family"] != second["family"]  # the top part moves on to the next family
        assert splits[first["path"]] == splits[second["path"]] == first["split"]
        (programs_a, events_a), (programs_b, events_b) = renders[2 * j], renders[2 * j + 1]
        assert events_a == events_b and programs_a != programs_b
        x, _ = sf.read(out / first["path"])
        y, _ = sf.read(out / second["path"])
        assert np.abs(x - y).max() > 0.05
        assert np.abs(x).max() == pytest.approx(np.abs(y).max(), abs=2e-4)  # one level, drawn once for the clip
    with pytest.raises(ValueError, match="renders must be"):
        make_real_probe_data(tmp_path / "bad", seed=3, composers=("bach",), renders=0)


def test_renders_can_play_other_notes_on_the_same_instruments(ensemble_built, tmp_path):
    """``render_vary="notes"``: render 1 keeps render 0's program on every channel and plays another window of the
    piece, transposed by its own shift (its key label follows it); render 0 is still the ``renders=1`` file."""
    single_out, _ = ensemble_built
    single = _meta(single_out)
    out = tmp_path / "notes"
    renders = _recorded_ensembles(out, 2, renders=2, vary="notes")
    meta = _meta(out)
    assert meta["render_vary"] == "notes" and len(meta["clips"]) == len(renders) == 4
    for j in range(2):
        first, second = meta["clips"][2 * j], meta["clips"][2 * j + 1]
        assert (out / first["path"]).read_bytes() == (single_out / single["clips"][j]["path"]).read_bytes()
        assert second["part_programs"] == first["part_programs"] and renders[2 * j][0] == renders[2 * j + 1][0]
        assert renders[2 * j][1] != renders[2 * j + 1][1]  # other notes
        assert (second["start_q"], second["bpm"]) != (first["start_q"], first["bpm"])
        assert first["piece"] == second["piece"] and first["split"] == second["split"]
        for clip in (first, second):  # each key label is the piece's key moved by that render's own shift
            tonic, mode = clip["piece_key"].split(" ")
            moved = PITCH_CLASSES[(PITCH_CLASSES.index(tonic) + clip["semitones"]) % 12]
            assert clip["key"] == f"{moved} {mode}" and -6 <= clip["semitones"] <= 5
    with pytest.raises(ValueError, match="render_vary must be one of instruments, notes, piece, part, solo; got"):
        make_real_probe_data(tmp_path / "bad", seed=3, composers=("bach",), renders=2, render_vary="tempo")


def test_renders_can_take_another_piece_of_the_split(tmp_path):
    """``render_vary="piece"``: render 1 plays a window of another piece of the clip's split (the clip's own piece
    when its split has no other), part p on render 0's program of part p modulo the clip's parts."""
    out = tmp_path / "piece"
    make_real_probe_data(out, seed=3, sample_rate=SR, seconds=SECONDS, composers=("bach",), pieces_per_composer=5,
                         clips_per_composer=5, ensemble=True, renders=2, render_vary="piece")  # fmt: skip
    meta = _meta(out)
    pieces = {p["path"]: p for p in meta["pieces"]["bach"]}
    by_split = {s: [p for p in pieces.values() if p["split"] == s] for s in ("train", "valid", "test")}
    assert meta["render_vary"] == "piece" and len(by_split["train"]) >= 2
    moved = 0
    for first, second in zip(meta["clips"][::2], meta["clips"][1::2], strict=True):
        assert first["split"] == second["split"] == pieces[second["piece"]]["split"]
        if len(by_split[first["split"]]) > 1:
            assert second["piece"] != first["piece"]
            moved += 1
        else:
            assert second["piece"] == first["piece"]
        n_parts = pieces[second["piece"]]["parts"]
        shared = first["part_programs"]
        assert second["part_programs"] == [shared[p % len(shared)] for p in range(n_parts)]
    assert moved >= 2


def test_renders_can_recast_one_part(ensemble_built, tmp_path):
    """``render_vary="part"``: render 1 plays render 0's events with one sounding part (its MIDI channel) on a family
    no sounding part of render 0 plays; the other parts keep their programs."""
    from mert_fast.probe.real_render import CHANNELS, FAMILIES

    single_out, _ = ensemble_built
    out = tmp_path / "part"
    renders = _recorded_ensembles(out, 2, renders=2, vary="part")
    meta = _meta(out)
    for j in range(2):
        first, second = meta["clips"][2 * j], meta["clips"][2 * j + 1]
        assert (out / first["path"]).read_bytes() == (single_out / _meta(single_out)["clips"][j]["path"]).read_bytes()
        (programs_a, events_a), (programs_b, events_b) = renders[2 * j], renders[2 * j + 1]
        assert events_a == events_b
        q = second["recast_part"]
        channel = CHANNELS[q % len(CHANNELS)]
        assert {ch for ch in programs_a if programs_a[ch] != programs_b[ch]} == {channel}
        new_family = next(f for f in FAMILIES if programs_b[channel] in FAMILY_PROGRAMS[f])
        assert new_family not in first["families"] and new_family in second["families"]
    with pytest.raises(ValueError, match="render_vary: 'part' recasts one part of an ensemble; set ensemble"):
        make_real_probe_data(tmp_path / "bad", seed=3, composers=("bach",), renders=2, render_vary="part")


def test_renders_can_play_the_top_part_alone(ensemble_built, tmp_path):
    """``render_vary="solo"``: render 1 plays exactly render 0's events on the top sounding part's MIDI channel, with
    the same programs, velocities and level (the part's stem); its labels are that part's alone."""
    from mert_fast.probe.real_render import CHANNELS

    single_out, _ = ensemble_built
    out = tmp_path / "solo"
    renders = _recorded_ensembles(out, 2, renders=2, vary="solo")
    meta = _meta(out)
    assert meta["render_vary"] == "solo"
    for j in range(2):
        first, second = meta["clips"][2 * j], meta["clips"][2 * j + 1]
        assert (out / first["path"]).read_bytes() == (single_out / _meta(single_out)["clips"][j]["path"]).read_bytes()
        (programs_a, events_a), (programs_b, events_b) = renders[2 * j], renders[2 * j + 1]
        assert programs_a == programs_b and len(first["families"]) >= 2
        top = min({e[2] for e in events_a}, key=CHANNELS.index)  # the lowest sounding part's (these have < 15)
        assert programs_a[top] == first["program"]
        assert events_b == [e for e in events_a if e[2] == top] and 0 < len(events_b) < len(events_a)
        assert (second["family"], second["program"], second["families"]) == (first["family"], first["program"],
                                                                                [first["family"]])  # fmt: skip
        for k in ("piece", "key", "semitones", "bpm", "start_q", "notes", "split"):
            assert first[k] == second[k], k
        x, _ = sf.read(out / first["path"])
        y, _ = sf.read(out / second["path"])
        assert np.abs(x).max() == pytest.approx(np.abs(y).max(), abs=2e-4)  # one level, drawn once for the clip
        assert np.abs(x - y).max() > 0.05
    with pytest.raises(ValueError, match="render_vary: 'solo' plays the top part alone of an ensemble; set ensemble"):
        make_real_probe_data(tmp_path / "bad", seed=3, composers=("bach",), renders=2, render_vary="solo")


def test_ensemble_draw():
    """Part 0 keeps the clip's family and program; 2 to min(4, parts) families, programs from their families; a
    piece with more parts than MIDI channels doubles the first 15."""
    from mert_fast.probe.real_render import ensemble_parts

    counts = set()
    for n_parts in (*range(1, 9), 16, 21):
        for seed in range(40):
            families, programs = ensemble_parts("organ", 19, n_parts, np.random.default_rng(seed))
            assert len(families) == len(programs) == n_parts
            assert families[0] == "organ" and programs[0] == 19
            assert all(p in FAMILY_PROGRAMS[f] for f, p in zip(families, programs, strict=True))
            k = len(set(families))
            assert k == 1 if n_parts == 1 else 2 <= k <= min(4, n_parts)
            counts.add(k)
            # parts 15 apart share a MIDI channel, so they share the program too
            assert all(programs[j] == programs[j % 15] for j in range(n_parts))
    assert counts == {1, 2, 3, 4}


def _fake_set(folder: Path, pieces: dict[str, list[str]]) -> Path:
    """A folder that looks like a made real-music set to :func:`probe_set_pieces` (its pieces by composer)."""
    folder.mkdir(parents=True, exist_ok=True)
    listed = {c: [{"path": p} for p in ps] for c, ps in pieces.items()}
    (folder / "probe_data.json").write_text(json.dumps({"pieces": listed}))
    return folder


def test_cli_real_set_options(monkeypatch, tmp_path, capsys):
    """``make-probe-data --real`` passes composers, sizes and the pieces of every --exclude-probe-set folder on
    (a fresh confirmation set shares no piece with the probe set nor with the pre-training corpus)."""
    import mert_fast.probe.real as real
    from mert_fast.cli import main

    probe = _fake_set(tmp_path / "probe", {"bach": ["bach/bwv1.6.mxl"], "mozart": ["m/k1.xml"]})
    corpus = _fake_set(tmp_path / "corpus", {"bach": ["bach/bwv2.6.mxl", "bach/bwv1.6.mxl"]})
    seen = {}

    def fake(out_dir, **kwargs):
        seen.update(kwargs, out_dir=out_dir)
        return {"key": tmp_path / "key.csv"}

    monkeypatch.setattr(real, "make_real_probe_data", fake)
    out = str(tmp_path / "confirm")
    argv = ["make-probe-data", out, "--real", "--seed", "1", "--composers", "bach, palestrina"]
    argv += ["--pieces-per-composer", "7", "--clips-per-composer", "30"]
    argv += ["--exclude-probe-set", str(probe), "--exclude-probe-set", str(corpus), "--ensemble"]
    assert main(argv) == 0
    assert seen["composers"] == ("bach", "palestrina") and seen["seed"] == 1 and seen["ensemble"] is True
    assert seen["pieces_per_composer"] == 7 and seen["clips_per_composer"] == 30
    assert seen["exclude_pieces"] == {"bach/bwv1.6.mxl", "bach/bwv2.6.mxl", "m/k1.xml"}
    seen.clear()
    assert main(["make-probe-data", out, "--real"]) == 0  # unset options keep the function's defaults
    assert "composers" not in seen and "clips_per_composer" not in seen and seen["exclude_pieces"] == set()
    assert "ensemble" not in seen
    with pytest.raises(SystemExit, match="--exclude-probe-set: probe_dir: no probe_data.json"):
        main(["make-probe-data", out, "--real", "--exclude-probe-set", str(tmp_path / "nowhere")])
    for flag, value in (("--composers", "bach"), ("--clips-per-composer", "3"), ("--exclude-probe-set", str(probe))):
        with pytest.raises(SystemExit, match=f"{flag} needs --real"):
            main(["make-probe-data", out, flag, value])
    with pytest.raises(SystemExit, match="--ensemble needs --real"):
        main(["make-probe-data", out, "--ensemble"])
    with pytest.raises(SystemExit):
        main(["make-probe-data", out, "--real", "--pieces-per-composer", "0"])
    assert "expected a positive integer" in capsys.readouterr().err


def test_excluded_pieces_are_never_used(built, tmp_path):
    """A pre-training corpus made with ``exclude_pieces=probe_set_pieces(probe set)`` shares no piece with it."""
    from mert_fast.probe.real import probe_set_pieces

    a, _ = built
    used = probe_set_pieces(a)
    assert used == {c["piece"] for c in _meta(a)["clips"]} and len(used) == 3
    out = tmp_path / "corpus"
    make_real_probe_data(out, seed=3, sample_rate=SR, seconds=SECONDS, composers=("bach",), pieces_per_composer=3,
                         clips_per_composer=3, exclude_pieces=used)  # fmt: skip
    meta = _meta(out)
    assert len({c["piece"] for c in meta["clips"]}) == 3
    assert not {c["piece"] for c in meta["clips"]} & used
    assert meta["excluded_pieces"] == sorted(used)


def test_probe_set_pieces_rejects_other_folders(tmp_path):
    from mert_fast.probe.real import probe_set_pieces

    with pytest.raises(ValueError, match="probe_dir: no probe_data.json"):
        probe_set_pieces(tmp_path)
    (tmp_path / "probe_data.json").write_text(json.dumps({"clips": []}))
    with pytest.raises(ValueError, match="not a real-music set"):
        probe_set_pieces(tmp_path)
    with pytest.raises(TypeError, match="exclude_pieces"):
        make_real_probe_data(tmp_path / "out", exclude_pieces="bach/bwv1.6.mxl")
    with pytest.raises(TypeError, match="exclude_probe_sets"):
        make_real_corpus(tmp_path / "out", 3, exclude_probe_sets=tmp_path)
    with pytest.raises(ValueError, match="clips"):
        make_real_corpus(tmp_path / "out", 0)
    with pytest.raises(ValueError, match="probe_dir: no probe_data.json"):
        make_real_corpus(tmp_path / "out", 3, exclude_probe_sets=[tmp_path / "nowhere"])


def test_make_corpus_real_flag(monkeypatch, tmp_path, capsys):
    import mert_fast.probe.real as real
    from mert_fast.cli import main

    probe = _fake_set(tmp_path / "probe", {"bach": ["bach/bwv1.6.mxl", "bach/bwv2.6.mxl"], "mozart": ["m/k1.xml"]})
    seen = {}

    def fake(out_dir, **kwargs):
        seen.update(kwargs, out_dir=out_dir)
        clips = [{}] * kwargs["clips_per_composer"] * len(kwargs["composers"])
        meta = {
            "excluded_pieces": sorted(kwargs["exclude_pieces"]),
            "clips": clips,
            "renders": kwargs["renders"],
            "render_vary": kwargs["render_vary"],
        }
        Path(out_dir).mkdir(parents=True)
        (Path(out_dir) / "probe_data.json").write_text(json.dumps(meta))
        return {}

    monkeypatch.setattr(real, "make_real_probe_data", fake)
    out = tmp_path / "corpus"
    assert main(["make-corpus", str(out), "--real", "--clips", "10", "--exclude-probe-set", str(probe)]) == 0
    assert seen["composers"] == real.CORPUS_COMPOSERS and seen["clips_per_composer"] == 4  # 10 over 3, rounded up
    assert seen["exclude_pieces"] == {"bach/bwv1.6.mxl", "bach/bwv2.6.mxl", "m/k1.xml"}
    assert f"{out / 'audio'}: 12 clips of 8 s of rendered scores (3 pieces excluded)" in capsys.readouterr().out
    assert seen["ensemble"] is False
    assert main(["make-corpus", str(tmp_path / "mix"), "--real", "--clips", "3", "--ensemble"]) == 0
    assert seen["ensemble"] is True and seen["clips_per_composer"] == 1 and seen["exclude_pieces"] == set()
    assert "3 clips of 8 s of ensembles of rendered scores (0 pieces excluded)" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="--ensemble needs --real"):
        main(["make-corpus", str(out), "--ensemble"])
    assert seen["renders"] == 1
    assert main(["make-corpus", str(tmp_path / "twins"), "--real", "--clips", "3", "--renders", "2"]) == 0
    assert seen["renders"] == 2 and seen["render_vary"] == "instruments"
    assert main(["make-corpus", str(tmp_path / "n"), "--real", "--renders", "2", "--render-vary", "notes"]) == 0
    assert seen["render_vary"] == "notes"
    with pytest.raises(SystemExit, match="--render-vary needs --real"):
        main(["make-corpus", str(out), "--render-vary", "notes"])
    with pytest.raises(SystemExit, match="--renders needs --real"):
        main(["make-corpus", str(out), "--renders", "2"])
    with pytest.raises(SystemExit):
        main(["make-corpus", str(out), "--real", "--renders", "0"])
    with pytest.raises(SystemExit, match="--exclude-probe-set: probe_dir: no probe_data.json"):
        main(["make-corpus", str(out), "--real", "--exclude-probe-set", str(tmp_path / "nowhere")])
    with pytest.raises(SystemExit, match="--exclude-probe-set needs --real"):
        main(["make-corpus", str(out), "--exclude-probe-set", str(probe)])
