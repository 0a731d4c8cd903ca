"""benchmarks/accuracy_vs_sparsity.py: grid, resume and report writing on fake results."""

import csv
import importlib.util
import json
import os

import pytest

import optg_jax
from optg_jax import config as config_lib

_PATH = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "accuracy_vs_sparsity.py")


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("accuracy_vs_sparsity", _PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _row(bench, method, sparsity, seed, top1, epochs=4):
    spec = bench.Spec(method, sparsity, seed, epochs)
    return {"method": method, "sparsity": sparsity, "seed": seed, "epochs": epochs,
            "top1": top1, "top5": 0.99, "final_sparsity": sparsity, "flops": 1e6 * (1 - sparsity),
            "dense_flops": 1e6, "wall_time_s": 100.0 + seed, "train_time_s": 90.0,
            "steps": 936, "model": "fmnist_cnn", "dataset": "fashion_mnist", "image_size": 14,
            "batch_size": 256, "name": spec.name}


def _fake_rows(bench):
    acc = {"magnitude": 0.85, "taylor": 0.84, "supermask": 0.86, "optg": 0.87}
    rows = [_row(bench, "dense", 0.0, seed, 0.90 + 0.01 * seed) for seed in range(3)]
    for m, a in acc.items():
        for s in (0.90, 0.99):
            for seed in range(3):
                rows.append(_row(bench, m, s, seed, a - (s - 0.9) + 0.002 * seed))
    # The budget study: OptG, GMP, Taylor at 99% for 2 and 8 epochs (4 is in the grid).
    for e in (2, 8):
        for m in bench.BUDGET_METHODS:
            rows.append(_row(bench, m, 0.99, 0, 0.7 + 0.01 * e + (0.02 if m == "optg" else 0), e))
    return rows


def test_grid_sizes_and_order(bench):
    full = bench.grid_specs(bench.METHODS, bench.SPARSITIES, [0, 1, 2], 4)
    assert len(full) == 4 * 4 * 3 + 3
    assert len(set(full)) == len(full)
    assert [s.seed for s in full] == sorted(s.seed for s in full)  # seed-major
    quick = bench.grid_specs(bench.METHODS, bench.QUICK_SPARSITIES, [0], 4)
    assert len(quick) == 4 * 2 + 1
    budget = bench.budget_specs([2, 4, 8])
    assert {s.method for s in budget} == set(bench.BUDGET_METHODS)
    assert set(budget) & set(quick) == {bench.Spec(m, 0.99, 0, 4) for m in bench.BUDGET_METHODS}


def test_parse_method(bench):
    assert bench.parse_method("optg") == ("optg", {})
    assert bench.parse_method("optg-floor0.25") == ("optg", {"score_lr_floor": 0.25})
    assert bench.parse_method("supermask-frozen") == (
        "supermask", {"update_masks_after_pruning": False})
    assert "floor 0.5, masks frozen" in bench.label("optg-floor0.5-frozen")
    for bad in ("snip", "dense-frozen", "magnitude-floor0.5", "optg-fast"):
        with pytest.raises(ValueError, match="unknown"):
            bench.parse_method(bad)
    with pytest.raises(ValueError, match="outside"):
        bench.parse_method("optg-floor2")


def test_report_files(bench, tmp_path):
    md = tmp_path / "BENCHMARKS.md"
    md.write_text("# Benchmarks\n\n<!-- other:begin -->\nother text\n<!-- other:end -->\n")
    results = tmp_path / "results"
    results.mkdir()
    (results / "accuracy_vs_sparsity_notes.md").write_text("Hand-written finding.")
    rows = _fake_rows(bench)
    text = bench.write_report(rows, 4, "HEADER", str(results), str(md))

    with open(results / "accuracy_vs_sparsity.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(rows)
    assert set(table[0]) == set(bench.CSV_FIELDS)
    # OptG at 99%: 0.87 - 0.09 + {0, .002, .004} -> 78.20 ± 0.20 over 3 seeds, best -> bold.
    assert "**78.20 ± 0.20** (3)" in text
    assert "Dense: 91.00 ± 1.00 (3)." in text
    assert "99%: OptG has the best mean top-1 of the sparse methods: **yes**" in text
    assert "90%: OptG within one std" in text
    assert "| 8 | 80.00 | 78.00 | 78.00 | +2.00 |" in text  # budget table row
    assert "Hand-written finding." in text and "HEADER" in text
    for name in ("accuracy_vs_sparsity.png", "accuracy_vs_sparsity_budget.png"):
        assert (results / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    content = md.read_text()
    assert "other text" in content and content.count(bench.BEGIN) == 1
    bench.write_report(rows[:5], 4, "HEADER2", str(results), str(md))
    content = md.read_text()
    assert content.count(bench.BEGIN) == 1 and "HEADER2" in content and "HEADER\n" not in content
    assert "other text" in content


def test_verdict_says_when_optg_loses(bench):
    rows = [_row(bench, "optg", 0.98, 0, 0.80), _row(bench, "supermask", 0.98, 0, 0.81)]
    lines = bench.verdicts(bench.summarize(rows, 4), [0.98])
    assert "**no**" in lines[0] and "one seed" in lines[0] and "-1.00 points" in lines[0]


def test_update_section_creates_file(bench, tmp_path):
    path = tmp_path / "B.md"
    bench.update_section(str(path), "body")
    assert path.read_text() == f"# Benchmarks\n\n{bench.BEGIN}\nbody\n{bench.END}\n"


def test_run_all_resumes_and_binds_the_floor(bench, tmp_path):
    shared = config_lib.base_config()
    specs = [bench.Spec("magnitude", 0.9, 0, 1), bench.Spec("optg-floor0.5", 0.9, 0, 1)]
    calls = []

    def fake_train(config, workdir, log_path):
        floor = getattr(optg_jax.optg_optax, "keywords", {}).get("score_lr_floor")
        calls.append((config.criterion, config.sparsity, config.num_epochs, floor))
        return {"top1": 0.8, "top5": 0.99, "sparsity": config.sparsity, "flops": 1,
                "dense_flops": 2, "wall_time_s": 1.0, "train_time_s": 1.0, "steps": 10}

    original = optg_jax.optg_optax
    lines = []
    rows = bench.run_all(specs, shared, str(tmp_path), train_fn=fake_train, say=lines.append)
    assert optg_jax.optg_optax is original
    assert calls == [("magnitude", 0.9, 1, None), ("optg", 0.9, 1, 0.5)]
    assert rows[1]["method"] == "optg-floor0.5" and rows[1]["top1"] == 0.8
    assert "run 2/2" in lines[-1] and "ETA" in lines[-1]
    with open(bench.record_path(str(tmp_path), specs[0])) as f:
        assert json.load(f)["sparsity"] == 0.9
    # A second call skips the finished runs.
    calls.clear()
    bench.run_all(specs, shared, str(tmp_path), train_fn=fake_train, say=lines.append)
    assert not calls and "2 already done" in lines[-1]
    assert len(bench.read_all_records(str(tmp_path))) == 2


def test_floor_is_bound_only_during_the_run(bench):
    shared = config_lib.base_config()
    original = optg_jax.optg_optax
    with bench.optg_options({"score_lr_floor": 0.3, "update_masks_after_pruning": False}, shared):
        assert optg_jax.optg_optax.keywords == {"score_lr_floor": 0.3,
                                                "update_masks_after_pruning": False}
    assert optg_jax.optg_optax is original


def test_code_version_names_the_library(bench):
    head, _, digest = bench.code_version().rpartition(":")
    assert head and len(digest) == 8
