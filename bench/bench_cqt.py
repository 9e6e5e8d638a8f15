"""CQT with MERT's musical-teacher configuration: mert_fast against nnAudio and librosa.

Configuration: 24 kHz, hop 320, fmin 32.7 Hz, 336 bins, 48 per octave, zero padding, magnitude. Cases:
4 x 5 s float32 on the CPU (always) and 64 x 5 s float32 on the GPU (when the bench device is cuda).

Every implementation's output is checked once against nnAudio ``CQT1992v2`` computed in true fp32 (cuDNN
TF32 off), the baseline of the speed-ups, which itself is checked against the float64 reference on one
clip. Exact implementations must agree within 1e-4 relative; the multirate peers (nnAudio ``CQT2010v2``,
librosa) approximate the transform by design and only have to be close enough to rule out a wrong answer.
All torch peers run with TF32 convolutions off (the case is fp32); one extra GPU row times nnAudio
``CQT1992v2`` with TF32 on, PyTorch's default for convolutions.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import warnings

import numpy as np
import pytest
import torch

from mert_fast.ops import cqt
from mert_fast.ops.reference import MERT_CQT, MERT_CQT_SAMPLE_RATE, cqt_ref
from mert_fast.testing import rel_error

MERT = {"sample_rate": MERT_CQT_SAMPLE_RATE, **MERT_CQT}
#: The same for nnAudio: zero padding (MERT's; nnAudio defaults to reflect) and magnitude output.
NNAUDIO = {
    "sr": MERT["sample_rate"],
    **{k: v for k, v in MERT.items() if k != "sample_rate"},
    "pad_mode": "constant",
    "output_format": "Magnitude",
    "verbose": False,
}

#: Relative error against the baseline allowed for implementations of the exact transform.
EXACT_BOUND = 1e-4
#: For approximations by design (multirate CQTs, TF32 convolutions): rules out a wrong answer, not an
#: inexact one (measured on noise: CQT2010v2 ~3e-3, librosa ~8e-3).
APPROX_BOUND = 3e-2

BASELINE = "nnAudio CQT1992v2"


@dataclasses.dataclass(frozen=True)
class Case:
    device: str
    batch: int
    seconds: float

    @property
    def samples(self) -> int:
        return round(self.seconds * MERT["sample_rate"])

    @property
    def audio_seconds(self) -> float:
        return self.batch * self.seconds

    @property
    def label(self) -> str:
        return f"{self.device} {self.batch}x{self.seconds:g}s fp32"


CASES = [Case("cpu", 4, 5.0), Case("cuda", 64, 5.0)]


def case_id(case: Case) -> str:
    """The test id of a case (the ``case`` fixture, bench/conftest.py)."""
    return case.device


@contextlib.contextmanager
def conv_fp32_precision(mode: str):
    """cuDNN convolutions in ``"ieee"`` fp32 or ``"tf32"`` for the duration (no effect on the CPU)."""
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):
        old = conv.fp32_precision
        conv.fp32_precision = mode
        try:
            yield
        finally:
            conv.fp32_precision = old
    else:
        old = torch.backends.cudnn.allow_tf32
        torch.backends.cudnn.allow_tf32 = mode == "tf32"
        try:
            yield
        finally:
            torch.backends.cudnn.allow_tf32 = old


@pytest.fixture(autouse=True)
def _true_fp32():
    with conv_fp32_precision("ieee"):
        yield


_cache: dict[tuple, object] = {}


def _cached(key: tuple, make):
    if key not in _cache:
        _cache[key] = make()
    return _cache[key]


def audio(case: Case) -> torch.Tensor:
    """Seeded noise at a musical level, ``(B, T)`` float32 on the case's device."""

    def make() -> torch.Tensor:
        g = torch.Generator().manual_seed(0)
        return (0.1 * torch.randn(case.batch, case.samples, generator=g)).to(case.device)

    return _cached(("audio", case), make)


def nnaudio_1992(device: str) -> torch.nn.Module:
    from nnAudio.features import CQT1992v2

    def make() -> torch.nn.Module:
        return CQT1992v2(**NNAUDIO).to(device)

    return _cached(("CQT1992v2", device), make)


def nnaudio_2010(device: str) -> torch.nn.Module:
    from nnAudio.features import CQT2010v2

    def make() -> torch.nn.Module:
        return CQT2010v2(**NNAUDIO).to(device)

    return _cached(("CQT2010v2", device), make)


def baseline_output(case: Case) -> torch.Tensor:
    """nnAudio CQT1992v2 in true fp32 on the case's device: what every implementation is checked against."""

    def make() -> torch.Tensor:
        with torch.no_grad(), conv_fp32_precision("ieee"):
            return nnaudio_1992(case.device)(audio(case))

    return _cached(("baseline", case), make)


