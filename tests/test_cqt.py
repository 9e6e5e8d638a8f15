"""mert_fast.ops.cqt against the float64 time-domain definition, nnAudio and librosa."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch

from mert_fast.ops import CQT, cqt
from mert_fast.ops.reference import cqt_ref
from mert_fast.testing import assert_rel_close, rel_error

cqt_module = importlib.import_module("mert_fast.ops.cqt")

MERT = dict(sample_rate=24000, hop_length=320, fmin=32.7, n_bins=336, bins_per_octave=48)
SMALL = dict(sample_rate=16000, hop_length=64, fmin=55.0, n_bins=84, bins_per_octave=12)
TINY = dict(sample_rate=1000, hop_length=16, fmin=60.0, n_bins=10, bins_per_octave=6)
#: The op's promise against the float64 definition (relative L2 error of the whole output).
BOUND = 1e-4


def _audio(batch: int, length: int, dtype=torch.float32, device="cpu") -> torch.Tensor:
    return (0.3 * torch.randn(batch, length, dtype=torch.float64)).to(dtype=dtype, device=device)


# ---------------------------------------------------------------------------------------------- the definition


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize(("config", "length"), [(SMALL, 4096), (SMALL, 2001), (MERT, 16384), (MERT, 24007)])
def test_matches_reference_float32(torch_backend, config, length, batch):
    x = _audio(batch, length)
    ref = cqt_ref(x, **config)
    out = cqt(x, **config)
    assert out.shape == (batch, config["n_bins"], length // config["hop_length"] + 1)
    assert out.dtype == torch.float32
    err = assert_rel_close(out, ref, bound=BOUND)
    assert err > 0  # a float32 computation that equals the float64 one exactly was not computed in float32


@pytest.mark.parametrize("length", [1, 63, 64, 333, 2001])
def test_float64_is_exact_without_truncation(length):
    """With no spectral truncation the frequency-domain algorithm is the definition to rounding error."""
    x = _audio(2, length, torch.float64)
    out = cqt(x, output="complex", threshold=0.0, **SMALL)
    assert out.dtype == torch.complex128
    assert_rel_close(out, cqt_ref(x, output="complex", **SMALL), bound=1e-12)


def test_default_threshold_has_margin(torch_backend):
    """The default truncation keeps the error against the definition at <= 5e-5 (the bound is 1e-4)."""
    x = _audio(2, 37117, torch.float64)
    err = rel_error(cqt(x, output="complex", **MERT), cqt_ref(x, output="complex", **MERT))
    assert 1e-6 < err <= 5e-5


@pytest.mark.parametrize("output", ["complex", "power", "magnitude"])
def test_output_formats(output):
    x = _audio(1, 3001)[0]  # 1-D input -> (1, n_bins, F), like nnAudio
    out = cqt(x, output=output, **SMALL)
    assert out.shape == (1, SMALL["n_bins"], 3001 // SMALL["hop_length"] + 1)
    assert out.is_complex() == (output == "complex")
    assert_rel_close(out, cqt_ref(x, output=output, **SMALL), bound=BOUND)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_are_computed_in_float32(dtype):
    x = _audio(2, 1999, dtype)
    out = cqt(x, **SMALL)
    assert out.dtype == torch.float32
    assert_rel_close(out, cqt_ref(x.double(), **SMALL), bound=BOUND)


@pytest.mark.parametrize(("center", "pad_mode"), [(True, "reflect"), (False, "constant")])
def test_reflect_padding_and_uncentred_frames(center, pad_mode):
    x = _audio(2, 12001)
    out = cqt(x, center=center, pad_mode=pad_mode, **SMALL)
    ref = cqt_ref(x, center=center, pad_mode=pad_mode, **SMALL)
    assert out.shape == ref.shape
    assert_rel_close(out, ref, bound=BOUND)


@pytest.mark.parametrize("norm", [2, None])
def test_filter_variants(norm):
    x = _audio(1, 2500)
    kw = dict(SMALL, norm=norm, filter_scale=0.75, window="hamming")
    assert_rel_close(cqt(x, **kw), cqt_ref(x, **kw), bound=BOUND)


def test_any_length_shares_plans():
    """Every length from one sample up works; nearby lengths reuse one cached plan."""
    cqt_module.clear_plan_cache()
    for length in (1, 2, 63, 64, 65, 1000, 1001):
        x = _audio(1, length)
        assert_rel_close(cqt(x, **SMALL), cqt_ref(x, **SMALL), bound=BOUND)
    info = cqt_module._plan.cache_info()
    assert info.currsize < 7 and info.hits > 0


def test_module_matches_function_and_keeps_no_state():
    module = CQT(**SMALL)
    x = _audio(3, 4321)
    torch.testing.assert_close(module(x), cqt(x, **SMALL), rtol=0, atol=0)
    assert module.state_dict() == {}
    assert module.frequencies.shape == (SMALL["n_bins"],)
    assert module.frequencies[0] == pytest.approx(SMALL["fmin"])


# ---------------------------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("output", ["magnitude", "complex"])
@pytest.mark.parametrize(("center", "pad_mode"), [(True, "constant"), (True, "reflect"), (False, "constant")])
def test_gradcheck(torch_backend, output, center, pad_mode):
    x = _audio(2, 131 if pad_mode == "reflect" else 67, torch.float64)
    if not center:
        x = _audio(1, 300, torch.float64)  # at least one filter width
    x.requires_grad_()
    kw = dict(TINY, output=output, center=center, pad_mode=pad_mode)
    assert torch.autograd.gradcheck(lambda a: cqt(a, **kw), (x,), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_gradient_matches_reference_autograd():
    """The hand-written adjoint agrees with autograd through the dense time-domain definition."""
    x = _audio(2, 2222, torch.float64).requires_grad_()
    weight = torch.rand(2, SMALL["n_bins"], 2222 // SMALL["hop_length"] + 1, dtype=torch.float64)
    (g_ref,) = torch.autograd.grad((cqt_ref(x, **SMALL) * weight).sum(), x)
    (g_out,) = torch.autograd.grad((cqt(x, threshold=0.0, **SMALL) * weight).sum(), x)
    assert_rel_close(g_out, g_ref, bound=1e-10)


def test_silence_has_zero_gradient_not_nan():
    x = torch.zeros(2, 500, requires_grad=True)
    cqt(x, **SMALL).sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


def test_custom_op_registration():
    """The op is a registered custom op: fake (meta) kernel, autograd and schema pass torch's own checks."""
    x = _audio(2, 999, torch.float64)
    plan = cqt_module._plan(cqt_module.CQTConfig(**SMALL).filter_key(), 64, 2e-5, 30, torch.device("cpu"), x.dtype)
    spec = torch.view_as_real(torch.fft.rfft(torch.nn.functional.pad(x, (0, plan.n_fft - 999)))).requires_grad_()
    args = (spec, plan.crow, plan.col, torch.view_as_real(plan.val), plan.crow_t, plan.col_t)
    args = args + (torch.view_as_real(plan.val_t), plan.n_cols, "torch")
    torch.library.opcheck(torch.ops.mert_fast.cqt_fold.default, args)
    compiled = torch.compile(lambda *a: torch.ops.mert_fast.cqt_fold(*a), backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(*args), torch.ops.mert_fast.cqt_fold(*args))


