"""Committed records against reruns of the same runs: how far a run moves when only the arithmetic
changes, and whether each cell's verdict moves with it.

A rerun is the same method, sparsity, run length and seed as a committed record, trained again,
on another thread count (`taskset -c 0` gives one thread) or on this host where the record came
from another. XLA's CPU kernels sum in an order that depends on the threads and the CPU, so a
rerun need not equal its record bit for bit; how far it moves is noise that the seeds do not
show. Nothing is trained here: the reruns are committed under `benchmarks/results/reruns/`
(`RERUNS` says which records each one repeats), each row with the `code` and `host` it ran on.

  .venv/bin/python -m benchmarks.rerun_check

prints, per rerun set, the runs matched, how many equal their record, and the std and largest
size of the differences; then, per cell (`goal_check.cells` over the same methods and seeds),
OptG's lead over the best other method in the records and in the rerun. The tables go to
`benchmarks/results/rerun_check.md` and the `rerun_check` section of BENCHMARKS.md, with the
notes of `rerun_check_notes.md`.
"""

from __future__ import annotations

import argparse
import os
import statistics
from typing import NamedTuple

from benchmarks import goal_check, report

SECTION = "rerun_check"
# A rerun "equals" its record when the two top-1 figures agree to this many points (the records
# hold percentages of a 10,000-image test split, steps of 0.01, some written from float32).
EQUAL_POINTS = 1e-3


class RerunSet(NamedTuple):
    """Reruns of some committed runs: a description, the file of the runs repeated (records, or
    another rerun set's file to isolate one change), the reruns' file; paths under the results
    folder."""

    label: str
    records: str
    reruns: str


RERUNS = (
    RerunSet(
        "LeNet loop, 10 epochs, 98/99%, every rival, 5 seeds; 2 threads, this host",
        "user_loop_lenet.jsonl",
        "reruns/user_loop_lenet_10ep_2threads.jsonl",
    ),
    RerunSet(
        "LeNet loop, 10 epochs, 98/99%, every rival, 5 seeds; 1 thread, against the 2-thread "
        "reruns",
        "reruns/user_loop_lenet_10ep_2threads.jsonl",
        "reruns/user_loop_lenet_10ep_1thread.jsonl",
    ),
    RerunSet(
        "LeNet loop, 30 epochs, 98%, every rival, seed 0; 2 threads, this host",
        "user_loop_lenet.jsonl",
        "reruns/user_loop_lenet_30ep_seed0.jsonl",
    ),
    RerunSet(
        "fmnist_cnn grid, 2 epochs, 99%, OptG and Taylor, 5 seeds (GMP and the paper form, "
        "seed 0); 2 threads, this host",
        "accuracy_vs_sparsity.csv",
        "reruns/accuracy_vs_sparsity_2ep_99_2threads.csv",
    ),
    RerunSet(
        "fmnist_cnn grid, 2 epochs, 99%, OptG and Taylor, 5 seeds; 1 thread, against the "
        "2-thread reruns",
        "reruns/accuracy_vs_sparsity_2ep_99_2threads.csv",
        "reruns/accuracy_vs_sparsity_2ep_99_1thread.csv",
    ),
    RerunSet(
        "fmnist_cnn grid, 4 epochs, 90%, OptG and Taylor, 5 seeds; 2 threads, this host",
        "accuracy_vs_sparsity.csv",
        "reruns/accuracy_vs_sparsity_4ep_90_2threads.csv",
    ),
    RerunSet(
        "fmnist_cnn grid, 4 epochs, 90%, OptG and Taylor, 5 seeds; 1 thread, against the "
        "2-thread reruns",
        "reruns/accuracy_vs_sparsity_4ep_90_2threads.csv",
        "reruns/accuracy_vs_sparsity_4ep_90_1thread.csv",
    ),
    RerunSet(
        "vit_tiny loop, 2 epochs, 98%, OptG and Taylor, 5 seeds; 1 thread, against the records",
        "user_loop_vit_tiny.jsonl",
        "reruns/user_loop_vit_tiny_2ep_98_1thread.jsonl",
    ),
    RerunSet(
        "fine-tuned fmnist_cnn, 98% (OptG and Taylor, 5 seeds; GMP and supermask, seed 0), "
        "OptG at 90/95% (seeds 0-2); 2 threads, this host",
        "finetune_fmnist_cnn.jsonl",
        "reruns/finetune_fmnist_cnn_2threads.jsonl",
    ),
    RerunSet(
        "fine-tuned fmnist_cnn, 98%, OptG's paper form (which collapses), seed 0; 2 threads, "
        "this host",
        "finetune_fmnist_cnn.jsonl",
        "reruns/finetune_fmnist_cnn_paper_seed0.jsonl",
    ),
    RerunSet(
        "fine-tuned fmnist_cnn, 98%, OptG and Taylor, 5 seeds; 1 thread, against the 2-thread "
        "reruns",
        "reruns/finetune_fmnist_cnn_2threads.jsonl",
        "reruns/finetune_fmnist_cnn_98_1thread.jsonl",
    ),
    RerunSet(
        "fine-tuned vit_tiny_p7, 90/95%, OptG and supermask, 5 seeds; 1 thread, against the "
        "records",
        "finetune_vit_tiny_p7.jsonl",
        "reruns/finetune_vit_tiny_p7_90_95_1thread.jsonl",
    ),
    RerunSet(
        "fine-tuned vit_tiny_p7, 98%, OptG, supermask and Taylor, seed 0; 2 threads, this host",
        "finetune_vit_tiny_p7.jsonl",
        "reruns/finetune_vit_tiny_p7_98_seed0.jsonl",
    ),
)


