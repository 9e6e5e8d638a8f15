"""pytest-benchmark plumbing: the device to bench, honest GPU timings, throughput, provenance in the JSON.

Benchmarks live in ``bench/bench_<op>.py`` and are collected by this file (pytest's default only collects
``test_*.py``). Run them with ``python -m pytest bench/ --benchmark-json=bench/results/<device>/<file>.json``;
``bench/render_table.py`` turns the JSON into the README's speed table. No CUDA call happens at import.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
DEVICE_ENV = "MERT_FAST_BENCH_DEVICE"


def pytest_addoption(parser):
    parser.addoption(
        "--device",
        default=None,
        choices=("cpu", "cuda"),
        help=f"device the GPU cases run on (default: ${DEVICE_ENV}, else cuda when available, else cpu)",
    )


def pytest_configure(config):
    requested_device(config)  # a bad --device or $MERT_FAST_BENCH_DEVICE stops the run before collection


def pytest_collect_file(file_path, parent):
    # a file named on the command line is collected by pytest itself; collecting it here too would run it twice
    if file_path.suffix == ".py" and file_path.name.startswith("bench_") and not parent.session.isinitpath(file_path):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


def requested_device(config) -> str:
    """``--device``, else ``$MERT_FAST_BENCH_DEVICE``, else ``cuda`` when a GPU is visible, else ``cpu``."""
    device = config.getoption("--device") or os.environ.get(DEVICE_ENV, "").strip().lower()
    if not device:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda"):
        raise pytest.UsageError(f"{DEVICE_ENV} must be cpu or cuda; got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise pytest.UsageError("device cuda requested but torch sees no CUDA GPU")
    return device


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown cpu"


def device_name(device: str | torch.device) -> str:
    """The GPU's name for a CUDA device, the CPU model for ``cpu``."""
    device = torch.device(device)
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()


