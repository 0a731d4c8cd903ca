"""Shared by the benchmarks: where results go, and each benchmark's section of BENCHMARKS.md."""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import math
import os
import platform
import statistics
import subprocess
import time
from typing import Any, Callable

import jax

import optg_jax
from optg_jax.train import files

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
BENCHMARKS_MD = os.path.join(ROOT, "BENCHMARKS.md")
RESULTS_DIR = os.path.join(ROOT, "benchmarks", "results")


def add_run_grid_args(ap: argparse.ArgumentParser, source: str) -> None:
    """Adds the options every seeded training benchmark shares to `ap`.

    `--seeds`, `--validation N` (evaluate on the last N training examples, never the test
    split), `--source` (`tfds` or `idx`, default `source`), `--out` (the records' JSON-lines
    file), `--results-dir` and `--benchmarks-md` (where tables, plots and the section go).
    """
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument(
        "--validation",
        type=int,
        default=0,
        metavar="N",
        help="evaluate on the last N training examples (never the test split)",
    )
    ap.add_argument("--source", choices=("tfds", "idx"), default=source)
    ap.add_argument("--out", default="", help="default: benchmarks/results/<section>.jsonl")
    ap.add_argument("--results-dir", default=RESULTS_DIR)
    ap.add_argument("--benchmarks-md", default=BENCHMARKS_MD)


def markers(section: str) -> tuple[str, str]:
    """The begin and end markers of `section` (HTML comments, invisible in rendered Markdown)."""
    return f"<!-- {section}:begin -->", f"<!-- {section}:end -->"


def mean_std_cell(mean: float, std: float, n: int, bold: bool = False) -> str:
    """A table cell: `mean ± std (n)` with two decimals (no ± for one run), bold if asked.

    Args:
      mean, std: in the unit the table shows (e.g. percent).
      n: how many runs (seeds) they summarize.
      bold: whether the value is the best of its column.
    """
    text = f"{mean:.2f}" + (f" ± {std:.2f}" if n > 1 else "")
    return (f"**{text}**" if bold else text) + f" ({n})"


def cell_stats(values: list[float]) -> tuple[float, float, int]:
    """(mean, sample std (0 for one value), n) of one cell's values over seeds."""
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return mean, std, len(values)


def read_rows(path: str) -> list[dict]:
    """The runs recorded in `path` (one JSON object per line); [] if there is none."""
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def read_notes(results_dir: str, section: str) -> str:
    """The hand-written notes of `section` (`<results_dir>/<section>_notes.md`), "" if none.

    Generated sections are rewritten on every run; the notes (a verdict, the command, what the
    numbers mean) live in this file and are copied into the section each time.
    """
    path = os.path.join(results_dir, f"{section}_notes.md")
    if not os.path.exists(path):
        return ""
    with open(path, encoding="utf-8") as f:
        return f.read()


def update_section(path: str, section: str, body: str) -> None:
    """Replaces the text between `section`'s markers in `path` (creating what is missing).

    The file is rewritten atomically; other sections are left as they are.
    """
    begin, end = markers(section)
    block = f"{begin}\n{body.rstrip()}\n{end}"
    text = ""
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            text = f.read()
    start, stop = text.find(begin), text.find(end)
    if start >= 0 and stop > start:
        text = text[:start] + block + text[stop + len(end) :]
    elif text.strip():
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    else:
        text = "# Benchmarks\n\n" + block + "\n"
    files.write_text_atomic(path, text)


def publish_section(results_dir: str, benchmarks_md: str, section: str, blocks: list) -> str:
    """Writes a generated section: `blocks` (lines) then its notes (`read_notes`).

    The text goes to `<results_dir>/<section>.md` and, when `benchmarks_md` is given, between
    the section's markers there (`update_section`).

    Returns:
      The section's text.
    """
    notes = read_notes(results_dir, section).strip()
    text = "\n".join(list(blocks) + ([notes] if notes else []))
    os.makedirs(results_dir, exist_ok=True)
    with open(os.path.join(results_dir, f"{section}.md"), "w", encoding="utf-8") as f:
        f.write(text + "\n")
    if benchmarks_md:
        update_section(benchmarks_md, section, text + "\n")
    return text


def group_series(rows: list[dict], label, tick, value: str = "top1") -> dict:
    """Groups result rows into plot series: `{label(r): {tick(r): [r[value], ...]}}`.

    Args:
      rows: result records, in the order the series should appear (the first row of a label
        places its series).
      label: row -> the series' name.
      tick: row -> the x tick's index, or `None` to leave the row out.
      value: the record's field to plot.

    Returns:
      The `series` argument of one `plot_panels` panel.
    """
    series: dict[str, dict[int, list[float]]] = {}
    for r in rows:
        x = tick(r)
        if x is not None:
            series.setdefault(label(r), {}).setdefault(x, []).append(r[value])
    return series


def plot_panels(path: str, panels: list, ylabel: str = "top-1 (%)", xlabel: str = "") -> None:
    """Writes a PNG of side-by-side panels, one line per series with one-std error bars.

    Args:
      path: the PNG file.
      panels: `[(title, x tick labels, {series label: {tick index: [values]}})]`; a series
        plots the mean of each tick's values (error bar: their std; 0 for one value), its
        points shifted a little sideways from the other series' so the bars stay apart.
      ylabel: the y axis's label.
      xlabel: the x axis's label ("" for none).
    """
    import matplotlib  # pylint: disable=import-outside-toplevel

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

    fig, axes = plt.subplots(1, len(panels), figsize=(4.8 * len(panels), 3.8), squeeze=False)
    for ax, (title, ticks, series) in zip(axes[0], panels):
        for k, (name, points) in enumerate(series.items()):
            xs = sorted(points)
            shift = 0.06 * (k - (len(series) - 1) / 2)
            stats = [cell_stats(points[x]) for x in xs]
            ax.errorbar(
                [x + shift for x in xs],
                [mean for mean, _, _ in stats],
                yerr=[std for _, std, _ in stats],
                marker="o",
                capsize=3,
                label=name,
            )
        ax.set_xticks(range(len(ticks)), ticks)
        ax.set_xlim(-0.5, len(ticks) - 0.5)  # Every tick shown, measured or not.
        ax.set_title(title, fontsize=9)
        ax.set_ylabel(ylabel)
        if xlabel:
            ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)  # a new --results-dir
    fig.savefig(path, dpi=110)
    plt.close(fig)


