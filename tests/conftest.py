"""Shared test set-up: seeds, devices, the ``cuda`` marker and Triton's interpreter (no CUDA call at import)."""

from __future__ import annotations

import os
import random
import zlib

import numpy as np
import pytest
import torch


def pytest_configure(config):
    # Triton decides at decoration time whether kernels are interpreted, so this must happen before any
    # kernel module is imported: without a GPU every Triton kernel runs on CPU tensors through the interpreter.
    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
    # pytest -n N (pytest-xdist): N workers share the cores; more threads than cores makes OpenMP spin-wait, which
    # slows every worker several times over.
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        # Threads waiting at the end of a parallel region sleep instead of spinning in the programs the tests start:
        # with the other worker busy, the main command's two threads took 133 s spinning against 100 s sleeping for
        # 150 steps on 2 cores. The numbers they compute do not change.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # Each worker (and the programs a test starts, unless the test sets its own) gets its share of the cores, unless
    # OMP_NUM_THREADS was set by hand.
    if workers > 1 and "OMP_NUM_THREADS" not in os.environ:
        threads = max(1, (os.cpu_count() or 1) // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


def pytest_collection_modifyitems(config, items):
    # Files with a test marked slow first, each file's tests kept together and in order. With pytest -n N --dist
    # loadfile --no-loadscope-reorder (README's test command) the long files start at once and the short ones fill
    # in around them; xdist's default reorder (files with the most tests first) would leave the main command's loss
    # curve, a file of one five-minute test, running alone at the end.
    slow_files = {item.path for item in items if "slow" in item.keywords}
    items.sort(key=lambda item: item.path not in slow_files)
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """With MERT_FAST_REQUIRE_TRITON=1 (CI), a skipped Triton test is a failure: a missing triton must not pass."""
    outcome = yield
    report = outcome.get_result()
    runs_triton = "triton" in item.keywords or "triton_backend" in getattr(item, "fixturenames", ())
    if report.skipped and runs_triton and "cuda" not in item.keywords:
        if os.environ.get("MERT_FAST_REQUIRE_TRITON") == "1":
            report.outcome = "failed"
            report.longrepr = f"Triton test skipped but MERT_FAST_REQUIRE_TRITON=1: {report.longrepr}"


@pytest.fixture(autouse=True)
def _seed(request):
    """A reproducible seed per test (from its id): fresh random inputs in every test, repeatable failures."""
    seed = (zlib.crc32(request.node.nodeid.encode()) + int(os.environ.get("MERT_FAST_TEST_SEED", "0"))) % (2**31)
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    yield seed


def devices() -> list[str]:
    """``["cpu"]`` plus ``"cuda"`` when a GPU is present (the nnAudio pattern)."""
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture
def triton_backend(monkeypatch):
    """Run ops through their Triton kernels: on a GPU for CUDA tensors, else on CPU through the interpreter."""
    import triton  # noqa: F401  (an ImportError fails the test: CI must execute every kernel)

    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.fail("TRITON_INTERPRET=1 must be set before the kernels are imported (tests/conftest.py does it)")
    monkeypatch.setenv("MERT_FAST_BACKEND", "triton")
    yield


@pytest.fixture
def torch_backend(monkeypatch):
    monkeypatch.setenv("MERT_FAST_BACKEND", "torch")
    yield


@pytest.fixture
def backend(request, monkeypatch):
    """The backend a test is parametrized with indirectly (``"triton"`` or ``"torch"``), set for its duration:
    Triton through :func:`triton_backend` (the interpreter without a GPU), else PyTorch."""
    if request.param == "triton":
        request.getfixturevalue("triton_backend")
    else:
        monkeypatch.setenv("MERT_FAST_BACKEND", "torch")
    return request.param


@pytest.fixture(scope="session")
def pretrain_data(tmp_path_factory):
    """A small synthetic corpus (24 clips of 5 s at 24 kHz) and a Mel-RVQ teacher (8 x 128 codes) fitted on it,
    shared by the end-to-end pre-training tests: ``root / "corpus"``, ``root / "teacher"``."""
    from mert_fast.model.teachers import fit_mel_rvq
    from mert_fast.synth import make_corpus
    from mert_fast.train.data import AudioCorpus

    root = tmp_path_factory.mktemp("pretrain")
    make_corpus(root / "corpus", n_clips=24, seconds=5.0, sample_rate=24000, seed=0)
    corpus = AudioCorpus(root / "corpus", 24000, min_seconds=3.0)
    teacher = fit_mel_rvq((corpus.load(i) for i in range(len(corpus))), 24000, codebook_size=128, steps=60, seed=0)
    teacher.save(root / "teacher")
    return root
