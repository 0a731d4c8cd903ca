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


def test_publish_section_writes_the_results_file_and_the_benchmarks_section(tmp_path):
    (tmp_path / "sec_notes.md").write_text("notes here\n")
    md = tmp_path / "BENCHMARKS.md"
    text = report.publish_section(str(tmp_path), str(md), "sec", ["## H", "", "| a |"])
    assert text == "## H\n\n| a |\nnotes here"
    assert (tmp_path / "sec.md").read_text() == text + "\n"
    assert md.read_text() == "# Benchmarks\n\n<!-- sec:begin -->\n" + text + "\n<!-- sec:end -->\n"
    # Without notes, and without a BENCHMARKS.md to update:
    assert report.publish_section(str(tmp_path), "", "bare", ["x"]) == "x"
    assert "bare" not in md.read_text()


def test_publish_section_creates_a_missing_results_directory(tmp_path):
    results = tmp_path / "new" / "results"
    assert report.publish_section(str(results), "", "sec", ["## H"]) == "## H"
    assert (results / "sec.md").read_text() == "## H\n"
