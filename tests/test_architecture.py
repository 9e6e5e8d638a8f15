"""The package's layering, read from every module's imports (ast; nothing is imported).

``kernels`` (Triton, installed as ``mert_fast.kernels``) knows nothing of ``mert_fast``; ``ops`` wraps the kernels;
``model`` uses ``ops``; ``train`` and ``probe`` use ``model`` and the synthesizer (``synth``) and not each other;
``cli`` sits on top. The package-wide helpers (``mert_fast._io``, ``mert_fast._checks``) import nothing of
``mert_fast``. No module imports a ``_private`` name or module of another package, and the module-level imports
have no cycles.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: What each part of the package may import (besides the standard library and third-party packages).
_BASE = {"base"}
ALLOWED = {
    "kernels": {"kernels"},
    "base": _BASE,
    "synth": _BASE | {"synth"},
    "audio": _BASE | {"synth", "audio"},
    "testing": _BASE | {"testing"},
    "ops": _BASE | {"kernels", "ops"},
    "model": _BASE | {"kernels", "ops", "audio", "model"},
    "train": _BASE | {"kernels", "ops", "audio", "synth", "model", "train"},
    "probe": _BASE | {"kernels", "ops", "audio", "synth", "model", "probe"},
    "cli": _BASE | {"kernels", "ops", "audio", "synth", "model", "train", "probe", "cli", "testing"},
    # the package's __init__ loads the model lazily, on first use of its public names
    "package": _BASE | {"kernels", "model", "package"},
}
#: Modules directly below mert_fast that every part may use: they import nothing of mert_fast (but the compiled
#: extension, ``mert_fast._C``, which ``_native`` loads).
BASE_MODULES = {"mert_fast._io", "mert_fast._checks", "mert_fast._native", "mert_fast._C"}

#: Imports that break a rule in modules being restructured elsewhere: (importer, imported), skipped until fixed.
PENDING: set[tuple[str, str]] = set()


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[0] == "kernels":
        parts = ["mert_fast", *parts]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    files = [*(ROOT / "mert_fast").rglob("*.py"), *(ROOT / "kernels").glob("*.py")]
    return {_module_name(p): p for p in sorted(files) if "__pycache__" not in p.parts}


MODULES = _modules()


def part(module: str) -> str:
    """The layer of a ``mert_fast`` module name."""
    if module == "mert_fast":
        return "package"
    if module in BASE_MODULES:
        return "base"
    return module.split(".")[1].removesuffix(".py")


def _is_package(module: str) -> bool:
    return MODULES.get(module, Path()).name == "__init__.py"


def _imports(module: str, path: Path, top_level_only: bool = False) -> Iterator[tuple[str, str, int]]:
    """``(imported module, imported name or "", line)`` for every ``mert_fast`` import of ``module``.

    ``top_level_only``: only the imports run when the module is imported (not those inside functions or under
    ``if TYPE_CHECKING``).
    """
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if _is_package(module) else module.rpartition(".")[0]

    def walk(nodes, nested: bool) -> Iterator[ast.AST]:
        for node in nodes:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                if not top_level_only:
                    yield from walk(ast.iter_child_nodes(node), True)
                continue
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                if not top_level_only:
                    yield from walk(node.body, nested)
                yield from walk(node.orelse, nested)
                continue
            yield node
            yield from walk(ast.iter_child_nodes(node), nested)

    for node in walk(tree.body, False):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in ("mert_fast", "kernels"):
                    yield alias.name, "", node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if source.split(".")[0] not in ("mert_fast", "kernels"):
                continue
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                if sub in MODULES or sub in BASE_MODULES:  # ``from package import submodule``
                    yield sub, "", node.lineno
                else:
                    yield source, alias.name, node.lineno


def _all_imports(top_level_only: bool = False) -> list[tuple[str, str, str, int]]:
    return [
        (module, imported, name, line)
        for module, path in MODULES.items()
        for imported, name, line in _imports(module, path, top_level_only)
    ]


def test_every_part_is_known():
    assert {part(m) for m in MODULES} <= set(ALLOWED), {part(m) for m in MODULES} - set(ALLOWED)
    for name in ("kernels", "ops", "model", "train", "probe", "synth", "cli"):
        assert any(part(m) == name for m in MODULES), name


def test_kernels_know_nothing_of_mert_fast():
    bad = [
        f"{m}:{line} imports {imp}"
        for m, imp, _, line in _all_imports()
        if part(m) == "kernels" and (imp.startswith("kernels") or not imp.startswith("mert_fast.kernels"))
    ]
    assert not bad, "\n".join(bad)


def test_layering():
    bad = []
    for module, imported, _, line in _all_imports():
        if imported.startswith("kernels"):
            continue  # the kernels' own relative imports, checked above
        if part(imported) not in ALLOWED[part(module)] and (module, imported) not in PENDING:
            bad.append(f"{module}:{line} ({part(module)}) imports {imported} ({part(imported)})")
    assert not bad, "\n".join(bad)


def _private(text: str) -> bool:
    return text.startswith("_") and not text.startswith("__")


def test_no_private_names_across_packages():
    bad = []
    for module, imported, name, line in _all_imports():
        if part(module) == part(imported) or (module, imported) in PENDING:
            continue
        below = imported.split(".")[1:] if imported not in BASE_MODULES else []
        if _private(name) or any(_private(p) for p in below):
            bad.append(f"{module}:{line} imports {imported}{'.' + name if name else ''}")
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for module, imported, _, _ in _all_imports(top_level_only=True):
        if imported in MODULES and imported != module and (module, imported) not in PENDING:
            graph[module].add(imported)
    # a package's __init__ importing its own submodules is the usual re-export, not a cycle with them
    for module in graph:
        if _is_package(module):
            continue
        parent = module.rpartition(".")[0]
        graph[module].discard(parent)
    cycles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(stack[stack.index(nxt) :] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    assert not cycles, "\n".join(cycles)


@pytest.mark.parametrize("module", ["mert_fast.synth.corpus", "mert_fast.probe.dataset", "mert_fast.ops.cqt"])
def test_the_checks_see_imports(module):
    """The parser finds the imports it is meant to judge (a guard against checks that pass on nothing)."""
    assert any(imported.startswith("mert_fast.") for imported, _, _ in _imports(module, MODULES[module]))
