"""benchmarks/report.py: each benchmark rewrites only its own section of BENCHMARKS.md."""

import os

import pytest

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

    path = str(tmp_path / "new" / "p.png")  # a folder that does not exist yet is made
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


def test_finetune_plain_cnn_is_fmnist_cnn_without_normalisation():
    import jax

    from benchmarks import finetune

    setting = finetune.MODELS["plain_cnn"]
    params, batch_stats = finetune.init_variables(setting.build(), 0, setting.image_size)
    # 14x14 -> conv, pool 7x7 -> conv, pool 3x3: fc1 sees 3 * 3 * 64 = 576 features.
    shapes = {
        "/".join(k.key for k in path): leaf.shape
        for path, leaf in jax.tree_util.tree_leaves_with_path(params)
    }
    assert shapes == {
        "conv1/kernel": (3, 3, 1, 32),
        "conv1/bias": (32,),
        "conv2/kernel": (3, 3, 32, 64),
        "conv2/bias": (64,),
        "fc1/kernel": (576, 256),
        "fc1/bias": (256,),
        "fc2/kernel": (256, 10),
        "fc2/bias": (10,),
    }
    assert batch_stats == {} and setting.head == "fc2"


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


def test_progress_epochs_spreads_about_ten_lines_and_always_shows_the_last():
    assert report.progress_epochs(4) == {1, 2, 3, 4}
    assert report.progress_epochs(100) == set(range(10, 101, 10))
    assert report.progress_epochs(25) == {3, 6, 9, 12, 15, 18, 21, 24, 25}
    assert report.progress_epochs(1) == {1}
    assert report.progress_epochs(10, lines=3) == {4, 8, 10}


def test_epoch_progress_lines_give_loss_sparsity_and_time_left():
    import jax.numpy as jnp
    import numpy as np

    import optg_jax

    params = {"dense": {"kernel": jnp.ones((10, 10))}}
    state = optg_jax.optg_optax(0.9, 10, 0.1).init(params)
    mask = np.ones((10, 10), np.uint8)
    mask.flat[:37] = 0  # 37 of 100 weights removed
    state = state._replace(masks={"dense": {"kernel": jnp.asarray(mask)}})
    times = iter([100.0, 112.0, 130.0])  # start, after epoch 1, after epoch 2
    lines = []
    report_epoch = report.epoch_progress(
        "run 1/2 optg 90% seed 0", 2, clock=lambda: next(times), write=lines.append
    )
    report_epoch(1, jnp.float32(0.5), state)
    report_epoch(2, 0.25)
    # A run of seconds stays quiet: the same calls 5 s apart write nothing.
    quiet, quick = [], iter([0.0, 5.0, 9.0])
    quiet_epoch = report.epoch_progress("q", 2, clock=lambda: next(quick), write=quiet.append)
    quiet_epoch(1, 0.5, state)
    quiet_epoch(2, 0.25)
    assert quiet == []
    assert lines == [
        "  run 1/2 optg 90% seed 0: epoch 1/2, train loss 0.5000, 37.0% removed, 12 s "
        "(about 12 s left)",
        "  run 1/2 optg 90% seed 0: epoch 2/2, train loss 0.2500, 30 s (about 0 s left)",
    ]


def test_epoch_progress_is_silent_between_the_shown_epochs():
    lines = []
    now = [0.0]
    report_epoch = report.epoch_progress("r", 100, clock=lambda: now[0], write=lines.append)
    for epoch in range(1, 10):
        now[0] = 60.0 * epoch
        report_epoch(epoch, 1.0)
    assert lines == []
    now[0] = 600.0
    report_epoch(10, 1.0)
    assert lines == ["  r: epoch 10/100, train loss 1.0000, 600 s (about 5400 s left)"]
    now[0] = 605.0  # under min_interval_s (10 s) since the last line
    report_epoch(20, 1.0)
    now[0] = 615.0
    report_epoch(30, 2.0)
    assert lines[1:] == ["  r: epoch 30/100, train loss 2.0000, 615 s (about 1435 s left)"]


