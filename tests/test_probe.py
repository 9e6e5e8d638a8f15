"""``mert_fast.probe``: manifests, scores against scikit-learn, the batched MLP probes, features and the CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from sklearn import metrics as skm

from mert_fast.cli import main
from mert_fast.probe.features import load_features
from mert_fast.probe.manifest import read_probe_manifest
from mert_fast.probe.metrics import accuracy, average_precision, r2, roc_auc, scores
from mert_fast.probe.probe import ProbeConfig, train_probes

# ------------------------------------------------------------------------------------------------ scores


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_scores_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    n, c = 157, 7
    y = (rng.random((n, c)) < rng.uniform(0.1, 0.6, c)).astype(np.float32)
    s = np.round(rng.standard_normal((n, c)) + y, 1)  # rounded: many ties
    for k in range(c):
        assert roc_auc(y[:, k], s[:, k]) == pytest.approx(skm.roc_auc_score(y[:, k], s[:, k]), abs=1e-12)
        assert average_precision(y[:, k], s[:, k]) == pytest.approx(
            skm.average_precision_score(y[:, k], s[:, k]), abs=1e-12
        )
    for avg in ("macro", "micro"):
        assert roc_auc(y, s, avg) == pytest.approx(skm.roc_auc_score(y, s, average=avg), abs=1e-12)
        assert average_precision(y, s, avg) == pytest.approx(skm.average_precision_score(y, s, average=avg), abs=1e-12)
    labels = rng.integers(0, c, n)
    logits = rng.standard_normal((n, c))
    assert accuracy(labels, logits) == pytest.approx(skm.accuracy_score(labels, logits.argmax(1)))
    prob = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    got = scores("multiclass", labels, logits)
    assert got["roc_auc"] == pytest.approx(skm.roc_auc_score(np.eye(c)[labels], prob, average="macro"), abs=1e-12)
    t, p = rng.standard_normal(n), rng.standard_normal(n)
    assert r2(t, t + 0.3 * p) == pytest.approx(skm.r2_score(t, t + 0.3 * p), abs=1e-12)
    assert np.isnan(r2(np.ones(5), np.zeros(5)))
    # a class with no positive is left out of the macro average, as scikit-learn would refuse it
    y[:, 0] = 0
    assert roc_auc(y, s) == pytest.approx(np.mean([skm.roc_auc_score(y[:, k], s[:, k]) for k in range(1, c)]))


# ------------------------------------------------------------------------------------------------ manifests


def _write_manifest(path: Path, rows, header=("path", "label", "split")) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def test_manifest_types_and_splits(tmp_path):
    rows = [
        (f"a/{i}.wav", ["x", "y", "z"][i % 3], ["train", "val", "test", "train", "train"][i % 5]) for i in range(30)
    ]
    task = read_probe_manifest(_write_manifest(tmp_path / "m.csv", rows))
    assert task.task_type == "multiclass" and task.classes == ["x", "y", "z"]
    assert task.paths[3] == (tmp_path / "a" / "3.wav").resolve()
    assert task.targets.tolist() == [i % 3 for i in range(30)]
    assert task.counts() == {"train": 18, "valid": 6, "test": 6}

    tags = ["rock;guitar", "jazz", "", "rock;piano;male vocal", "jazz;piano"] * 6
    task = read_probe_manifest(_write_manifest(tmp_path / "t.csv", [(f"{i}.wav", t, "train" if i % 2 else "valid")
                                                                     for i, t in enumerate(tags)]))  # fmt: skip
    assert task.task_type == "multilabel"
    assert task.classes == ["guitar", "jazz", "male vocal", "piano", "rock"]
    assert task.targets[3].tolist() == [0, 0, 1, 1, 1] and task.targets[2].sum() == 0

    values = np.random.default_rng(0).normal(size=40)
    rows = [(f"{i}.wav", f"{v:.4f}") for i, v in enumerate(values)]
    task = read_probe_manifest(_write_manifest(tmp_path / "r.csv", rows, header=("path", "label")))
    assert task.task_type == "regression" and task.classes == []
    np.testing.assert_allclose(task.targets, values, atol=1e-4)
    # no split column: a hash of the path decides, the same for a row whatever the other rows are
    rows = [(f"{i}.wav", "1") for i in (7, 3, 11)] + [(f"{i}.wav", "2") for i in range(20, 60)]
    again = read_probe_manifest(_write_manifest(tmp_path / "r2.csv", rows, header=("path", "label")))
    first = dict(zip(task.paths, task.splits, strict=True))
    for p, s in zip(again.paths, again.splits, strict=True):
        if p.name in ("7.wav", "3.wav", "11.wav"):
            assert first[tmp_path / p.name] == s
    assert 20 < task.counts()["train"] < 40  # about 80%
    # a forced type overrides the labels: single classes read as one tag each
    task = read_probe_manifest(tmp_path / "m.csv", task_type="multilabel")
    assert task.targets.shape == (30, 3)


@pytest.mark.parametrize(
    ("rows", "header", "match"),
    [
        ([("a.wav", "x")], ("file", "label"), "must name path and label"),
        ([("a.wav", "x", "dev")], ("path", "label", "split"), "split must be train"),
        ([("a.wav", "x", "train"), ("b.wav", "", "valid")], ("path", "label", "split"), "empty label"),
        ([("a.wav", "x", "train"), ("a.wav", "y", "valid")], ("path", "label", "split"), "more than once"),
        ([("a.wav", "x", "train"), ("b.wav", "y", "valid")], ("path", "label", "split"), "never in train"),
        ([("a.wav", "x", "train"), ("b.wav", "y", "train")], ("path", "label", "split"), "valid split is empty"),
        ([("a.wav", "x", "train"), ("b.wav", "x", "valid")], ("path", "label", "split"), "at least 2 classes"),
    ],
)
def test_manifest_errors(tmp_path, rows, header, match):
    with pytest.raises(ValueError, match=match):
        read_probe_manifest(_write_manifest(tmp_path / "bad.csv", rows, header))


def test_manifest_bad_regression_and_type(tmp_path):
    path = _write_manifest(tmp_path / "m.csv", [("a.wav", "1.5", "train"), ("b.wav", "loud", "valid")])
    with pytest.raises(ValueError, match="finite number"):
        read_probe_manifest(path, task_type="regression")
    with pytest.raises(ValueError, match="task_type"):
        read_probe_manifest(path, task_type="ranking")
    with pytest.raises(FileNotFoundError):
        read_probe_manifest(tmp_path / "missing.csv")


# ------------------------------------------------------------------------------------------------ probes


def _synthetic_task(tmp_path: Path, kind: str, n: int = 300, states: int = 3, dim: int = 24, seed: int = 0):
    """Random features where only hidden state 1 carries the label."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, states, dim)).astype(np.float32) * rng.uniform(0.5, 20.0, (1, states, 1))
    split = ["train", "train", "train", "valid", "test"]
    if kind == "multiclass":
        y = rng.integers(0, 4, n)
        x[:, 1, :4] += 4.0 * np.eye(4)[y] * x[:, 1].std()
        labels = [f"c{v}" for v in y]
    elif kind == "multilabel":
        y = rng.random((n, 3)) < 0.4
        x[:, 1, :3] += 4.0 * y * x[:, 1].std()
        labels = [";".join(f"t{k}" for k in range(3) if y[i, k]) for i in range(n)]
    else:
        y = rng.standard_normal(n) * 10 + 60
        x[:, 1, 0] = (y - 60) / 10 * x[:, 1].std() + 0.1 * rng.standard_normal(n) * x[:, 1].std()
        labels = [f"{v:.5f}" for v in y]
    manifest = _write_manifest(
        tmp_path / f"{kind}.csv", [(f"{i}.wav", lab, split[i % 5]) for i, lab in enumerate(labels)]
    )
    return read_probe_manifest(manifest, task_type=kind), x


