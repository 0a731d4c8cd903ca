"""The default OptG against the best other sparse method, in every cell of the accuracy benchmarks.

Reads the committed test-split records of the from-scratch grid, the two user loops and the two
fine-tuning benchmarks (nothing is trained) and prints, per benchmark, run length and sparsity:
OptG with the library's defaults, the best of the library's other sparse criteria with their
defaults (`magnitude` = GMP with the cubic ramp, `taylor`, `supermask`, those a benchmark ran),
OptG's lead over it, whether OptG is within one std of it (the larger of the two stds) and
whether it is first, and the lead paired by seed (mean and std of the per-seed differences over
the seeds both ran). Under the table: the goal's two counts, each beside what a criterion exactly
level with its rivals would score (`within_if_level`, `firsts_if_level`), the mean lead of each
regime beside what such a criterion would average (`Cell.lead_if_level`), the clear leads either
way, and the same test for each of the library's criteria in turn against the others
(`round_robin`). The table goes to `benchmarks/results/goal_check.md` and its section of
BENCHMARKS.md, with a plot of the paired leads (`goal_check.png`, `plot_leads`) and the
hand-written notes of `goal_check_notes.md`.

  .venv/bin/python -m benchmarks.goal_check

`--candidate` puts a variant of OptG in the default's place (the first of the names that a
benchmark's records hold: the grid and the loops spell a variant differently), into its own
section, e.g. the previous default, whose scores did not forget with distance:

  .venv/bin/python -m benchmarks.goal_check --candidate optg-halfdist0 \
      optg:score_half_distance=0 --label "OptG, score_half_distance=0" \
      --section goal_check_previous_default
"""

from __future__ import annotations

import argparse
import csv
import functools
import math
import os
import statistics
from typing import NamedTuple

from benchmarks import report

SECTION = "goal_check"
CANDIDATE = "optg"
OTHERS = ("magnitude", "taylor", "supermask")
HIGH_SPARSITY = 0.98  # Cells at this sparsity or above count for the "first" half of the goal.
# A paired lead is "clear" when its mean is this many standard errors (std / sqrt(seeds)) from 0,
# over at least MIN_PAIRED_SEEDS seeds.
CLEAR_STANDARD_ERRORS = 2.0
MIN_PAIRED_SEEDS = 3


class Source(NamedTuple):
    """One benchmark's records: a display name, a file under the results folder, and where
    its networks start (the summary's mean leads are grouped by it)."""

    name: str
    file: str
    regime: str


SCRATCH, PRETRAINED = "from scratch", "from a pretrained network"
SOURCES = (
    Source("from scratch, fmnist_cnn (training program)", "accuracy_vs_sparsity.csv", SCRATCH),
    Source("from scratch, LeNet-300-100 (user loop)", "user_loop_lenet.jsonl", SCRATCH),
    Source("from scratch, vit_tiny (user loop)", "user_loop_vit_tiny.jsonl", SCRATCH),
    Source("fine-tuning a pretrained fmnist_cnn", "finetune_fmnist_cnn.jsonl", PRETRAINED),
    Source("fine-tuning a pretrained vit_tiny_p7", "finetune_vit_tiny_p7.jsonl", PRETRAINED),
)
# Loops beyond the goal's benchmarks (the other cases the goal's issue reported, and the goal's
# loops with another optimizer or fine-tuning schedule; each read on validation, then once on the
# test split, with the library's defaults, nothing chosen on them): a table of their own under the
# goal's, not counted in its figures.
BEYOND_SOURCES = (
    Source("fine-tuning a pretrained LeNet-300-100 (MLP)", "finetune_mlp.jsonl", PRETRAINED),
    Source(
        "fine-tuning a pretrained plain_cnn (no BatchNorm)", "finetune_plain_cnn.jsonl", PRETRAINED
    ),
    Source(
        "from scratch, vit_tiny_p7 with AdamW (user loop)",
        "user_loop_vit_tiny_p7_adamw.jsonl",
        SCRATCH,
    ),
    Source(
        "from scratch, LeNet-300-100 with AdamW (user loop)", "user_loop_lenet_adamw.jsonl", SCRATCH
    ),
    Source(
        "fine-tuning a pretrained fmnist_cnn at a tenth of the lr (1e-4)",
        "finetune_fmnist_cnn_lr0.0001.jsonl",
        PRETRAINED,
    ),
    Source(
        "fine-tuning a pretrained vit_tiny_p7 at a fifth of the lr (1e-4)",
        "finetune_vit_tiny_p7_lr0.0001.jsonl",
        PRETRAINED,
    ),
    Source(
        "fine-tuning a pretrained LeNet-300-100 (MLP) at a tenth of the lr (1e-4)",
        "finetune_mlp_lr0.0001.jsonl",
        PRETRAINED,
    ),
    Source(
        "fine-tuning a pretrained fmnist_cnn for 6 epochs",
        "finetune_fmnist_cnn_6ep.jsonl",
        PRETRAINED,
    ),
    Source(
        "fine-tuning a pretrained LeNet-300-100 (MLP) for 6 epochs",
        "finetune_mlp_6ep.jsonl",
        PRETRAINED,
    ),
)


