"""mert_fast: fast kernels, models and training for MERT-style self-supervised music models."""

from __future__ import annotations

import importlib.util
import logging
import os
import sys

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())


def _map_source_kernels() -> None:
    """Make ``mert_fast.kernels`` importable from a source checkout.

    The Triton kernels live in the repository's top-level ``kernels/`` folder and are installed as
    ``mert_fast.kernels`` (setup.py ``package_dir``). When the source tree shadows the installed
    package (``python -m pytest`` from the repository root), this maps that folder under the
    package name so the import works the same way.
    """
    name = __name__ + ".kernels"
    if name in sys.modules or os.path.isdir(os.path.join(os.path.dirname(__file__), "kernels")):
        return
    src = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "kernels")
    init = os.path.join(src, "__init__.py")
    if not os.path.isfile(init):
        return  # an installed wheel: setup.py put the kernels inside the package
    spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[src])
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    globals()["kernels"] = module


_map_source_kernels()
