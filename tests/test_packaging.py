"""Packaging: the wheel installs the Triton kernels as ``mert_fast.kernels`` and nothing as a top-level ``kernels``;
a source checkout imports the same module names.

The wheel is built from a clean copy of the repository (no ``build/`` or ``*.egg-info`` left by earlier builds,
which setuptools would otherwise reuse, and nothing written into the working tree), without build isolation
and without the CUDA extension, so it needs no network and no GPU.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_NOT_SOURCES = shutil.ignore_patterns(
    ".git", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", ".ruff_cache", ".benchmarks", "*.so"
)


def _run(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result.stdout


def _env(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(overrides)
    return env


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=_NOT_SOURCES)
    out = tmp / "dist"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    _run(
        pip + ["wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", str(out), str(src)],
        cwd=tmp,
        env=_env(MERT_FAST_SKIP_CUDA_BUILD="1"),
    )
    (path,) = out.glob("mert_fast-*.whl")
    return path


@pytest.mark.slow
def test_wheel_holds_kernels_inside_the_package(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "mert_fast/kernels/__init__.py" in names  # written by setup.py: the source folder has none
    assert "mert_fast/kernels/cqt.py" in names
    assert not [n for n in names if n.startswith("kernels/")], "a top-level kernels/ package would shadow others"
    top = {n.split("/", 1)[0] for n in names}
    assert top == {"mert_fast", wheel.name.split("-py")[0] + ".dist-info"}, top
    # every module of the source tree is in the wheel (sub-packages such as model.teachers and probe included)
    root = Path(__file__).resolve().parents[1]
    modules = {p.relative_to(root).as_posix() for p in (root / "mert_fast").rglob("*.py")}
    missing = sorted(modules - set(names))
    assert not missing, f"modules left out of the wheel: {missing}"


@pytest.mark.slow
def test_installed_wheel_imports(wheel, tmp_path):
    target = tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    _run(pip + ["install", "--no-deps", "--no-index", "-q", "--target", str(target), str(wheel)], cwd=tmp_path)
    assert not (target / "kernels").exists()
    elsewhere = tmp_path / "elsewhere"  # an unrelated working directory: the source tree cannot shadow the install
    elsewhere.mkdir()
    code = (
        "import mert_fast, mert_fast.kernels.cqt, mert_fast.ops\n"
        "print(mert_fast.__file__)\n"
        "print(mert_fast.kernels.cqt.__file__)\n"
    )
    lines = _run([sys.executable, "-c", code], cwd=elsewhere, env=_env(PYTHONPATH=str(target))).splitlines()
    package, kernel = (Path(p).resolve() for p in lines[-2:])
    assert package.is_relative_to(target.resolve()), f"mert_fast imported from {package}, not the installed wheel"
    assert kernel == target.resolve() / "mert_fast" / "kernels" / "cqt.py"


@pytest.fixture(scope="module")
def source_import() -> list[str]:
    """From the repository root (on ``sys.path`` with ``-c``, so the source tree shadows any install)."""
    code = (
        "import mert_fast\n"
        "import mert_fast.kernels.cqt as cqt\n"
        "print(mert_fast.__file__)\n"
        "print(cqt.__file__)\n"
        "print(getattr(getattr(mert_fast, 'kernels', None), 'cqt', None) is cqt)\n"
    )
    return _run([sys.executable, "-c", code], cwd=ROOT, env=_env()).splitlines()[-3:]


def test_source_checkout_maps_kernels(source_import):
    package, kernel, _ = source_import
    assert Path(package).resolve() == ROOT / "mert_fast" / "__init__.py"
    assert Path(kernel).resolve() == ROOT / "kernels" / "cqt.py"


def test_source_checkout_kernels_is_an_attribute(source_import):
    # `import mert_fast.kernels.cqt` followed by `mert_fast.kernels.cqt.f(...)`, as with the installed package
    assert source_import[2] == "True", "mert_fast.kernels is in sys.modules but not an attribute of mert_fast"


def test_repository_root_does_not_shadow_a_top_level_kernels_package():
    """From the repository root (``sys.path[0]``), transformers builds its models and ``kernels`` is not ours.

    transformers asks ``importlib.util.find_spec("kernels")`` whether Hugging Face's kernel hub is installed and
    reads the version from the distribution metadata of that name; a regular package in our top-level ``kernels/``
    folder answered the first question while Hugging Face's distribution answered the second, and transformers
    then imported names from our folder. The folder must not be a top-level package from any working directory.
    """
    code = (
        "import importlib.metadata, importlib.util, os\n"
        "spec = importlib.util.find_spec('kernels')\n"
        "ours = os.path.realpath('kernels') + os.sep\n"
        "origin = os.path.realpath(spec.origin) if spec is not None and spec.origin else None\n"
        "assert origin is None or not origin.startswith(ours), origin  # never a regular package from our folder\n"
        "try:\n"
        "    files = importlib.metadata.distribution('kernels').files or []\n"
        "except importlib.metadata.PackageNotFoundError:\n"
        "    files = None\n"
        "if files is not None:  # Hugging Face's kernels installed: the name resolves to it\n"
        "    assert origin is not None and origin in {os.path.realpath(f.locate()) for f in files}, origin\n"
        "from transformers import EncodecConfig, EncodecModel, HubertConfig, HubertModel\n"
        "HubertModel(HubertConfig(num_hidden_layers=1, hidden_size=32, num_attention_heads=2, intermediate_size=64))\n"
        "EncodecModel(EncodecConfig())\n"
        "import mert_fast.kernels.cqt, mert_fast.kernels.attention\n"
        "print(os.path.realpath(mert_fast.kernels.cqt.__file__))\n"
    )
    out = _run([sys.executable, "-c", code], cwd=ROOT, env=_env()).splitlines()
    assert Path(out[-1]) == ROOT / "kernels" / "cqt.py"
    assert not (ROOT / "kernels" / "__init__.py").exists()
