"""The report of the accuracy-vs-sparsity benchmark: statistics, tables, CSV, plots, Markdown.

Everything here reads the per-run rows (`runs.read_all_records`) and writes files; nothing trains.
`write_report` writes the CSV, the PNGs, `<section>.md` and the section of BENCHMARKS.md.
"""

from __future__ import annotations

import csv
import os
import statistics

from benchmarks.accuracy_vs_sparsity.methods import (
    BASELINES,
    PAPER_OPTG,
    label,
    method_order,
    parse_method,
)
from benchmarks.accuracy_vs_sparsity.runs import (
    BUDGET_METHODS,
    BUDGET_SPARSITY,
)
from benchmarks.report import (
    BENCHMARKS_MD,
    RESULTS_DIR,
    ROOT,
    cell_stats,
    group_series,
    mean_std_cell,
    plot_panels,
    read_notes,
    update_section,
)
from optg_jax.train import config as config_lib

SECTION = "accuracy_vs_sparsity"

CSV_FIELDS = (
    "method",
    "sparsity",
    "seed",
    "epochs",
    "top1",
    "top5",
    "final_sparsity",
    "macs",
    "dense_macs",
    "wall_time_s",
    "train_time_s",
    "steps",
    "model",
    "dataset",
    "image_size",
    "batch_size",
    "code",
    "host",
)


def summarize(rows: list[dict], epochs: int) -> dict:
    """{(method, sparsity): (mean top-1, std, n)} over seeds for runs of `epochs` epochs."""
    groups: dict[tuple, list[float]] = {}
    for r in rows:
        if int(r["epochs"]) == epochs:
            groups.setdefault((r["method"], float(r["sparsity"])), []).append(float(r["top1"]))
    return {k: cell_stats(v) for k, v in groups.items()}


def fmt_cell(stats, bold=False) -> str:
    if stats is None:
        return "—"
    mean, std, n = stats
    return mean_std_cell(100 * mean, 100 * std, n, bold)


def verdicts(cells: dict, sparsities: list[float]) -> list[str]:
    """The goals for the default OptG, checked per sparsity: Markdown lines.

    At 98% and above the default OptG must have the best mean of the other criteria with their
    defaults (`BASELINES`: GMP, Taylor, supermask; OptG's own variants and ablations are not
    rivals); below, it must be within one std (the larger of the two) of GMP; everywhere it must
    not lose more than one point to the paper form.
    """
    lines = []
    for s in sparsities:
        optg = cells.get(("optg", s))
        others = {m: v for (m, sp), v in cells.items() if sp == s and m in BASELINES}
        if optg is None or not others:
            continue
        best_m, best = max(others.items(), key=lambda kv: kv[1][0])
        if s >= 0.98:
            ok = optg[0] > best[0]
            goal = "best mean top-1 of the sparse methods"
            ref_m, ref = best_m, best
        elif ("magnitude", s) in cells:
            ref_m, ref = "magnitude", cells[("magnitude", s)]
            tolerance = max(optg[1], ref[1])
            ok = optg[0] >= ref[0] - tolerance
            goal = f"within one std ({100 * tolerance:.2f}) of GMP"
        else:
            continue
        seeds = min(optg[2], ref[2])
        note = " (one seed: not a statistical statement)" if seeds < 2 else ""
        lines.append(
            f"- {100 * s:g}%: {goal}: **{'yes' if ok else 'no'}** — OptG {100 * optg[0]:.2f} vs "
            f"{label(ref_m)} {100 * ref[0]:.2f} ({100 * (optg[0] - ref[0]):+.2f} points){note}."
        )
        paper = cells.get((PAPER_OPTG, s))
        if paper is not None and optg[0] < paper[0] - 0.01:
            lines.append(
                f"  - loses {100 * (paper[0] - optg[0]):.2f} points to the paper form "
                f"({'more' if paper[0] - optg[0] > 0.01 else 'less'} than 1)."
            )
    return lines


def margins(cells: dict, sparsities=(0.98, 0.99)) -> dict[float, float]:
    """{sparsity: default OptG's mean minus the best of `BASELINES`' means} (fractions)."""
    out = {}
    for s in sparsities:
        others = [v[0] for (m, sp), v in cells.items() if sp == s and m in BASELINES]
        if ("optg", s) in cells and others:
            out[s] = cells[("optg", s)][0] - max(others)
    return out


