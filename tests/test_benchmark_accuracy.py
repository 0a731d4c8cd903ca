"""benchmarks/accuracy_vs_sparsity: method grammar, grid, resume and report writing on fake results."""

import csv
import json
import os

import pytest

from benchmarks import report as sections
from benchmarks.accuracy_vs_sparsity import methods, report, runs
from optg_jax.train import config as config_lib

BEGIN = sections.markers(report.SECTION)[0]


def _row(method, sparsity, seed, top1, epochs=4):
    spec = runs.Spec(method, sparsity, seed, epochs)
    return {
        "method": method,
        "sparsity": sparsity,
        "seed": seed,
        "epochs": epochs,
        "top1": top1,
        "top5": 0.99,
        "final_sparsity": sparsity,
        "macs": 1e6 * (1 - sparsity),
        "dense_macs": 1e6,
        "wall_time_s": 100.0 + seed,
        "train_time_s": 90.0,
        "steps": 936,
        "model": "fmnist_cnn",
        "dataset": "fashion_mnist",
        "image_size": 14,
        "batch_size": 256,
        "name": spec.name,
    }


def _fake_rows():
    acc = {"magnitude": 0.85, "taylor": 0.84, "supermask": 0.86, "optg-paper": 0.83, "optg": 0.87}
    rows = [_row("dense", 0.0, seed, 0.90 + 0.01 * seed) for seed in range(3)]
    for m, a in acc.items():
        for s in (0.90, 0.99):
            for seed in range(3):
                rows.append(_row(m, s, seed, a - (s - 0.9) + 0.002 * seed))
    # The budget study at 99%: 2 and 16 epochs, two seeds (4 is in the grid).
    for e in (2, 16):
        for m in runs.BUDGET_METHODS:
            for seed in range(2):
                lead = 0.02 if m == "optg" else 0.0
                rows.append(_row(m, 0.99, seed, 0.7 + 0.01 * e + lead + 0.01 * seed, e))
    return rows


def test_grid_sizes_and_order():
    full = runs.grid_specs(runs.GRID_METHODS, runs.SPARSITIES, [0, 1, 2], 4)
    assert len(full) == 5 * 4 * 3 + 3  # 5 sparse methods (GMP, Taylor, supermask, 2 OptG)
    assert len(set(full)) == len(full)
    assert [s.seed for s in full] == sorted(s.seed for s in full)  # seed-major
    quick = runs.grid_specs(runs.GRID_METHODS, runs.QUICK_SPARSITIES, [0], 4)
    assert len(quick) == 5 * 2 + 1
    budget = runs.budget_specs([2, 4, 8], seeds=[0, 1])
    assert len(budget) == 3 * 4 * 2 and {s.method for s in budget} == set(runs.BUDGET_METHODS)
    assert set(budget) & set(quick) == {runs.Spec(m, 0.99, 0, 4) for m in runs.BUDGET_METHODS}


def test_parse_method():
    assert methods.parse_method("optg") == ("optg", {})
    assert methods.parse_method("optg-paper") == ("optg", {"recipe": "paper"})
    assert methods.parse_method("magnitude-sigmoid") == ("magnitude", {"schedule": "sigmoid"})
    assert methods.parse_method("optg-floor0.25") == ("optg", {"score_lr_floor": 0.25})
    assert methods.parse_method("supermask-frozen") == (
        "supermask",
        {"update_masks_after_pruning": False},
    )
    assert methods.parse_method("optg-every50-mom0.99-beta2-refreshed-allocuniform") == (
        "optg",
        {
            "mask_update_every": 50,
            "score_momentum": 0.99,
            "beta": 2.0,
            "update_masks_after_pruning": True,
            "allocation": "uniform",
        },
    )
    assert methods.parse_method("magnitude-every10") == ("magnitude", {"mask_update_every": 10})
    assert methods.parse_method("optg-bonus0") == ("optg", {"uncertainty_bonus": 0.0})
    assert methods.parse_method("supermask-bonus2.5") == ("supermask", {"uncertainty_bonus": 2.5})
    assert methods.label("optg-bonus0") == "ablation: OptG, uncertainty bonus κ = 0"
    assert methods.parse_method("optg-start3") == ("optg", {"score_start": 3.0})
    assert methods.parse_method("optg-halflife0.25") == ("optg", {"score_half_life": 0.25})
    assert methods.parse_method("optg-halfdist0.5") == ("optg", {"score_half_distance": 0.5})
    assert methods.parse_method("optg-atstart4") == ("optg", {"uncertainty_bonus_at_start": 4.0})
    assert methods.label("optg-atstart4") == "ablation: OptG, bonus at the start κ₀ = 4"
    assert methods.label("optg-start3") == "ablation: OptG, score start 3·W₀²/2"
    assert methods.label("optg-halfdist0.5") == (
        "ablation: OptG, score half-distance 0.5 of the weights' norm"
    )
    # The previous default (the plain sum) is named for what it is.
    assert methods.label("optg-start3-halfdist0") == (
        "ablation: OptG, score start 3·W₀²/2, plain score sum (score_half_distance=0, the "
        "previous default)"
    )
    assert "floor 0.5, masks frozen" not in methods.label("optg-floor0.5-frozen")
    assert methods.label("optg-every50-frozen") == (
        "ablation: OptG, masks frozen after the ramp, refresh every 50 steps"
    )
    assert methods.label("optg") == "OptG (library default)"
    assert methods.label("optg-paper").startswith("OptG, paper form")
    assert methods.label("magnitude-sigmoid") == "ablation: GMP (magnitude), sigmoid ramp"
    for bad in (
        "snip",
        "dense-frozen",
        "magnitude-floor0.5",
        "taylor-mom0.5",
        "taylor-bonus4",
        "magnitude-start3",
        "supermask-atstart4",
        "optg-fast",
    ):
        with pytest.raises(ValueError, match="unknown"):
            methods.parse_method(bad)
    for bad in (
        "optg-floor2",
        "optg-every0",
        "optg-mom1",
        "optg-beta-1",
        "optg-allocnone",
        "optg-allocmagnitude",
        "optg-bonus-1",
    ):
        with pytest.raises(ValueError):
            methods.parse_method(bad)
    with pytest.raises(ValueError, match="bad value"):
        methods.parse_method("optg-everyx")


