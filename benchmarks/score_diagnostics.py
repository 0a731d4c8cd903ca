"""What OptG's ranking sees at the end of the pruning ramp, in the fine-tuning benchmark.

One fine-tune of `benchmarks/finetune.py` (a pretrained network, a new head, AdamW on the target
classes) with an OptG link, recorded as it runs:

- the effective window of the scores at the ramp's end, `n_eff = (Σ w_t)² / Σ w_t²`: a score
  is `S = Σ_t w_t·x_t` over the steps `x_t` with weights `w_t` (the score learning rate of
  step `t` times what the forgetting has kept of it since), so `n_eff` is how many equal steps
  the sum is worth. With forgetting by distance (`score_half_distance = δ`) the weight of step
  `t` at step `T` is `η_t · 2^(-(r_T - r_t) / δ)`, `r` the relative distance the weights have
  moved (`OptGState.distance`);
- the relative distance at the ramp's end;
- per layer, `t = S / sqrt(Q)` at the ramp's end (a score in standard errors of its own
  noise; the uncertainty bonus adds `κ` of them) and the fraction of the layer the final
  masks keep.

  python -m benchmarks.score_diagnostics --model vit_tiny_p7 --finetune-lr 1e-4 --sparsity 0.9

Validation split by default (`--validation 10000`): a diagnostic, not an accuracy claim. The
table is printed and written to `--out` (markdown).
"""

from __future__ import annotations

import argparse
import os
from typing import Any, Callable

import jax
import numpy as np
import optax

import optg_jax
from benchmarks import finetune, user_loop
from optg_jax import optg as optg_lib


def effective_window(score_lrs: np.ndarray, distances: np.ndarray, half_distance: float) -> float:
    """`n_eff = (Σ w_t)² / Σ w_t²` of a score after the steps given (0 if no weight is > 0).

    Args:
      score_lrs: `[T]`, the score learning rate of each step, in step order.
      distances: `[T]`, `OptGState.distance` after each step (the largest relative distance so
        far; non-decreasing).
      half_distance: `δ`; 0 means no forgetting (`w_t = η_t`).

    Returns:
      The effective number of equal steps, a float in `[0, T]`.
    """
    lrs = np.asarray(score_lrs, np.float64)
    dist = np.asarray(distances, np.float64)
    kept = np.exp2(-(dist[-1] - dist) / half_distance) if half_distance else np.ones_like(lrs)
    w = lrs * kept
    square = float(np.sum(w * w))
    return float(np.sum(w) ** 2 / square) if square > 0 else 0.0


def recording(
    tx: optax.GradientTransformation, end_step: int, sink: Callable[..., None]
) -> optax.GradientTransformation:
    """`tx` (an `optg_optax` link) that also hands its state to `sink` from inside `jit`.

    After every update `sink("step", count, score_lr, distance)`; after the update that brings
    the count to `end_step`, `sink("end", scores, noise)` with the masked leaves' scores and
    noise (lists of arrays, `jax.tree.leaves` order).
    """

    def update(grads, state, params=None):
        updates, new = tx.update(grads, state, params)
        jax.debug.callback(
            lambda *a: sink("step", *a), new.count, new.score_lr, new.distance, ordered=True
        )
        leaves = (jax.tree.leaves(new.scores), jax.tree.leaves(new.score_noise))
        jax.lax.cond(
            new.count == end_step,
            lambda: jax.debug.callback(lambda *a: sink("end", *a), *leaves, ordered=True),
            lambda: None,
        )
        return updates, new

    return optax.GradientTransformation(tx.init, update)


def layer_rows(names: list[str], scores: list, noise: list, masks: list) -> list[dict[str, Any]]:
    """Per layer: its size, the quartiles of `t = S / sqrt(Q)`, and the fraction kept."""
    rows = []
    for name, s, q, m in zip(names, scores, noise, masks):
        s, q = np.ravel(s).astype(np.float64), np.ravel(q).astype(np.float64)
        t = np.where(q > 0, s / np.sqrt(np.where(q > 0, q, 1.0)), 0.0)
        lo, mid, hi = np.quantile(t, [0.25, 0.5, 0.75])
        rows.append(dict(layer=name, size=s.size, t25=lo, t50=mid, t75=hi, kept=float(np.mean(m))))
    return rows


