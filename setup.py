"""Build script. A plain install is pure Python; ``mert_fast._C`` is compiled from ``csrc/`` only when torch has
CUDA and nvcc is found (or ``MERT_FAST_FORCE_BUILD=1``).

Environment: ``MERT_FAST_SKIP_CUDA_BUILD=1`` never builds the extension; ``MERT_FAST_FORCE_BUILD=1`` builds it
even where no GPU is visible (it still needs a CUDA torch and nvcc); ``TORCH_CUDA_ARCH_LIST`` picks the
architectures (default ``9.0``); ``MAX_JOBS`` caps parallel compile jobs (default from free memory).
Build the extension with ``pip install --no-build-isolation .`` so the build sees the installed CUDA torch.
"""

from __future__ import annotations

import glob
import os
import shutil
import warnings

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

# The top-level kernels/ folder deliberately has no __init__.py: a regular package there would be found as a
# top-level `kernels` from the repository root (sys.path[0]) and taken for Hugging Face's kernel hub package by
# transformers' availability check. The wheel's mert_fast.kernels is a regular package; its __init__ is written
# here.
_KERNELS_INIT = '''"""Triton kernels of mert_fast.

Each ``<op>.py`` holds private ``@triton.jit`` kernels and the launchers that own shapes and allocation.
Nothing here imports ``mert_fast``.
"""
'''


class _BuildPy(build_py):
    def run(self):
        super().run()
        init = os.path.join(self.build_lib, "mert_fast", "kernels", "__init__.py")
        os.makedirs(os.path.dirname(init), exist_ok=True)
        with open(init, "w", encoding="utf-8") as f:
            f.write(_KERNELS_INIT)


def _flag(name: str) -> bool:
    return os.environ.get(name, "0").strip().lower() in ("1", "true", "yes", "on")


def _max_jobs() -> str:
    """One nvcc job per ~4 GB of free memory, at least 1, at most the CPU count."""
    try:
        with open("/proc/meminfo") as f:
            free_kb = next(int(line.split()[1]) for line in f if line.startswith("MemAvailable"))
        by_mem = max(1, free_kb // (4 * 1024 * 1024))
    except (OSError, StopIteration, ValueError):
        by_mem = 1
    return str(max(1, min(os.cpu_count() or 1, by_mem)))


def _extensions() -> tuple[list, dict]:
    if _flag("MERT_FAST_SKIP_CUDA_BUILD"):
        return [], {}
    force = _flag("MERT_FAST_FORCE_BUILD")
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CUDAExtension
    except ImportError as exc:
        if force:
            raise RuntimeError(
                "MERT_FAST_FORCE_BUILD=1 needs torch importable at build time (--no-build-isolation)"
            ) from exc
        return [], {}
    nvcc = shutil.which("nvcc") or (CUDA_HOME and os.path.join(CUDA_HOME, "bin", "nvcc"))
    has_nvcc = bool(nvcc) and os.path.exists(nvcc)
    if torch.version.cuda is None or not has_nvcc:
        if force:
            raise RuntimeError(
                f"MERT_FAST_FORCE_BUILD=1 but torch.version.cuda={torch.version.cuda!r} and nvcc found: {has_nvcc}"
            )
        warnings.warn("mert_fast: no CUDA torch or no nvcc; installing without the CUDA extension", stacklevel=1)
        return [], {}
    if not force and not torch.cuda.is_available():
        warnings.warn(
            "mert_fast: no GPU visible; skipping the CUDA extension (MERT_FAST_FORCE_BUILD=1 builds it anyway)",
            stacklevel=1,
        )
        return [], {}
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")
    os.environ.setdefault("MAX_JOBS", _max_jobs())
    here = os.path.dirname(os.path.abspath(__file__))
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")) + glob.glob(os.path.join("csrc", "*.cu")))
    ext = CUDAExtension(
        name="mert_fast._C",
        sources=sources,
        include_dirs=[os.path.join(here, "csrc")],
        extra_compile_args={"cxx": ["-O3", "-std=c++20"], "nvcc": ["-O3", "-std=c++20", "--use_fast_math"]},
    )
    return [ext], {"build_ext": BuildExtension}


ext_modules, cmdclass = _extensions()
cmdclass["build_py"] = _BuildPy

setup(
    name="mert_fast",
    version="0.1.0",
    description="Fast kernels, models and pre-training for MERT-style self-supervised music models",
    long_description=open("README.md", encoding="utf-8").read() if os.path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # every package under mert_fast/ (sub-packages such as model.teachers included), plus the kernels
    packages=[*find_packages(include=["mert_fast", "mert_fast.*"]), "mert_fast.kernels"],
    # The Triton kernels live in the top-level kernels/ folder and install as mert_fast.kernels; nothing
    # named `kernels` lands in site-packages, and the folder is no importable top-level package (_BuildPy).
    package_dir={"mert_fast.kernels": "kernels"},
    # the measured tuning table of every op's auto choice (mert_fast/ops/_backend.py)
    package_data={"mert_fast.ops": ["tuning.json"]},
    # the supported range (README, "Supported versions"): torch 2.11 (with its triton 3.6) up to the newest
    install_requires=[
        "torch>=2.11",
        "triton>=3.6; platform_system == 'Linux' and platform_machine == 'x86_64'",
        "numpy",
        "scipy",
        "soundfile",
        "soxr",
        "tqdm",
        "safetensors",
        "matplotlib",
    ],
    extras_require={
        "train": ["deepspeed>=0.19", "tensorboard", "nvtx"],
        "test": [
            "pytest",
            "pytest-xdist>=3.8",  # --no-loadscope-reorder
            "pytest-benchmark",
            "nnAudio",
            "librosa",
            "transformers>=5.17",
            "faiss-cpu",
            "ruff",
            "ninja",
        ],
        "flash": ["flash-attn"],
        "probe": ["music21"],
    },
    entry_points={"console_scripts": ["mert-fast=mert_fast.cli:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