class Stats(NamedTuple):
    """Top-1 (%) of one method in one cell over its seeds."""

    method: str
    mean: float
    std: float  # 0 for one seed.
    by_seed: dict


class Cell(NamedTuple):
    """The candidate against the best other method in one (benchmark, epochs, sparsity) cell."""

    benchmark: str
    epochs: int
    sparsity: float
    candidate: Stats
    best: Stats
    rivals: int = 1  # How many of the other methods ran in the cell (the best among them).
    pooled_std: float = 0.0  # Root mean of the variances over seeds of the cell's methods.
    regime: str = ""  # Where the cell's networks start (`Source.regime`).

    @property
    def lead(self) -> float:
        """Candidate's mean minus the best other method's (points; > 0: the candidate leads)."""
        return self.candidate.mean - self.best.mean

    @property
    def within_one_std(self) -> bool:
        """Ahead, or behind by at most the larger of the two stds."""
        return self.lead >= -max(self.candidate.std, self.best.std)

    @property
    def first(self) -> bool:
        return self.lead > 0

    def paired_lead(self) -> tuple[float, float, int]:
        """Mean and std of the per-seed differences over the seeds both ran, and their count."""
        seeds = sorted(set(self.candidate.by_seed) & set(self.best.by_seed))
        diffs = [self.candidate.by_seed[s] - self.best.by_seed[s] for s in seeds]
        if not diffs:
            return float("nan"), float("nan"), 0
        return report.cell_stats(diffs)

    def lead_if_level(self) -> float:
        """The lead the candidate would have on average if it were exactly level with its rivals.

        With every method's seeds drawn around one common mean, the candidate's mean is
        unbiased, but the best of `rivals` means sits above the common mean by
        `expected_max_of_normals(rivals)` standard errors (the pooled std over the square root
        of the candidate's seeds): a level criterion trails "the best other" by that much.
        """
        seeds = max(1, len(self.candidate.by_seed))
        return -expected_max_of_normals(self.rivals) * self.pooled_std / math.sqrt(seeds)

    def clear_lead(self) -> int:
        """+1 (clearly ahead) or -1 (clearly behind) when the paired lead's mean is more than
        `CLEAR_STANDARD_ERRORS` standard errors from 0 over `MIN_PAIRED_SEEDS`+ seeds, else 0."""
        mean, std, n = self.paired_lead()
        if n < MIN_PAIRED_SEEDS or abs(mean) <= CLEAR_STANDARD_ERRORS * std / math.sqrt(n):
            return 0
        return 1 if mean > 0 else -1