@pytest.mark.parametrize(("kind", "metric", "good"), [("multiclass", "accuracy", 0.85), ("multilabel", "roc_auc", 0.9),
                                                      ("regression", "r2", 0.9)])  # fmt: skip
def test_probes_find_the_informative_layer(tmp_path, kind, metric, good):
    task, x = _synthetic_task(tmp_path, kind)
    cfg = ProbeConfig(max_epochs=60, patience=10)
    report = train_probes(task, x, cfg=cfg, seed=0)
    test = [entry["test"][metric] for entry in report["layers"]]
    assert [entry["layer"] for entry in report["layers"]] == [0, 1, 2]
    assert test[1] > good, test
    chance = {"accuracy": 0.45, "roc_auc": 0.65, "r2": 0.2}[metric]
    assert test[0] < chance and test[2] < chance, test
    ws = report["weighted_sum"]
    # the weighted sum starts as the plain average, where the other states' noise drowns much of the signal, and
    # learns its weights slowly at lr 1e-3 with 3 batches an epoch: it beats the uninformative states, not more
    assert ws["test"][metric] > max(test[0], test[2]) + 0.1, ws
    assert int(np.argmax(ws["weights"])) == 1 and sum(ws["weights"]) == pytest.approx(1.0)
    for entry in [*report["layers"], ws]:
        assert 1 <= entry["best_epoch"] <= entry["epochs"] <= cfg.max_epochs


