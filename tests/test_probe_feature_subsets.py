"""bench/probe_feature_subsets.py: dimension ranges, and a subset that carries the label against one that does not."""

from __future__ import annotations

import json

import numpy as np
import pytest
from bench_utils import bench_script


@pytest.fixture(scope="module")
def subsets():
    return bench_script("probe_feature_subsets")


def test_parse_dims(subsets):
    assert subsets.parse_dims("0-2,5,2-3", 6) == [0, 1, 2, 5, 3]
    for bad in ("4-7", "3-1", "-1", "a"):
        with pytest.raises(ValueError, match="not a range of dimensions in"):
            subsets.parse_dims(bad, 6)


def test_a_subset_with_the_label_beats_one_without(subsets, tmp_path):
    rng = np.random.default_rng(0)
    n, classes = 240, 3
    labels = rng.integers(classes, size=n)
    splits = ["train"] * 160 + ["valid"] * 40 + ["test"] * 40
    rows = ["path,label,split"] + [f"clip{i}.wav,c{labels[i]},{splits[i]}" for i in range(n)]
    (tmp_path / "task.csv").write_text("\n".join(rows) + "\n")
    feats = rng.normal(size=(n, 1, 4)).astype(np.float32)
    feats[:, 0, 2] += 6.0 * labels  # dimension 2 carries the class
    np.savez(tmp_path / "f.npz", features=feats)
    out = tmp_path / "scores.json"
    common = ["--manifest", str(tmp_path / "task.csv")]
    report = subsets.main([*common, "--features", str(tmp_path / "f.npz"), "--subset", "signal=2",
                           "--subset", "noise=0-1,3", "--seeds", "0,1", "--out", str(out)])  # fmt: skip
    assert json.loads(out.read_text()) == report
    assert report["subsets"]["noise"]["dims"] == [0, 1, 3]
    assert min(report["subsets"]["signal"]["test"]) > 0.9
    assert max(report["subsets"]["noise"]["test"]) < 0.6
    np.savez(tmp_path / "g.npz", features=feats[:10])
    with pytest.raises(SystemExit, match="expected \\(240, 1, D\\)"):
        subsets.main([*common, "--features", str(tmp_path / "g.npz"), "--subset", "a=0"])