def best_tuned(cells: dict, sparsities: list[float]) -> list[str]:
    """Validation report: the OptG variant (criterion optg) with the best mean over sparsities.

    Candidates are the variants run at every sparsity with the most seeds (a variant dropped
    after one seed cannot win on one lucky run).
    """
    means, seeds = {}, {}
    for (m, s), (mean, _, n) in cells.items():
        if m != "dense" and parse_method(m)[0] == "optg" and s in sparsities:
            means.setdefault(m, {})[s] = mean
            seeds[m] = min(seeds.get(m, n), n)
    complete = {m: v for m, v in means.items() if len(v) == len(sparsities)}
    if not complete:
        return []
    most = max(seeds[m] for m in complete)
    complete = {m: v for m, v in complete.items() if seeds[m] == most}
    best = max(complete, key=lambda m: statistics.fmean(complete[m].values()))
    mean = statistics.fmean(complete[best].values())
    return [
        f"Best OptG variant on the validation split (mean top-1 over "
        f"{', '.join(f'{100 * s:g}%' for s in sparsities)}, among the variants with "
        f"{most} seed{'s' if most > 1 else ''}): `{best}` ({100 * mean:.2f})."
    ]


def accuracy_table(rows: list[dict], epochs: int, split: str = "test") -> list[str]:
    cells = summarize(rows, epochs)
    if not cells:
        return []
    sparsities = sorted({s for (m, s) in cells if m != "dense"})
    methods = sorted({m for (m, s) in cells if m != "dense"}, key=method_order)
    lines = [
        f"Top-1 (%) on the {split} split after {epochs} epochs: mean ± std over seeds "
        "(number of seeds); the best sparse mean per column (ablations included) in bold.",
        "",
    ]
    if ("dense", 0.0) in cells:
        lines += [f"Dense: {fmt_cell(cells[('dense', 0.0)])}.", ""]
    lines += [
        "| method | " + " | ".join(f"{100 * s:g}%" for s in sparsities) + " |",
        "|---|" + "---:|" * len(sparsities),
    ]
    best = {
        s: max((cells[(m, s)][0] for m in methods if (m, s) in cells), default=None)
        for s in sparsities
    }
    for m in methods:
        lines.append(
            f"| {label(m)} | "
            + " | ".join(
                fmt_cell(cells.get((m, s)), bold=(m, s) in cells and cells[(m, s)][0] == best[s])
                for s in sparsities
            )
            + " |"
        )
    macs = {}
    for r in rows:
        if int(r["epochs"]) == epochs and r["method"] != "dense":
            macs.setdefault(float(r["sparsity"]), []).append(float(r["macs"]))
    dense_macs = next((float(r["dense_macs"]) for r in rows), None)
    if macs and dense_macs:
        lines += [
            "",
            f"Sparse MACs per example (mean over methods and seeds; dense "
            f"{dense_macs / 1e6:.2f}M): "
            + ", ".join(
                f"{100 * s:g}%: {statistics.fmean(v) / 1e6:.3f}M" for s, v in sorted(macs.items())
            )
            + ".",
        ]
    if split != "test":
        pick = best_tuned(cells, sparsities)
        return lines + (["", *pick] if pick else [])
    check = verdicts(cells, sparsities)
    if check:
        lines += ["", "Against the goal:", ""] + check
    return lines


def budget_table(rows: list[dict], sparsity=BUDGET_SPARSITY) -> list[str]:
    """Top-1 by run length at `sparsity`, mean over seeds, and OptG's lead over the others."""
    picked = [r for r in rows if float(r["sparsity"]) == sparsity and r["method"] in BUDGET_METHODS]
    epochs = sorted({int(r["epochs"]) for r in picked})
    if len(epochs) < 2:
        return []
    methods = [m for m in BUDGET_METHODS if any(r["method"] == m for r in picked)]
    groups: dict[tuple, list[float]] = {}
    for r in picked:
        groups.setdefault((r["method"], int(r["epochs"])), []).append(float(r["top1"]))
    stats = {k: cell_stats(v) for k, v in groups.items()}
    lines = [
        f"Budget study: top-1 (%) at {100 * sparsity:g}% by run length, mean ± std over seeds "
        "(number of seeds); every method in the same pruning window (the ramp ends at two-thirds "
        "of each run); the last column is the default OptG's lead over the best other method.",
        "",
        "| epochs | " + " | ".join(label(m) for m in methods) + " | OptG − best other |",
        "|---:|" + "---:|" * (len(methods) + 1),
    ]
    for e in epochs:
        others = [stats[(m, e)][0] for m in methods if m != "optg" and (m, e) in stats]
        lead = (
            f"{100 * (stats[('optg', e)][0] - max(others)):+.2f}"
            if ("optg", e) in stats and others
            else "—"
        )
        lines.append(
            f"| {e} | " + " | ".join(fmt_cell(stats.get((m, e))) for m in methods) + f" | {lead} |"
        )
    return lines