def test_probes_are_independent_and_seeded(tmp_path):
    task, x = _synthetic_task(tmp_path, "multiclass", n=200)
    cfg = ProbeConfig(max_epochs=25, patience=5, hidden=64)
    together = train_probes(task, x, cfg=cfg, seed=3)
    alone = train_probes(task, x, cfg=cfg, layers=[1], weighted=False, seed=3)
    assert alone["weighted_sum"] is None and len(alone["layers"]) == 1
    # the same probe, whether it trained beside others or alone (own generator, own early stopping)
    assert alone["layers"][0]["test"] == together["layers"][1]["test"]
    assert alone["layers"][0]["best_epoch"] == together["layers"][1]["best_epoch"]
    again = train_probes(task, x, cfg=cfg, seed=3)
    assert again["layers"] == together["layers"]
    other = train_probes(task, x, cfg=cfg, seed=4)
    assert other["layers"] != together["layers"]


def test_probe_argument_errors(tmp_path):
    task, x = _synthetic_task(tmp_path, "multiclass", n=50)
    with pytest.raises(ValueError, match="features must be shaped"):
        train_probes(task, x[:10])
    with pytest.raises(ValueError, match="layers must be"):
        train_probes(task, x, layers=[5])
    with pytest.raises(ValueError, match="dropout"):
        ProbeConfig(dropout=1.0)
    with pytest.raises(ValueError, match="batch_size"):
        ProbeConfig(batch_size=0)


# ------------------------------------------------------------------------------------------------ features, CLI


