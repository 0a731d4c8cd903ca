"""benchmarks/goal_check.py: the default OptG against the best other method, hand-computed."""

import json
import math
import random
import statistics

import pytest

from benchmarks import goal_check


def _row(method, sparsity, seed, top1, epochs=4):
    return {"method": method, "sparsity": sparsity, "epochs": epochs, "seed": seed, "top1": top1}


def test_cells_pick_the_best_other_method_and_compute_lead_std_and_paired_lead():
    rows = [
        # 98%: optg 88.0 / 88.4 / 88.2 (mean 88.2, std 0.2); magnitude 88.5 / 88.1 / 88.3
        # (mean 88.3, std 0.2); taylor mean 87.0. Lead -0.1, within 0.2: within, not first.
        _row("optg", 0.98, 0, 88.0),
        _row("optg", 0.98, 1, 88.4),
        _row("optg", 0.98, 2, 88.2),
        _row("magnitude", 0.98, 0, 88.5),
        _row("magnitude", 0.98, 1, 88.1),
        _row("magnitude", 0.98, 2, 88.3),
        _row("taylor", 0.98, 0, 87.0),
        # 99%: optg 87.0 / 87.2 (seeds 0, 1); taylor 86.0 / 86.6 / 86.3 (mean 86.3).
        _row("optg", 0.99, 0, 87.0),
        _row("optg", 0.99, 1, 87.2),
        _row("taylor", 0.99, 0, 86.0),
        _row("taylor", 0.99, 1, 86.6),
        _row("taylor", 0.99, 2, 86.3),
        # 90%: no other method ran, no cell; a method that is not a rival is ignored.
        _row("optg", 0.9, 0, 90.0),
        _row("optg-paper", 0.98, 0, 99.0),
    ]
    got = goal_check.cells("b", rows)
    assert [(c.epochs, c.sparsity) for c in got] == [(4, 0.98), (4, 0.99)]
    c98, c99 = got
    assert c98.best.method == "magnitude"
    assert c98.candidate.mean == pytest.approx(88.2)
    assert c98.candidate.std == pytest.approx(0.2)
    assert c98.lead == pytest.approx(-0.1)
    assert c98.within_one_std and not c98.first
    # Per-seed differences -0.5, +0.3, -0.1: mean -0.1, std sqrt((0.16 + 0.16 + 0) / 2) = 0.4.
    mean, std, n = c98.paired_lead()
    assert (mean, std, n) == (pytest.approx(-0.1), pytest.approx(0.4), 3)

    assert c99.best.method == "taylor"
    assert c99.lead == pytest.approx(87.1 - 86.3)
    assert c99.within_one_std and c99.first
    # Seeds both ran: 0 and 1; differences 1.0 and 0.6.
    assert c99.paired_lead() == (pytest.approx(0.8), pytest.approx(0.08**0.5), 2)


def test_a_lead_beyond_the_larger_std_is_not_within():
    rows = [
        _row("optg", 0.95, 0, 80.0),
        _row("optg", 0.95, 1, 80.2),  # mean 80.1, std 0.1414
        _row("taylor", 0.95, 0, 80.4),
        _row("taylor", 0.95, 1, 80.6),  # mean 80.5, std 0.1414: lead -0.4
    ]
    (cell,) = goal_check.cells("b", rows)
    assert cell.lead == pytest.approx(-0.4)
    assert not cell.within_one_std and not cell.first
    lines = goal_check.summary([cell])
    assert "**0 of 1** cells." in lines[0]
    assert "**0 of 0**" in lines[1]  # 95% is not a high-sparsity cell.
    assert "b, 4 epochs, 95% (-0.40)" in lines[3]


def test_summary_counts_first_only_at_high_sparsity():
    rows = [
        _row("optg", 0.9, 0, 91.0),
        _row("magnitude", 0.9, 0, 90.0),  # first at 90%: not counted among the high cells
        _row("optg", 0.98, 0, 88.0),
        _row("magnitude", 0.98, 0, 87.0),  # first at 98%
        _row("optg", 0.99, 0, 86.0),
        _row("magnitude", 0.99, 0, 86.0),  # a tie is not first
    ]
    lines = goal_check.summary(goal_check.cells("b", rows))
    assert "**3 of 3** cells" in lines[0]
    assert "**1 of 2** cells" in lines[1]
    assert not any(line.startswith("- Not within") for line in lines)
    # Leads +1, +1, 0; at 98/99% +1, 0. One rival and one seed a cell: a level criterion's
    # expected lead is 0 (the best of one mean is that mean).
    assert lines[2].startswith(
        "- Mean lead: +0.67 over 3 cells (level: +0.00); +0.50 over 2 cells at 98% or more "
        "(level: +0.00)."
    )
    # One seed per cell: no lead is clear.
    assert lines[3].startswith("- Clearly ahead") and lines[3].endswith(": 0 cells.")
    assert lines[4].startswith("- Clearly behind") and lines[4].endswith(": 0 cells.")


