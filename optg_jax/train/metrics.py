"""Where the numbers go: TensorBoard events, a JSON-lines file, a progress bar, a summary table.

Only process 0 writes: every writer here takes `enabled` and is a no-op when it is False, so the
training loop calls them unconditionally on every process.
"""

from __future__ import annotations

import json
import math
import os
import sys
from typing import Any, Mapping

import numpy as np
from etils import epath

from optg_jax.train import files

METRICS_FILE = "metrics.jsonl"


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flattens nested dicts into one level with '/'-joined keys.

    Args:
      tree: a mapping whose values may be mappings.
      prefix: prepended (with '/') to every key.

    Returns:
      `{'a/b/c': leaf}`.
    """
    out = {}
    for k, v in tree.items():
        key = f"{prefix}/{k}" if prefix else str(k)
        if isinstance(v, Mapping):
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


def _to_python(v):
    if isinstance(v, (np.generic, np.ndarray)) or hasattr(v, "__array__"):
        v = np.asarray(v)
        return v.item() if v.ndim == 0 else v.tolist()
    return v


class MetricWriter:
    """Writes scalar metrics to `workdir/tb` (TensorBoard) and `workdir/metrics.jsonl`.

    One JSON line per `write` call: {"step": int, **scalars} with nested dicts kept nested (so the
    per-layer sparsities stay one object); TensorBoard gets the flattened scalars. A remote workdir
    (gs://...) cannot be appended to, so there the whole file is rewritten on each write.
    """

    def __init__(self, workdir: str, enabled: bool = True):
        self._enabled = enabled
        self._tb = None
        self._jsonl = None
        self._lines = None
        if enabled:
            self._tb = _TensorBoardWriter(os.path.join(workdir, "tb"))
            self._path = epath.Path(workdir) / METRICS_FILE
            if files.is_remote(workdir):
                self._lines = self._path.read_text().splitlines() if self._path.exists() else []
            else:
                self._jsonl = open(self._path, "a", encoding="utf-8")

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Writes one record (a no-op on processes other than 0).

        Args:
          step: the training step the metrics belong to.
          metrics: a nested dict of numbers (scalars, NumPy or JAX scalars).
        """
        if not self._enabled:
            return
        metrics = {
            k: (flatten(v) if isinstance(v, Mapping) else _to_python(v)) for k, v in metrics.items()
        }
        for key, value in flatten(metrics).items():
            value = _to_python(value)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self._tb.scalar(key, value, step)
        self._tb.flush()
        record = {"step": int(step), **{k: _json_safe(v) for k, v in metrics.items()}}
        if self._lines is not None:
            self._lines.append(json.dumps(record))
            self._path.write_text("\n".join(self._lines) + "\n")
        else:
            self._jsonl.write(json.dumps(record) + "\n")
            self._jsonl.flush()

    def close(self) -> None:
        """Flushes and closes the TensorBoard writer and the JSON-lines file."""
        if self._tb is not None:
            self._tb.close()
        if self._jsonl is not None:
            self._jsonl.close()
        self._tb = self._jsonl = None


class _TensorBoardWriter:
    """Scalar TensorBoard events through TensorFlow's core `tf.summary.write`.

    `tf.summary.scalar` (and `flax.metrics.tensorboard`) need the `tensorboard` package, which
    tensorflow-cpu does not install; the core writer plus the scalars plugin's metadata gives the
    same event records without it.
    """

    def __init__(self, logdir: str):
        import tensorflow as tf  # pylint: disable=import-outside-toplevel
        from tensorflow.core.framework import summary_pb2  # pylint: disable=import-outside-toplevel

        self._tf = tf
        self._writer = tf.summary.create_file_writer(logdir)
        self._metadata = summary_pb2.SummaryMetadata()
        self._metadata.plugin_data.plugin_name = "scalars"

    def scalar(self, tag: str, value: float, step: int) -> None:
        with self._writer.as_default():
            self._tf.summary.write(
                tag,
                self._tf.constant(value, self._tf.float32),
                step=int(step),
                metadata=self._metadata,
            )

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


def read_records(workdir: str) -> list[dict]:
    """The records of `workdir/metrics.jsonl`, in the order they were written.

    Args:
      workdir: the run's directory (local path or gs://...).

    Returns:
      One dict per line; `[]` when there is no file. A line cut short (the process was killed while
      writing it) is skipped.
    """
    path = epath.Path(workdir) / METRICS_FILE
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def best_top1(records: list[dict], up_to_step: int | None = None) -> tuple[float, float] | None:
    """The best `eval/top1` of the per-epoch records and the epoch it came from.

    A resumed run evaluates again the epochs after its checkpoint and writes their records again:
    for each step the record written last counts, and with `up_to_step` the records of later steps
    (not yet recomputed) are left out.

    Args:
      records: metrics records (`read_records`); those without a numeric `eval/top1` are ignored.
      up_to_step: only the records with `step <= up_to_step` count (None: all).

    Returns:
      `(top1, epoch)` of the first epoch with the highest top-1 (`epoch` as logged: epochs done,
      a float), or None when no record has an eval top-1.
    """
    latest = {}
    for record in records:
        top1 = record.get("eval/top1")
        if not isinstance(top1, (int, float)) or isinstance(top1, bool) or math.isnan(top1):
            continue
        if up_to_step is None or record["step"] <= up_to_step:
            latest[record["step"]] = (float(top1), float(record.get("epoch", math.nan)))
    best = None
    for step in sorted(latest):
        if best is None or latest[step][0] > best[0]:
            best = latest[step]
    return best


def _json_safe(v):
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    v = _to_python(v)
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN/Inf; keep the information as text.
    return v


class ProgressBar:
    """A tqdm progress bar over training steps showing loss and sparsity; silent when disabled."""

    def __init__(self, total: int, initial: int, enabled: bool = True):
        self._bar = None
        if enabled:
            from tqdm import tqdm

            self._bar = tqdm(
                total=total,
                initial=initial,
                unit="step",
                dynamic_ncols=True,
                file=sys.stderr,
                mininterval=1.0,
                smoothing=0.1,
            )

    def update(self, n: int = 1, **postfix) -> None:
        """Advances the bar.

        Args:
          n: how many steps were done.
          **postfix: values shown after the bar (floats with 4 significant digits).
        """
        if self._bar is None:
            return
        if postfix:
            self._bar.set_postfix(
                {k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in postfix.items()},
                refresh=False,
            )
        self._bar.update(n)

    def write(self, line: str) -> None:
        """Prints a line above the bar (nothing when the bar is disabled).

        Args:
          line: the text, without a newline.
        """
        if self._bar is None:
            return
        self._bar.write(line, file=sys.stderr)

    def close(self) -> None:
        """Closes the bar (idempotent)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _human(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def _nm_row(results: Mapping[str, Any]) -> str:
    """'2:4, 100.00% of groups exact; 1 leaf left dense (conv1/kernel)'."""
    dense = [k for k, v in results.get("nm_layers", {}).items() if not v["covered"]]
    names = ", ".join(dense[:3]) + (", ..." if len(dense) > 3 else "")
    leaves = f"{len(dense)} leaf" if len(dense) == 1 else f"{len(dense)} leaves"
    return (
        f"{results['pattern']}, {100 * results['nm_valid_fraction']:.2f}% of groups exact; "
        f"{leaves} left dense" + (f" ({names})" if dense else "")
    )


def summary_table(results: Mapping[str, Any]) -> str:
    """A one-screen table of a run's results.

    Args:
      results: the dict written to results.json (`top1`, `top5`, `sparsity`, `macs`,
        `dense_macs`; optional `best_top1` with `best_top1_epoch`, `model`, `layer_sparsity`,
        times, ...).

    Returns:
      The table as text, framed by rules; long per-layer lists show their first and last layers.
    """
    rows = [
        ("model", results.get("model")),
        ("dataset", results.get("dataset")),
        ("criterion", results.get("criterion")),
        ("steps", results.get("steps")),
        ("top-1 accuracy", f"{100 * results['top1']:.2f}%"),
        ("top-5 accuracy", f"{100 * results['top5']:.2f}%"),
    ]
    if "best_top1" in results:  # results.json of runs before it was recorded lack it
        epoch = results.get("best_top1_epoch")
        at = "" if epoch is None else f" (epoch {epoch:g})"
        rows.append(("best top-1 (epoch)", f"{100 * results['best_top1']:.2f}%{at}"))
    rows += [
        (
            "sparsity (target)",
            f"{100 * results['sparsity']:.2f}% ({100 * results.get('target_sparsity', 0.0):.2f}%)",
        ),
        (
            "MACs (dense)",
            f"{_human(results['macs'])} ({_human(results['dense_macs'])}), "
            f"{results['dense_macs'] / max(results['macs'], 1):.1f}x fewer",
        ),
    ]
    if "pattern" in results:
        rows.append(("N:M pattern", _nm_row(results)))
    if "train_time_s" in results:
        rows.append(("train time", f"{results['train_time_s']:.1f} s"))
    if "wall_time_s" in results:
        rows.append(("wall time", f"{results['wall_time_s']:.1f} s"))
    layers = results.get("layer_sparsity") or {}
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {v}" for k, v in rows]
    if layers:
        lines.append("per-layer sparsity:")
        name_w = min(max(len(k) for k in layers), 48)
        items = list(layers.items())
        if len(items) > 16:  # One screen: show the first and last layers.
            items = items[:8] + [("...", None)] + items[-7:]
        for k, v in items:
            lines.append(f"  {k[-name_w:]:<{name_w}}  " + ("" if v is None else f"{100 * v:6.2f}%"))
    rule = "=" * max(len(line) for line in lines)
    return "\n".join([rule, *lines, rule])