@functools.lru_cache(maxsize=None)
def expected_max_of_normals(k: int) -> float:
    """`E[max(Z_1..Z_k)]` for `k` independent standard normals (0, 0.5642, 0.8463 for 1, 2, 3).

    The integral of `x * k * phi(x) * Phi(x)^(k - 1)` over `[-12, 12]` (trapezoid rule, step
    0.001: error well under 1e-6).
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k!r}")
    if k == 1:
        return 0.0
    return _normal_expectation(lambda x: x * k * _normal_cdf(x) ** (k - 1), 12, 1e-3)


def _normal_cdf(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2)))


def _normal_expectation(fn, half_width: int, step: float) -> float:
    """`E[fn(Z)]` for a standard normal `Z`: the integral of `fn(z) * phi(z)` over
    `[-half_width, half_width]` by the trapezoid rule with this step."""
    n = round(half_width / step)
    total = 0.0
    for i in range(-n, n + 1):
        z = i * step
        density = math.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
        total += (0.5 if abs(i) == n else 1.0) * density * fn(z)
    return total * step


def read_records(path: str) -> list[dict]:
    """Test-split records as `{method, sparsity, epochs, seed, top1 (%)}`.

    A `.csv` is the grid's (top-1 as a fraction, every row on the test split); a `.jsonl` is a
    user-loop or fine-tuning file (top-1 in percent; rows of other splits are left out).
    """
    rows = []
    if path.endswith(".csv"):
        with open(path, newline="", encoding="utf-8") as f:
            for r in csv.DictReader(f):
                rows.append(
                    {
                        "method": r["method"],
                        "sparsity": float(r["sparsity"]),
                        "epochs": int(r["epochs"]),
                        "seed": int(r["seed"]),
                        "top1": 100 * float(r["top1"]),
                    }
                )
        return rows
    return [
        {
            "method": r["method"],
            "sparsity": float(r["sparsity_target"]),
            "epochs": int(r["epochs"]),
            "seed": int(r["seed"]),
            "top1": float(r["top1"]),
            **({"benchmark": r["benchmark"]} if "benchmark" in r else {}),
        }
        for r in report.read_rows(path)
        if r.get("split", "test") == "test"
    ]


def _stats(method: str, rows: list[dict]) -> Stats:
    by_seed = {r["seed"]: r["top1"] for r in rows}
    mean, std, _ = report.cell_stats(list(by_seed.values()))
    return Stats(method, mean, std, by_seed)


def cells(
    benchmark: str, rows: list[dict], candidate=CANDIDATE, others=OTHERS, regime: str = ""
) -> list[Cell]:
    """One `Cell` per (epochs, sparsity) where the candidate and at least one other method ran.

    The best other method is the one with the highest mean (the first in `others` on a tie).
    """
    groups: dict[tuple, dict[str, list[dict]]] = {}
    for r in rows:
        if r["method"] == candidate or r["method"] in others:
            key = (r["epochs"], r["sparsity"])
            groups.setdefault(key, {}).setdefault(r["method"], []).append(r)
    out = []
    for (epochs, sparsity), by_method in sorted(groups.items()):
        rivals = [_stats(m, by_method[m]) for m in others if m in by_method]
        if candidate not in by_method or not rivals:
            continue
        best = max(rivals, key=lambda s: s.mean)  # max keeps the first of equal means.
        mine = _stats(candidate, by_method[candidate])
        pooled = math.sqrt(sum(s.std**2 for s in [mine, *rivals]) / (len(rivals) + 1))
        out.append(Cell(benchmark, epochs, sparsity, mine, best, len(rivals), pooled, regime))
    return out


def firsts_if_level(high_cells: list[Cell]) -> tuple[float, float]:
    """What "first in at least half of these cells" asks of a criterion no better than its rivals.

    If the candidate were exactly level with the other methods of a cell (every order of their
    means equally likely), it would be first there with probability `1 / (rivals + 1)`, cell by
    cell independently: the count of cells where it is first is then a sum of such draws.

    Args:
      high_cells: the cells that count (those at the high sparsities).

    Returns:
      The expected count, and the probability that the count is at least half of the cells
      (`ceil(n / 2)`); `(0.0, 1.0)` for no cells.
    """
    return _firsts([1.0 / (c.rivals + 1) for c in high_cells])


def _firsts(chances: list[float]) -> tuple[float, float]:
    """The expected count of independent draws with these chances, and P(count >= half)."""
    # distribution[k]: probability of k firsts among the cells seen so far; a cell keeps the
    # count with probability 1 - p and raises it by one with probability p.
    distribution = [1.0]
    for p in chances:
        distribution = [
            stay * (1 - p) + up * p for stay, up in zip(distribution + [0.0], [0.0] + distribution)
        ]
    half = math.ceil(len(chances) / 2)
    return sum(chances), sum(distribution[half:])


def chance_of_first(cell: Cell, lead: float) -> float:
    """The probability that the candidate's mean is the cell's highest if it truly led each rival
    by `lead` points.

    Every method's mean is drawn with the standard error `se` of `Cell.lead_if_level` (the
    pooled std over the square root of the candidate's seeds): the candidate's around `lead`,
    the `k` rivals' around 0. Then `P(first) = E[Phi(Z + lead / se)^k]` over a standard normal
    `Z` (trapezoid rule on [-10, 10], step 0.01): `1 / (k + 1)` at `lead = 0`,
    `Phi(lead / (se sqrt(2)))` for one rival.
    """
    k = cell.rivals
    se = cell.pooled_std / math.sqrt(max(1, len(cell.candidate.by_seed)))
    if se == 0.0:
        return 1.0 if lead > 0 else (1.0 / (k + 1) if lead == 0 else 0.0)
    shift = lead / se
    return _normal_expectation(lambda z: _normal_cdf(z + shift) ** k, 10, 0.01)


def lead_for_even_odds(high_cells: list[Cell], odds: float = 0.5) -> float:
    """The lead (points) over every rival, the same in every cell, with which the candidate would
    be first in at least half of `high_cells` with probability `odds` (`chance_of_first` per
    cell; bisection to 0.001 points). 0 when parity already gives those odds.
    """
    if not high_cells or firsts_if_level(high_cells)[1] >= odds:
        return 0.0
    lo, hi = 0.0, 10.0
    while hi - lo > 1e-3:
        mid = 0.5 * (lo + hi)
        if _firsts([chance_of_first(c, mid) for c in high_cells])[1] >= odds:
            hi = mid
        else:
            lo = mid
    return hi


def chance_within(cell: Cell, lead: float, draws: int = 20_000, seed: int = 0) -> float:
    """The probability that the candidate is within one std of the cell's best other method
    (`Cell.within_one_std`, the rule itself) if it truly led each rival by `lead` points.

    Monte Carlo: every method of the cell gets as many seeds as the candidate has, each seed's
    top-1 drawn from a normal with the cell's pooled std, the candidate's around `lead` and the
    `rivals`' around 0; each draw applies the rule to the sample means and stds (the best other
    is the rival of the highest mean). The draws are seeded, so the result is a fixed function
    of its arguments, and the same normals serve every `lead` (a higher lead never lowers it).
    With one seed every std is 0 and the rule asks the candidate to be first.
    """
    import numpy as np  # pylint: disable=import-outside-toplevel

    n, k, s = max(1, len(cell.candidate.by_seed)), cell.rivals, cell.pooled_std
    if s == 0.0:
        return 1.0 if lead >= 0 else 0.0
    z = np.random.default_rng(seed).standard_normal((draws, k + 1, n))
    means = z.mean(axis=-1)
    stds = z.std(axis=-1, ddof=1) if n > 1 else np.zeros_like(means)
    best = 1 + means[:, 1:].argmax(axis=1)
    rows = np.arange(draws)
    gap = means[:, 0] + lead / s - means[rows, best]
    return float(np.mean(gap >= -np.maximum(stds[:, 0], stds[rows, best])))


def within_if_level(all_cells: list[Cell], lead: float = 0.0) -> tuple[float, float]:
    """What "within one std in every cell" asks of a criterion no better than its rivals.

    Cell by cell independently, the candidate is within one std with `chance_within(cell,
    lead)`; at `lead = 0` it is exactly level with its rivals.

    Returns:
      The probability that it is within one std in every cell (the product of the chances), and
      the expected count of cells where it is not (the sum of their complements); `(1.0, 0.0)`
      for no cells.
    """
    chances = [chance_within(c, lead) for c in all_cells]
    return math.prod(chances), sum(1.0 - p for p in chances)


def lead_for_all_within(all_cells: list[Cell], odds: float = 0.5) -> float:
    """The lead (points) over every rival, the same in every cell, with which the candidate would
    be within one std in every cell with probability `odds` (`within_if_level`; bisection to
    0.001 points). 0 when parity already gives those odds.
    """
    if not all_cells or within_if_level(all_cells)[0] >= odds:
        return 0.0
    lo, hi = 0.0, 10.0
    while hi - lo > 1e-3:
        mid = 0.5 * (lo + hi)
        if within_if_level(all_cells, mid)[0] >= odds:
            hi = mid
        else:
            lo = mid
    return hi


def round_robin(
    records: list[tuple[Source, list[dict]]], methods=(CANDIDATE, *OTHERS)
) -> list[str]:
    """The goal's test applied to each of `methods` in turn, against the others (OptG among them).

    Args:
      records: each benchmark with its test-split rows (`read_records`).
      methods: the criteria, each with its defaults; each one's cells are those where it and
        at least one other ran.

    Returns:
      A Markdown table, one row per method: its cells within one std of the best other, its
      firsts among the cells at `HIGH_SPARSITY` or more, and its clear leads either way
      (`Cell.clear_lead`).
    """
    lines = [
        "| criterion (defaults) | within 1 std of the best other | first at "
        f"{100 * HIGH_SPARSITY:g}%+ | clearly ahead | clearly behind |",
        "|---|---:|---:|---:|---:|",
    ]
    for method in methods:
        others = tuple(m for m in methods if m != method)
        mine = []
        for source, rows in records:
            mine += cells(source.name, rows, method, others, source.regime)
        high = [c for c in mine if c.sparsity >= HIGH_SPARSITY - 1e-9]
        leads = [c.clear_lead() for c in mine]
        lines.append(
            f"| {method} | {sum(c.within_one_std for c in mine)} of {len(mine)} | "
            f"{sum(c.first for c in high)} of {len(high)} | {leads.count(1)} | {leads.count(-1)} |"
        )
    return lines


def table(all_cells: list[Cell], label: str = "OptG (defaults)") -> list[str]:
    """The Markdown table, one row per cell; `label` heads the candidate's column."""
    lines = [
        f"| benchmark | epochs | sparsity | {label} | best other | lead | "
        "within 1 std | first | paired lead (seeds) |",
        "|---|---:|---:|---:|---|---:|:---:|:---:|---:|",
    ]
    for c in all_cells:
        o, b = c.candidate, c.best
        mean, std, n = c.paired_lead()
        lines.append(
            f"| {c.benchmark} | {c.epochs} | {100 * c.sparsity:g}% | "
            f"{report.mean_std_cell(o.mean, o.std, len(o.by_seed))} | {b.method} "
            f"{report.mean_std_cell(b.mean, b.std, len(b.by_seed))} | {c.lead:+.2f} | "
            f"{'yes' if c.within_one_std else '**no**'} | {'yes' if c.first else ''} | "
            f"{mean:+.2f} ± {std:.2f} ({n}) |"
        )
    return lines