def test_clear_lead_needs_three_seeds_and_two_standard_errors():
    def cell(diffs):
        rows = []
        for seed, d in enumerate(diffs):
            rows += [_row("optg", 0.98, seed, 88.0 + d), _row("taylor", 0.98, seed, 88.0)]
        (c,) = goal_check.cells("b", rows)
        return c

    # Differences -0.3, -0.2, -0.25: mean -0.25, std 0.05, standard error 0.029: clearly behind.
    behind = cell([-0.3, -0.2, -0.25])
    assert behind.clear_lead() == -1
    # +0.1, +0.5, -0.3: mean +0.1, std 0.4, standard error 0.23: not clear.
    assert cell([0.1, 0.5, -0.3]).clear_lead() == 0
    # Two seeds are too few however large the lead.
    assert cell([1.0, 1.1]).clear_lead() == 0
    ahead = cell([0.5, 0.6, 0.55])
    assert ahead.clear_lead() == 1
    lines = goal_check.summary([behind, ahead])
    assert lines[-2].endswith(": 1 cell: b, 4 epochs, 98% (+0.55).")
    assert lines[-1].endswith(": 1 cell: b, 4 epochs, 98% (-0.25).")


def test_read_records_takes_percent_from_both_formats_and_only_the_test_split(tmp_path):
    csv_path = tmp_path / "grid.csv"
    csv_path.write_text(
        "method,sparsity,seed,epochs,top1,top5\noptg,0.99,1,8,0.8851,0.99\n", encoding="utf-8"
    )
    assert goal_check.read_records(str(csv_path)) == [
        {"method": "optg", "sparsity": 0.99, "epochs": 8, "seed": 1, "top1": pytest.approx(88.51)}
    ]
    jsonl = tmp_path / "loop.jsonl"
    lines = [
        {
            "method": "taylor",
            "sparsity_target": 0.9,
            "epochs": 2,
            "seed": 0,
            "split": "test",
            "top1": 82.5,
        },
        {
            "method": "taylor",
            "sparsity_target": 0.9,
            "epochs": 2,
            "seed": 0,
            "split": "train[-10000:]",
            "top1": 99.0,
        },
    ]
    jsonl.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n", encoding="utf-8")
    assert goal_check.read_records(str(jsonl)) == [
        {"method": "taylor", "sparsity": 0.9, "epochs": 2, "seed": 0, "top1": 82.5}
    ]


def test_main_writes_the_section_from_the_records(tmp_path):
    (tmp_path / "user_loop_lenet.jsonl").write_text(
        "\n".join(
            json.dumps(
                {
                    "method": m,
                    "sparsity_target": 0.99,
                    "epochs": 10,
                    "seed": 0,
                    "split": "test",
                    "top1": t,
                }
            )
            for m, t in (("optg", 87.5), ("magnitude", 87.25))
        ),
        encoding="utf-8",
    )
    md = tmp_path / "BENCHMARKS.md"
    goal_check.main(["--results-dir", str(tmp_path), "--benchmarks-md", str(md)])
    text = md.read_text(encoding="utf-8")
    assert (
        "| from scratch, LeNet-300-100 (user loop) | 10 | 99% | 87.50 (1) | magnitude 87.25 (1) | +0.25 | yes | yes |"
        in text
    )
    assert "First at 98% sparsity or more: **1 of 1** cells" in text
    # The round robin under the summary: one seed, so the leader of the cell is within and first.
    assert "| optg | 1 of 1 | 1 of 1 | 0 | 0 |" in text
    assert "| magnitude | 0 of 1 | 0 of 1 | 0 | 0 |" in text
    assert "| supermask | 0 of 0 | 0 of 0 | 0 | 0 |" in text
    assert (tmp_path / "goal_check.md").exists()


