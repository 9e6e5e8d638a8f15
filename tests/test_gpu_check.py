"""bench/gpu_check.sh --quick fits a GPU visit: its plan, read without a GPU."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "bench" / "gpu_check.sh"
pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def _run(*args: str) -> str:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, check=True, cwd=REPO).stdout


def test_quick_dry_run_lists_steps_within_eight_minutes():
    out = _run("--quick", "--dry-run")
    steps = dict(re.findall(r"^  ([\w-]+)\s+(\d+) s  ", out, re.M))
    total = int(steps.pop("total"))
    assert {
        "build",
        "tests",
        "bench-cqt",
        "bench-rvq",
        "bench-attention",
        "bench-ce",
        "bench-extract",
        "bench-train",
    } <= set(steps)
    assert sum(map(int, steps.values())) == total <= 480
    assert all(int(v) > 0 for v in steps.values())
    deadline = int(re.search(r"any step at (\d+) s", out).group(1))
    assert total <= deadline <= 480


def test_quick_cases_are_few_and_exist():
    """The headline cases are a short list of real benchmark node ids (collected here, on the CPU)."""
    cases = _run("--list-cases").split("\n")
    cases = [c for c in cases if c]
    assert 20 <= len(cases) <= 60 and len(set(cases)) == len(cases)
    for name in ("cqt", "rvq", "attention", "codebook_ce", "model", "train_step"):
        assert any(c.startswith(f"bench/bench_{name}.py::") for c in cases), name
    assert all("cuda" in c for c in cases)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--co", "-q", "-p", "no:cacheprovider", *cases],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    collected = [line for line in proc.stdout.splitlines() if "::" in line]
    assert len(collected) == len(cases)


def test_unknown_argument_is_refused():
    proc = subprocess.run(["bash", str(SCRIPT), "--qiuck"], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2 and "unknown argument" in proc.stderr
