"""bench/probe_report.py's plumbing: which flags each seed's pre-training gets, and which probe is reported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bench_utils import bench_script


@pytest.fixture(scope="module")
def report():
    return bench_script("probe_report")


def test_real_corpus_is_rendered_once_without_the_probe_pieces(report, tmp_path, monkeypatch):
    calls = []

    def fake(out_dir, clips, *, exclude_probe_sets, ensemble, renders, render_vary):
        calls.append((Path(out_dir), clips, list(exclude_probe_sets), ensemble, renders))
        Path(out_dir).mkdir(parents=True)
        meta = {"clips": [], "ensemble": ensemble, "renders": renders}
        if renders > 1:
            meta["render_vary"] = render_vary
        (Path(out_dir) / "probe_data.json").write_text(json.dumps(meta))
        return Path(out_dir) / "audio"

    monkeypatch.setattr(report, "make_real_corpus", fake)
    data = tmp_path / "probe"
    args = report._corpus_args(tmp_path, data, 90, [2, 0, 1], ("--max-steps", "7"))
    audio = str(tmp_path / "corpus" / "audio")
    teacher = str(tmp_path / "pretrain_s2" / "teacher")
    assert calls == [(tmp_path / "corpus", 90, [data], False, 1)]
    assert args[2] == ("--max-steps", "7", "--data", audio)  # the first seed fits the teacher
    assert args[0] == args[1] == ("--max-steps", "7", "--data", audio, "--teacher", teacher)
    # run again: the corpus is reused; a teacher given by hand is every seed's
    args = report._corpus_args(tmp_path, data, 90, [0, 1], ("--teacher", "T"))
    assert len(calls) == 1
    assert args == {0: ("--teacher", "T", "--data", audio), 1: ("--teacher", "T", "--data", audio)}
    # a corpus of another kind is not silently reused
    with pytest.raises(ValueError, match="corpus of another kind; asked for an ensemble corpus of 1 render"):
        report._corpus_args(tmp_path, data, 90, [0], (), ensemble=True)
    with pytest.raises(ValueError, match="asked for a single-instrument corpus of 2 render"):
        report._corpus_args(tmp_path, data, 90, [0], (), renders=2)
    mixed = tmp_path / "mixed"
    report._corpus_args(mixed, data, 30, [0], (), ensemble=True, renders=2)
    assert calls[-1] == (mixed / "corpus", 30, [data], True, 2)
    report._corpus_args(mixed, data, 30, [0], (), ensemble=True, renders=2)  # reused
    assert len(calls) == 2
    with pytest.raises(ValueError, match=r"ensemble corpus of 2 render\(s\) a clip \(notes vary\)"):
        report._corpus_args(mixed, data, 30, [0], (), ensemble=True, renders=2, render_vary="notes")
    meta = json.loads((mixed / "corpus" / "probe_data.json").read_text())
    del meta["render_vary"]  # written before the setting existed: its renders varied the instruments
    (mixed / "corpus" / "probe_data.json").write_text(json.dumps(meta))
    report._corpus_args(mixed, data, 30, [0], (), ensemble=True, renders=2)
    with pytest.raises(ValueError, match="notes vary"):
        report._corpus_args(mixed, data, 30, [0], (), ensemble=True, renders=2, render_vary="notes")
    with pytest.raises(ValueError, match="corpus_ensemble and corpus_renders need corpus_clips"):
        report.run(tmp_path, [0], data=data, corpus_ensemble=True)
    with pytest.raises(ValueError, match="corpus_ensemble and corpus_renders need corpus_clips"):
        report.run(tmp_path, [0], data=data, corpus_renders=2)


def test_reported_probe_is_the_best_on_valid(report):
    def cell(valid, test):
        return {"valid": {"accuracy": {"mean": valid}}, "test": {"accuracy": {"mean": test}}}

    summary = {"layers": {"0": cell(0.5, 0.9), "1": cell(0.7, 0.4)}, "weighted_sum": cell(0.6, 0.8)}
    assert report._score({"summary": summary}, "accuracy") == (0.4, "layer 1")
    summary["weighted_sum"] = cell(0.8, 0.3)
    assert report._score({"summary": summary}, "accuracy") == (0.3, "weighted sum")


def test_models_from_probes_earlier_models_without_training(report, tmp_path, monkeypatch):
    """--models-from: each seed's model is the one an earlier report pre-trained; nothing is trained again, and a
    seed that report lacks is an error naming the flag."""
    earlier = tmp_path / "earlier"
    for seed in (0, 3):
        (earlier / f"pretrain_s{seed}" / "model").mkdir(parents=True)
        (earlier / f"pretrain_s{seed}" / "model" / "config.json").write_text(
            '{"num_hidden_layers": 4, "hidden_size": 256}'
        )
    (earlier / "report.json").write_text(json.dumps({"train_args": "--max-steps 9", "corpus_clips": 30, "commit": "c"}))
    data = tmp_path / "data"
    data.mkdir()
    (data / "probe_data.json").write_text("{}")
    probed = []

    def no_training(*args, **kwargs):
        raise AssertionError("--models-from must not pre-train")

    def fake_probe(manifest, source, out, cache, seeds):
        probed.append((Path(manifest).name, source, seeds))
        cell = {"valid": {"accuracy": {"mean": 0.5}}, "test": {"accuracy": {"mean": 0.25}}}
        return {"primary_metric": "accuracy", "summary": {"layers": {"0": cell}, "weighted_sum": None}}

    monkeypatch.setattr(report, "_pretrain", no_training)
    monkeypatch.setattr(report, "_random_init", lambda work, seed, pretrained: work / f"random_s{seed}")
    monkeypatch.setattr(report, "run_probe", fake_probe)
    out = report.run(tmp_path / "work", [3, 0], ("key",), data, models_from=earlier)
    assert ("key.csv", str(earlier / "pretrain_s3" / "model"), [3]) in probed
    assert ("key.csv", str(earlier / "pretrain_s0" / "model"), [0]) in probed
    assert out["scores"]["key"]["pretrained"] == [0.25, 0.25]
    assert out["student"] == "4 x 256" and "| pre-trained (4 x 256) |" in report.table(out)
    assert report._recipe_of(earlier) == {"work": str(earlier), "train_args": "--max-steps 9", "corpus_clips": 30,
                                          "commit": "c"}  # fmt: skip
    with pytest.raises(SystemExit, match="--models-from: no pre-trained model of seed 1"):
        report.run(tmp_path / "work", [1], ("key",), data, models_from=earlier)
    with pytest.raises(ValueError, match="train_args and corpus_clips must be unset"):
        report.run(tmp_path / "work", [0], ("key",), data, train_args=("--max-steps", "5"), models_from=earlier)