def _tone_set(folder: Path, n: int = 24, sr: int = 24000) -> Path:
    """Sine tones at C4, E4 or G4 (with an octave shift), labelled by pitch class."""
    rng = np.random.default_rng(1)
    rows = []
    for i in range(n):
        k = i % 3
        midi = [60, 64, 67][k] + 12 * int(rng.integers(0, 2))
        t = np.arange(int(0.6 * sr)) / sr
        wave = 0.5 * np.sin(2 * np.pi * 440 * 2 ** ((midi - 69) / 12) * t + rng.uniform(0, 6.3))
        sf.write(folder / f"tone_{i}.wav", wave.astype(np.float32), sr)
        rows.append((f"tone_{i}.wav", "CEG"[k], ["train", "train", "valid", "test"][(i // 3) % 4]))
    return _write_manifest(folder / "tones.csv", rows)


def test_features_cache_and_extract_folder(tmp_path):
    manifest = _tone_set(tmp_path)
    task = read_probe_manifest(manifest)
    feats, info = load_features(task.paths, "tiny", tmp_path / "cache")
    assert feats.shape == (24, 3, 64) and info["states"] == 3 and info["model"] == "preset:tiny"
    # a second probe of the same clips and model reads the cache
    again, _ = load_features(task.paths, "tiny", tmp_path / "cache")
    (run_manifest,) = (tmp_path / "cache").glob("*/manifest.json")
    run = json.loads(run_manifest.read_text())
    assert run["counts"] == {"ok": 0, "skipped": 24, "failed": 0}
    np.testing.assert_array_equal(again, feats)
    # an unpooled mert-fast extract folder gives the same frame averages
    assert main(["extract", str(manifest), "--model", "tiny", "--out", str(tmp_path / "frames")]) == 0
    read, info = load_features(task.paths, str(tmp_path / "frames"), None)
    np.testing.assert_allclose(read, feats, rtol=1e-5, atol=1e-6)
    cqt, info = load_features(task.paths, "cqt", tmp_path / "hc")
    assert cqt.shape == (24, 1, 336) and (tmp_path / "hc" / "cqt.npz").is_file()
    # log-CQT peaks at the tone's pitch class (48 bins per octave from C1: bin 4 * semitones above C)
    peak_pc = (cqt[:, 0].argmax(1) // 4) % 12
    assert [int(v) for v in peak_pc] == [[0, 4, 7][i % 3] for i in range(24)]
    mfcc, _ = load_features(task.paths, "mfcc", None)
    assert mfcc.shape == (24, 1, 39) and np.isfinite(mfcc).all()
    with pytest.raises(ValueError, match="no manifest.json"):
        load_features(task.paths, str(tmp_path), None)


def test_probe_cli(tmp_path, capsys):
    manifest = _tone_set(tmp_path, n=48)
    out = tmp_path / "probe"
    args = ["probe", str(manifest), "--features", "cqt", "--out", str(out), "--seeds", "0,1", "--max-epochs", "40"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "layer 0" in printed and "scores.json" in printed
    result = json.loads((out / "scores.json").read_text())
    assert result["task_type"] == "multiclass" and result["classes"] == ["C", "E", "G"]
    assert result["seeds"] == [0, 1] and len(result["runs"]) == 2
    assert result["summary"]["weighted_sum"] is None  # one feature block: nothing to weigh
    acc = result["summary"]["layers"]["0"]["test"]["accuracy"]
    assert acc["n"] == 2 and acc["mean"] > 0.9  # CQT makes pitch class easy
    assert (out / "layers.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result["protocol"]["hidden"] == 512 and result["protocol"]["dropout"] == 0.2

    # a model: every hidden state and the weighted sum, cached features in --cache
    out = tmp_path / "probe_tiny"
    args = ["probe", str(manifest), "--features", "tiny", "--out", str(out), "--cache", str(tmp_path / "c"),
            "--max-epochs", "5"]  # fmt: skip
    assert main(args) == 0
    result = json.loads((out / "scores.json").read_text())
    assert [e["layer"] for e in result["runs"][0]["layers"]] == [0, 1, 2]
    assert len(result["runs"][0]["weighted_sum"]["weights"]) == 3
    assert result["summary"]["best_layer"] in (0, 1, 2)
    assert result["features"]["model_sha256"] and len(list((tmp_path / "c").glob("*/manifest.json"))) == 1

    with pytest.raises(SystemExit) as err:
        main(["probe", str(tmp_path / "nothing.csv"), "--features", "cqt", "--out", str(out)])
    assert err.value.code == 2
    assert "manifest not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["probe", str(manifest), "--features", "cqt", "--out", str(out), "--layers", "x"])


def test_weighted_only(tmp_path):
    task, x = _synthetic_task(tmp_path, "multiclass", n=100)
    report = train_probes(task, x, cfg=ProbeConfig(max_epochs=3), layers=[], seed=0)
    assert report["layers"] == [] and report["weighted_sum"]["epochs"] == 3
    torch.testing.assert_close(torch.tensor(report["weighted_sum"]["weights"]).sum(), torch.tensor(1.0))


@pytest.mark.slow
def test_probe_on_the_probe_data_set(tmp_path, capsys):
    """A small end-to-end run: make-probe-data, then probe a multi-class task with CQT features, the multi-label
    chord notes with a (random) model and the pitch regression with MFCC."""
    data = tmp_path / "data"
    args = ["make-probe-data", str(data), "--notes-per-cell", "3", "--chords-per-cell", "3", "--seconds", "1"]
    assert main(args) == 0
    for name in ("pitch_class", "instrument", "chord_quality", "chord_notes", "pitch"):
        assert (data / f"{name}.csv").is_file()
    common = ["--max-epochs", "30", "--patience", "10", "--cache", str(tmp_path / "cache")]
    assert (
        main(["probe", str(data / "pitch_class.csv"), "--features", "cqt", "--out", str(tmp_path / "pc"), *common]) == 0
    )
    result = json.loads((tmp_path / "pc" / "scores.json").read_text())
    assert result["task_type"] == "multiclass" and len(result["classes"]) == 12
    assert result["counts"] == {"train": 108, "valid": 108, "test": 108}
    assert result["summary"]["layers"]["0"]["test"]["accuracy"]["mean"] > 0.5  # chance: 1/12

    assert (
        main(["probe", str(data / "chord_notes.csv"), "--features", "tiny", "--out", str(tmp_path / "cn"), *common])
        == 0
    )
    result = json.loads((tmp_path / "cn" / "scores.json").read_text())
    assert result["task_type"] == "multilabel" and len(result["classes"]) == 12
    ws = result["runs"][0]["weighted_sum"]
    assert set(ws["test"]) == {"roc_auc", "average_precision"} and 0.0 <= ws["test"]["roc_auc"] <= 1.0

    assert main(["probe", str(data / "pitch.csv"), "--features", "cqt", "--out", str(tmp_path / "p"), *common]) == 0
    result = json.loads((tmp_path / "p" / "scores.json").read_text())
    assert result["task_type"] == "regression"
    assert result["summary"]["layers"]["0"]["test"]["r2"]["mean"] > 0.5  # the CQT's peak is the pitch
    assert (tmp_path / "p" / "layers.png").is_file()


def test_scores_json_lists_classes_left_out_of_macro_scores(tmp_path, monkeypatch):
    import mert_fast.probe.features as features_module
    from mert_fast.probe.metrics import classes_left_out
    from mert_fast.probe.probe import run_probe

    rng = np.random.default_rng(0)
    n = 60
    split = ["train", "train", "train", "valid", "test"]
    # tag "rare" only on training clips; tag "always" on every clip: neither has both kinds of example in valid/test
    rows = []
    for i in range(n):
        tags = ["always"] + (["common"] if rng.random() < 0.5 else []) + (["rare"] if i % 5 == 0 else [])
        rows.append((f"{i}.wav", ";".join(tags), split[i % 5]))
    manifest = _write_manifest(tmp_path / "tags.csv", rows)
    x = rng.standard_normal((n, 2, 8)).astype(np.float32)
    monkeypatch.setattr(features_module, "load_features", lambda *a, **k: (x, {"source": "test"}))
    result = run_probe(manifest, "test", tmp_path / "out", cfg=ProbeConfig(max_epochs=2, patience=1))
    saved = json.loads((tmp_path / "out" / "scores.json").read_text())
    assert saved["classes_left_out_of_macro"] == {"valid": ["always", "rare"], "test": ["always", "rare"]}
    assert result["classes_left_out_of_macro"] == saved["classes_left_out_of_macro"]
    # multi-class: a class with no example in the rows is left out of the one-against-the-rest macro ROC-AUC
    assert classes_left_out("multiclass", np.array([0, 2, 2, 0]), 3) == [1]
    assert classes_left_out("multilabel", np.array([[1, 0, 1], [1, 1, 0]]), 3) == [0]
    assert classes_left_out("regression", np.array([1.0, 2.0]), 0) == []