# ---------------------------------------------------------------------------------------------- Triton kernel


@pytest.mark.triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("batch", "length"), [(1, 1024), (3, 1537)])
def test_triton_kernel_matches_reference(triton_backend, monkeypatch, dtype, batch, length):
    kernels = importlib.import_module("mert_fast.kernels.cqt")
    calls = []
    launch = kernels.csr_spmm
    monkeypatch.setattr(kernels, "csr_spmm", lambda *a: calls.append(1) or launch(*a))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    x = _audio(batch, length, dtype, device)
    out = cqt(x, output="complex", **SMALL)
    assert calls, "the Triton kernel was not launched"
    ref = cqt_ref(x.cpu(), output="complex", **SMALL)
    assert_rel_close(out, ref, bound=BOUND)
    with monkeypatch.context() as m:
        m.setenv("MERT_FAST_BACKEND", "torch")
        torch_out = cqt(x, output="complex", **SMALL)
    assert_rel_close(out, torch_out, bound=1e-5 if dtype == torch.float32 else 1e-12)


@pytest.mark.triton
@pytest.mark.parametrize("batch", [9, 16, 64])
def test_triton_kernel_batch_tiles(triton_backend, monkeypatch, batch):
    """Batches of 9 or more clips take the kernel's 16-clip batch tile (a partial one at 9, four at 64), forward
    and adjoint."""
    kernels = importlib.import_module("mert_fast.kernels.cqt")
    tiles = []
    launch = kernels.csr_spmm
    on_gpu = torch.cuda.is_available()
    block_b = lambda x: kernels.launch_config(x.shape[0], on_gpu)["BLOCK_B"]  # noqa: E731
    monkeypatch.setattr(kernels, "csr_spmm", lambda *a: tiles.append(block_b(a[3])) or launch(*a))
    device = "cuda" if on_gpu else "cpu"
    x = _audio(batch, 700, torch.float64, device).requires_grad_()
    out = cqt(x, output="complex", **TINY)
    assert tiles == [16], "the Triton kernel was not launched on a 16-clip tile"
    assert_rel_close(out, cqt_ref(x.detach().cpu(), output="complex", **TINY), bound=BOUND)
    weight = torch.rand(out.shape, dtype=torch.float64, device=device)
    (g_triton,) = torch.autograd.grad((out.abs() * weight).sum(), x)
    assert len(tiles) == 2, "the adjoint did not run the Triton kernel"
    monkeypatch.setenv("MERT_FAST_BACKEND", "torch")
    torch_out = cqt(x, output="complex", **TINY)
    assert_rel_close(out, torch_out, bound=1e-12)
    (g_torch,) = torch.autograd.grad((torch_out.abs() * weight).sum(), x)
    assert_rel_close(g_triton, g_torch, bound=1e-12)


