"""The Python examples of README.md and docs/*.md work as written (code blocks preceded by ``<!-- test -->``), and the
README stays a front door (at most 300 lines)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
BLOCKS = [(page, code) for page in PAGES
          for code in re.findall(r"<!-- test -->\s*```python\n(.*?)```", page.read_text(), re.S)]


@pytest.mark.slow
@pytest.mark.parametrize("page,code", BLOCKS, ids=[f"{p.stem}-block{i}" for i, (p, _) in enumerate(BLOCKS)])
def test_documented_python_block(page, code, monkeypatch):
    monkeypatch.chdir(REPO)
    exec(compile(code, str(page.relative_to(REPO)), "exec"), {"__name__": "readme"})


def test_there_are_tested_blocks_in_the_readme_and_the_family_pages():
    assert {p.name for p, _ in BLOCKS} >= {"README.md", "soft.md", "vision.md", "kvcache.md"}


def test_readme_is_a_front_door():
    assert len((REPO / "README.md").read_text().splitlines()) <= 300