def image_line(results_dir: str, benchmarks_md: str, file_name: str, alt: str) -> str:
    """A Markdown image of `<results_dir>/<file_name>`, relative to BENCHMARKS.md's folder."""
    folder = os.path.dirname(os.path.abspath(benchmarks_md or BENCHMARKS_MD))
    return f"![{alt}]({os.path.relpath(os.path.join(results_dir, file_name), folder)})"


def progress_epochs(epochs: int, lines: int = 10) -> frozenset:
    """The epochs (1-based) after which a run of `epochs` epochs reports its progress.

    Every `ceil(epochs / lines)`-th epoch and the last: at most `lines` lines a run, e.g. epochs
    1-4 of 4, and 10, 20, ..., 100 of 100.
    """
    every = max(1, math.ceil(epochs / max(1, lines)))
    return frozenset(range(every, epochs + 1, every)) | {epochs}


def epoch_progress(
    label: str,
    epochs: int,
    lines: int = 10,
    min_interval_s: float = 10.0,
    clock: Callable[[], float] = time.monotonic,
    write: Callable[[str], Any] = functools.partial(print, flush=True),
) -> Callable[..., None]:
    """A progress callback for a run of `epochs` epochs (the clock starts now).

    The callback, `report(epoch, loss, opt_state=None)`, is called after every epoch (1-based)
    with the epoch's mean training loss (a float or a device scalar, read only after the epochs
    `progress_epochs` picks) and, for a sparse run, the optimizer state holding the `optg_optax`
    state. After an epoch `progress_epochs` picks, once `min_interval_s` have passed since the
    last line (or the start), it writes one line, e.g.
    `  optg 98% seed 0: epoch 3/10, train loss 0.4123, 97.2% removed, 36 s (about 84 s left)`:
    a run of minutes shows where it is, a run of seconds stays quiet. The time left assumes the
    epochs still to come take as long as the mean so far (the first one includes compilation,
    so the estimate errs long).

    Args:
      label: names the run at the start of each line.
      epochs: the run's length.
      lines: at most how many lines the run writes (`progress_epochs`).
      min_interval_s: the least time between two lines, in seconds.
      clock: seconds, monotonic.
      write: takes each line.
    """
    start = last_line = clock()
    shown = progress_epochs(epochs, lines)

    def report(epoch: int, loss, opt_state: Any = None) -> None:
        nonlocal last_line
        if epoch not in shown:
            return
        # Reading the loss waits for the epoch's computation (JAX dispatches asynchronously),
        # so the clock is read after it.
        loss = float(loss)
        now = clock()
        if now - last_line < min_interval_s:
            return
        last_line = now
        elapsed = now - start
        left = elapsed / epoch * (epochs - epoch)
        removed = ""
        if opt_state is not None:
            removed = f", {100 * optg_jax.sparsity_summary(opt_state)['global']:.1f}% removed"
        write(
            f"  {label}: epoch {epoch}/{epochs}, train loss {loss:.4f}{removed}, "
            f"{elapsed:.0f} s (about {left:.0f} s left)"
        )

    return report


@functools.lru_cache(maxsize=None)
def code_version() -> str:
    """`<git HEAD>[+dirty]:<hash of optg_jax/*.py>` of the library this process runs.

    Other developers commit to the same tree while a benchmark runs; each record says which code
    trained it (each invocation imports the library once). A run reproduces bit for bit only with
    the same code, CPU and thread count: XLA's CPU kernels sum in an order that depends on the
    threads (`BENCHMARKS.md`, *Reruns*).
    """
    package = os.path.join(ROOT, "optg_jax")
    digest = hashlib.sha1()
    for directory, _, file_names in sorted(os.walk(package)):
        for name in sorted(f for f in file_names if f.endswith(".py")):
            with open(os.path.join(directory, name), "rb") as f:
                digest.update(f.read())
    try:
        head = subprocess.run(
            ["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = (
            subprocess.run(
                ["git", "-C", ROOT, "diff", "--quiet", "HEAD", "--", package], check=False
            ).returncode
            != 0
        )
    except (OSError, subprocess.CalledProcessError):
        head, dirty = "nogit", False
    return f"{head}{'+dirty' if dirty else ''}:{digest.hexdigest()[:8]}"


def run_host() -> str:
    """Where a run's numbers come from: the CPU, the threads this process may use, JAX's version.

    With `code_version`, what a record needs to be reproduced bit for bit: on another CPU or
    thread count the same code and seed give runs that differ by about as much as two seeds do
    (`BENCHMARKS.md`, *Reruns*).
    """
    try:
        threads = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        threads = os.cpu_count() or 1
    return f"{cpu_name()}, {threads} threads, jax {jax.__version__}"


def provenance() -> dict:
    """`{'code': code_version(), 'host': run_host()}`: the fields every benchmark record
    carries so that a rerun can tell whether it should equal the record bit for bit."""
    return {"code": code_version(), "host": run_host()}


def cpu_name() -> str:
    """The host CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"