def test_report_files(tmp_path):
    md = tmp_path / "BENCHMARKS.md"
    md.write_text("# Benchmarks\n\n<!-- other:begin -->\nother text\n<!-- other:end -->\n")
    results = tmp_path / "results"
    results.mkdir()
    (results / "accuracy_vs_sparsity_notes.md").write_text("Hand-written finding.")
    rows = _fake_rows()
    text = report.write_report(rows, [4], "HEADER", str(results), str(md))

    with open(results / "accuracy_vs_sparsity.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(rows)
    assert set(table[0]) == set(report.CSV_FIELDS)
    # OptG at 99%: 0.87 - 0.09 + {0, .002, .004} -> 78.20 ± 0.20 over 3 seeds, best -> bold.
    assert "**78.20 ± 0.20** (3)" in text
    assert "Dense: 91.00 ± 1.00 (3)." in text
    assert "99%: best mean top-1 of the sparse methods: **yes**" in text
    assert "(+1.00 points)" in text  # over supermask, 77.20
    assert "90%: within one std (0.20) of GMP: **yes**" in text
    # Budget rows: OptG, paper OptG, GMP, Taylor (means of two seeds), then OptG's lead.
    assert (
        "| 16 | 88.50 ± 0.71 (2) | 86.50 ± 0.71 (2) | 86.50 ± 0.71 (2) | 86.50 ± 0.71 (2) " in text
    )
    assert "| +2.00 |" in text
    # The summary: 4 epochs at 99% (+1.00) and the budget lengths 2 and 16 (+2.00 each).
    assert "Mean lead +1.67 points over 3 settings; 3 of 3 positive." in text
    assert "Hand-written finding." in text and "HEADER" in text
    for name in ("accuracy_vs_sparsity_4ep.png", "accuracy_vs_sparsity_budget.png"):
        assert (results / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    content = md.read_text()
    assert "other text" in content and content.count(BEGIN) == 1
    report.write_report(rows[:5], [4], "HEADER2", str(results), str(md))
    content = md.read_text()
    assert content.count(BEGIN) == 1 and "HEADER2" in content and "HEADER\n" not in content
    assert "other text" in content


def test_verdict_says_when_optg_loses():
    rows = [_row("optg", 0.98, 0, 0.80), _row("supermask", 0.98, 0, 0.81)]
    rows.append(_row("optg-paper", 0.98, 0, 0.815))
    rows.append(_row("optg-start3", 0.98, 0, 0.83))  # An ablation: not a rival.
    cells = report.summarize(rows, 4)
    lines = report.verdicts(cells, [0.98])
    assert "**no**" in lines[0] and "one seed" in lines[0] and "-1.00 points" in lines[0]
    assert "supermask" in lines[0]
    assert "loses 1.50 points to the paper form (more than 1)" in lines[1]
    assert report.margins(cells, [0.98]) == {0.98: pytest.approx(-0.01)}


def test_run_all_resumes_and_applies_method_options(tmp_path):
    shared = config_lib.base_config()
    shared.mask_update_every = 25
    specs = [
        runs.Spec("magnitude", 0.9, 0, 1),
        runs.Spec("optg-floor0.5-every50-frozen", 0.9, 0, 1),
    ]
    calls = []

    def fake_train(config, workdir, log_path):
        calls.append(
            (
                config.criterion,
                config.sparsity,
                config.num_epochs,
                config.score_lr_floor,
                config.mask_update_every,
                config.update_masks_after_pruning,
            )
        )
        return {
            "top1": 0.8,
            "top5": 0.99,
            "sparsity": config.sparsity,
            "macs": 1,
            "dense_macs": 2,
            "wall_time_s": 1.0,
            "train_time_s": 1.0,
            "steps": 10,
        }

    lines = []
    rows = runs.run_all(specs, shared, str(tmp_path), train_fn=fake_train, say=lines.append)
    # update_masks_after_pruning: None (the recipe's) unless the method sets it.
    assert calls == [("magnitude", 0.9, 1, 0.0, 25, None), ("optg", 0.9, 1, 0.5, 50, False)]
    assert shared.mask_update_every == 25  # The shared config is not touched.
    assert rows[1]["method"] == "optg-floor0.5-every50-frozen" and rows[1]["top1"] == 0.8
    assert "run 2/2" in lines[-1] and "ETA" in lines[-1]
    with open(runs.record_path(str(tmp_path), specs[0])) as f:
        assert json.load(f)["sparsity"] == 0.9
    # A second call skips the finished runs.
    calls.clear()
    runs.run_all(specs, shared, str(tmp_path), train_fn=fake_train, say=lines.append)
    assert not calls and "2 already done" in lines[-1]
    assert len(runs.read_all_records(str(tmp_path))) == 2


def test_the_committed_grids_workdir_keeps_its_name():
    """BENCHMARKS.md's grid ran under this tag: a config field added since (at its default) must
    not rename it, or every recorded run would be trained again."""
    shared = runs.shared_config(os.path.join(sections.ROOT, "configs", "fashion_mnist.py"))
    assert runs.protocol_tag(shared) == "fashion_mnist-fmnist_cnn-14px-b256-046ccdc3"
    with open(sections.BENCHMARKS_MD, encoding="utf-8") as f:
        assert "fashion_mnist-fmnist_cnn-14px-b256-046ccdc3" in f.read()


def test_validation_runs_have_their_own_protocol_and_report(tmp_path):
    shared = config_lib.base_config()
    tag = runs.protocol_tag(shared)
    shared.validation_examples = 5000
    assert runs.protocol_tag(shared) == tag + "-val5000"
    shared.validation_examples = 0
    shared.score_lr_floor = 0.5  # A per-method field: same protocol.
    assert runs.protocol_tag(shared) == tag
    shared.learning_rate = 0.05  # A shared field: another protocol.
    assert runs.protocol_tag(shared) != tag
    shared.learning_rate = config_lib.base_config().learning_rate
    assert runs.protocol_tag(shared) == tag
    shared.data_in_memory = False  # A field added later: in the digest once it is not default.
    assert runs.protocol_tag(shared) != tag
    shared.data_in_memory = True
    assert runs.protocol_tag(shared) == tag
    shared.init_from = "runs/dense"  # Likewise where the runs start from.
    assert runs.protocol_tag(shared) != tag

    md = tmp_path / "BENCHMARKS.md"
    results = tmp_path / "results"
    rows = [
        _row(m, s, 0, a - (s - 0.98))
        for m, a in (
            ("magnitude", 0.85),
            ("optg", 0.84),
            ("optg-frozen", 0.86),
            ("optg-every50", 0.87),
        )
        for s in (0.98, 0.99)
    ]
    rows.append(_row("optg-every10", 0.99, 0, 0.95))  # Not run at 98%: not a candidate.
    text = report.write_report(rows, 4, "VAL", str(results), str(md), validation=True)
    assert "validation split" in text and "Against the goal" not in text
    assert "1 seed): `optg-every50` (86.50)" in text
    # With a second seed for two variants, only those two are candidates.
    rows += [_row(m, s, 1, 0.85) for m in ("optg", "optg-frozen") for s in (0.98, 0.99)]
    text = report.write_report(rows, 4, "VAL", str(results), str(md), validation=True)
    # optg-frozen: 98% (0.86 + 0.85) / 2, 99% (0.85 + 0.85) / 2 -> 85.25 beats optg's 84.75.
    assert "2 seeds): `optg-frozen` (85.25)" in text
    assert (results / "accuracy_vs_sparsity_validation.csv").exists()
    assert not (results / "accuracy_vs_sparsity.csv").exists()
    assert md.read_text().count(sections.markers("accuracy_vs_sparsity_validation")[0]) == 1


def test_records_written_before_the_macs_rename_read_as_macs(tmp_path):
    spec = runs.Spec("optg", 0.99, 0, 4)
    old = {k: v for k, v in _row("optg", 0.99, 0, 0.8).items() if "macs" not in k}
    old.update(flops=12345, dense_flops=1e6)
    path = runs.record_path(str(tmp_path), spec)
    os.makedirs(os.path.dirname(path))
    with open(path, "w") as f:
        json.dump(old, f)
    for row in (runs.read_record(str(tmp_path), spec), runs.read_all_records(str(tmp_path))[0]):
        assert (row["macs"], row["dense_macs"]) == (12345, 1e6) and "flops" not in row


def test_command_line_rewrites_the_report_from_records(tmp_path):
    """`python -m benchmarks.accuracy_vs_sparsity --report-only` over one finished run's record."""
    import subprocess  # pylint: disable=import-outside-toplevel
    import sys  # pylint: disable=import-outside-toplevel

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    shared = runs.shared_config(os.path.join(root, "configs", "fashion_mnist.py"))
    spec = runs.Spec("optg", 0.99, 0, 4)
    workdir_root = tmp_path / "runs"
    runs.write_record(
        str(workdir_root / runs.protocol_tag(shared)), spec, _row("optg", 0.99, 0, 0.8125)
    )
    md, results = tmp_path / "B.md", tmp_path / "results"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.accuracy_vs_sparsity",
            "--report-only",
            f"--workdir-root={workdir_root}",
            f"--results-dir={results}",
            f"--benchmarks-md={md}",
        ],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| OptG (library default) | **81.25** (1) |" in proc.stdout
    assert "**81.25** (1)" in md.read_text() and (results / "accuracy_vs_sparsity.csv").exists()


def test_import_csv_round_trips_the_records_and_renames(tmp_path):
    rows = [_row("optg", 0.99, 0, 0.8125), _row("taylor", 0.9, 1, 0.875431234, epochs=8)]
    path = str(tmp_path / "grid.csv")
    report.write_csv(rows, path)
    root = str(tmp_path / "root")
    # A row already recorded is left as it is.
    runs.write_record(root, runs.Spec("taylor", 0.9, 1, 8), dict(rows[1], top1=0.5))
    written = runs.import_csv(path, root, {"optg": "optg-bonus0"})
    assert written == [runs.Spec("optg-bonus0", 0.99, 0, 4)]
    got = runs.read_record(root, written[0])
    assert got["method"] == "optg-bonus0" and got["top1"] == 0.8125 and got["seed"] == 0
    assert got["macs"] == 10000 and isinstance(got["macs"], int) and got["sparsity"] == 0.99
    assert runs.read_record(root, runs.Spec("taylor", 0.9, 1, 8))["top1"] == 0.5
    assert runs.import_csv(path, root, {"optg": "optg-bonus0"}) == []
    # Without renaming, the optg row is a record of its own.
    assert runs.import_csv(path, root) == [runs.Spec("optg", 0.99, 0, 4)]
    with pytest.raises(ValueError, match="snip"):
        runs.import_csv(path, str(tmp_path / "other"), {"optg": "snip"})


def test_command_line_rejects_a_bad_method_or_rename(tmp_path, capsys):
    from benchmarks.accuracy_vs_sparsity import cli  # pylint: disable=import-outside-toplevel

    for args, says in (
        (["--import-rename", "optg"], "--import-rename 'optg': expected OLD=NEW"),
        (["--import-rename", "optg=snip"], "unknown method 'snip'"),
        (["--methods", "optg-mom2"], "score_momentum=2.0 of method 'optg-mom2' is outside"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(["--report-only", f"--workdir-root={tmp_path}", *args])
        assert exit_info.value.code == 2 and says in capsys.readouterr().err
    assert not os.listdir(tmp_path)


def test_a_grid_row_records_its_code_and_host_and_the_csv_keeps_them(tmp_path):
    from types import SimpleNamespace  # pylint: disable=import-outside-toplevel

    from benchmarks import report as common  # pylint: disable=import-outside-toplevel

    results = {
        "top1": 0.875,
        "top5": 0.99,
        "sparsity": 0.98,
        "macs": 10,
        "dense_macs": 100,
        "wall_time_s": 1.5,
        "train_time_s": 1.0,
        "steps": 20,
    }
    config = SimpleNamespace(
        model="fmnist_cnn", dataset="fashion_mnist", image_size=14, batch_size=8
    )
    row = runs.row_from_results(runs.Spec("optg", 0.98, 3, 4), results, config)
    assert row["code"] == common.code_version()
    assert row["host"] == common.run_host()
    assert ", " in row["host"] and "threads" in row["host"]  # commas the CSV must quote
    md = tmp_path / "BENCHMARKS.md"
    md.write_text("# Benchmarks\n")
    report.write_report([*_fake_rows(), row], [4], "HEADER", str(tmp_path), str(md))
    with open(tmp_path / "accuracy_vs_sparsity.csv", newline="") as f:
        (back,) = [r for r in csv.DictReader(f) if r["seed"] == "3"]
    assert (back["method"], back["top1"], back["host"]) == ("optg", "0.875", common.run_host())