def write_csv(rows: list[dict], path: str) -> None:
    rows = sorted(
        rows,
        key=lambda r: (
            int(r["epochs"]),
            method_order(r["method"]),
            float(r["sparsity"]),
            int(r["seed"]),
        ),
    )
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow(
                {
                    k: (f"{r[k]:.6g}" if isinstance(r.get(k), float) else r.get(k, ""))
                    for k in CSV_FIELDS
                }
            )


def plot(
    rows: list[dict], epochs: int, path: str, budget_path: str | None = None, split: str = "test"
) -> list[str]:
    """Writes the PNG(s); returns the paths written."""
    import matplotlib  # pylint: disable=import-outside-toplevel

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

    written = []
    cells = summarize(rows, epochs)
    sparsities = sorted({s for (m, s) in cells if m != "dense"})
    if sparsities:
        methods = sorted({m for (m, s) in cells if m != "dense"}, key=method_order)
        # The legend goes under the axes (long variant labels must not hide the 99% points).
        fig, ax = plt.subplots(figsize=(7.0, 4.2 + 0.2 * (len(methods) + 1)))
        x = {s: i for i, s in enumerate(sparsities)}
        for k, m in enumerate(methods):
            pts = [(x[s], *cells[(m, s)][:2]) for s in sparsities if (m, s) in cells]
            shift = (k - (len(methods) - 1) / 2) * 0.04
            ax.errorbar(
                [p[0] + shift for p in pts],
                [100 * p[1] for p in pts],
                yerr=[100 * p[2] for p in pts],
                marker="o",
                capsize=3,
                label=label(m),
            )
        if ("dense", 0.0) in cells:
            dense = 100 * cells[("dense", 0.0)][0]
            ax.axhline(dense, color="k", ls="--", lw=1, label="dense")
            ax.set_ylim(top=max(ax.get_ylim()[1], dense + 0.4))
        ax.set_xticks(range(len(sparsities)), [f"{100 * s:g}%" for s in sparsities])
        ax.set_xlabel("sparsity")
        ax.set_ylabel(f"top-1 (%), {split} split")
        ax.set_title(f"{rows[0]['model']} on {rows[0]['dataset']}, {epochs} epochs")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.15))
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    picked = [
        r for r in rows if float(r["sparsity"]) == BUDGET_SPARSITY and r["method"] in BUDGET_METHODS
    ]
    budget_epochs = sorted({int(r["epochs"]) for r in picked})
    if budget_path and len(budget_epochs) >= 2:
        # One tick per run length: evenly spaced, so a doubling budget reads as a log axis.
        tick = {e: i for i, e in enumerate(budget_epochs)}
        series = group_series(
            [
                {**r, "top1": 100 * float(r["top1"])}
                for r in sorted(picked, key=lambda r: BUDGET_METHODS.index(r["method"]))
            ],
            label=lambda r: label(r["method"]).split(" (")[0],
            tick=lambda r: tick[int(r["epochs"])],
        )
        title = f"{100 * BUDGET_SPARSITY:g}% sparsity, mean ± std over seeds"
        plot_panels(
            budget_path, [(title, [str(e) for e in budget_epochs], series)], xlabel="epochs"
        )
        written.append(budget_path)
    return written