def test_finetune_loop_reports_each_epochs_mean_training_loss():
    """With a zero learning rate the weights stay at their init, so each epoch's mean loss is
    the mean cross-entropy of the init over all 8 examples, computed here apart."""
    import flax.linen as nn
    import jax
    import numpy as np
    import optax

    from benchmarks import finetune

    class Tiny(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool = False):
            return nn.Dense(3)(x.reshape(x.shape[0], -1))

    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 2, 2, 1)).astype(np.float32)
    y = np.array([0, 1, 2, 0, 1, 2, 0, 1], np.int32)
    model = Tiny()
    params = model.init(jax.random.key(0), x[:1])["params"]
    tx = optax.sgd(0.0)
    loop = finetune.Loop(model, tx, False, batch=4)
    seen = []
    out, _, _ = loop.train(params, {}, tx.init(params), x, y, 2, 0, lambda *a: seen.append(a))
    logits = model.apply({"params": params}, x)
    expected = float(optax.softmax_cross_entropy_with_integer_labels(logits, y).mean())
    assert [(e, s) for e, _, s in seen] == [(1, None), (2, None)]
    for _, loss, _ in seen:
        assert float(loss) == pytest.approx(expected, rel=1e-6)
    assert expected > 0.5  # not a trivially small value
    np.testing.assert_array_equal(out["Dense_0"]["kernel"], params["Dense_0"]["kernel"])


def test_code_version_names_the_commit_and_hashes_the_library_files():
    import hashlib
    import re

    version = report.code_version()
    head, digest = version.rsplit(":", 1)
    assert re.fullmatch(r"([0-9a-f]{7,40}|nogit)(\+dirty)?", head), version
    # The digest, computed apart: every .py file under optg_jax/, in sorted walk order.
    sha = hashlib.sha1()
    package = os.path.join(report.ROOT, "optg_jax")
    for directory, _, names in sorted(os.walk(package)):
        for name in sorted(n for n in names if n.endswith(".py")):
            with open(os.path.join(directory, name), "rb") as f:
                sha.update(f.read())
    assert digest == sha.hexdigest()[:8]


def test_run_host_names_the_cpu_the_usable_threads_and_jax(monkeypatch):
    import jax

    monkeypatch.setattr(report, "cpu_name", lambda: "Test CPU")
    monkeypatch.setattr(report.os, "sched_getaffinity", lambda pid: {0, 3, 5}, raising=False)
    assert report.run_host() == f"Test CPU, 3 threads, jax {jax.__version__}"


def test_epoch_progress_times_the_epoch_after_its_loss_is_ready():
    """A device loss is a promise: reading it waits for the epoch, and the time counts that."""
    now = [0.0]

    class PendingLoss:
        def __float__(self):
            now[0] += 50.0  # the epoch's computation finishes while the value is read
            return 0.75

    lines = []
    report_epoch = report.epoch_progress("r", 2, clock=lambda: now[0], write=lines.append)
    report_epoch(1, PendingLoss())
    assert lines == ["  r: epoch 1/2, train loss 0.7500, 50 s (about 50 s left)"]


def test_a_finetune_record_names_its_pretrained_network_by_digest(tmp_path, monkeypatch):
    import hashlib

    import flax.linen as nn
    import numpy as np

    from benchmarks import finetune

    # By hand: SHA-1 over each leaf's dtype string and shape, then its bytes, in leaf order.
    a, b = np.arange(6, dtype=np.float32).reshape(2, 3), np.ones((2,), np.int32)
    sha = hashlib.sha1()
    for leaf in (a, b):
        sha.update(f"{leaf.dtype.str}{leaf.shape}".encode())
        sha.update(leaf.tobytes())
    assert finetune.tree_digest({"a": a, "b": b}) == sha.hexdigest()[:8]
    changed = a.copy()
    changed[1, 2] = np.nextafter(changed[1, 2], np.float32(9))  # one ulp
    assert finetune.tree_digest({"a": changed, "b": b}) != finetune.tree_digest({"a": a, "b": b})
    assert finetune.tree_digest({"a": a.reshape(3, 2), "b": b}) != sha.hexdigest()[:8]

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x, train=False):
            x = nn.Dense(4, name="body")(x.reshape(x.shape[0], -1))
            return nn.Dense(10, name="head")(x)

    monkeypatch.setattr(finetune, "CACHE_DIR", str(tmp_path))
    monkeypatch.setitem(
        finetune.MODELS, "tiny", finetune.Setting(Net, "head", 1, 0.01, 1, 1e-3, 0.0, 8)
    )
    rng = np.random.default_rng(0)
    x, xe = rng.random((32, 28, 28, 1), np.float32), rng.random((16, 28, 28, 1), np.float32)
    arrays = (x, np.arange(32) % 10, xe, np.arange(16) % 10)
    record = finetune.finetune("tiny", {}, 0.5, 0, arrays, 0)
    params, batch_stats, _ = finetune.pretrained("tiny", 0, arrays, 0)  # from the cache now
    assert record["source_digest"] == finetune.tree_digest((params, batch_stats))
    assert (
        finetune.finetune("tiny", None, 0.0, 0, arrays, 0)["source_digest"]
        == (record["source_digest"])
    )


