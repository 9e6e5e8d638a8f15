"""Helpers of the end-to-end pre-training tests: the launcher environment, runs, metrics."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: Fields that depend on wall time, not on the computation.
TIMING_KEYS = {"audio_seconds_per_s", "data_fraction", "teacher_fraction", "tflops", "mfu", "peak_memory_mb"}


def env() -> dict[str, str]:
    out = dict(os.environ)
    out["PYTHONPATH"] = str(ROOT) + os.pathsep + out.get("PYTHONPATH", "")
    out["DS_ACCELERATOR"] = "cpu"
    out["OMP_NUM_THREADS"] = "1"
    out.pop("TRITON_INTERPRET", None)
    return out


def check(proc: subprocess.CompletedProcess, cmd: list[str]) -> subprocess.CompletedProcess:
    if proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
        )
    return proc


def run(cmd: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    return check(subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True, timeout=timeout), cmd)


def deepspeed_cmd(port: int) -> list[str]:
    launcher = shutil.which("deepspeed", path=os.path.dirname(sys.executable)) or shutil.which("deepspeed")
    if launcher is None:
        pytest.fail("the deepspeed launcher is not installed (pip install .[train])")
    return [launcher, "--num_gpus", "2", "--master_port", str(port), str(ROOT / "train.py")]


def train_args(data: Path, out: Path, steps: int, *extra: str) -> list[str]:
    return [
        "--preset", "tiny", "--data", str(data / "corpus"), "--teacher", str(data / "teacher"),
        "--output-dir", str(out), "--max-steps", str(steps), "--log-every", "1", "--batch-size", "4",
        "--crop-seconds", "3", "--warmup-steps", "5", "--num-workers", "1", "--seed", "0", *extra,
    ]  # fmt: skip


def metrics(out: Path, split: str = "train") -> list[dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("split", "train") == split]
