"""MERT-v1's acoustic teacher: EnCodec 24 kHz residual-VQ codes of the clean clip.

The SEANet encoder of a transformers ``EncodecModel`` (loaded from a local directory, never the network) turns
24 kHz mono audio into 128-dim embeddings at 75 Hz (hop 320); the residual quantiser then picks, stage by stage,
the code nearest to the residual by squared L2 and subtracts it, here through :func:`mert_fast.ops.rvq_encode`.
At 6 kbps the 24 kHz model uses 8 stages of 1024 codes (``n_q = 6000 / (75 * log2 1024)``), MERT-v1's targets.

The codes equal ``EncodecModel.encode(audio[:, None], bandwidth=...).audio_codes[0].transpose(1, 2)`` up to
float32 near-ties of the nearest-code search (the distances are computed in a different order).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from mert_fast._checks import is_number
from mert_fast.ops import rvq_encode

if TYPE_CHECKING:
    from transformers import EncodecModel

__all__ = ["EncodecTeacher"]

logger = logging.getLogger(__name__)

SAMPLE_RATE = 24000
#: The shortest clip the teacher accepts: one frame of the MERT student (400-sample receptive field at 24 kHz).
MIN_SAMPLES = 400


def _num_quantizers(config, bandwidth: float, name: str) -> int:
    """The stages EnCodec uses at ``bandwidth`` kbps (transformers' ``get_num_quantizers_for_bandwidth``)."""
    offered = [float(b) for b in config.target_bandwidths]
    if not is_number(bandwidth) or float(bandwidth) not in offered:
        raise ValueError(f"{name}: the EnCodec model offers bandwidths {offered} (kbps); got {bandwidth!r}")
    bits_per_second = math.log2(config.codebook_size) * config.frame_rate
    n_q = int(max(1, math.floor(float(bandwidth) * 1000 / bits_per_second)))
    if n_q > config.num_quantizers:
        raise ValueError(
            f"{name}: {bandwidth} kbps needs {n_q} quantizer stages; the model has {config.num_quantizers}"
        )
    return n_q


def _check_config(config, where: str) -> None:
    """The configurations the teacher reproduces exactly: 24 kHz mono, one window over the whole clip."""
    if getattr(config, "model_type", None) != "encodec":
        raise ValueError(f"{where}: expected an EnCodec model (model_type 'encodec'); got {config.model_type!r}")
    if config.sampling_rate != SAMPLE_RATE:
        raise ValueError(f"{where}: expected the 24 kHz EnCodec (sampling_rate 24000); got {config.sampling_rate}")
    if config.audio_channels != 1:
        raise ValueError(f"{where}: expected a mono EnCodec (audio_channels 1); got {config.audio_channels}")
    if config.chunk_length_s is not None:
        raise ValueError(
            f"{where}: expected an EnCodec that encodes the whole clip at once (chunk_length_s None, as the 24 kHz "
            f"model); got chunk_length_s {config.chunk_length_s}"
        )


@contextlib.contextmanager
def _ieee_cudnn():
    """cuDNN convolutions and LSTMs in IEEE float32 for the block (PyTorch lets them use TF32 by default, ~1e-3
    relative error, which would flip codes): the labels must not depend on the trainer's precision settings."""
    conv, rnn = torch.backends.cudnn.conv, torch.backends.cudnn.rnn
    saved = conv.fp32_precision, rnn.fp32_precision
    conv.fp32_precision = rnn.fp32_precision = "ieee"
    try:
        yield
    finally:
        conv.fp32_precision, rnn.fp32_precision = saved


class EncodecTeacher(nn.Module):
    """Audio ``(B, L)`` at 24 kHz -> EnCodec codes ``(B, ceil(L / 320), n_q)`` int64 in ``[0, codebook_size)``.

    Frames first, 75 Hz, like the student: the frame count covers the student's
    ``floor((L - 400) / 320) + 1`` for every ``L >= 400``, so ``align_to_frames(codes, T)`` (no repeat) aligns them.
    Build it with :meth:`load` (a local ``EncodecModel.save_pretrained`` directory) or :meth:`from_model`. The
    encoder is frozen and runs in float32 without gradients.
    """

    def __init__(self, encoder: nn.Module, codebooks: torch.Tensor, *, config, bandwidth: float, n_q: int) -> None:
        super().__init__()
        self.encoder = encoder.float().eval().requires_grad_(False)
        self.register_buffer("codebooks", codebooks.detach().float().contiguous())
        self.sample_rate = int(config.sampling_rate)
        self.hop_length = math.prod(int(r) for r in config.upsampling_ratios)  # the SEANet encoder's stride
        self.normalize = bool(config.normalize)
        self.n_q = int(n_q)
        self.codebook_size = int(config.codebook_size)
        self.settings = dict(
            type="encodec", sample_rate=self.sample_rate, bandwidth=float(bandwidth), n_q=self.n_q,
            codebook_size=self.codebook_size, codebook_dim=int(codebooks.shape[-1]), hop_length=self.hop_length,
        )  # fmt: skip

    @property
    def label_rate(self) -> float:
        """Codes per second: 75.0 for the 24 kHz model."""
        return self.sample_rate / self.hop_length

    def num_frames(self, length: int) -> int:
        """Frames for a clip of ``length`` samples: ``ceil(length / hop_length)`` (the SEANet padding rule)."""
        return -(-int(length) // self.hop_length)

    @classmethod
    def from_model(cls, model: EncodecModel, bandwidth: float = 6.0) -> EncodecTeacher:
        """The teacher of an in-memory transformers ``EncodecModel`` (its encoder and first ``n_q`` codebooks).

        The encoder module is shared with ``model`` (and set to eval, float32, frozen); the codebooks are copied.
        """
        config = model.config
        _check_config(config, "model")
        n_q = _num_quantizers(config, bandwidth, "bandwidth")
        layers = model.quantizer.layers[:n_q]
        for s, layer in enumerate(layers):
            # transformers keeps a "not yet initialised" flag from EnCodec's k-means init; a checkpoint's is always set
            inited = getattr(layer.codebook, "inited", None)
            if inited is not None and not bool(inited.all()):
                raise ValueError(f"model: quantizer stage {s} is not initialised (codebook.inited is False)")
        codebooks = torch.stack([layer.codebook.embed.detach() for layer in layers])  # (n_q, K, D)
        return cls(model.encoder, codebooks, config=config, bandwidth=bandwidth, n_q=n_q)

    @classmethod
    def load(
        cls, directory: str | os.PathLike, map_location: str | torch.device = "cpu", bandwidth: float = 6.0
    ) -> EncodecTeacher:
        """Load a local ``EncodecModel.save_pretrained`` directory (``config.json`` + ``model.safetensors``).

        Never downloads (``local_files_only``). ``bandwidth`` (kbps) is one of the model's ``target_bandwidths``
        and sets the stages: 1.5 -> 2, 3 -> 4, 6 -> 8 (MERT-v1), 12 -> 16, 24 -> 32. The decoder is dropped.
        """
        from transformers import EncodecModel

        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(
                f"teacher: {directory} is not a directory; expected a local EnCodec 24 kHz model "
                "(config.json + model.safetensors as EncodecModel.save_pretrained writes)"
            )
        config_file = directory / "config.json"
        if not config_file.is_file():
            raise FileNotFoundError(f"teacher: {directory} has no config.json; expected a local EnCodec model")
        meta = json.loads(config_file.read_text())
        if meta.get("model_type") != "encodec":
            raise ValueError(
                f"teacher: {config_file} is not an EnCodec model (model_type {meta.get('model_type')!r}, "
                "expected 'encodec')"
            )
        try:
            # float32 whatever the saved dtype; .float() rather than a dtype argument, which transformers renamed
            model = EncodecModel.from_pretrained(str(directory), local_files_only=True).float()
        except OSError as exc:  # transformers' "no file named model.safetensors ..." and friends
            raise FileNotFoundError(f"teacher: could not load EnCodec weights from {directory}: {exc}") from exc
        _check_config(model.config, f"teacher ({config_file})")
        teacher = cls.from_model(model, bandwidth=bandwidth)
        logger.info(
            "EnCodec teacher from %s: %g kbps, %d stages of %d codes at %g Hz",
            directory, bandwidth, teacher.n_q, teacher.codebook_size, teacher.label_rate,
        )  # fmt: skip
        return teacher.to(map_location)

    def _check_audio(self, audio) -> None:
        if not isinstance(audio, torch.Tensor):
            raise TypeError(f"audio must be a torch.Tensor; got {type(audio).__name__}")
        if audio.dim() != 2:
            raise ValueError(f"audio must be mono (B, L) at {self.sample_rate} Hz; got shape {tuple(audio.shape)}")
        if not audio.is_floating_point():
            raise TypeError(f"audio must be floating point; got {audio.dtype}")
        if audio.shape[1] < MIN_SAMPLES:
            raise ValueError(f"audio must hold at least {MIN_SAMPLES} samples (L >= 400); got L = {audio.shape[1]}")
        if not bool(torch.isfinite(audio).all()):
            raise ValueError("audio must be finite; it holds NaN or infinity")

    @torch.no_grad()
    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        """Codes of ``audio`` ``(B, L)`` float (any float dtype, computed in float32), ``L >= 400``.

        Runs on the teacher's device (audio is moved there) and returns int64 ``(B, ceil(L / hop_length), n_q)``
        on audio's device.
        """
        self._check_audio(audio)
        weight_dtype = next(self.encoder.parameters()).dtype
        if weight_dtype != torch.float32:
            raise RuntimeError(
                f"teacher: the EnCodec encoder must stay float32 (its weights are {weight_dtype}); keep the teacher "
                "out of half-precision casts of the model"
            )
        x = audio.to(device=self.codebooks.device, dtype=torch.float32)[:, None, :]  # (B, 1, L)
        # float32 throughout even inside the trainer's autocast region: a bf16 encoder would flip many codes
        with torch.autocast(x.device.type, enabled=False):
            if self.normalize:  # EnCodec's own per-clip RMS normalisation (off for the 24 kHz model)
                x = x / (x.pow(2).mean(dim=-1, keepdim=True).sqrt() + 1e-8)
            with _ieee_cudnn() if x.is_cuda else contextlib.nullcontext():
                emb = self.encoder(x)  # (B, D, T)
            codes, _ = rvq_encode(emb.transpose(1, 2).contiguous(), self.codebooks.float(), metric="l2", n_q=self.n_q)
        return codes.to(audio.device)
