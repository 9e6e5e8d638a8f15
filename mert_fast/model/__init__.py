"""MERT student, configuration presets, checkpoint loading and teachers.

from mert_fast.model import MERTConfig, MERTModel
"""

from __future__ import annotations

from typing import Any

__all__ = ["PRESETS", "MERTConfig", "MERTModel", "MERTOutput"]

_WHERE = {"PRESETS": "config", "MERTConfig": "config", "MERTModel": "mert", "MERTOutput": "mert"}


def __getattr__(name: str) -> Any:
    # imported on first use, so that ``import mert_fast.model.config`` does not load the model and its ops
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
