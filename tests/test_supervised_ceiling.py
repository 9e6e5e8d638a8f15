"""bench/supervised_ceiling.py: it starts from the report's random init, learns held-out labels, writes what
``probe_report.py --models-from`` reads, and rejects bad settings."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch
from bench_utils import bench_script

from mert_fast.model.mert import MERTModel

RATE = 24000


@pytest.fixture(scope="module")
def ceiling():
    return bench_script("supervised_ceiling")


@pytest.fixture(scope="module")
def labelled_corpus(tmp_path_factory):
    """Two classes a spectrum tells apart: tones under 400 Hz and white noise, 0.6-1.0 s, random levels."""
    root = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    rows = ["path,label,split"]
    for label in ("tone", "noise"):
        for i in range(14):
            n = int(RATE * rng.uniform(0.6, 1.0))
            if label == "tone":
                clip = np.sin(2 * np.pi * rng.uniform(100, 400) * np.arange(n) / RATE)
            else:
                clip = rng.normal(size=n)
            clip = 0.5 * rng.uniform(0.1, 1.0) * clip / np.abs(clip).max()
            sf.write(root / f"{label}{i}.wav", clip.astype(np.float32), RATE)
            split = "train" if i < 8 else "valid" if i < 10 else "test"
            rows.append(f"{label}{i}.wav,{label},{split}")
    (root / "kind.csv").write_text("\n".join(rows) + "\n")
    return root


def test_it_starts_from_the_random_init_of_the_report(ceiling, tmp_path):
    report = bench_script("probe_report")
    for seed in (0, 3):
        start = ceiling.initial_student(seed)
        other = ceiling.initial_student(seed + 1)
        other.save_pretrained(tmp_path / f"other{seed}")
        random_column = MERTModel.from_pretrained(report._random_init(tmp_path, seed, tmp_path / f"other{seed}"))
        a, b, c = start.state_dict(), random_column.state_dict(), other.state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)
        assert not all(torch.equal(a[k], c[k]) for k in a)


def test_it_learns_held_out_labels_and_writes_the_report_layout(ceiling, labelled_corpus, tmp_path):
    out = tmp_path / "ceiling"
    records = ceiling.main(["--corpus", str(labelled_corpus), "--task", "kind", "--out", str(out), "--seeds", "0",
                            "--steps", "60", "--batch-size", "4", "--crop-seconds", "0.5"])  # fmt: skip
    record = records[0]
    assert record["labels"] == ["noise", "tone"]
    assert (record["fit_clips"], record["test_clips"]) == (20, 8)
    assert record["crop_samples"] == 12000
    assert json.loads((out / "pretrain_s0" / "supervised.json").read_text()) == json.loads(json.dumps(record))
    losses = list(record["loss"].values())
    assert losses[-1] < 0.5 * losses[0]
    assert record["test_accuracy"] == 1.0
    model_dir = bench_script("probe_report")._trained_model(out, 0)
    trained = MERTModel.from_pretrained(model_dir).state_dict()
    start = ceiling.initial_student(0).state_dict()
    key = "feature_projection.projection.weight"
    assert not torch.equal(trained[key], start[key])
    summary = json.loads((out / "report.json").read_text())
    assert summary["train_args"].startswith("supervised: ") and "--steps 60" in summary["train_args"]


def test_bad_settings(ceiling, labelled_corpus, tmp_path):
    manifest = labelled_corpus / "kind.csv"
    with pytest.raises(ValueError, match="must be positive"):
        ceiling.train_supervised(manifest, 0, steps=0)
    with pytest.raises(ValueError, match="the student needs at least"):
        ceiling.train_supervised(manifest, 0, steps=1, crop_seconds=0.001)
    with pytest.raises(SystemExit, match="--task: no manifest"):
        ceiling.main(["--corpus", str(labelled_corpus), "--task", "missing", "--out", str(tmp_path)])