def device_slug(device: str | torch.device) -> str:
    """The results folder of a device: ``cpu``, or the GPU name lowercased with runs of other characters as '-'."""
    device = torch.device(device)
    if device.type != "cuda":
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "-", device_name(device).lower()).strip("-")


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def git_state() -> dict[str, Any]:
    """HEAD and whether the tree differs from it (results excluded); ``$MERT_FAST_COMMIT`` names it without git."""
    commit = _git("rev-parse", "HEAD") or os.environ.get("MERT_FAST_COMMIT") or "unknown"
    status = _git("status", "--porcelain", "--", ".", ":(exclude)bench/results")
    return {
        "commit": commit,
        "commit_short": commit[:7] if commit != "unknown" else commit,
        "dirty": bool(status) if status is not None else None,
    }


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def pytest_benchmark_update_json(config, benchmarks, output_json):
    device = requested_device(config)
    cuda = device == "cuda"
    output_json["mert_fast"] = {
        "device": device,
        "device_name": device_name(device),
        "device_slug": device_slug(device),
        "cpu": cpu_model(),
        "cpu_threads": torch.get_num_threads(),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if cuda else None,
            "triton": _version("triton"),
            "nnAudio": _version("nnAudio"),
            "librosa": _version("librosa"),
            "numpy": _version("numpy"),
            "mert_fast": _version("mert_fast"),
        },
        "driver": _nvidia_driver() if cuda else None,
        "backend_env": os.environ.get("MERT_FAST_BACKEND"),
        **git_state(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _nvidia_driver() -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip().splitlines()[0] if out.stdout.strip() else None


@pytest.fixture(scope="session")
def bench_device(pytestconfig) -> str:
    """``"cpu"`` or ``"cuda"``: where the GPU cases run (the CPU cases always run)."""
    return requested_device(pytestconfig)


@pytest.fixture
def device_gate(bench_device):
    """``device_gate(device)`` skips a GPU case when the bench device is the CPU (the CPU cases always run)."""

    def gate(device: str) -> None:
        if device == "cuda" and bench_device != "cuda":
            pytest.skip("GPU case: the bench device is cpu (--device / MERT_FAST_BENCH_DEVICE)")

    return gate


def _parametrized_here(metafunc, name: str) -> bool:
    for mark in metafunc.definition.iter_markers("parametrize"):
        names = mark.args[0]
        if name in (names.replace(" ", "").split(",") if isinstance(names, str) else names):
            return True
    return False


def pytest_generate_tests(metafunc):
    """A bench module's ``CASES`` parametrize the ``case`` fixture of its tests, with the ids the module's
    ``case_id(case)`` gives (default: the label, dashed), unless a test parametrizes ``case`` itself."""
    cases = getattr(metafunc.module, "CASES", None)
    if "case" not in metafunc.fixturenames or cases is None or _parametrized_here(metafunc, "case"):
        return
    case_id = getattr(metafunc.module, "case_id", lambda c: c.label.replace(" ", "-"))
    metafunc.parametrize("case", cases, ids=[case_id(c) for c in cases], indirect=True)


@pytest.fixture
def case(request, device_gate):
    """The module's case this test runs (see :func:`pytest_generate_tests`); a GPU case is skipped when the bench
    device is the CPU."""
    device_gate(request.param.device)
    return request.param


@pytest.fixture
def use_backend(monkeypatch):
    """``use_backend(backend, device)`` sets ``MERT_FAST_BACKEND`` for the case, or skips the pairs that are no
    speed path: Triton off CUDA (it runs CPU tensors only through its interpreter), the CUDA C++ backend off CUDA
    or when ``mert_fast._C`` was not built."""

    def use(backend: str, device: str) -> None:
        if backend == "triton" and device != "cuda":
            pytest.skip("the Triton kernels run on CPU tensors only through their interpreter: not a speed path")
        if backend == "cuda":
            from mert_fast._native import native

            if device != "cuda":
                pytest.skip("the CUDA C++ kernels run on CUDA tensors only")
            if native() is None:
                pytest.skip("mert_fast._C was not built")
        monkeypatch.setenv("MERT_FAST_BACKEND", backend)

    return use


@pytest.fixture
def true_fp32_matmul():
    """Matmuls in true fp32 for the duration (no TF32, whatever the process default): fp32 cases stay fp32."""
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = old


def synchronized(fn: Callable[[], Any], device: str | torch.device) -> Callable[[], Any]:
    """``fn`` followed by ``torch.cuda.synchronize()`` on a CUDA device, so a timer sees the work, not the launch."""
    if torch.device(device).type != "cuda":
        return fn

    def run() -> Any:
        out = fn()
        torch.cuda.synchronize()
        return out

    return run


class Measure:
    """Times one callable with pytest-benchmark and records what the JSON needs in ``benchmark.extra_info``."""

    def __init__(self, benchmark) -> None:
        self.benchmark = benchmark

    @property
    def enabled(self) -> bool:
        return not getattr(self.benchmark, "disabled", False)

    def __call__(
        self,
        fn: Callable[[], Any],
        *,
        device: str | torch.device,
        rounds: int | None = None,
        warmup: int = 1,
        setup: Callable[[], None] | None = None,
    ) -> Any:
        """Benchmark ``fn()`` on ``device``: calibrated rounds by default, ``rounds`` fixed rounds of one call
        (slow peers) when given, each after ``setup()`` when given (untimed). ``warmup`` untimed calls come
        first (compilation, autotuning, allocator). On CUDA also records the peak memory one call adds and,
        without ``setup``, ``triton.testing.do_bench``'s median as a cross-check of the timer.
        """
        device = torch.device(device)
        run = synchronized(fn, device)
        info = self.benchmark.extra_info
        info["device"] = device_name(device)
        info["device_type"] = device.type
        for _ in range(warmup):
            if setup is not None:
                setup()
            run()
        if device.type == "cuda" and self.enabled:
            if setup is not None:
                setup()
            torch.cuda.synchronize()
            before = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            run()
            info["peak_extra_mib"] = round((torch.cuda.max_memory_allocated(device) - before) / 2**20, 1)
        if rounds is None and setup is None:
            out = self.benchmark(run)
        else:
            out = self.benchmark.pedantic(run, setup=setup, rounds=rounds or 1, iterations=1, warmup_rounds=0)
        if device.type == "cuda" and self.enabled and setup is None:
            import triton.testing

            info["do_bench_median_ms"] = float(triton.testing.do_bench(fn, return_mode="median"))
        return out

    def median_s(self) -> float | None:
        stats = getattr(self.benchmark, "stats", None)
        return float(stats.stats.median) if stats else None

    def describe(
        self, op: str, case: str, implementation: str, *, baseline: bool, group: str | None = None, **fields: Any
    ) -> None:
        """Name the benchmark's group (``"<op> <case>"`` unless ``group``) and record what every result row
        carries: the op, the case, the implementation, whether it is the baseline, then the case's ``fields``."""
        self.benchmark.group = group or f"{op} {case}"
        self.benchmark.extra_info.update(op=op, case=case, implementation=implementation, baseline=baseline, **fields)

    def record_tflops(self, flops: float) -> None:
        """Record ``tflops``: ``flops`` (counted per call) per second of the benchmark's median, in 10^12."""
        median = self.median_s()
        if median:
            self.benchmark.extra_info["tflops"] = flops / median / 1e12

    def throughput(self, audio_seconds: float) -> None:
        """Record ``audio_seconds`` per call and ``audio_seconds_per_s`` from the benchmark's median."""
        info = self.benchmark.extra_info
        info["audio_seconds"] = audio_seconds
        median = self.median_s()
        if median:
            info["audio_seconds_per_s"] = audio_seconds / median


@pytest.fixture
def measure(benchmark) -> Measure:
    return Measure(benchmark)