def test_loops_beyond_the_goal_get_their_own_table_and_are_not_counted(tmp_path):
    def write(name, rows):
        (tmp_path / name).write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")

    def rec(method, seed, top1):
        return dict(
            method=method, sparsity_target=0.9, epochs=2, seed=seed, split="test", top1=top1
        )

    write("user_loop_lenet.jsonl", [rec("optg", 0, 87.5), rec("magnitude", 0, 87.25)])
    # Three seeds: OptG 95.0 / 95.2 / 95.4 against Taylor 94.9 / 95.0 / 95.1 (GMP lower):
    # paired lead +0.1 / +0.2 / +0.3, mean +0.20, std 0.10, two standard errors 0.115: clear.
    rows = []
    for seed, (o, t) in enumerate(((95.0, 94.9), (95.2, 95.0), (95.4, 95.1))):
        rows += [rec("optg", seed, o), rec("taylor", seed, t), rec("magnitude", seed, 90.0)]
    write("finetune_plain_cnn.jsonl", rows)
    md = tmp_path / "BENCHMARKS.md"
    goal_check.main(["--results-dir", str(tmp_path), "--benchmarks-md", str(md)])
    text = md.read_text(encoding="utf-8")
    goal_part, beyond_part = text.split("Beyond the goal's benchmarks", 1)
    assert "plain_cnn" not in goal_part and "**1 of 1** cells" in goal_part
    assert (
        "| fine-tuning a pretrained plain_cnn (no BatchNorm) | 2 | 90% | 95.20 ± 0.20 (3) | "
        "taylor 95.00 ± 0.10 (3) | +0.20 | yes | yes | +0.20 ± 0.10 (3) |" in beyond_part
    )
    assert "**1 of 1** cells; first in 1; clearly ahead in 1, clearly behind in 0." in beyond_part


def test_a_candidate_variant_takes_the_defaults_place_in_its_own_section(tmp_path):
    # The grid spells the variant "optg-start3", the loop "optg:score_start=3"; each benchmark
    # uses the first name it has records of. The default optg rows are not the candidate.
    (tmp_path / "accuracy_vs_sparsity.csv").write_text(
        "method,sparsity,seed,epochs,top1\n"
        "optg,0.98,0,4,0.9000\noptg-start3,0.98,0,4,0.8800\nmagnitude,0.98,0,4,0.8850\n",
        encoding="utf-8",
    )
    (tmp_path / "user_loop_lenet.jsonl").write_text(
        "\n".join(
            json.dumps({"method": m, "sparsity_target": 0.99, "epochs": 10, "seed": 0, "top1": t})
            for m, t in (("optg", 80.0), ("optg:score_start=3", 87.75), ("taylor", 87.5))
        ),
        encoding="utf-8",
    )
    md = tmp_path / "BENCHMARKS.md"
    names = ["optg-start3", "optg:score_start=3"]
    assert goal_check.pick_candidate([_row("optg:score_start=3", 0.9, 0, 1.0)], names) == names[1]
    assert goal_check.pick_candidate([_row("optg", 0.9, 0, 1.0)], names) is None
    argv = ["--results-dir", str(tmp_path), "--benchmarks-md", str(md), "--candidate", *names]
    goal_check.main(argv + ["--label", "OptG, start 3", "--section", "goal_check_start"])
    text = (tmp_path / "goal_check_start.md").read_text(encoding="utf-8")
    assert text.startswith("## OptG, start 3 against the best other method")
    assert "| OptG, start 3 | best other |" in text
    assert "| 4 | 98% | 88.00 (1) | magnitude 88.50 (1) | -0.50 | **no** |  |" in text
    assert "| 10 | 99% | 87.75 (1) | taylor 87.50 (1) | +0.25 | yes | yes |" in text
    assert "<!-- goal_check_start:begin -->" in md.read_text(encoding="utf-8")
    # The plot of the paired leads sits beside the table, linked from the section.
    assert (tmp_path / "goal_check_start.png").read_bytes()[:4] == b"\x89PNG"
    assert "](goal_check_start.png)" in text
    assert not (tmp_path / "goal_check.md").exists()
    assert "round_robin" not in text  # the round robin belongs to the default's section only