def _key(row: dict) -> tuple:
    return row["method"], row["sparsity"], row["epochs"], row["seed"]


def matched(records: list[dict], reruns: list[dict]) -> list[tuple[dict, dict]]:
    """`(record, rerun)` pairs of the same method, sparsity, run length and seed, in the
    reruns' order; a rerun without a record is left out."""
    by_key = {_key(r): r for r in records}
    return [(by_key[_key(r)], r) for r in reruns if _key(r) in by_key]


def differences(pairs: list[tuple[dict, dict]]) -> dict:
    """`{'runs', 'equal', 'std', 'largest'}` of the rerun-minus-record top-1 differences
    (points): how many pairs, how many agree within `EQUAL_POINTS`, the std of the differences
    (0 for fewer than two) and the largest size."""
    diffs = [rerun["top1"] - record["top1"] for record, rerun in pairs]
    return {
        "runs": len(diffs),
        "equal": sum(abs(d) <= EQUAL_POINTS for d in diffs),
        "std": statistics.stdev(diffs) if len(diffs) > 1 else 0.0,
        "largest": max((abs(d) for d in diffs), default=0.0),
    }


# The OptG whose runs were rerun: the default before `score_half_distance=0.25`, as the grid and
# the loops now name it (`goal_check.cells` takes the first name the rows hold).
RERUN_CANDIDATES = ("optg-halfdist0", "optg:score_half_distance=0")


def verdicts(pairs: list[tuple[dict, dict]]) -> list[tuple[goal_check.Cell, goal_check.Cell]]:
    """Per cell, `(cell from the records, cell from the reruns)` over the matched runs only."""
    records = [record for record, _ in pairs]
    candidate = goal_check.pick_candidate(records, list(RERUN_CANDIDATES)) or RERUN_CANDIDATES[0]
    recorded = goal_check.cells("", records, candidate)
    rerun = {
        (c.epochs, c.sparsity): c for c in goal_check.cells("", [r for _, r in pairs], candidate)
    }
    return [(c, rerun[(c.epochs, c.sparsity)]) for c in recorded if (c.epochs, c.sparsity) in rerun]


def _lead(cell: goal_check.Cell) -> str:
    mean, std, n = cell.paired_lead()
    spread = f" ± {std:.2f}" if n > 1 else ""
    marks = (" first" if cell.first else "") + (" clear" if cell.clear_lead() else "")
    return f"{cell.best.method} {mean:+.2f}{spread} ({n}){marks}"


def tables(sets: list[tuple[RerunSet, list[tuple[dict, dict]]]]) -> list[str]:
    """The two Markdown tables: the differences per rerun set, the verdicts per cell."""
    lines = [
        "| reruns | runs | equal to the run repeated | std of rerun - run repeated | largest |",
        "|---|---:|---:|---:|---:|",
    ]
    for rerun_set, pairs in sets:
        d = differences(pairs)
        lines.append(
            f"| {rerun_set.label} | {d['runs']} | {d['equal']} | {d['std']:.2f} | "
            f"{d['largest']:.2f} |"
        )
    lines += [
        "",
        "The previous default OptG's (`score_half_distance=0`) lead over the best other method, "
        "paired by seed (mean ± std (seeds)), in the runs repeated and in their reruns "
        "(*clear*: more than two standard errors from 0, "
        "`goal_check.Cell.clear_lead`):",
        "",
        "| reruns | epochs | sparsity | runs repeated | reruns |",
        "|---|---:|---:|---|---|",
    ]
    for rerun_set, pairs in sets:
        for recorded, rerun in verdicts(pairs):
            lines.append(
                f"| {rerun_set.label} | {recorded.epochs} | {100 * recorded.sparsity:g}% | "
                f"{_lead(recorded)} | {_lead(rerun)} |"
            )
    return lines


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    ap.add_argument("--results-dir", default=report.RESULTS_DIR)
    ap.add_argument("--benchmarks-md", default=report.BENCHMARKS_MD)
    args = ap.parse_args(argv)
    sets = []
    for rerun_set in RERUNS:
        paths = [os.path.join(args.results_dir, f) for f in (rerun_set.records, rerun_set.reruns)]
        missing = [p for p in paths if not os.path.exists(p)]
        if missing:
            print(f"{rerun_set.label}: {', '.join(missing)} missing; left out")
            continue
        records, reruns = (goal_check.read_records(p) for p in paths)
        sets.append((rerun_set, matched(records, reruns)))
    blocks = [
        "## Reruns: how far a run moves when only the arithmetic changes "
        "(benchmarks/rerun_check.py)",
        "",
        "Top-1 differences in points, test split; read from committed records and reruns by "
        "`.venv/bin/python -m benchmarks.rerun_check`.",
        "",
        *tables(sets),
        "",
    ]
    print(report.publish_section(args.results_dir, args.benchmarks_md, SECTION, blocks))


if __name__ == "__main__":
    main()