@pytest.mark.triton
def test_triton_backward_matches_torch(triton_backend, monkeypatch):
    """The backward runs the Triton kernel on the transposed matrix; it must give the torch adjoint's gradient
    (which test_gradcheck checks against finite differences)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    x = _audio(2, 1501, torch.float64, device).requires_grad_()
    weight = torch.rand(2, SMALL["n_bins"], 1501 // SMALL["hop_length"] + 1, dtype=torch.float64, device=device)
    (g_triton,) = torch.autograd.grad((cqt(x, **SMALL) * weight).sum(), x)
    monkeypatch.setenv("MERT_FAST_BACKEND", "torch")
    (g_torch,) = torch.autograd.grad((cqt(x, **SMALL) * weight).sum(), x)
    assert_rel_close(g_triton, g_torch, bound=1e-12)


@pytest.mark.triton
def test_triton_conjugate_columns(triton_backend):
    """A filter bank whose bands cross Nyquist exercises the conjugate-column path of the kernel."""
    kw = dict(sample_rate=1000, hop_length=8, fmin=300.0, n_bins=8, bins_per_octave=12, filter_scale=0.3)
    x = _audio(2, 257, torch.float64)
    plan_cols = cqt_module._plan(cqt_module.CQTConfig(**kw).filter_key(), 8, 2e-5, 49, torch.device("cpu"), x.dtype)
    assert plan_cols.n_cols > plan_cols.n_fft // 2 + 1
    assert_rel_close(cqt(x, output="complex", **kw), cqt_ref(x, output="complex", **kw), bound=BOUND)


# ---------------------------------------------------------------------------------------------- peers


@pytest.fixture(scope="module")
def nnaudio_cqt():
    features = pytest.importorskip("nnAudio.features")

    def make(pad_mode="constant", output_format="Magnitude"):
        layer = features.CQT1992v2(
            sr=24000,
            hop_length=320,
            fmin=32.7,
            n_bins=336,
            bins_per_octave=48,
            pad_mode=pad_mode,
            output_format=output_format,
            verbose=False,
        )
        return layer.double()

    return make


def test_matches_nnaudio_magnitude(nnaudio_cqt):
    x = _audio(3, 48001)
    ref = nnaudio_cqt()(x.double())
    out = cqt(x)
    assert out.shape == ref.shape
    assert_rel_close(out, ref, bound=BOUND)


def test_matches_nnaudio_complex(nnaudio_cqt):
    x = _audio(2, 30011)
    ref = torch.view_as_complex(nnaudio_cqt(output_format="Complex")(x.double()).contiguous())
    assert_rel_close(cqt(x, output="complex"), ref, bound=BOUND)


def test_matches_nnaudio_reflect_padding(nnaudio_cqt):
    x = _audio(1, 40001)
    ref = nnaudio_cqt(pad_mode="reflect")(x.double())
    assert_rel_close(cqt(x, pad_mode="reflect"), ref, bound=BOUND)


def test_short_clips_nnaudio_cannot_reflect():
    """nnAudio's default reflect padding fails below half its filter width; zero padding works at any length."""
    x = _audio(1, 1000)
    assert_rel_close(cqt(x), cqt_ref(x), bound=BOUND)
    with pytest.raises(ValueError, match="reflect"):
        cqt(x, pad_mode="reflect")


#: librosa's recursive-downsampling CQT agrees with nnAudio's semantics on a steady chord to within this
#: median magnitude ratio (measured 1.006 on the clip below; the band is +-5%).
LIBROSA_MEDIAN_RATIO = 1.006