def test_firsts_if_level_is_the_count_of_independent_draws():
    def cell(rivals):
        stats = goal_check.Stats("optg", 88.0, 0.0, {0: 88.0})
        return goal_check.Cell("b", 4, 0.98, stats, stats._replace(method="taylor"), rivals)

    # Two cells with one rival (first with probability 1/2) and one with three (1/4):
    # P(3 firsts) = 0.5 * 0.5 * 0.25 = 0.0625; P(2) = 0.5 * 0.5 * 0.75 + 2 * 0.5 * 0.5 * 0.25
    # = 0.3125; at least half of 3 cells is 2: 0.375. Expected 0.5 + 0.5 + 0.25 = 1.25.
    expected, at_least_half = goal_check.firsts_if_level([cell(1), cell(1), cell(3)])
    assert expected == pytest.approx(1.25)
    assert at_least_half == pytest.approx(0.375)
    # Four cells with two rivals each (1/3): at least 2 of 4 = 1 - (2/3)^4 - 4 (1/3)(2/3)^3.
    assert goal_check.firsts_if_level([cell(2)] * 4)[1] == pytest.approx(1 - 16 / 81 - 32 / 81)
    assert goal_check.firsts_if_level([]) == (0.0, 1.0)
    # The summary's "first" line says it for the high cells.
    line = goal_check.summary([cell(1), cell(1), cell(3)])[1]
    assert (
        "first in 1.25 of them on average, and in at least half with probability 0.375 "
        "(`firsts_if_level`). To be first in at least half with even odds it would have to lead "
        "every rival by 0.00 points in every cell (0.00 for odds of 0.8; `lead_for_even_odds`)."
    ) in line


def _spread_cell(rivals, pooled_std, seeds=4):
    stats = goal_check.Stats("optg", 88.0, pooled_std, dict.fromkeys(range(seeds), 88.0))
    return goal_check.Cell("b", 4, 0.98, stats, stats._replace(method="taylor"), rivals, pooled_std)


def test_chance_of_first_matches_the_closed_forms():
    # Level: every order of the k + 1 means equally likely, first with probability 1 / (k + 1).
    for k in (1, 2, 3, 5):
        assert goal_check.chance_of_first(_spread_cell(k, 0.2), 0.0) == pytest.approx(
            1 / (k + 1), abs=1e-9
        )
    # One rival, standard error 0.2 / sqrt(4) = 0.1: the difference of the two means has std
    # 0.1 * sqrt(2), so P(first) = Phi(lead / (0.1 sqrt(2))); Phi(1) = 0.8413447 at 0.1414.
    one = _spread_cell(1, 0.2)
    assert goal_check.chance_of_first(one, 0.1 * 2**0.5) == pytest.approx(0.8413447, abs=1e-7)
    assert goal_check.chance_of_first(one, -0.1 * 2**0.5) == pytest.approx(0.1586553, abs=1e-7)
    # No spread: a lead decides; a tie gives 1 / (k + 1).
    assert goal_check.chance_of_first(_spread_cell(2, 0.0), 0.01) == 1.0
    assert goal_check.chance_of_first(_spread_cell(2, 0.0), 0.0) == pytest.approx(1 / 3)


def test_lead_for_even_odds_inverts_the_binomial():
    # Five cells with one rival: at least 3 firsts of 5. Parity gives exactly 1/2, so no lead is
    # needed for even odds; for odds of 0.8 each cell needs p with P(Bin(5, p) >= 3) = 0.8,
    # then lead = se sqrt(2) Phi^-1(p) with se = 0.3 / sqrt(4) = 0.15.
    cells = [_spread_cell(1, 0.3)] * 5

    def at_least_3(p):
        return sum(math.comb(5, j) * p**j * (1 - p) ** (5 - j) for j in (3, 4, 5))

    lo, hi = 0.5, 1.0
    for _ in range(60):
        lo, hi = ((lo + hi) / 2, hi) if at_least_3((lo + hi) / 2) < 0.8 else (lo, (lo + hi) / 2)
    expected = 0.15 * 2**0.5 * statistics.NormalDist().inv_cdf(hi)
    assert goal_check.lead_for_even_odds(cells) == 0.0
    assert goal_check.lead_for_even_odds(cells, 0.8) == pytest.approx(expected, abs=2e-3)
    assert goal_check.lead_for_even_odds([]) == 0.0
    # Three rivals in four cells: parity gives P(>= 2 of 4) = 1 - (3/4)^4 - 4 (1/4)(3/4)^3 < 1/2,
    # so a lead is needed, and a larger spread needs a larger one.
    small, large = (goal_check.lead_for_even_odds([_spread_cell(3, s)] * 4) for s in (0.1, 0.4))
    assert 0 < small < large
    assert large == pytest.approx(4 * small, abs=4e-3)  # the lead scales with the spread


