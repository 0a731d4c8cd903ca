"""The whole tree keeps one style: `ruff format` (pyproject.toml) and ruff's lint rules.

Run `.venv/bin/ruff format . && .venv/bin/ruff check --fix .` to fix what these tests report.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUFF = [sys.executable, "-m", "ruff"]


def _ruff(*args):
    return subprocess.run(
        [*RUFF, *args], cwd=ROOT, capture_output=True, text=True, env={**os.environ}
    )


def test_tree_is_formatted():
    out = _ruff("format", "--check", ".")
    assert out.returncode == 0, "run `ruff format .`:\n" + out.stdout + out.stderr


def test_lint_is_clean():
    out = _ruff("check", ".")
    assert out.returncode == 0, "run `ruff check --fix .`:\n" + out.stdout + out.stderr


def test_docstrings_use_plain_backticks():
    """One docstring convention: Google sections and single backticks, no RST roles."""
    bad = []
    for path in sorted((ROOT / "optg_jax").rglob("*.py")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"``|:(func|class|data|meth|mod|attr):`", line):
                bad.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not bad, "\n".join(bad)
