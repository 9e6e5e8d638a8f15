"""Drop-in ops; each has a pure-PyTorch reference in :mod:`mert_fast.ops.reference`."""

from mert_fast.ops.attention import attention, dropout_keep_mask
from mert_fast.ops.codebook_ce import codebook_cross_entropy
from mert_fast.ops.cqt import CQT, cqt
from mert_fast.ops.kmeans import kmeans
from mert_fast.ops.residual_vq import ResidualVQ, ResidualVQOutput
from mert_fast.ops.rvq import nearest_code, rvq_decode, rvq_encode

__all__ = [
    "CQT",
    "ResidualVQ",
    "ResidualVQOutput",
    "attention",
    "codebook_cross_entropy",
    "cqt",
    "dropout_keep_mask",
    "kmeans",
    "nearest_code",
    "rvq_decode",
    "rvq_encode",
]
