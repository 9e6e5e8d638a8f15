"""End-to-end pre-training on the CPU: DeepSpeed (gloo, 2 ranks, ZeRO-2 and ZeRO-3), torchrun and plain python."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["DS_ACCELERATOR"] = "cpu"
    env["OMP_NUM_THREADS"] = "1"
    env.pop("TRITON_INTERPRET", None)
    return env


def _run(cmd: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
        )
    return proc


@pytest.fixture(scope="module")
def corpus_and_teacher(tmp_path_factory):
    """A small synthetic corpus and a Mel-RVQ teacher fitted on it, shared by the runs below."""
    from mert_fast.model.teachers import fit_mel_rvq
    from mert_fast.train.data import AudioCorpus
    from mert_fast.train.synth import make_corpus

    root = tmp_path_factory.mktemp("pretrain")
    make_corpus(root / "corpus", n_clips=24, seconds=5.0, sample_rate=24000, seed=0)
    corpus = AudioCorpus(root / "corpus", 24000, min_seconds=3.0)
    teacher = fit_mel_rvq((corpus.load(i) for i in range(len(corpus))), 24000, codebook_size=128, steps=60, seed=0)
    teacher.save(root / "teacher")
    return root


def _args(root: Path, out: Path, steps: int) -> list[str]:
    return [
        "--preset", "tiny", "--data", str(root / "corpus"), "--teacher", str(root / "teacher"),
        "--output-dir", str(out), "--max-steps", str(steps), "--log-every", "1", "--batch-size", "4",
        "--crop-seconds", "3", "--warmup-steps", "5", "--num-workers", "1", "--seed", "0",
    ]  # fmt: skip


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]


def _assert_learns(rows: list[dict], steps: int) -> None:
    assert [r["step"] for r in rows] == list(range(1, steps + 1))
    for r in rows:
        for key in ("loss", "ce", "cqt_mse", "features_pen", "grad_norm", "lr"):
            assert r[key] is not None and r[key] == r[key] and abs(r[key]) < float("inf"), (key, r)
    first = sum(r["loss"] for r in rows[:5]) / 5
    last = sum(r["loss"] for r in rows[-5:]) / 5
    assert last <= 0.9 * first, f"loss did not fall by 10%: first-5 mean {first:.4f}, last-5 mean {last:.4f}"


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_two_ranks_learns(corpus_and_teacher, tmp_path, stage):
    deepspeed = shutil.which("deepspeed", path=os.path.dirname(sys.executable)) or shutil.which("deepspeed")
    if deepspeed is None:
        pytest.fail("the deepspeed launcher is not installed (pip install .[train])")
    out = tmp_path / f"zero{stage}"
    cmd = [deepspeed, "--num_gpus", "2", "--master_port", str(29600 + stage), str(ROOT / "train.py")]
    cmd += _args(corpus_and_teacher, out, 40) + ["--deepspeed_config", str(ROOT / f"configs/ds_zero{stage}.json")]
    _run(cmd, tmp_path)
    _assert_learns(_metrics(out), 40)
    assert (out / "loss.png").is_file() and (out / "model" / "model.safetensors").is_file()
    assert any((out / "checkpoints").iterdir())


def test_torchrun_two_ranks(corpus_and_teacher, tmp_path):
    out = tmp_path / "torchrun"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29611",
           str(ROOT / "train.py")] + _args(corpus_and_teacher, out, 6)  # fmt: skip
    _run(cmd, tmp_path)
    assert len(_metrics(out)) == 6


def test_plain_python_single_process(corpus_and_teacher, tmp_path):
    out = tmp_path / "plain"
    proc = _run([sys.executable, str(ROOT / "train.py")] + _args(corpus_and_teacher, out, 4), tmp_path)
    assert len(_metrics(out)) == 4
    assert "metrics" in proc.stdout and str(out / "model") in proc.stdout
    from mert_fast.model.mert import MERTModel

    model = MERTModel.from_pretrained(out / "model")
    with torch.no_grad():
        assert torch.isfinite(model(0.1 * torch.randn(1, 8000)).last_hidden_state).all()
