"""The README's Python examples work as written (code blocks preceded by ``<!-- test -->``)."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BLOCKS = re.findall(r"<!-- test -->\s*```python\n(.*?)```", (REPO / "README.md").read_text(), re.S)


@pytest.mark.slow
@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_python_block(code, monkeypatch):
    monkeypatch.chdir(REPO)
    exec(compile(code, "README.md", "exec"), {"__name__": "readme"})


def test_there_are_tested_blocks():
    assert BLOCKS
