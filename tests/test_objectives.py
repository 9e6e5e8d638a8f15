"""The family's other objectives end to end on the CPU (DeepSpeed, gloo, 2 ranks, 40 steps, tiny sizes): music2vec
(``data2vec``: EMA teacher, ZeRO-3), MERT-v0 (k-means codes of MFCCs at 16 kHz / 50 Hz) and MuQ's objective
(Mel-RVQ codes through linear heads). Each must learn (the mean loss of the last 5 steps at least 10% below the
first 5) and export to the matching transformers class."""

from __future__ import annotations

import json
import sys

import pytest
from pretrain_utils import (
    ROOT,
    assert_export_matches,
    assert_learns,
    assert_rows_match,
    deepspeed_cmd,
    metrics,
    run,
    train_args,
)

pytestmark = pytest.mark.slow

STEPS = 40


def test_music2vec_data2vec_zero3_learns_resumes_and_exports(pretrain_data, tmp_path):
    config = ("--deepspeed_config", str(ROOT / "configs/ds_zero3.json"))
    extra = ("--preset", "music2vec-v1", "--model-size", "tiny", "--lr", "2e-3", "--val-fraction", "0",
             "--save-every", "20", *config)  # fmt: skip
    out = tmp_path / "music2vec"
    run(deepspeed_cmd(29650) + train_args(pretrain_data, out, STEPS, *extra), tmp_path)
    rows = metrics(out)
    assert_learns(rows, STEPS)
    assert all(r["target_var"] > 0 and 0.999 <= r["ema_decay"] < 0.9999 for r in rows)
    # the EMA teacher is checkpointed with the student: resumed at step 20, steps 21-40 are the same
    resumed = tmp_path / "resumed"
    run(deepspeed_cmd(29651) + train_args(pretrain_data, resumed, STEPS, *extra, "--resume",
                                          str(out / "checkpoints" / "step00000020")), tmp_path)  # fmt: skip
    again = metrics(resumed)
    assert [r["step"] for r in again] == list(range(21, STEPS + 1))
    assert_rows_match(again, rows)
    assert json.loads((out / "model" / "config.json").read_text())["model_type"] == "data2vec-audio"
    assert_export_matches(out, tmp_path, "Data2VecAudioModel")


def test_mert_v0_kmeans_targets_learn_and_export(pretrain_data, tmp_path):
    teacher = tmp_path / "kmeans"
    run([sys.executable, "-m", "mert_fast.cli", "fit-teacher", str(pretrain_data / "corpus"), "--out", str(teacher),
         "--type", "kmeans", "--feature", "mfcc", "--clusters", "32", "--sample-rate", "16000"], tmp_path)  # fmt: skip
    out = tmp_path / "mert-v0"
    extra = ("--preset", "mert-v0", "--model-size", "tiny", "--lr", "2e-3", "--val-fraction", "0", "--teacher",
             str(teacher))  # fmt: skip
    run(deepspeed_cmd(29660) + train_args(pretrain_data, out, STEPS, *extra), tmp_path)
    rows = metrics(out)
    assert_learns(rows, STEPS)
    assert "acc_0" in rows[0] and "acc_1" not in rows[0]  # one label stream
    assert_export_matches(out, tmp_path, "HubertModel")


def test_muq_linear_heads_learn_and_export(pretrain_data, tmp_path):
    out = tmp_path / "muq"
    extra = ("--objective", "muq", "--val-fraction", "0")
    run(deepspeed_cmd(29670) + train_args(pretrain_data, out, STEPS, *extra), tmp_path)
    rows = metrics(out)
    assert_learns(rows, STEPS)
    assert all(r["cqt_mse"] == 0 for r in rows)  # no CQT term
    assert_export_matches(out, tmp_path, "HubertModel")
