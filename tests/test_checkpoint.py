"""Checkpoint mechanics without a launcher: atomic saves, pruning, finding, resume checks, the loss-scaler state."""

from __future__ import annotations

import io
import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from mert_fast.train.checkpoint import (
    check_resumable,
    find_checkpoint,
    loss_scaler_state,
    read_meta,
    restore_rng,
    rng_state,
    save_checkpoint,
)
from mert_fast.train.data import hold_out


class _Engine:
    """Writes what DeepSpeed's save_checkpoint writes (files in ``dir/tag``); can fail half-way like a killed run."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail

    def save_checkpoint(self, save_dir: str, tag: str, save_latest: bool = True) -> None:
        assert not save_latest  # the trainer writes `latest` itself, after the rename
        target = Path(save_dir) / tag
        target.mkdir(parents=True, exist_ok=True)
        (target / "mp_rank_00_model_states.pt").write_bytes(b"model")
        if self.fail:
            raise OSError("disk full")
        (target / "zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(b"optim")


def _save(directory: Path, step: int, engine=None, keep_last: int = 2) -> Path:
    run = {"preset": "tiny", "world_size": 2, "seed": 0}
    return save_checkpoint(engine or _Engine(), directory, step, meta={"run": run}, rank_state={"x": step}, rank=0,
                           keep_last=keep_last, barrier=lambda: None)  # fmt: skip


def test_save_is_atomic_and_keeps_the_last_k(tmp_path):
    ckpt = tmp_path / "checkpoints"
    for step in (10, 20, 30):
        path = _save(ckpt, step)
        assert path.name == f"step{step:08d}" and read_meta(path)["step"] == step
        assert torch.load(path / "trainer_rank0.pt") == {"x": step}
        assert (ckpt / "latest").read_text().strip() == path.name
    assert sorted(p.name for p in ckpt.iterdir() if p.is_dir()) == ["step00000020", "step00000030"]
    # a save that dies half-way leaves the finished checkpoints and `latest` as they were, and no step directory
    with pytest.raises(OSError, match="disk full"):
        _save(ckpt, 40, engine=_Engine(fail=True))
    assert (ckpt / "latest").read_text().strip() == "step00000030"
    assert not (ckpt / "step00000040").exists()
    assert find_checkpoint(tmp_path) == ckpt / "step00000030"
    # the next save at that step cleans the leftover temporary directory up
    _save(ckpt, 40)
    assert not list(ckpt.glob(".tmp-*")) and find_checkpoint(ckpt) == ckpt / "step00000040"


def test_find_checkpoint_forms_and_errors(tmp_path):
    ckpt = tmp_path / "run" / "checkpoints"
    _save(ckpt, 5)
    _save(ckpt, 7)
    assert find_checkpoint(tmp_path / "run") == ckpt / "step00000007"
    assert find_checkpoint(ckpt) == ckpt / "step00000007"
    assert find_checkpoint(ckpt / "step00000005") == ckpt / "step00000005"
    (ckpt / "latest").unlink()  # without `latest`: the newest finished one
    assert find_checkpoint(tmp_path / "run") == ckpt / "step00000007"
    with pytest.raises(FileNotFoundError, match="resume: no checkpoint in"):
        find_checkpoint(tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "mert_fast.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="not a mert_fast checkpoint"):
        read_meta(tmp_path / "bad")


def test_check_resumable_names_every_difference():
    meta = {"run": {"preset": "tiny", "seed": 0, "batch_size": 8, "world_size": 4}}
    check_resumable(meta, dict(meta["run"]))
    with pytest.raises(ValueError, match="world_size: checkpoint 4, now 2") as err:
        check_resumable(meta, {**meta["run"], "world_size": 2, "batch_size": 4})
    assert "batch_size: checkpoint 8, now 4" in str(err.value) and "mert-fast export" in str(err.value)


def test_check_resumable_keeps_each_optional_head_on_or_off():
    old = {"run": {"preset": "tiny", "seed": 0}}  # written before the optional terms existed
    check_resumable(old, {**old["run"], "mfcc_weight": 0.0, "clip_weight": 0.0})
    with pytest.raises(ValueError, match=r"mfcc_weight: checkpoint 0.0, now 10.0 \(the term's head"):
        check_resumable(old, {**old["run"], "mfcc_weight": 10.0, "clip_weight": 0.0})
    on = {"run": {**old["run"], "mfcc_weight": 10.0, "clip_weight": 2.0}}
    check_resumable(on, {**on["run"], "mfcc_weight": 5.0, "clip_weight": 1.0})  # another weight: allowed
    with pytest.raises(ValueError, match="clip_weight: checkpoint 2.0, now 0.0"):
        check_resumable(on, {**on["run"], "clip_weight": 0.0})
    # paired batches of renders: off in checkpoints written before the setting existed, and it must match
    check_resumable(old, {**old["run"], "paired_renders": False})
    with pytest.raises(ValueError, match="paired_renders: checkpoint False, now True"):
        check_resumable(old, {**old["run"], "paired_renders": True})
    paired = {"run": {**old["run"], "paired_renders": True}}
    check_resumable(paired, {**paired["run"]})
    with pytest.raises(ValueError, match="paired_renders: checkpoint True, now False"):
        check_resumable(paired, {**paired["run"], "paired_renders": False})


def test_rng_state_round_trip():
    state = rng_state()
    want = (torch.rand(3), np.random.rand(2), random.random())
    restore_rng(state)
    got = (torch.rand(3), np.random.rand(2), random.random())
    assert torch.equal(want[0], got[0]) and (want[1] == got[1]).all() and want[2] == got[2]


def test_dynamic_loss_scaler_round_trip(monkeypatch):
    """DeepSpeed's fp16 scaler goes into the optimizer checkpoint as a pickled object; after a save and load it must
    carry on exactly as the original (scale, hysteresis, the iteration of the last overflow)."""
    from deepspeed.runtime.fp16 import loss_scaler as ds_scaler

    monkeypatch.setattr(ds_scaler.dist, "get_rank", lambda: 0)
    scaler = ds_scaler.DynamicLossScaler(init_scale=2.0**16, scale_window=3, min_scale=1.0, delayed_shift=2,
                                         consecutive_hysteresis=False)  # fmt: skip
    gen = torch.Generator().manual_seed(1)
    for _ in range(11):
        scaler.update_scale(bool(torch.rand((), generator=gen) < 0.4))

    class Optimizer:  # what loss_scaler_state reads: a DeepSpeed optimizer's `loss_scaler`
        loss_scaler = scaler

    before = loss_scaler_state(Optimizer)
    assert before["cur_scale"] != 2.0**16 and before["cur_iter"] == 11 and before["dynamic"] is True
    buffer = io.BytesIO()
    torch.save({"loss_scaler": scaler}, buffer)
    buffer.seek(0)
    restored = torch.load(buffer, weights_only=False)["loss_scaler"]

    class Restored:
        loss_scaler = restored

    assert loss_scaler_state(Restored) == before
    for _ in range(12):  # the same future from the same state
        overflow = bool(torch.rand((), generator=gen) < 0.3)
        scaler.update_scale(overflow)
        restored.update_scale(overflow)
        assert loss_scaler_state(Restored) == loss_scaler_state(Optimizer)
    static = ds_scaler.LossScaler(scale=1.0)  # fp32 / bf16: a fixed scale of 1

    class Static:
        loss_scaler = static

    assert loss_scaler_state(Static) == {"cur_scale": 1.0, "dynamic": False}
    assert loss_scaler_state(object()) is None


def test_hold_out_is_stable_and_by_name(tmp_path):
    files = [tmp_path / f"dir{i % 3}" / f"clip_{i:03d}.flac" for i in range(200)]
    train, val = hold_out(files, 0.1)
    assert sorted(train + val) == sorted(files) and not set(train) & set(val)
    assert 8 <= len(val) <= 35
    # moving the folder or adding files does not move a file between splits
    moved = [Path(os.fspath(p).replace(os.fspath(tmp_path), "/elsewhere")) for p in files]
    assert [p.name for p in hold_out(moved, 0.1)[1]] == [p.name for p in val]
    more = files + [tmp_path / f"new_{i}.flac" for i in range(50)]
    assert set(val) <= set(hold_out(more, 0.1)[1])
    assert hold_out(files[:3], 0.01)[1]  # at least one file held out
    assert hold_out(files, 0.0) == (files, [])
    with pytest.raises(ValueError, match="fraction"):
        hold_out(files, 1.0)
    with pytest.raises(ValueError, match="at least 2 files"):
        hold_out(files[:1], 0.5)


def test_manifest_names_a_truncated_file_and_resume_falls_back(tmp_path, caplog):
    ckpt = tmp_path / "run" / "checkpoints"
    _save(ckpt, 5)
    newest = _save(ckpt, 7)
    manifest = json.loads((newest / "manifest.json").read_text())["files"]
    optim = "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    assert set(manifest) == {"mp_rank_00_model_states.pt", optim, "trainer_rank0.pt", "mert_fast.json"}
    assert manifest[optim]["bytes"] == 5 and len(manifest[optim]["sha256"]) == 64
    # half an optimizer file: the named checkpoint is refused, naming the file
    (newest / optim).write_bytes(b"opt")
    with pytest.raises(ValueError, match=f"{optim} is 3 bytes, the manifest says 5"):
        find_checkpoint(newest)
    # same size, other bytes: the SHA-256 catches it
    (newest / optim).write_bytes(b"OPTIM")
    with pytest.raises(ValueError, match=f"{optim} does not match its SHA-256"):
        find_checkpoint(newest)
    # a run directory (``--resume``, ``--resume auto``) falls back to the newest intact one, with a warning
    with caplog.at_level("WARNING", logger="mert_fast.train.checkpoint"):
        assert find_checkpoint(tmp_path / "run") == ckpt / "step00000005"
    assert "skipping checkpoint" in caplog.text and optim in caplog.text
    (ckpt / "step00000005" / "trainer_rank0.pt").unlink()
    with pytest.raises(ValueError, match="no intact checkpoint.*trainer_rank0.pt is missing"):
        find_checkpoint(tmp_path / "run")


def test_checkpoint_files_get_the_umask_mode(tmp_path):
    old = os.umask(0o022)
    try:
        path = _save(tmp_path / "checkpoints", 3)
    finally:
        os.umask(old)
    for f in (path / "mert_fast.json", path / "manifest.json", tmp_path / "checkpoints" / "latest"):
        assert f.stat().st_mode & 0o777 == 0o644, f