def summary(all_cells: list[Cell], high_sparsity: float = HIGH_SPARSITY) -> list[str]:
    """The two halves of the goal as counts, the cells that miss the first, and the cells where
    the paired lead is clear either way (`Cell.clear_lead`)."""
    within = [c for c in all_cells if c.within_one_std]
    high = [c for c in all_cells if c.sparsity >= high_sparsity - 1e-9]
    first = [c for c in high if c.first]
    first_line = (
        f"- First at {100 * high_sparsity:g}% sparsity or more: **{len(first)} of {len(high)}** "
        "cells (the goal: at least half)."
    )
    if high:
        expected, at_least_half = firsts_if_level(high)
        first_line += (
            f" A criterion exactly level with the others in every one of these cells would be "
            f"first in {expected:.2f} of them on average, and in at least half with probability "
            f"{at_least_half:.3f} (`firsts_if_level`). To be first in at least half with even "
            f"odds it would have to lead every rival by {lead_for_even_odds(high):.2f} points in "
            f"every cell ({lead_for_even_odds(high, 0.8):.2f} for odds of 0.8; "
            "`lead_for_even_odds`)."
        )
    all_level, misses_if_level = within_if_level(all_cells)
    within_line = (
        f"- Within one std of the best other method: **{len(within)} of {len(all_cells)}** cells."
    )
    if all_cells:
        within_line += (
            " A criterion exactly level with its rivals in every cell would be within one std in "
            f"all {len(all_cells)} with probability {all_level:.3f}, and outside it in "
            f"{misses_if_level:.2f} cells on average (`within_if_level`). To be within one std "
            f"in all of them with even odds it would have to lead every rival by "
            f"{lead_for_all_within(all_cells):.2f} points in every cell "
            f"({lead_for_all_within(all_cells, 0.8):.2f} for odds of 0.8; `lead_for_all_within`)."
        )
    lines = [
        within_line,
        first_line,
        mean_lead_line(all_cells, high_sparsity),
    ]
    misses = [c for c in all_cells if not c.within_one_std]
    if misses:
        lines.append(
            "- Not within one std: "
            + "; ".join(
                f"{c.benchmark}, {c.epochs} epochs, {100 * c.sparsity:g}% ({c.lead:+.2f})"
                for c in misses
            )
            + "."
        )
    for sign, word in ((1, "ahead"), (-1, "behind")):
        clear = [c for c in all_cells if c.clear_lead() == sign]
        names = "; ".join(
            f"{c.benchmark}, {c.epochs} epochs, {100 * c.sparsity:g}% ({c.paired_lead()[0]:+.2f})"
            for c in clear
        )
        lines.append(
            f"- Clearly {word} (paired lead more than {CLEAR_STANDARD_ERRORS:g} standard errors "
            f"from 0, {MIN_PAIRED_SEEDS}+ seeds): "
            f"{len(clear)} cell{'' if len(clear) == 1 else 's'}" + (f": {names}." if clear else ".")
        )
    return lines