def test_finetune_schedule_overrides_go_to_their_own_records(tmp_path, monkeypatch, capsys):
    """`--finetune-lr` / `--finetune-epochs` train another schedule from the same pretrained
    network, into records, a section and a heading of their own; a bad value is a usage error."""
    import json

    import flax.linen as nn
    import numpy as np
    import pytest

    from benchmarks import finetune, user_loop

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x, train=False):
            x = nn.Dense(4, name="body")(x.reshape(x.shape[0], -1))
            return nn.Dense(10, name="head")(x)

    base = finetune.Setting(Net, "head", 1, 0.01, 1, 1e-3, 0.0, 8)
    monkeypatch.setattr(finetune, "CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setitem(finetune.MODELS, "tiny", base)
    assert finetune.variant_suffix(base, base) == ""
    assert finetune.variant_suffix(base._replace(finetune_epochs=3), base) == "_3ep"
    assert finetune.variant_suffix(base._replace(finetune_lr=0.01, finetune_epochs=2), base) == (
        "_lr0.01_2ep"
    )
    rng = np.random.default_rng(0)
    x, xe = rng.random((64, 28, 28, 1), np.float32), rng.random((20, 28, 28, 1), np.float32)
    arrays = (x, np.arange(64) % 10, xe, np.arange(20) % 10)
    monkeypatch.setattr(user_loop, "load_fashion_mnist", lambda *a: arrays)
    md = tmp_path / "B.md"
    md.write_text("# Benchmarks\n")
    argv = ["--model", "tiny", "--methods", "optg", "--sparsities", "0.5", "--seeds", "0"]
    argv += ["--results-dir", str(tmp_path), "--benchmarks-md", str(md)]
    assert finetune.main(argv + ["--finetune-lr", "0.01", "--finetune-epochs", "2"]) == 0
    assert not (tmp_path / "finetune_tiny.jsonl").exists()
    (row,) = [json.loads(line) for line in (tmp_path / "finetune_tiny_lr0.01_2ep.jsonl").open()]
    assert (row["epochs"], row["finetune_lr"], row["sparsity"]) == (2, 0.01, 0.5)
    kwargs = user_loop.method_kwargs("optg", 32 // 8)  # 32 target-class examples, batch 8
    overrides = {"finetune_lr": 0.01, "finetune_epochs": 2}
    again = finetune.finetune("tiny", kwargs, 0.5, 0, arrays, 0, None, overrides)
    default = finetune.finetune("tiny", kwargs, 0.5, 0, arrays, 0)
    assert again["top1"] == row["top1"] and again["source_digest"] == default["source_digest"]
    text = md.read_text()
    assert "<!-- finetune_tiny_lr0.01_2ep:begin -->" in text
    assert (
        "## Pruning a pretrained tiny while fine-tuning it for 2 epochs at AdamW lr 0.01 (" in text
    )
    for flag, bad in (("--finetune-lr", "0"), ("--finetune-epochs", "1.5")):
        with pytest.raises(SystemExit) as exit_info:
            finetune.main(argv + [flag, bad])
        assert exit_info.value.code == 2
        assert f"argument {flag}: '{bad}' is not a" in capsys.readouterr().err