def goal_summary(rows: list[dict], grid_epochs) -> list[str]:
    """The default OptG's lead over the best other sparse method in every setting at 98-99%."""
    leads = []
    for e in grid_epochs:
        for s, lead in margins(summarize(rows, e)).items():
            leads.append((f"{e} epochs, {100 * s:g}%", lead))
    for e in sorted({int(r["epochs"]) for r in rows} - set(grid_epochs)):
        lead = margins(summarize(rows, e), (BUDGET_SPARSITY,)).get(BUDGET_SPARSITY)
        if lead is not None:
            leads.append((f"budget study, {e} epochs, {100 * BUDGET_SPARSITY:g}%", lead))
    if not leads:
        return []
    mean = statistics.fmean(lead for _, lead in leads)
    return [
        "The default OptG's lead over the best other sparse method (means over seeds): "
        + "; ".join(f"{name} {100 * lead:+.2f}" for name, lead in leads)
        + f". Mean lead {100 * mean:+.2f} points over {len(leads)} settings; "
        f"{sum(lead > 0 for _, lead in leads)} of {len(leads)} positive."
    ]


def report_markdown(
    rows: list[dict],
    grid_epochs,
    header: str,
    notes: str,
    section: str = SECTION,
    split: str = "test",
) -> str:
    title = (
        "Accuracy against sparsity"
        if split == "test"
        else "Tuning OptG on a validation split (never the test split)"
    )
    lines = [f"## {title} (benchmarks/accuracy_vs_sparsity)", "", header, ""]
    tables = []
    for e in grid_epochs:
        table = accuracy_table(rows, e, split)
        if table:
            tables += [f"### {e} epochs", "", *table, ""]
            if split == "test":
                tables += [
                    f"![top-1 against sparsity, {e} epochs](benchmarks/results/"
                    f"{section}_{e}ep.png)",
                    "",
                ]
    lines += tables or ["No grid run has finished yet.", ""]
    budget = budget_table(rows)
    if budget:
        lines += ["### Budget study", "", *budget, ""]
        lines += [f"![budget study](benchmarks/results/{section}_budget.png)", ""]
    summary = goal_summary(rows, grid_epochs) if split == "test" else []
    if summary:
        lines += ["### Against the goal, all settings", "", *summary, ""]
    if rows:
        total = sum(float(r["wall_time_s"]) for r in rows)
        lines += [
            f"{len(rows)} runs, {total / 60:.0f} min of wall time in all (per run: "
            f"{min(float(r['wall_time_s']) for r in rows):.0f}–"
            f"{max(float(r['wall_time_s']) for r in rows):.0f} s). Every run is a row of "
            f"[benchmarks/results/{section}.csv](benchmarks/results/{section}.csv).",
        ]
    if notes.strip():
        lines += ["", notes.strip()]
    return "\n".join(lines).rstrip() + "\n"


def write_report(
    rows: list[dict],
    grid_epochs,
    header: str,
    results_dir: str = RESULTS_DIR,
    benchmarks_md: str = BENCHMARKS_MD,
    validation: bool = False,
) -> str:
    """CSV, Markdown, PNGs and the BENCHMARKS.md section; returns the Markdown.

    Runs evaluated on a validation split (`validation`) go to files and a section of their own
    (`accuracy_vs_sparsity_validation*`), never mixed with the test results.

    Args:
      rows: every finished run's record.
      grid_epochs: the run lengths of the grid (one table each); other lengths at the budget
        sparsity form the budget study.
      header: the section's opening (`protocol_header`).
      results_dir: where the CSV, PNGs and Markdown go.
      benchmarks_md: the BENCHMARKS.md whose section is rewritten.
      validation: whether the runs evaluated on a validation split.

    Returns:
      The section's Markdown.
    """
    grid_epochs = [int(e) for e in ([grid_epochs] if isinstance(grid_epochs, int) else grid_epochs)]
    section, split = (f"{SECTION}_validation", "validation") if validation else (SECTION, "test")
    os.makedirs(results_dir, exist_ok=True)
    notes = read_notes(results_dir, section)
    write_csv(rows, os.path.join(results_dir, f"{section}.csv"))
    for k, e in enumerate(grid_epochs):
        if rows:
            plot(
                rows,
                e,
                os.path.join(results_dir, f"{section}_{e}ep.png"),
                os.path.join(results_dir, f"{section}_budget.png") if k == 0 else None,
                split,
            )
    text = report_markdown(rows, grid_epochs, header, notes, section, split)
    with open(os.path.join(results_dir, f"{section}.md"), "w", encoding="utf-8") as f:
        f.write(text)
    update_section(benchmarks_md, section, text)
    return text