def test_expected_max_of_normals_matches_the_closed_forms():
    # E[max] of 2 standard normals is 1/sqrt(pi), of 3 it is 3/(2 sqrt(pi)); of 1 it is 0.
    assert goal_check.expected_max_of_normals(1) == 0.0
    assert goal_check.expected_max_of_normals(2) == pytest.approx(0.5641896, abs=1e-6)
    assert goal_check.expected_max_of_normals(3) == pytest.approx(0.8462844, abs=1e-6)
    # Blom's approximation for k = 10 gives 1.5388 (the exact value to 4 places).
    assert goal_check.expected_max_of_normals(10) == pytest.approx(1.5388, abs=1e-4)
    with pytest.raises(ValueError, match="got 0"):
        goal_check.expected_max_of_normals(0)


def test_lead_if_level_and_the_mean_lead_line_by_regime():
    def rows(offsets):
        out = []
        for method, base in offsets.items():
            for seed, d in enumerate((0.0, 0.2, 0.4)):  # std 0.2 for every method
                out.append(_row(method, 0.98, seed, base + d))
        return out

    # Two rivals, pooled std 0.2, 3 seeds: a level criterion trails the best of two means by
    # 0.5642 * 0.2 / sqrt(3) = 0.0651 on average.
    (scratch,) = goal_check.cells(
        "s", rows({"optg": 88.0, "magnitude": 88.1, "taylor": 87.8}), regime="scratch"
    )
    assert scratch.pooled_std == pytest.approx(0.2)
    assert scratch.lead_if_level() == pytest.approx(-0.5641896 * 0.2 / 3**0.5, abs=1e-6)
    # Stds 0.2 (optg) and 0.4 (taylor): pooled sqrt((0.04 + 0.16) / 2); one rival: level 0.
    pretrained_rows = rows({"optg": 90.0}) + [
        _row("taylor", 0.9, seed, top1) for seed, top1 in enumerate((89.0, 89.4, 89.8))
    ]
    pretrained_rows = [dict(r, sparsity=0.9) for r in pretrained_rows]
    (pre,) = goal_check.cells("p", pretrained_rows, regime="pretrained")
    assert pre.pooled_std == pytest.approx((0.1) ** 0.5)
    assert pre.lead_if_level() == 0.0
    line = goal_check.mean_lead_line([scratch, pre])
    # Leads: scratch 88.2 - 88.3 = -0.10, every seed -0.1 (standard error 0); pretrained
    # 90.2 - 89.4 = +0.80, per seed +1.0 / +0.8 / +0.6 (std 0.2, standard error 0.2 / sqrt(3)).
    assert line.startswith(
        "- Mean lead: -0.10 over 1 cell scratch (level: -0.07; from level: -0.03 ± 0.00); "
        "+0.80 over 1 cell pretrained (level: +0.00; from level: +0.80 ± 0.12); "
        "-0.10 over 1 cell at 98% or more (level: -0.07; from level: -0.03 ± 0.00)."
    )
    # Two cells: the standard errors combine as sqrt(0 + 0.2^2 / 3) / 2 = 0.058.
    both = dict(scratch._asdict(), regime="")
    line = goal_check.mean_lead_line([goal_check.Cell(**both), pre._replace(regime="")])
    assert line.startswith(
        "- Mean lead: +0.35 over 2 cells (level: -0.03; from level: +0.38 ± 0.06)"
    )