def test_matches_librosa_on_a_chord():
    librosa = pytest.importorskip("librosa")
    sr = 24000
    t = np.arange(int(2.5 * sr)) / sr
    notes = [261.63, 329.63, 392.0]  # C4 E4 G4
    y = sum(np.sin(2 * np.pi * f * t + i) for i, f in enumerate(notes)) / 3
    ours = cqt(torch.from_numpy(y))[0].numpy()
    lib = np.abs(librosa.cqt(y, sr=sr, hop_length=320, fmin=32.7, n_bins=336, bins_per_octave=48))
    assert ours.shape == lib.shape
    ours, lib = ours[:, 20:-20], lib[:, 20:-20]  # steady state, away from the edges

    def peaks(profile):
        return [
            i
            for i in range(1, len(profile) - 1)
            if profile[i - 1] < profile[i] >= profile[i + 1] and profile[i] > 0.1 * profile.max()
        ]

    expected = [int(round(48 * np.log2(f / 32.7))) for f in notes]
    assert peaks(ours.mean(1)) == peaks(lib.mean(1)) == expected
    loud = ours > 0.1 * ours.max()
    ratio = np.median(ours[loud] / lib[loud])
    assert abs(ratio / LIBROSA_MEDIAN_RATIO - 1) <= 0.05


# ---------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("audio", "error", "match"),
    [
        (torch.tensor([0.0, float("nan"), 0.0]), ValueError, "NaN"),
        (torch.tensor([[0.0, float("inf")]]), ValueError, "inf"),
        (torch.zeros(0), ValueError, "at least one sample"),
        (torch.zeros(2, 0), ValueError, "at least one sample"),
        (torch.zeros(2, 2, 100), ValueError, "mono"),
        (torch.zeros(100, dtype=torch.int16), TypeError, "floating point"),
        (np.zeros(100, dtype=np.float32), TypeError, "torch.Tensor"),
    ],
)
def test_bad_audio(audio, error, match):
    with pytest.raises(error, match=match):
        cqt(audio, **SMALL)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(n_bins=480), "Nyquist"),
        (dict(fmin=5000.0), "Nyquist"),
        (dict(fmin=-1.0), "fmin"),
        (dict(hop_length=0), "hop_length"),
        (dict(hop_length=-320), "hop_length"),
        (dict(hop_length=3.5), "hop_length"),
        (dict(sample_rate=0), "sample_rate"),
        (dict(n_bins=0), "n_bins"),
        (dict(bins_per_octave=0), "bins_per_octave"),
        (dict(filter_scale=0.0), "filter_scale"),
        (dict(norm=3), "norm"),
        (dict(output="db"), "output"),
        (dict(pad_mode="edge"), "pad_mode"),
        (dict(threshold=1.5), "threshold"),
    ],
)
def test_bad_configuration(kwargs, match):
    with pytest.raises(ValueError, match=match):
        cqt(torch.zeros(1000), **{**MERT, **kwargs})
    with pytest.raises(ValueError, match=match):
        CQT(**{**MERT, **kwargs})


def test_uncentred_needs_a_full_filter():
    with pytest.raises(ValueError, match="center=False"):
        cqt(torch.zeros(100), center=False, **SMALL)


def test_explicit_backend_that_cannot_run_is_an_error(monkeypatch):
    monkeypatch.setenv("MERT_FAST_BACKEND", "cuda")
    with pytest.raises(RuntimeError, match="cuda"):
        cqt(torch.zeros(100), **SMALL)
    monkeypatch.setenv("MERT_FAST_BACKEND", "bogus")
    with pytest.raises(ValueError, match="MERT_FAST_BACKEND"):
        cqt(torch.zeros(100), **SMALL)


# ---------------------------------------------------------------------------------------------- GPU


@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_cuda_mert_configuration(monkeypatch, backend):
    monkeypatch.setenv("MERT_FAST_BACKEND", backend)
    x = _audio(4, 5 * 24000)
    out = cqt(x.cuda(), **MERT)
    assert out.is_cuda and out.shape == (4, 336, 376)
    assert_rel_close(out, cqt_ref(x.cuda(), **MERT), bound=BOUND)


@pytest.mark.cuda
def test_cuda_gradient_matches_cpu():
    x = _audio(2, 12345, torch.float64)
    weight = torch.rand(2, 336, 12345 // 320 + 1, dtype=torch.float64)
    grads = []
    for device in ("cpu", "cuda"):
        xd = x.to(device).requires_grad_()
        (cqt(xd, **MERT) * weight.to(device)).sum().backward()
        grads.append(xd.grad.cpu())
    assert_rel_close(grads[1], grads[0], bound=1e-10)


@pytest.mark.cuda
def test_cuda_matches_nnaudio_batch_64(nnaudio_cqt):
    x = _audio(64, 5 * 24000, device="cuda")
    ref = nnaudio_cqt().cuda()(x.double())
    assert_rel_close(cqt(x), ref, bound=BOUND)