def mean_lead_line(all_cells: list[Cell], high_sparsity: float = HIGH_SPARSITY) -> str:
    """The mean lead over the cells of each regime and over the high-sparsity cells, each beside
    what a criterion exactly level with its rivals would average there (`Cell.lead_if_level`)
    and, where every cell has 2+ paired seeds, the distance from that with its standard error
    (the cells' paired standard errors combined: `sqrt(sum(std_i^2 / n_i)) / cells`)."""
    regimes = dict.fromkeys(c.regime for c in all_cells)  # in order of first appearance
    groups = [(r, [c for c in all_cells if c.regime == r]) for r in regimes]
    high = [c for c in all_cells if c.sparsity >= high_sparsity - 1e-9]
    groups.append((f"at {100 * high_sparsity:g}% or more", high))
    parts = []
    for name, cs in groups:
        if not cs:
            continue
        lead = statistics.fmean(c.lead for c in cs)
        level = statistics.fmean(c.lead_if_level() for c in cs)
        part = (
            f"{lead:+.2f} over {len(cs)} cell{'' if len(cs) == 1 else 's'}"
            f"{' ' + name if name else ''} (level: {level:+.2f}"
        )
        paired = [c.paired_lead() for c in cs]
        if all(n >= 2 for _, _, n in paired):
            error = math.sqrt(sum(std**2 / n for _, std, n in paired)) / len(cs)
            part += f"; from level: {lead - level:+.2f} ± {error:.2f}"
        parts.append(part + ")")
    return (
        "- Mean lead: "
        + "; ".join(parts)
        + ". *Level* is what a criterion exactly level with its rivals would average: the best of "
        "several noisy means is above their common mean (`Cell.lead_if_level`)."
    )


