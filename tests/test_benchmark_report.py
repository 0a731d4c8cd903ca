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


def test_plot_panels_writes_a_png_with_one_axis_per_panel(tmp_path):
    import matplotlib.image

    path = str(tmp_path / "p.png")
    series = {"a": {0: [90.0, 92.0], 1: [88.0]}, "b": {1: [85.0, 86.0, 87.0]}}
    report.plot_panels(path, [("one", ["90%", "95%"], series), ("two", ["x"], {"c": {0: [1.0]}})])
    image = matplotlib.image.imread(path)
    height, width = image.shape[:2]
    assert width > 1.8 * height  # Two panels side by side (4.8 in wide, 3.8 in tall each).


def test_finetune_plot_groups_rows_by_method_and_sparsity(tmp_path, monkeypatch):
    from benchmarks import finetune

    seen = []
    monkeypatch.setattr(finetune, "plot_panels", lambda path, panels: seen.append((path, panels)))
    rows = [
        dict(method=m, sparsity_target=s, seed=k, split=split, top1=t)
        for m, s, k, split, t in [
            ("taylor", 0.9, 0, "test", 94.0),
            ("taylor", 0.9, 1, "test", 96.0),
            ("taylor", 0.98, 0, "test", 90.0),
            ("optg", 0.98, 0, "test", 91.0),
            ("optg", 0.9, 0, "train[-10000:]", 50.0),  # Validation rows are left out,
            ("dense", 0.0, 0, "test", 97.0),  # and so is dense.
        ]
    ]
    assert finetune.plot(rows, "fmnist_cnn", str(tmp_path / "f"))
    ((path, [(title, ticks, series)]),) = seen
    assert path == str(tmp_path / "f.png") and ticks == ["90%", "98%"]
    assert series == {
        "Taylor": {0: [94.0, 96.0], 1: [90.0]},
        "OptG, library defaults": {1: [91.0]},
    }
    assert not finetune.plot(rows[4:5], "fmnist_cnn", str(tmp_path / "g"))


def test_finetune_plot_leaves_out_a_series_far_behind(tmp_path, monkeypatch):
    from benchmarks import finetune

    seen = []
    monkeypatch.setattr(finetune, "plot_panels", lambda path, panels: seen.append(panels))
    rows = [
        dict(method="taylor", sparsity_target=0.9, seed=0, split="test", top1=95.0),
        dict(method="magnitude", sparsity_target=0.9, seed=0, split="test", top1=85.5),
        dict(method="optg-paper", sparsity_target=0.9, seed=0, split="test", top1=84.9),
    ]
    assert finetune.plot(rows, "m", str(tmp_path / "f"))
    ((title, _, series),) = seen[0]
    assert list(series) == ["GMP", "Taylor"]  # 9.5 points behind stays; 10.1 does not.
    assert "not shown, over 10 points behind: OptG, recipe='paper'" in title


def test_finetune_cache_of_other_shapes_is_retrained(tmp_path, monkeypatch):
    import flax.linen as nn
    import numpy as np

    from benchmarks import finetune

    def setting(width):
        class Net(nn.Module):
            @nn.compact
            def __call__(self, x, train=False):
                x = nn.Dense(width, name="body")(x.reshape(x.shape[0], -1))
                return nn.Dense(10, name="head")(x)

        return finetune.Setting(Net, "head", 1, 0.01, 1, 1e-3, 0.0, 8)

    monkeypatch.setattr(finetune, "CACHE_DIR", str(tmp_path))
    rng = np.random.default_rng(0)
    x, xe = rng.random((32, 28, 28, 1), np.float32), rng.random((16, 28, 28, 1), np.float32)
    arrays = (x, np.arange(32) % 10, xe, np.arange(16) % 10)
    for width, want in ((3, 3), (5, 5), (5, 5)):
        monkeypatch.setitem(finetune.MODELS, "tiny", setting(width))
        params, _, top1 = finetune.pretrained("tiny", 0, arrays, 0)
        assert params["body"]["kernel"].shape == (784, want) and 0 <= top1 <= 100
    with np.load(tmp_path / "tiny_seed0_val0.npz") as f:
        # The cache now holds the second architecture (body kernel, bias, head kernel, bias).
        assert [f[f"leaf{i}"].shape for i in range(4)] == [(5,), (784, 5), (10,), (5, 10)]


def test_group_series_keeps_row_order_and_leaves_out_rows_without_a_tick():
    rows = [
        {"method": "b", "x": "p", "top1": 1.0},
        {"method": "a", "x": "q", "top1": 2.0},
        {"method": "b", "x": "p", "top1": 3.0},
        {"method": "b", "x": "q", "top1": 4.0},
        {"method": "a", "x": "r", "top1": 5.0},  # no tick: left out
    ]
    ticks = {"p": 0, "q": 1}
    series = report.group_series(
        rows, label=lambda r: r["method"].upper(), tick=lambda r: ticks.get(r["x"])
    )
    assert series == {"B": {0: [1.0, 3.0], 1: [4.0]}, "A": {1: [2.0]}}
    assert list(series) == ["B", "A"]