def diagnose(args: argparse.Namespace) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Runs the fine-tune; returns (summary, per-layer rows)."""
    overrides = {"finetune_lr": args.finetune_lr} if args.finetune_lr else None
    arrays = user_loop.load_fashion_mnist(args.validation, args.source)
    task = finetune.finetune_task(args.model, args.seed, arrays, args.validation, overrides)
    y, xe, ye = task.data[1:]
    kwargs = user_loop.method_kwargs(args.method, len(y) // task.setting.batch)
    settings = optg_lib.OptGSettings(args.sparsity, task.total_steps, task.lr, **kwargs)
    settings = settings.resolved()
    if not settings.uncertainty_bonus:
        raise SystemExit(f"error: method {args.method!r} keeps no noise estimate (no bonus)")
    seen: dict[str, Any] = {"steps": []}

    def sink(kind, *values):
        if kind == "step":
            seen["steps"].append(tuple(float(v) for v in values))
        else:
            seen["end"] = [[np.asarray(v) for v in leaves] for leaves in values]

    link = recording(optg_lib.optg_transformation(settings), settings.pruning_end_step, sink)
    progress = finetune.epoch_progress(f"{args.model} {args.method}", task.setting.finetune_epochs)
    loop, params, batch_stats, state = finetune.train_task(task, link, args.seed, progress)
    jax.effects_barrier()
    steps = sorted(seen["steps"])[: settings.pruning_end_step]
    lrs, dist = np.array([s[1] for s in steps]), np.array([s[2] for s in steps])
    masks = [np.asarray(m) for m in jax.tree.leaves(state[0].masks)]
    names = list(optg_jax.sparsity_summary(state)["layers"])
    top1 = loop.top1(optg_jax.apply_masks(params, state), batch_stats, xe, ye)
    summary = dict(
        top1=top1,
        ramp_steps=settings.pruning_end_step,
        n_eff=effective_window(lrs, dist, settings.score_half_distance),
        distance=float(dist[-1]),
        digest=task.source_digest,
    )
    return summary, layer_rows(names, *seen["end"], masks)


def table(args: argparse.Namespace, summary: dict[str, Any], rows: list[dict]) -> list[str]:
    """The markdown report of one diagnosis."""
    lr = args.finetune_lr or finetune.MODELS[args.model].finetune_lr
    lines = [
        f"`{args.model}` fine-tuned at AdamW lr {lr:g}, `{args.method}` at "
        f"{100 * args.sparsity:g}%, seed {args.seed} (network {summary['digest']}), "
        f"{'validation' if args.validation else 'test'} top-1 {summary['top1']:.2f}.",
        "",
        f"At the ramp's end (step {summary['ramp_steps']}): effective window "
        f"n_eff = {summary['n_eff']:.1f} steps, relative distance moved "
        f"{summary['distance']:.3f}.",
        "",
        "| layer | weights | t = S/sqrt(Q): 25% | median | 75% | kept |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['layer']} | {r['size']:,} | {r['t25']:.2f} | {r['t50']:.2f} | "
            f"{r['t75']:.2f} | {r['kept']:.3f} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    """Runs one recorded fine-tune and writes its report.

    Args:
      argv: the command-line arguments (default: `sys.argv[1:]`).

    Returns:
      The exit status, 0.
    """
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=tuple(finetune.MODELS), default="vit_tiny_p7")
    ap.add_argument("--method", default="optg", help="a method of benchmarks.user_loop")
    ap.add_argument("--sparsity", type=float, default=0.9)
    ap.add_argument("--finetune-lr", type=finetune._positive(float), default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--validation", type=int, default=10000)
    ap.add_argument("--source", choices=("tfds", "idx"), default="idx")
    ap.add_argument("--out", default=None, help="default: runs/score_diagnostics/<name>.md")
    args = ap.parse_args(argv)
    if not 0 < args.sparsity < 1:
        ap.error(f"--sparsity must be in (0, 1), got {args.sparsity!r}")
    summary, rows = diagnose(args)
    lines = table(args, summary, rows)
    print("\n".join(lines))
    lr = f"_lr{args.finetune_lr:g}" if args.finetune_lr else ""
    name = f"{args.model}{lr}_{args.method.replace(':', '_')}_{args.sparsity:g}_seed{args.seed}"
    out = args.out or os.path.join("runs", "score_diagnostics", f"{name}.md")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
