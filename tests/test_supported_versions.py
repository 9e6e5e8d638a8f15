"""The supported range is declared once in setup.py and stated the same in README's "Supported versions"."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
#: package -> lower bound, as both files must give it
BOUNDS = {"torch": "2.11", "triton": "3.6", "transformers": "5.17", "deepspeed": "0.19"}


def test_setup_declares_the_lower_bounds():
    setup = (REPO / "setup.py").read_text(encoding="utf-8")
    for package, low in BOUNDS.items():
        found = re.findall(rf'"{package}(>=[\d.]+)?[;"]', setup)
        assert found == [f">={low}"], f"setup.py: {package} must be required as >={low}; found {found}"
    assert "<" not in "".join(re.findall(r'"(?:torch|triton)[^"]*"', setup)), "no upper bound: up to the newest"


def test_readme_states_the_same_range():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Supported versions", 1)[1].split("\n## ", 1)[0]
    for package, low in BOUNDS.items():
        row = next((line for line in section.splitlines() if line.startswith(f"| {package}")), None)
        assert row is not None and f">= {low}" in row, f"README: no '>= {low}' row for {package}"