def test_forest_rows_give_the_paired_lead_two_standard_errors_and_parity(tmp_path):
    rows = []
    for seed, (optg, magnitude, taylor) in enumerate(((88.0, 88.1, 87.8), (88.4, 88.3, 88.0))):
        rows += [
            _row("optg", 0.98, seed, optg),
            _row("magnitude", 0.98, seed, magnitude),
            _row("taylor", 0.98, seed, taylor),
        ]
    (cell,) = goal_check.cells("from scratch, LeNet (loop)", rows, regime="from scratch")
    # Paired with magnitude (best mean 88.2 against taylor 87.9): -0.1, +0.1 -> mean 0, std
    # 0.1414, 2 seeds: half-width 2 * 0.1414 / sqrt(2) = 0.2. Pooled std: optg 0.2828,
    # magnitude 0.1414, taylor 0.1414 -> sqrt((0.08 + 0.02 + 0.02) / 3) = 0.2; level
    # -0.5642 * 0.2 / sqrt(2).
    ((label, regime, mean, half, level),) = goal_check.forest_rows([cell])
    assert (label, regime) == ("LeNet (loop), 4 ep, 98%", "from scratch")
    assert mean == pytest.approx(0.0, abs=1e-9)
    assert half == pytest.approx(0.2)
    assert level == pytest.approx(-0.5641896 * 0.2 / 2**0.5, abs=1e-6)
    assert goal_check.short_name("fine-tuning a pretrained vit_tiny_p7") == "fine-tuned vit_tiny_p7"
    assert goal_check.short_name("other") == "other"
    path = tmp_path / "leads.png"
    goal_check.plot_leads([cell, cell._replace(regime="from a pretrained network")], str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_chance_within_matches_an_independent_simulation_and_the_closed_forms():
    # One rival, five seeds, level: the rule applied to 50 000 independent draws of plain Python.
    rng = random.Random(7)
    hits = 0
    for _ in range(50_000):
        a = [rng.gauss(0.0, 1.0) for _ in range(5)]
        b = [rng.gauss(0.0, 1.0) for _ in range(5)]
        lead = statistics.fmean(a) - statistics.fmean(b)
        hits += lead >= -max(statistics.stdev(a), statistics.stdev(b))
    assert goal_check.chance_within(_spread_cell(1, 0.3, seeds=5), 0.0) == pytest.approx(
        hits / 50_000, abs=0.006
    )
    # One seed: every std is 0, so "within" is "first": 1 / (k + 1) at parity.
    assert goal_check.chance_within(_spread_cell(3, 0.2, seeds=1), 0.0) == pytest.approx(
        0.25, abs=0.01
    )
    # Many seeds, one rival, truly one std behind: the lead is N(-s, 2 s^2 / n) and the larger of
    # the two sample stds is s (1 + 0.5642 / sqrt(2n)) on average with variance
    # (1 - 1/pi) s^2 / (2n), so P = Phi(0.5642 / sqrt(2n) / sqrt(2/n + 0.6817 / (2n))) = 0.6029
    # for n = 400.
    far = goal_check.chance_within(_spread_cell(1, 1.0, seeds=400), -1.0, draws=4000)
    assert far == pytest.approx(0.6029, abs=0.02)
    # No spread: the lead decides; a large lead is always within; a higher lead never lowers it.
    assert goal_check.chance_within(_spread_cell(2, 0.0), 0.0) == 1.0
    assert goal_check.chance_within(_spread_cell(2, 0.0), -0.01) == 0.0
    assert goal_check.chance_within(_spread_cell(2, 0.2), 5.0) == 1.0
    chances = [goal_check.chance_within(_spread_cell(2, 0.2), x) for x in (-0.2, 0.0, 0.1)]
    assert chances == sorted(chances) and chances[0] < chances[-1]


def test_within_if_level_and_lead_for_all_within_over_independent_cells():
    # One seed and one rival a cell: within means first, 1/2 at parity. Three cells: all within
    # with 1/8, 1.5 cells outside on average.
    everywhere, misses = goal_check.within_if_level([_spread_cell(1, 0.3, seeds=1)] * 3)
    assert everywhere == pytest.approx(0.125, abs=0.01)
    assert misses == pytest.approx(1.5, abs=0.03)
    assert goal_check.within_if_level([]) == (1.0, 0.0)
    # Two such cells with std 1: P(all) = Phi(lead / sqrt(2))^2 = 1/2 at
    # lead = sqrt(2) Phi^-1(sqrt(1/2)) = 0.7707.
    cells = [_spread_cell(1, 1.0, seeds=1)] * 2
    expected = 2**0.5 * statistics.NormalDist().inv_cdf(0.5**0.5)
    assert goal_check.lead_for_all_within(cells) == pytest.approx(expected, abs=0.02)
    assert goal_check.lead_for_all_within([]) == 0.0
    # Parity already gives one cell of one rival and five seeds more than even odds.
    assert goal_check.lead_for_all_within([_spread_cell(1, 0.3, seeds=5)]) == 0.0
    line = goal_check.summary([_spread_cell(1, 0.3, seeds=1)] * 3)[0]
    assert "within one std in all 3 with probability 0.12" in line
    assert "outside it in 1.5" in line


def test_round_robin_puts_each_criterion_in_the_candidates_place():
    # One cell at 98%: Taylor 0.18 above OptG on average (paired -0.2, -0.15, -0.2: clear),
    # magnitude a point below OptG, supermask absent.
    tops = {
        "optg": (88.0, 88.15, 88.2),
        "taylor": (88.2, 88.3, 88.4),
        "magnitude": (87.0, 87.1, 87.2),
    }
    rows = [_row(m, 0.98, seed, t) for m, ts in tops.items() for seed, t in enumerate(ts)]
    source = goal_check.Source("b", "b.jsonl", goal_check.SCRATCH)
    lines = goal_check.round_robin([(source, rows)])
    assert lines[2:] == [
        "| optg | 0 of 1 | 0 of 1 | 0 | 1 |",  # 0.18 behind Taylor, stds 0.10: outside
        "| magnitude | 0 of 1 | 0 of 1 | 0 | 1 |",
        "| taylor | 1 of 1 | 1 of 1 | 1 | 0 |",  # ahead of OptG, the best of the others
        "| supermask | 0 of 0 | 0 of 0 | 0 | 0 |",
    ]


def test_candidate_records_read_apart_join_the_benchmarks_they_name(tmp_path):
    # A candidate read on the test split into a file of its own, each row naming its benchmark:
    # its rows join that benchmark's records (validation rows and unnamed benchmarks do not).
    (tmp_path / "user_loop_lenet.jsonl").write_text(
        "\n".join(
            json.dumps({"method": m, "sparsity_target": 0.98, "epochs": 10, "seed": s, "top1": t})
            for m, s, t in (("optg", 0, 88.0), ("magnitude", 0, 88.4), ("magnitude", 1, 88.6))
        ),
        encoding="utf-8",
    )
    (tmp_path / "finetune_mlp.jsonl").write_text(
        json.dumps({"method": "taylor", "sparsity_target": 0.9, "epochs": 2, "seed": 0, "top1": 94})
        + "\n",
        encoding="utf-8",
    )
    lenet, mlp = goal_check.SOURCES[1].name, goal_check.BEYOND_SOURCES[0].name
    candidate = "optg:uncertainty_bonus=8"
    rows = [
        (lenet, 0.98, 10, 0, "test", 88.5),
        (lenet, 0.98, 10, 1, "test", 88.3),
        (lenet, 0.98, 10, 2, "train[-10000:]", 99.0),  # not the test split: left out
        (mlp, 0.9, 2, 0, "test", 94.5),
        ("a benchmark nobody reads", 0.9, 2, 0, "test", 50.0),
    ]
    (tmp_path / "apart.jsonl").write_text(
        "\n".join(
            json.dumps(
                {
                    "benchmark": b,
                    "method": candidate,
                    "sparsity_target": p,
                    "epochs": e,
                    "seed": s,
                    "split": split,
                    "top1": t,
                }
            )
            for b, p, e, s, split, t in rows
        ),
        encoding="utf-8",
    )
    grouped = goal_check.read_named_records(str(tmp_path / "apart.jsonl"))
    assert sorted(grouped) == sorted([lenet, mlp, "a benchmark nobody reads"])
    assert [r["seed"] for r in grouped[lenet]] == [0, 1]
    md = tmp_path / "BENCHMARKS.md"
    argv = ["--results-dir", str(tmp_path), "--benchmarks-md", str(md), "--candidate", candidate]
    argv += ["--label", "OptG, κ = 8", "--section", "goal_check_k8"]
    with pytest.raises(SystemExit, match="no file"):
        goal_check.main(argv + ["--candidate-records", "missing.jsonl"])
    assert not md.exists()  # nothing written
    goal_check.main(argv + ["--candidate-records", "apart.jsonl"])
    text = (tmp_path / "goal_check_k8.md").read_text(encoding="utf-8")
    # LeNet: 88.40 +- 0.14 against GMP 88.50 +- 0.14; paired +0.10 and -0.30: -0.10 +- 0.28.
    assert "| 10 | 98% | 88.40 ± 0.14 (2) | magnitude 88.50 ± 0.14 (2) | -0.10 | yes |" in text
    assert "| -0.10 ± 0.28 (2) |" in text
    # The loop beyond the goal gets its table, naming the candidate, not the defaults.
    assert "| 2 | 90% | 94.50 (1) | taylor 94.00 (1) | +0.50 | yes | yes |" in text
    assert "OptG, κ = 8 read once on the test split" in text
    assert "--candidate-records apart.jsonl" in text