def short_name(benchmark: str) -> str:
    """A benchmark's name for the plot, its regime left to the colour."""
    for prefix, replacement in (
        ("from scratch, ", ""),
        ("fine-tuning a pretrained ", "fine-tuned "),
    ):
        if benchmark.startswith(prefix):
            return replacement + benchmark[len(prefix) :]
    return benchmark


def forest_rows(all_cells: list[Cell]) -> list[tuple[str, str, float, float, float]]:
    """Per cell, what the plot draws: `(label, regime, paired lead, half-width, level)`.

    The half-width is `CLEAR_STANDARD_ERRORS` standard errors of the paired lead (std over the
    square root of its seeds; 0 under 2 seeds), so a bar that misses 0 is a clear lead either
    way (with 3+ seeds); *level* is `Cell.lead_if_level`, where a criterion exactly level with
    the cell's rivals would sit on average against the best of them.
    """
    rows = []
    for c in all_cells:
        mean, std, n = c.paired_lead()
        half = CLEAR_STANDARD_ERRORS * std / math.sqrt(n) if n >= 2 else 0.0
        label = f"{short_name(c.benchmark)}, {c.epochs} ep, {100 * c.sparsity:g}%"
        rows.append((label, c.regime, mean, half, c.lead_if_level()))
    return rows


