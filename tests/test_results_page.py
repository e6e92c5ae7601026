"""docs/results.md is what ``benchmarks/make_results_page.py`` makes of benchmarks/results/ (so a rerun of a benchmark
followed by the script updates the page), and every current result says which machine and command made it (or that its file does not record them)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_results_page_is_generated_from_the_result_files(tmp_path):
    script = REPO / "benchmarks" / "make_results_page.py"
    assert subprocess.run([sys.executable, str(script), "--check"], cwd=REPO).returncode == 0
    out = tmp_path / "results.md"
    subprocess.run([sys.executable, str(script), "--out", str(out)], cwd=REPO, check=True, capture_output=True)
    page = out.read_text()
    entries = page.split("\n### ")[1:]
    assert entries and all("Files: [" in e and "Machine: " in e and "Command: " in e for e in entries)
