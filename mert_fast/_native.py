"""Access to the optional CUDA C++ extension ``mert_fast._C``."""

from __future__ import annotations

import functools
import logging
from types import ModuleType

logger = logging.getLogger(__name__)


@functools.cache
def native() -> ModuleType | None:
    """Return the compiled extension, or None when it was not built (said once, through logging)."""
    try:
        from mert_fast import _C
    except ImportError as exc:
        logger.warning(
            "mert_fast._C (CUDA C++ extension) is not available (%s); the Triton and PyTorch backends "
            "are used instead. Build it with `pip install --no-build-isolation .` on a machine with a "
            "CUDA torch and nvcc.",
            exc,
        )
        return None
    return _C
