"""benchmarks/report.py: each benchmark rewrites only its own section of BENCHMARKS.md."""

import os

from benchmarks import report


def test_sections_are_created_and_replaced_independently(tmp_path):
    path = str(tmp_path / "BENCHMARKS.md")
    report.update_section(path, "a", "## A\nfirst")
    report.update_section(path, "b", "## B\nsecond")
    report.update_section(path, "a", "## A\nthird\n")
    with open(path) as f:
        text = f.read()
    assert text == (
        "# Benchmarks\n\n<!-- a:begin -->\n## A\nthird\n<!-- a:end -->\n\n"
        "<!-- b:begin -->\n## B\nsecond\n<!-- b:end -->\n"
    )
    assert not os.path.exists(path + ".tmp")