def plot_leads(all_cells: list[Cell], path: str, label: str = "OptG (defaults)") -> None:
    """Writes a PNG with one row per cell: the paired lead over the best other method with its
    `CLEAR_STANDARD_ERRORS`-standard-error bar, coloured by regime, and where parity puts it."""
    import matplotlib  # pylint: disable=import-outside-toplevel

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

    rows = forest_rows(all_cells)
    colours = dict(zip(dict.fromkeys(r[1] for r in rows), ("tab:blue", "tab:orange", "tab:green")))
    fig, ax = plt.subplots(figsize=(7.5, 0.28 * len(rows) + 1.4))
    ys = list(range(len(rows)))[::-1]
    for y, (_, regime, mean, half, level) in zip(ys, rows):
        ax.errorbar(mean, y, xerr=half, fmt="o", color=colours[regime], capsize=2, markersize=4)
        ax.plot(level, y, marker="|", color="grey", markersize=9)
    for regime, colour in colours.items():
        ax.plot([], [], "o", color=colour, label=regime or "cells")
    ax.plot([], [], "|", color="grey", markersize=9, label="a criterion level with its rivals")
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.set_yticks(ys, [r[0] for r in rows], fontsize=7)
    ax.set_xlabel(
        f"{label} minus the best other method, paired by seed (points; "
        f"bar: {CLEAR_STANDARD_ERRORS:g} standard errors)",
        fontsize=8,
    )
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=7, loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=3, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def pick_candidate(rows: list[dict], names: list[str]) -> str | None:
    """The first of `names` that some record of `rows` has as its method, else None."""
    methods = {r["method"] for r in rows}
    return next((n for n in names if n in methods), None)


def read_named_records(path: str) -> dict[str, list[dict]]:
    """Test-split records of a file that names each row's benchmark (its `benchmark` field, a
    `Source.name`), grouped by it: rows made apart from a section's own records, such as a
    candidate's read on the test split. Top-1 in percent; the grid's rows give `sparsity_target`
    like the loops'.
    """
    grouped: dict[str, list[dict]] = {}
    for r in read_records(path):
        grouped.setdefault(r.pop("benchmark"), []).append(r)
    return grouped


def collect(
    sources: tuple[Source, ...],
    results_dir: str,
    candidates: list[str],
    extra: dict[str, list[dict]] | None = None,
) -> tuple[list[Cell], list[tuple[Source, list[dict]]]]:
    """The cells of `sources` whose records exist (the first of `candidates` each ran standing
    for OptG), and every source's records; prints a line for each source left out. `extra`
    (`read_named_records`) adds rows to the sources it names."""
    all_cells, records = [], []
    for source in sources:
        path = os.path.join(results_dir, source.file)
        if not os.path.exists(path):
            print(f"no records for {source.name}: {path} is missing; left out")
            continue
        rows = read_records(path) + (extra or {}).get(source.name, [])
        records.append((source, rows))
        candidate = pick_candidate(rows, candidates)
        if candidate is None:
            print(f"no records for {source.name} of {' or '.join(candidates)}; left out")
            continue
        all_cells += cells(source.name, rows, candidate, regime=source.regime)
    return all_cells, records