def check(benchmark, out: torch.Tensor, case: Case, bound: float) -> None:
    err = rel_error(out, baseline_output(case))
    benchmark.extra_info["rel_err_vs_nnaudio_1992v2"] = err
    benchmark.extra_info["rel_err_bound"] = bound
    assert err <= bound, f"{benchmark.extra_info['implementation']}: relative error {err:.3e} > {bound:.1e}"


def describe(measure, case: Case, implementation: str, *, first_call: bool = False) -> None:
    measure.describe(
        "cqt", case.label + (" first call (plan build + transform)" if first_call else ""), implementation,
        baseline=implementation == BASELINE and not first_call,
        group=f"cqt {case.label}" + (" first call" if first_call else ""),
        batch=case.batch, clip_seconds=case.seconds,
    )  # fmt: skip


@pytest.mark.parametrize("backend", ["torch", "triton", "cuda", "auto"])
def test_cqt_mert_fast(benchmark, measure, use_backend, case, backend):
    use_backend(backend, case.device)
    describe(measure, case, f"mert_fast ({backend})")
    x = audio(case)

    def fn() -> torch.Tensor:
        return cqt(x, **MERT)

    check(benchmark, fn(), case, EXACT_BOUND)
    measure(fn, device=case.device, warmup=2)
    measure.throughput(case.audio_seconds)


def test_cqt_mert_fast_first_call(benchmark, measure, case):
    """Plan building: every round starts from an empty plan cache (default backend)."""
    describe(measure, case, "mert_fast (auto)", first_call=True)
    module = importlib.import_module("mert_fast.ops.cqt")
    x = audio(case)

    def fn() -> torch.Tensor:
        return cqt(x, **MERT)

    module.clear_plan_cache()
    check(benchmark, fn(), case, EXACT_BOUND)  # also compiles the kernels: the rounds time plans, not compilers
    measure(fn, device=case.device, rounds=3, warmup=0, setup=module.clear_plan_cache)
    module.clear_plan_cache()


@pytest.mark.parametrize("conv", ["ieee", "tf32"], ids=["fp32", "tf32"])
def test_cqt_nnaudio_1992v2(benchmark, measure, case, conv):
    if conv == "tf32" and case.device != "cuda":
        pytest.skip("TF32 exists on GPUs only")
    describe(measure, case, BASELINE if conv == "ieee" else f"{BASELINE} (TF32 conv)")
    benchmark.extra_info["conv_fp32_precision"] = conv
    layer, x = nnaudio_1992(case.device), audio(case)

    def fn() -> torch.Tensor:
        with torch.no_grad():
            return layer(x)

    with conv_fp32_precision(conv):
        out = fn()
        if conv == "ieee":
            # the baseline itself against the float64 definition, on one clip (on the CPU)
            err = rel_error(out[:1], cqt_ref(x[:1].cpu(), **MERT))
            benchmark.extra_info["rel_err_vs_float64_ref"] = err
            assert err <= EXACT_BOUND, f"{BASELINE}: relative error {err:.3e} against the float64 reference"
        check(benchmark, out, case, EXACT_BOUND if conv == "ieee" else APPROX_BOUND)
        measure(fn, device=case.device, rounds=5 if case.device == "cpu" else None)
    measure.throughput(case.audio_seconds)


def test_cqt_nnaudio_2010v2(benchmark, measure, case):
    describe(measure, case, "nnAudio CQT2010v2")
    benchmark.extra_info["conv_fp32_precision"] = "ieee"
    layer, x = nnaudio_2010(case.device), audio(case)

    def fn() -> torch.Tensor:
        with torch.no_grad():
            return layer(x)

    check(benchmark, fn(), case, APPROX_BOUND)
    measure(fn, device=case.device)
    measure.throughput(case.audio_seconds)


def test_cqt_librosa(benchmark, measure, case):
    if case.device != "cpu":
        pytest.skip("librosa runs on the CPU only")
    import librosa

    describe(measure, case, "librosa cqt")
    x = audio(case).numpy()

    def fn() -> np.ndarray:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            spec = librosa.cqt(
                x,
                sr=MERT["sample_rate"],
                hop_length=MERT["hop_length"],
                fmin=MERT["fmin"],
                n_bins=MERT["n_bins"],
                bins_per_octave=MERT["bins_per_octave"],
                tuning=0.0,
                filter_scale=1,
                norm=1,
                window="hann",
                pad_mode="constant",
            )
        return np.abs(spec)

    check(benchmark, torch.from_numpy(fn()), case, APPROX_BOUND)  # the first call also compiles numba code
    measure(fn, device="cpu")
    measure.throughput(case.audio_seconds)
