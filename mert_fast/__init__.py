"""mert_fast: fast kernels, models and training for MERT-style self-supervised music models."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import logging
import os
import sys
from typing import Any

__version__ = "0.1.0"
__all__ = ["MERTConfig", "MERTModel", "__version__"]

logging.getLogger(__name__).addHandler(logging.NullHandler())


def _map_source_kernels() -> None:
    """Make ``mert_fast.kernels`` importable from a source checkout or an editable install.

    The Triton kernels live in the repository's top-level ``kernels/`` folder and are installed as
    ``mert_fast.kernels`` (setup.py ``package_dir``; the wheel build gives it an ``__init__.py``). The folder
    itself has no ``__init__.py``, so it is never a regular top-level package called ``kernels``: from the
    repository root, ``import kernels`` (and ``importlib.util.find_spec("kernels")``, which transformers uses to
    detect Hugging Face's kernel hub) passes over it to the installed distribution of that name. Here the folder
    is mapped under the package name, so the import works the same way as in the wheel.
    """
    name = __name__ + ".kernels"
    if name in sys.modules or os.path.isdir(os.path.join(os.path.dirname(__file__), "kernels")):
        return  # an installed wheel: setup.py put the kernels inside the package
    src = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "kernels")
    if not os.path.isfile(os.path.join(src, "cqt.py")):
        return
    spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
    spec.submodule_search_locations = [src]
    module = importlib.util.module_from_spec(spec)
    module.__doc__ = "Triton kernels of mert_fast (the repository's kernels/ folder)."
    sys.modules[name] = module
    globals()["kernels"] = module


_map_source_kernels()


def __getattr__(name: str) -> Any:
    # ``from mert_fast import MERTModel, MERTConfig``: loaded on first use, so ``import mert_fast`` stays light
    if name in ("MERTConfig", "MERTModel"):
        from mert_fast import model

        return getattr(model, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