def beyond_block(
    beyond_cells: list[Cell], label: str, who: str = "the library's defaults"
) -> list[str]:
    """The table of the loops beyond the goal's benchmarks and its counts (empty without cells);
    `who` names what stands for OptG in the text."""
    if not beyond_cells:
        return []
    within = sum(c.within_one_std for c in beyond_cells)
    first = sum(c.first for c in beyond_cells)
    leads = [c.clear_lead() for c in beyond_cells]
    return [
        "Beyond the goal's benchmarks: the other loops its issue reported, and the goal's loops "
        f"with another optimizer or fine-tuning schedule (`BEYOND_SOURCES`), {who} read once on "
        "the test split; not counted above.",
        "",
        *table(beyond_cells, label),
        "",
        f"- Within one std of the best other method: **{within} of {len(beyond_cells)}** cells; "
        f"first in {first}; clearly ahead in {leads.count(1)}, clearly behind in {leads.count(-1)}.",
        "",
    ]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n", 1)[0], formatter_class=argparse.RawTextHelpFormatter
    )
    ap.add_argument("--results-dir", default=report.RESULTS_DIR)
    ap.add_argument("--benchmarks-md", default=report.BENCHMARKS_MD)
    ap.add_argument(
        "--candidate",
        nargs="+",
        default=[CANDIDATE],
        help="the method standing for OptG: in each benchmark the first of these names it ran",
    )
    ap.add_argument("--label", default="OptG (defaults)", help="the candidate's column heading")
    ap.add_argument("--section", default=SECTION, help="the results file and BENCHMARKS section")
    ap.add_argument(
        "--candidate-records",
        default="",
        help="a JSON-lines file under the results folder whose rows name their benchmark "
        "(`benchmark`): added to those benchmarks' records (a candidate read apart)",
    )
    args = ap.parse_args(argv)
    extra = {}
    if args.candidate_records:
        path = os.path.join(args.results_dir, args.candidate_records)
        if not os.path.exists(path):
            raise SystemExit(f"--candidate-records {args.candidate_records!r}: no file {path}")
        extra = read_named_records(path)
    all_cells, records = collect(SOURCES, args.results_dir, args.candidate, extra)
    if not all_cells:
        raise SystemExit(
            f"no benchmark records of {' or '.join(args.candidate)} under {args.results_dir}"
        )
    default = args.candidate == [CANDIDATE]
    command = "`.venv/bin/python -m benchmarks.goal_check" + (
        "`"
        if default
        else f' --candidate {" ".join(args.candidate)} --label "{args.label}" '
        f"--section {args.section}"
        + (f" --candidate-records {args.candidate_records}" if args.candidate_records else "")
        + "`"
    )
    title = "The default OptG" if default else args.label
    blocks = [
        f"## {title} against the best other method, every benchmark (benchmarks/goal_check.py)",
        "",
        "Top-1 (%) on the test split, mean ± std (seeds); lead in points. Rows are read from the "
        f"sections' committed records by {command}.",
        "",
        *table(all_cells, args.label),
        "",
        *summary(all_cells),
        "",
    ]
    if default:
        blocks += [
            "The same test for each of the library's criteria in turn, with its defaults, against "
            "the others (OptG among them; `round_robin`):",
            "",
            *round_robin(records),
            "",
        ]
    beyond = collect(BEYOND_SOURCES, args.results_dir, args.candidate, extra)[0]
    blocks += beyond_block(beyond, args.label, "the library's defaults" if default else args.label)
    os.makedirs(args.results_dir, exist_ok=True)
    plot_leads(all_cells, os.path.join(args.results_dir, f"{args.section}.png"), args.label)
    alt = f"{title}: paired lead per cell"
    blocks += [
        report.image_line(args.results_dir, args.benchmarks_md, f"{args.section}.png", alt),
        "",
    ]
    text = report.publish_section(args.results_dir, args.benchmarks_md, args.section, blocks)
    print(text)


if __name__ == "__main__":
    main()
