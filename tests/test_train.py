"""End-to-end pre-training on the CPU: DeepSpeed (gloo, 2 ranks, ZeRO-2 and ZeRO-3), torchrun and plain python;
validation, tensorboard, the profiler trace, and ``mert-fast export`` of the checkpoints."""

from __future__ import annotations

import math
import sys

import pytest
import torch
from pretrain_utils import ROOT, assert_export_matches, assert_learns, deepspeed_cmd, metrics, run, train_args

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_two_ranks_learns_and_exports(pretrain_data, tmp_path, stage):
    out = tmp_path / f"zero{stage}"
    config = str(ROOT / f"configs/ds_zero{stage}.json")
    extra = ("--val-fraction", "0.1", "--val-every", "20", "--deepspeed_config", config)
    if stage == 3:  # the timbre and clip terms' heads under ZeRO-3's partitioned parameters
        extra += ("--mfcc-weight", "5", "--clip-weight", "1")
    cmd = deepspeed_cmd(29600 + stage) + train_args(pretrain_data, out, 40, *extra)
    run(cmd, tmp_path)
    rows = metrics(out)
    assert_learns(rows, 40)
    assert all(math.isfinite(r[k]) for r in rows for k in ("ce", "cqt_mse", "features_pen"))
    val = metrics(out, "val")
    assert [r["step"] for r in val] == [20, 40]
    if stage == 3:
        # 1.0 is the best constant prediction of the standardised MFCCs: below it, the masked frames' timbre is learnt
        assert all(math.isfinite(r["mfcc_mse"]) for r in rows) and val[-1]["mfcc_mse"] < 1.0, val
        # the clip term among the rank's 4 clips: an InfoNCE over 4 candidates (log 4 at chance) and an accuracy
        for r in rows + val:
            assert 0 < r["clip_loss"] < 3 * math.log(4) and 0 <= r["clip_acc"] <= 1, r
    else:
        assert "mfcc_mse" not in rows[0] and "clip_loss" not in rows[0]
    assert all(0 <= r["acc_0"] <= 1 and r["loss"] > 0 and r["clips"] >= 2 for r in val)
    assert (out / "loss.png").is_file() and (out / "model" / "model.safetensors").is_file()
    assert any((out / "tensorboard").glob("events.out.tfevents.*"))
    assert (out / "checkpoints" / "latest").read_text().strip() == "step00000040"
    # ZeRO-3: the shards of both ranks are gathered; ZeRO-2: the fp32 partitions
    assert_export_matches(out, tmp_path)


def test_torchrun_two_ranks(pretrain_data, tmp_path):
    out = tmp_path / "torchrun"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29611",
           str(ROOT / "train.py")] + train_args(pretrain_data, out, 6)  # fmt: skip
    run(cmd, tmp_path)
    assert len(metrics(out)) == 6


def test_plain_python_single_process_with_profile(pretrain_data, tmp_path):
    out = tmp_path / "plain"
    proc = run([sys.executable, str(ROOT / "train.py")] + train_args(pretrain_data, out, 5, "--profile", "2"), tmp_path)
    assert len(metrics(out)) == 5
    assert "metrics" in proc.stdout and str(out / "model") in proc.stdout
    traces = list((out / "profile").glob("*.pt.trace.json*"))
    assert traces and traces[0].stat().st_size > 1000, traces
    from mert_fast.model.mert import MERTModel

    model = MERTModel.from_pretrained(out / "model")
    with torch.no_grad():
        assert torch.isfinite(model(0.1 * torch.randn(1, 8000)).last_hidden_state).all()


def test_paired_renders_train_and_validate(pretrain_data, tmp_path):
    """--paired-renders with the clip term on renders: a corpus whose clips each have a second render (here the clip
    reversed in time and quieter) trains and validates in pairs, each crop matched to its partner among the rank's
    other 3 (an InfoNCE over 3 candidates); the validation clips are whole pairs held out together. The teachers
    hear each pair's second render (``--teacher-view second``)."""
    import json

    import numpy as np
    import soundfile as sf

    corpus = tmp_path / "renders"
    corpus.mkdir()
    for path in sorted((pretrain_data / "corpus").glob("*.flac"))[:12]:
        x, rate = sf.read(path, dtype="float32")
        sf.write(corpus / path.name, x, rate)
        sf.write(corpus / f"{path.stem}.r1.flac", 0.5 * np.ascontiguousarray(x[::-1]), rate)
    out = tmp_path / "paired"
    extra = ("--paired-renders", "--clip-weight", "1", "--clip-views", "renders", "--val-fraction", "0.25",
             "--val-every", "4", "--teacher-view", "second")  # fmt: skip
    args = train_args(pretrain_data, out, 4, *extra)
    args[args.index("--data") + 1] = str(corpus)
    run([sys.executable, str(ROOT / "train.py")] + args, tmp_path)
    saved = json.loads((out / "train_config.json").read_text())
    assert saved["paired_renders"] is True and saved["teacher_view"] == "second"
    rows, val = metrics(out), metrics(out, "val")
    assert len(rows) == 4 and all(0 < r["clip_loss"] < 3 * math.log(3) for r in rows)
    assert [r["step"] for r in val] == [4] and val[0]["clips"] % 2 == 0 and 0 <= val[0]["clip_acc"] <= 1


def test_frozen_feature_projection_stays_at_its_initialisation(pretrain_data, tmp_path):
    """--freeze-feature-projection: after 5 steps the input projection is bit for bit the student's initialisation
    (``torch.manual_seed(seed); MERTModel(config)``, as the trainer builds it) while the encoder has moved."""
    from mert_fast.model.mert import MERTModel

    out = tmp_path / "frozen"
    extra = ("--freeze-feature-projection", "--precision", "fp32")
    run([sys.executable, str(ROOT / "train.py")] + train_args(pretrain_data, out, 5, *extra), tmp_path)
    trained = MERTModel.from_pretrained(out / "model")
    torch.manual_seed(0)
    init = MERTModel(trained.config)
    frozen = dict(init.feature_projection.named_parameters())
    assert frozen, "the projection has parameters to freeze"
    for name, param in trained.feature_projection.named_parameters():
        torch.testing.assert_close(param, frozen[name], rtol=0, atol=0, msg=f"feature_projection.{name} moved")
    start = dict(init.encoder.named_parameters())
    moved = [n for n, p in trained.encoder.named_parameters() if not torch.equal(p, start[n])]
    assert len(moved) > len(list(trained.encoder.parameters())) // 2, moved
