"""Drop-in ops; each has a pure-PyTorch reference in :mod:`mert_fast.ops.reference`."""

from mert_fast.ops.cqt import CQT, cqt

__all__ = ["CQT", "cqt"]
