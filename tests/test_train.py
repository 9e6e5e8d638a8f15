"""End-to-end pre-training on the CPU: DeepSpeed (gloo, 2 ranks, ZeRO-2 and ZeRO-3), torchrun and plain python;
validation, tensorboard, the profiler trace, and ``mert-fast export`` of the checkpoints."""

from __future__ import annotations

import sys

import pytest
import torch
from pretrain_utils import ROOT, deepspeed_cmd, metrics, run, train_args

pytestmark = pytest.mark.slow


def _assert_learns(rows: list[dict], steps: int) -> None:
    assert [r["step"] for r in rows] == list(range(1, steps + 1))
    for r in rows:
        for key in ("loss", "ce", "cqt_mse", "features_pen", "grad_norm", "lr"):
            assert r[key] is not None and r[key] == r[key] and abs(r[key]) < float("inf"), (key, r)
    first = sum(r["loss"] for r in rows[:5]) / 5
    last = sum(r["loss"] for r in rows[-5:]) / 5
    assert last <= 0.9 * first, f"loss did not fall by 10%: first-5 mean {first:.4f}, last-5 mean {last:.4f}"


def _assert_export_matches(run_dir, export_dir) -> None:
    """The export loads in MERTModel and transformers with no key left over and gives the trained model's features."""
    from transformers import HubertModel

    from mert_fast.model.mert import MERTModel

    trained = MERTModel.from_pretrained(run_dir / "model")
    exported = MERTModel.from_pretrained(export_dir)
    hf, info = HubertModel.from_pretrained(export_dir, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    audio = 0.1 * torch.randn(2, 24000 + 77)
    with torch.no_grad():
        want = trained(audio, output_hidden_states=True).hidden_states
        got = exported(audio, output_hidden_states=True).hidden_states
        theirs = hf.eval()(audio, output_hidden_states=True).hidden_states
    for w, g, t in zip(want, got, theirs, strict=True):
        scale = w.abs().max()
        assert (g - w).abs().max() <= 1e-5 * scale and (t - w).abs().max() <= 1e-4 * scale


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_two_ranks_learns_and_exports(pretrain_data, tmp_path, stage):
    out = tmp_path / f"zero{stage}"
    config = str(ROOT / f"configs/ds_zero{stage}.json")
    extra = ("--val-fraction", "0.1", "--val-every", "20", "--deepspeed_config", config)
    cmd = deepspeed_cmd(29600 + stage) + train_args(pretrain_data, out, 40, *extra)
    run(cmd, tmp_path)
    _assert_learns(metrics(out), 40)
    val = metrics(out, "val")
    assert [r["step"] for r in val] == [20, 40]
    assert all(0 <= r["acc_0"] <= 1 and r["loss"] > 0 and r["clips"] >= 2 for r in val)
    assert (out / "loss.png").is_file() and (out / "model" / "model.safetensors").is_file()
    assert any((out / "tensorboard").glob("events.out.tfevents.*"))
    assert (out / "checkpoints" / "latest").read_text().strip() == "step00000040"
    # ZeRO-3: the shards of both ranks are gathered; ZeRO-2: the fp32 partitions
    run([sys.executable, "-m", "mert_fast.cli", "export", str(out), str(tmp_path / "export")], tmp_path)
    _assert_export_matches(out, tmp_path / "export")


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
