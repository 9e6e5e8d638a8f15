"""Constant-Q transform with nnAudio ``CQT1992v2`` semantics, computed in the frequency domain.

The dense form correlates the clip with filters up to 65,536 taps long at every hop. The same numbers
come out of: one rFFT of the zero-padded clip (length ``N = L * hop``, ``L`` 2-3-5-smooth and large enough
that the circular correlation never wraps onto itself), a product with each bin's filter spectrum
truncated to its band, a fold of that product to ``L`` points (decimation by ``hop`` in time is aliasing
in frequency) and an inverse FFT of length ``L`` per bin. The band tables ("plans", :mod:`.cqt_plan`) depend only
on the configuration and ``N``, so clips of nearby lengths share one, and they are cached per device.

The fold runs on one of three backends (``MERT_FAST_BACKEND``): ``torch`` (sparse CSR matmul), ``triton`` and
``cuda`` (the ``mert_fast._C`` extension). ``auto`` runs ``torch`` on the CPU; on CUDA the fastest candidate that
``mert_fast/ops/tuning.json`` measured on this GPU in the call's bucket (:func:`tuning_key`), elsewhere ``cuda`` when
the extension is built, else ``torch``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings

import torch
import torch.nn.functional as F

from mert_fast._checks import is_int, is_number
from mert_fast.ops._backend import bucket, select_backend, triton_importable, tuned_backend
from mert_fast.ops.cqt_plan import CQTPlan, _filters, _plan, _smooth_at_least  # noqa: F401  (CQTPlan: re-exported)
from mert_fast.ops.reference import (
    MERT_CQT_BINS_PER_OCTAVE,
    MERT_CQT_FMIN,
    MERT_CQT_HOP_LENGTH,
    MERT_CQT_N_BINS,
    MERT_CQT_SAMPLE_RATE,
    cqt_frequencies,
)

__all__ = ["CQT", "cqt", "clear_plan_cache", "DEFAULT_THRESHOLD"]

#: Spectral coefficients below this fraction of a bin's peak are dropped from its band. The
#: truncation error is about 1.3x this value; 2e-5 keeps the relative error near 3e-5 (bound: 1e-4).
DEFAULT_THRESHOLD = 2e-5

_OUTPUTS = ("magnitude", "power", "complex")
_PAD_MODES = ("constant", "reflect")


@dataclasses.dataclass(frozen=True)
class CQTConfig:
    """A validated CQT configuration (the arguments of :func:`cqt`)."""

    sample_rate: float = MERT_CQT_SAMPLE_RATE
    """Sampling rate of the input in Hz."""
    hop_length: int = MERT_CQT_HOP_LENGTH
    """Samples between frames."""
    fmin: float = MERT_CQT_FMIN
    """Centre frequency of the lowest bin in Hz."""
    n_bins: int = MERT_CQT_N_BINS
    """Number of bins."""
    bins_per_octave: int = MERT_CQT_BINS_PER_OCTAVE
    """Bins per octave."""
    filter_scale: float = 1.0
    """Filter length multiplier (Q = filter_scale / (2 ** (1 / bins_per_octave) - 1))."""
    norm: int | None = 1
    """Filter normalisation: 1 (L1, librosa's), 2 (L2) or None."""
    window: str | tuple = "hann"
    """Window passed to ``scipy.signal.get_window``."""
    center: bool = True
    """Frame t is centred on sample ``t * hop_length`` (else it starts there)."""
    pad_mode: str = "constant"
    """Padding for ``center=True``: ``"constant"`` (zeros, MERT's) or ``"reflect"`` (nnAudio's default)."""
    output: str = "magnitude"
    """``"magnitude"``, ``"power"`` or ``"complex"``."""
    threshold: float = DEFAULT_THRESHOLD
    """Relative truncation threshold of the filter spectra."""

    def __post_init__(self) -> None:
        def fail(field: str, expected: str) -> None:
            raise ValueError(f"{field} must be {expected}; got {getattr(self, field)!r}")

        if not is_number(self.sample_rate) or not self.sample_rate > 0:
            fail("sample_rate", "a positive number of samples per second")
        if not is_int(self.hop_length) or self.hop_length <= 0:
            fail("hop_length", "a positive integer")
        if not (math.isfinite(self.fmin) and self.fmin > 0):
            fail("fmin", "a positive frequency in Hz")
        if not is_int(self.n_bins) or self.n_bins <= 0:
            fail("n_bins", "a positive integer")
        if not is_int(self.bins_per_octave) or self.bins_per_octave <= 0:
            fail("bins_per_octave", "a positive integer")
        if not (math.isfinite(self.filter_scale) and self.filter_scale > 0):
            fail("filter_scale", "a positive number")
        if self.norm not in (None, 0, 1, 2):
            fail("norm", "1, 2 or None")
        if not isinstance(self.window, (str, tuple)):
            fail("window", "a scipy window name or tuple")
        if self.pad_mode not in _PAD_MODES:
            fail("pad_mode", " or ".join(repr(m) for m in _PAD_MODES))
        if self.output not in _OUTPUTS:
            fail("output", " or ".join(repr(o) for o in _OUTPUTS))
        if not 0 <= self.threshold < 1:
            fail("threshold", "in [0, 1)")
        top = cqt_frequencies(self.fmin, self.n_bins, self.bins_per_octave)[-1]
        if top > self.sample_rate / 2:
            raise ValueError(
                f"fmin/n_bins: the top bin is {top:.1f} Hz, above the Nyquist frequency {self.sample_rate / 2:.1f} Hz "
                f"(fmin={self.fmin}, n_bins={self.n_bins}, bins_per_octave={self.bins_per_octave})"
            )

    def filter_key(self) -> tuple:
        return (
            self.sample_rate,
            self.fmin,
            self.n_bins,
            self.bins_per_octave,
            self.filter_scale,
            self.norm,
            self.window,
        )


def _spmm_torch(crow, col, val, x: torch.Tensor, n_cols: int) -> torch.Tensor:
    """``out[b] = A @ xc[b]`` with ``A`` in CSR and ``xc[b] = [x[b], conj(x[b])][:n_cols]``; x ``(B, n)``."""
    n_rows = crow.shape[0] - 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        a = torch.sparse_csr_tensor(crow, col, val, (n_rows, n_cols), check_invariants=False)
    xs = x.transpose(0, 1)
    if n_cols > x.shape[1]:
        xs = torch.cat([xs, torch.conj_physical(xs)], 0)
    return (a @ xs.contiguous()).transpose(0, 1)


def tuning_key(dtype: torch.dtype, batch: int, samples: int) -> str:
    """The tuning-table bucket of a call: compute dtype and the power-of-two ceilings' exponents of the batch and
    the clip length in samples (``float32/b6/s17`` for 64 clips of 5 s at 24 kHz)."""
    return f"{str(dtype).removeprefix('torch.')}/b{bucket(batch)}/s{bucket(samples)}"


def _safe_default() -> str:
    """``auto`` on CUDA where the tuning table has no measurement: the CUDA extension's fold where it is built (no
    known failure; 334x nnAudio on the H200), else the torch fold."""
    from mert_fast._native import native

    return "cuda" if native() is not None else "torch"


def _auto(x: torch.Tensor, samples: int) -> str:
    """``auto``'s backend for the fold of ``x`` ``(B, n)`` (clips of ``samples`` samples): ``torch`` on the CPU; on
    CUDA the fastest candidate the tuning table measured on this GPU in this bucket, else :func:`_safe_default`."""
    if not x.is_cuda:
        return "torch"
    from mert_fast._native import native

    available = ("torch",) + (("cuda",) if native() is not None else ()) + (("triton",) if triton_importable() else ())
    key = tuning_key(x.dtype, x.shape[0], samples)
    return tuned_backend("cqt", x.device, key, available) or _safe_default()


def _spmm(crow, col, val, x: torch.Tensor, n_cols: int, backend: str) -> torch.Tensor:
    if backend == "triton":
        from mert_fast.kernels.cqt import csr_spmm

        return torch.view_as_complex(csr_spmm(crow, col, torch.view_as_real(val), torch.view_as_real(x), n_cols))
    if backend == "cuda":
        from mert_fast._native import native

        out = native().csr_spmm(crow, col, torch.view_as_real(val), torch.view_as_real(x.contiguous()), n_cols)
        return torch.view_as_complex(out)
    return _spmm_torch(crow, col, val, x, n_cols)


@torch.library.custom_op("mert_fast::cqt_fold", mutates_args=())
def _cqt_fold(
    x: torch.Tensor,
    crow: torch.Tensor,
    col: torch.Tensor,
    val: torch.Tensor,
    crow_t: torch.Tensor,
    col_t: torch.Tensor,
    val_t: torch.Tensor,
    n_cols: int,
    backend: str,
) -> torch.Tensor:
    """Real views in and out: rfft ``x`` ``(B, n_freq, 2)`` -> folded products ``(B, K * L, 2)``."""
    out = _spmm(crow, col, torch.view_as_complex(val), torch.view_as_complex(x.contiguous()), n_cols, backend)
    return torch.view_as_real(out).contiguous()


@_cqt_fold.register_fake
def _(x, crow, col, val, crow_t, col_t, val_t, n_cols, backend):
    return x.new_empty((x.shape[0], crow.shape[0] - 1, 2))


def _cqt_fold_setup(ctx, inputs, output):
    x, crow, col, val, crow_t, col_t, val_t, n_cols, backend = inputs
    ctx.save_for_backward(crow, col, val, crow_t, col_t, val_t)
    ctx.n_freq, ctx.backend = x.shape[1], backend


def _cqt_fold_backward(ctx, grad):
    # The adjoint is the same op on the conjugate-transposed matrix (whose own adjoint is the original, so
    # double backward works too); its rows for conjugated columns fold back onto the rfft as conjugates.
    crow, col, val, crow_t, col_t, val_t = ctx.saved_tensors
    gx = torch.ops.mert_fast.cqt_fold(grad, crow_t, col_t, val_t, crow, col, val, grad.shape[1], ctx.backend)
    n = ctx.n_freq
    if gx.shape[1] > n:
        upper = gx[:, n:]
        gx = gx[:, :n] + torch.stack([upper[..., 0], -upper[..., 1]], dim=-1)
    return gx, None, None, None, None, None, None, None, None


_cqt_fold.register_autograd(_cqt_fold_backward, setup_context=_cqt_fold_setup)


def clear_plan_cache() -> None:
    """Drop every cached filter plan (benchmarks time plan building with it)."""
    _plan.cache_clear()
    _filters.cache_clear()


def _check_audio(audio: torch.Tensor) -> torch.Tensor:
    if not isinstance(audio, torch.Tensor):
        raise TypeError(f"audio must be a torch.Tensor; got {type(audio).__name__}")
    if not audio.is_floating_point():
        raise TypeError(
            f"audio must be floating point (float16, bfloat16, float32 or float64) in [-1, 1]; got {audio.dtype}"
        )
    if audio.dim() not in (1, 2):
        raise ValueError(
            f"audio must be mono, shaped (T,) or (B, T); got shape {tuple(audio.shape)} "
            "(downmix stereo or multi-channel audio first)"
        )
    if audio.shape[-1] == 0 or audio.numel() == 0:
        raise ValueError(f"audio must hold at least one sample; got shape {tuple(audio.shape)}")
    if not torch.isfinite(audio).all():
        raise ValueError("audio contains NaN or inf values")
    return audio.reshape(1, -1) if audio.dim() == 1 else audio


def _cqt(x: torch.Tensor, cfg: CQTConfig) -> torch.Tensor:
    """The transform on a checked (B, T) batch."""
    compute_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    x = x.to(compute_dtype)
    key = cfg.filter_key()
    filt = _filters(key)
    hop, width = cfg.hop_length, filt.width
    half = width // 2
    n_in = x.shape[-1]
    if cfg.center and cfg.pad_mode == "reflect":
        if n_in <= half:
            raise ValueError(
                f"audio: pad_mode='reflect' needs more than {half} samples (half the longest filter); got {n_in}. "
                "Use pad_mode='constant' for short clips."
            )
        x = F.pad(x[:, None], (half, half), mode="reflect")[:, 0]
    shift = half if (cfg.pad_mode == "reflect" or not cfg.center) else 0
    n_sig = x.shape[-1]
    padded = n_sig + (2 * half if shift == 0 else 0)
    if padded < width:
        raise ValueError(f"audio: center=False needs at least {width} samples (the filter width); got {n_in}")
    n_frames = (padded - width) // hop + 1
    # the circular correlation must not wrap any sample onto a filter tap it does not reach
    need = max(n_sig, max(n_sig - shift - 1, shift + (n_frames - 1) * hop) + filt.half_support + 1)
    n_fold = _smooth_at_least(-(-need // hop))
    plan = _plan(key, hop, cfg.threshold, n_fold, x.device, compute_dtype)
    buf = F.pad(x, (0, plan.n_fft - n_sig))
    if shift:
        buf = torch.roll(buf, -shift, dims=-1)
    spec = torch.fft.rfft(buf)
    backend = select_backend("cqt", x, ("triton", "cuda", "torch"), _auto(x, n_in))
    z = _cqt_fold(
        torch.view_as_real(spec),
        plan.crow,
        plan.col,
        torch.view_as_real(plan.val),
        plan.crow_t,
        plan.col_t,
        torch.view_as_real(plan.val_t),
        plan.n_cols,
        backend,
    )
    z = torch.view_as_complex(z).view(x.shape[0], plan.n_bins, plan.n_fold)
    frames = torch.fft.ifft(z, dim=-1)[..., :n_frames]
    if cfg.output == "complex":
        return frames
    if cfg.output == "power":
        return frames.real.square() + frames.imag.square()
    return frames.abs()


def cqt(
    audio: torch.Tensor,
    *,
    sample_rate: float = MERT_CQT_SAMPLE_RATE,
    hop_length: int = MERT_CQT_HOP_LENGTH,
    fmin: float = MERT_CQT_FMIN,
    n_bins: int = MERT_CQT_N_BINS,
    bins_per_octave: int = MERT_CQT_BINS_PER_OCTAVE,
    filter_scale: float = 1.0,
    norm: int | None = 1,
    window: str | tuple = "hann",
    center: bool = True,
    pad_mode: str = "constant",
    output: str = "magnitude",
    threshold: float = DEFAULT_THRESHOLD,
) -> torch.Tensor:
    """Constant-Q transform, exactly nnAudio ``CQT1992v2`` (librosa normalisation) up to ~3e-5 relative.

    Args:
        audio: ``(T,)`` or ``(B, T)`` mono audio, float16/bfloat16/float32 (computed in float32) or float64
            (computed in float64). Any length >= 1 sample with the default zero padding.
        sample_rate ... window: the filter bank, as in nnAudio (defaults: MERT's musical teacher).
        center, pad_mode: frame ``t`` centred on sample ``t * hop_length`` with zero (or reflect) padding.
        output: ``"magnitude"`` (default), ``"power"`` (squared magnitude) or ``"complex"``
            (``torch.view_as_complex`` of nnAudio's ``output_format="Complex"``).
        threshold: relative truncation of the filter spectra (accuracy against speed).

    Returns:
        ``(B, n_bins, F)`` (``B = 1`` for 1-D input) with ``F = T // hop_length + 1`` when centred, else
        ``(T - W) // hop_length + 1`` for the filter width ``W``; float32 (complex64), or float64
        (complex128) for float64 input. Differentiable with respect to ``audio``; the magnitude's
        gradient at 0 is 0.
    """
    cfg = _config(
        sample_rate,
        hop_length,
        fmin,
        n_bins,
        bins_per_octave,
        filter_scale,
        norm,
        window,
        center,
        pad_mode,
        output,
        threshold,
    )
    return _cqt(_check_audio(audio), cfg)


@functools.lru_cache(maxsize=64)
def _config(*args) -> CQTConfig:
    return CQTConfig(*args)


class CQT(torch.nn.Module):
    """Module form of :func:`cqt`: validates its configuration once and keeps its filter plans cached.

    Holds no parameters or buffers (the plans are derived, per device and FFT length), so it adds nothing
    to a state dict.
    """

    def __init__(
        self,
        sample_rate: float = MERT_CQT_SAMPLE_RATE,
        hop_length: int = MERT_CQT_HOP_LENGTH,
        fmin: float = MERT_CQT_FMIN,
        n_bins: int = MERT_CQT_N_BINS,
        bins_per_octave: int = MERT_CQT_BINS_PER_OCTAVE,
        filter_scale: float = 1.0,
        norm: int | None = 1,
        window: str | tuple = "hann",
        center: bool = True,
        pad_mode: str = "constant",
        output: str = "magnitude",
        threshold: float = DEFAULT_THRESHOLD,
    ) -> None:
        super().__init__()
        self.config = CQTConfig(
            sample_rate,
            hop_length,
            fmin,
            n_bins,
            bins_per_octave,
            filter_scale,
            norm,
            window,
            center,
            pad_mode,
            output,
            threshold,
        )
        self.frequencies = cqt_frequencies(fmin, n_bins, bins_per_octave)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        """``(T,)`` or ``(B, T)`` -> ``(B, n_bins, F)``; see :func:`cqt`."""
        return _cqt(_check_audio(audio), self.config)

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"sample_rate={c.sample_rate}, hop_length={c.hop_length}, fmin={c.fmin}, n_bins={c.n_bins}, "
            f"bins_per_octave={c.bins_per_octave}, output={c.output!r}"
        )
