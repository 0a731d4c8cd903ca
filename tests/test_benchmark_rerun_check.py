"""benchmarks/rerun_check.py: records against reruns of the same runs, hand-computed."""

import json
import os

import pytest

from benchmarks import goal_check, report, rerun_check


def _row(method, seed, top1, sparsity=0.98, epochs=10):
    return {"method": method, "sparsity": sparsity, "epochs": epochs, "seed": seed, "top1": top1}


def test_matched_pairs_runs_by_method_sparsity_epochs_and_seed():
    records = [_row("optg", 0, 88.0), _row("optg", 1, 88.2), _row("taylor", 0, 88.1)]
    reruns = [_row("taylor", 0, 88.3), _row("optg", 0, 88.0), _row("optg", 2, 90.0)]
    pairs = rerun_check.matched(records, reruns)
    # Rerun order; optg seed 2 has no record and is left out.
    assert pairs == [(records[2], reruns[0]), (records[0], reruns[1])]


def test_differences_count_equal_runs_and_give_std_and_largest():
    pairs = [
        (_row("optg", 0, 88.0), _row("optg", 0, 88.0)),  # equal
        (_row("optg", 1, 88.0), _row("optg", 1, 88.0004)),  # equal within 0.001
        (_row("optg", 2, 88.0), _row("optg", 2, 88.3)),  # +0.3
        (_row("optg", 3, 88.0), _row("optg", 3, 87.7)),  # -0.3
    ]
    d = rerun_check.differences(pairs)
    # Differences 0, 0.0004, 0.3, -0.3: mean 0.0001, std sqrt(0.18 / 3) = 0.2449.
    assert d["runs"] == 4 and d["equal"] == 2
    assert d["std"] == pytest.approx((0.18 / 3) ** 0.5, abs=1e-3)
    assert d["largest"] == pytest.approx(0.3)
    assert rerun_check.differences([]) == {"runs": 0, "equal": 0, "std": 0.0, "largest": 0.0}


OPTG = "optg:score_half_distance=0"


def test_verdicts_compare_the_same_seeds_in_records_and_reruns():
    # The reruns are of the previous default OptG, named as the loops name it now.
    records = [
        _row(OPTG, 0, 88.0),
        _row(OPTG, 1, 88.4),
        _row("magnitude", 0, 88.3),
        _row("magnitude", 1, 88.5),
        _row("magnitude", 2, 80.0),  # no rerun: not in either cell
    ]
    reruns = [
        _row(OPTG, 0, 88.6),
        _row(OPTG, 1, 88.4),
        _row("magnitude", 0, 88.3),
        _row("magnitude", 1, 88.3),
    ]
    ((recorded, rerun),) = rerun_check.verdicts(rerun_check.matched(records, reruns))
    # Records: differences -0.3, -0.1 (mean -0.2); reruns: +0.3, +0.1 (mean +0.2, first).
    assert recorded.paired_lead()[0] == pytest.approx(-0.2)
    assert not recorded.first
    assert rerun.paired_lead()[0] == pytest.approx(0.2) and rerun.first
    lines = rerun_check.tables([(rerun_check.RerunSet("x", "r", "s"), list(zip(records, reruns)))])
    assert "| x | 10 | 98% | magnitude -0.20 ± 0.14 (2) | magnitude +0.20 ± 0.14 (2) first |" in (
        lines
    )
    # Three seeds, differences +0.5 / +0.6 / +0.55 (standard error 0.029): first and clear.
    clear = [
        (_row(m, s, 88.0 + d), _row(m, s, 88.0 + d))
        for s, d in enumerate((0.5, 0.6, 0.55))
        for m in (OPTG,)
    ]
    clear += [(_row("taylor", s, 88.0), _row("taylor", s, 88.0)) for s in range(3)]
    lines = rerun_check.tables([(rerun_check.RerunSet("y", "r", "s"), clear)])
    assert (
        "| y | 10 | 98% | taylor +0.55 ± 0.05 (3) first clear | taylor +0.55 ± 0.05 (3) "
        "first clear |" in lines
    )


def test_every_committed_rerun_repeats_a_record_and_says_where_it_ran():
    for rerun_set in rerun_check.RERUNS:
        path = os.path.join(report.RESULTS_DIR, rerun_set.reruns)
        records = goal_check.read_records(os.path.join(report.RESULTS_DIR, rerun_set.records))
        reruns = goal_check.read_records(path)
        assert reruns, path
        assert len(rerun_check.matched(records, reruns)) == len(reruns), path
        if path.endswith(".jsonl"):
            with open(path, encoding="utf-8") as f:
                rows = [json.loads(line) for line in f]
            assert all(r["code"] and r["host"] for r in rows), path