def protocol_header(shared, grid_epochs, root: str, windows: dict | None = None) -> str:
    """The section's opening: the shared protocol, where the workdirs are, the commands.

    Args:
      shared: the shared config.
      grid_epochs: the grid's run lengths.
      root: the workdirs' directory.
      windows: `{epochs: runs.shared_window(...)}`, the pruning window of each length.

    Returns:
      Markdown.
    """
    c = shared
    grid_epochs = [grid_epochs] if isinstance(grid_epochs, int) else list(grid_epochs)
    size = f" at {c.image_size}x{c.image_size}" if c.image_size else ""
    window = ""
    if windows:
        window = "; ".join(
            f"{e} epochs: ramp over the first {100 * w['pruning_end_fraction']:.3g}% of the "
            f"steps, a refresh every {w['mask_update_every']} steps"
            for e, w in sorted(windows.items())
        )
    lengths = " and ".join(str(e) for e in grid_epochs)
    return "\n".join(
        [
            "Every method (dense; GMP = `magnitude`; `taylor`; `supermask` = OptG without the "
            "supermask optimizer; OptG with the library's defaults; OptG in the library's paper "
            "form) is trained with the same protocol:",
            "",
            f"- `{c.model}` on `{c.dataset}`{size}, {lengths} epochs, batch {c.batch_size}, SGD "
            f"momentum {c.momentum}, peak lr {config_lib.effective_learning_rate(c):g} (warm-up "
            f"{c.warmup_epochs:g} epochs, then cosine), weight decay {c.weight_decay:g}, label "
            f"smoothing {c.label_smoothing:g};",
            f"- the pruning window of the library's `{c.recipe}` recipe for every sparse method "
            f"(global allocation; {window or 'see optg_jax.OptGSettings.resolved'}); every method "
            "with the library's defaults for everything else: the cubic ramp (Zhu & Gupta's, "
            "the field's standard for GMP) for GMP, Taylor, supermask and OptG; OptG's and "
            "supermask's score momentum 0.99 and masks frozen after the ramp. The paper form "
            "(`recipe='paper'`) keeps the paper's OptG-specific settings (sigmoid ramp with "
            "β = 1 per epoch, score momentum 0.9, masks re-selected after the ramp) in the same "
            "window;",
            "- top-1 on the test split, read once per final configuration. The shared "
            "hyper-parameters were not tuned; the OptG-specific defaults were chosen on "
            "validation splits carved from the training set (see *Choosing the defaults*)."
            if not c.validation_examples
            else f"- top-1 on a validation split: the last {c.validation_examples} training "
            "examples, held out of training; the test split is not read.",
            "",
            f"Workdirs: `{os.path.relpath(root, ROOT)}`. Commands:",
            "",
            "```",
            ".venv/bin/python -m benchmarks.accuracy_vs_sparsity --quick   # 98%, 99%, seed 0, 4 epochs",
            ".venv/bin/python -m benchmarks.accuracy_vs_sparsity           # 90-99%, seeds 0-2, 4 and 8 epochs",
            ".venv/bin/python -m benchmarks.accuracy_vs_sparsity --no-grid --budget \\",
            "    --budget-epochs 2 4 8 16                                  # the budget study at 99%",
            "# After a default changed: the committed CSV's runs, the changed methods renamed, then",
            "# only those methods trained again (what made the OptG rows with the bonus near the",
            "# start; then --epochs 2 16 --sparsities 0.99 for the budget study's cells):",
            ".venv/bin/python -m benchmarks.accuracy_vs_sparsity \\",
            "    --import-csv benchmarks/results/accuracy_vs_sparsity.csv \\",
            "    --import-rename optg=optg-atstart0 --methods optg --seeds 0 1 2 3 4",
            "# OptG-specific settings on the last 10,000 training examples (never the test split):",
            ".venv/bin/python -m benchmarks.accuracy_vs_sparsity --validation 10000 \\",
            "    --sparsities 0.98 0.99 --seeds 0 1 --methods magnitude optg optg-every50 ...",
            "# CIFAR-10 from TFDS (not run here):",
            ".venv/bin/python -m benchmarks.accuracy_vs_sparsity --config configs/resnet32_cifar10.py"
            " \\",
            "    --data-dir ~/tensorflow_datasets --epochs 160 --budget-epochs 40 80 160",
            "```",
        ]
    )
