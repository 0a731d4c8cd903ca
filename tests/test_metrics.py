"""The best eval top-1 read back from metrics.jsonl, and the summary table's row for it."""

import json

from optg_jax.train import metrics


def test_best_top1_takes_the_last_record_of_each_step_and_the_first_best_epoch(tmp_path):
    lines = [
        {"step": 10, "train/loss_step": 2.0},
        {"step": 10, "epoch": 1.0, "eval/top1": 0.50},
        {"step": 20, "epoch": 2.0, "eval/top1": 0.70},
        {"step": 30, "epoch": 3.0, "eval/top1": 0.90},  # Stale: step 30 was evaluated again.
        {"step": 30, "epoch": 3.0, "eval/top1": 0.60},
        {"step": 40, "epoch": 4.0, "eval/top1": 0.70},  # Ties epoch 2: the first one counts.
        {"step": 45, "epoch": 4.5, "eval/top1": "nan"},  # A non-finite value, written as text.
    ]
    text = "\n".join(json.dumps(r) for r in lines) + '\n{"step": 50, "epoch": 5.0, "eval/t'
    (tmp_path / metrics.METRICS_FILE).write_text(text)  # The last line was cut by a kill.
    records = metrics.read_records(str(tmp_path))
    assert len(records) == len(lines)
    assert metrics.best_top1(records) == (0.70, 2.0)
    assert metrics.best_top1(records, up_to_step=10) == (0.50, 1.0)
    assert metrics.best_top1(records, up_to_step=9) is None
    assert metrics.read_records(str(tmp_path / "missing")) == []


def test_summary_table_shows_the_best_top1_and_its_epoch():
    results = dict(top1=0.8, top5=0.9, sparsity=0.9, macs=10, dense_macs=100)
    assert "best top-1" not in metrics.summary_table(results)  # results.json of older runs
    table = metrics.summary_table(dict(results, best_top1=0.8312, best_top1_epoch=7.0))
    assert "83.12% (epoch 7)" in table
