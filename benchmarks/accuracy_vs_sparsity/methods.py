"""The method-name grammar of the accuracy-vs-sparsity benchmark.

Method names: `dense`, `magnitude`, `taylor`, `supermask`, `optg`, each with the library's
default recipe (`optg_jax.OptGSettings.resolved`) unless suffixes override config fields for that
method alone:

- `-paper`: the paper's OptG-specific settings (`recipe="paper"`: sigmoid ramp with beta per
  epoch, score momentum 0.9, masks re-selected after the ramp) inside the same pruning window
  (ramp end and refresh interval) as every other method (`runs.run_config`);
- `-cubic`, `-sigmoid`: the sparsity schedule;
- `-floor<F>` (optg: `score_lr_floor`, the score learning-rate factor becomes
  `F + (1 - F) * p(t)/P`), `-mom<M>` (optg/supermask: `score_momentum`), `-bonus<K>`
  (optg/supermask: `uncertainty_bonus`, e.g. `optg-bonus0` ranks by the score alone),
  `-start<C>` (optg/supermask: `score_start`, the scores start at `C * W_0^2 / 2`),
  `-halflife<H>` (optg/supermask: `score_half_life`, a score step's weight halves every `H` of
  the ramp), `-halfdist<D>` (optg/supermask: `score_half_distance`, it halves each time the
  weights move a further `D` of their starting norm), `-atstart<K0>` (optg:
  `uncertainty_bonus_at_start`, the bonus is `kappa + K0 * 2^(-r / delta)`),
  `-every<N>` (`mask_update_every`), `-beta<B>` (`beta`);
- `-frozen` / `-refreshed` (`update_masks_after_pruning` False / True: masks frozen after the
  ramp, or re-selected to the end of the run);
- `-alloc<A>` (`allocation`: one of `optg_jax.ALLOCATIONS`, global or uniform).

For example `optg-paper`, `magnitude-sigmoid`, `optg-every50-refreshed`.
"""

from __future__ import annotations

import optg_jax

METHODS = ("dense", "magnitude", "taylor", "supermask", "optg")
LABELS = {
    "dense": "dense",
    "magnitude": "GMP (magnitude)",
    "taylor": "Taylor",
    "supermask": "supermask (no supermask optimizer)",
    "optg": "OptG",
}
# The library's paper form of OptG (recipe "paper"), in the shared pruning window.
PAPER_OPTG = "optg-paper"
BASELINES = ("magnitude", "taylor", "supermask")

# Method-name suffixes with a value -> (config field, type, label). Each variant is a config
# override of the shared protocol for that method alone.
SUFFIXES = {
    "floor": ("score_lr_floor", float, "score-lr floor {:g}"),
    "every": ("mask_update_every", int, "refresh every {} steps"),
    "mom": ("score_momentum", float, "score momentum {:g}"),
    "bonus": ("uncertainty_bonus", float, "uncertainty bonus κ = {:g}"),
    "start": ("score_start", float, "score start {:g}·W₀²/2"),
    "halflife": ("score_half_life", float, "score half-life {:g} of the ramp"),
    "halfdist": ("score_half_distance", float, "score half-distance {:g} of the weights' norm"),
    "atstart": ("uncertainty_bonus_at_start", float, "bonus at the start κ₀ = {:g}"),
    "beta": ("beta", float, "β = {:g}"),
    "alloc": ("allocation", str, "{} allocation"),
}
# Suffixes without a value -> (config field, value, label).
FLAGS = {
    "paper": ("recipe", "paper", "paper form"),
    "cubic": ("schedule", "cubic", "cubic ramp"),
    "sigmoid": ("schedule", "sigmoid", "sigmoid ramp"),
    "frozen": ("update_masks_after_pruning", False, "masks frozen after the ramp"),
    "refreshed": ("update_masks_after_pruning", True, "masks re-selected after the ramp"),
}
SCORED = ("optg", "supermask")  # Criteria whose scores have a learning rate and momentum.


def parse_method(method: str) -> tuple[str, dict]:
    """A method name -> (criterion, config overrides).

    Args:
      method: e.g. 'optg', 'optg-paper', 'optg-floor0.5-every50-frozen', 'magnitude-sigmoid'.

    Returns:
      `(criterion, {config field: value})`, e.g. ('optg', {'recipe': 'paper'}).

    Raises:
      ValueError: an unknown criterion or suffix, or a value out of range; the message names it.
    """
    criterion, *suffixes = method.split("-")
    if criterion not in METHODS or (suffixes and criterion == "dense"):
        raise ValueError(
            f"unknown method {method!r}: one of {', '.join(METHODS)}, optionally with "
            "-paper, -cubic, -sigmoid, -frozen, -refreshed, -floor<F>, -mom<M>, -bonus<K>, "
            "-start<C>, -halflife<H>, -halfdist<D>, -atstart<K0>, -every<N>, -beta<B>, "
            "-alloc<A>"
        )
    options = {}
    for suffix in suffixes:
        if suffix in FLAGS:
            field, value, _ = FLAGS[suffix]
            options[field] = value
            continue
        prefix = next((p for p in SUFFIXES if suffix.startswith(p)), None)
        allowed = prefix is not None and (
            (prefix in ("floor", "atstart") and criterion == "optg")
            or (prefix in ("mom", "bonus", "start", "halflife", "halfdist") and criterion in SCORED)
            or prefix in ("every", "beta", "alloc")
        )
        if not allowed:
            raise ValueError(f"unknown suffix {suffix!r} in method {method!r}")
        field, kind, _ = SUFFIXES[prefix]
        try:
            value = kind(suffix[len(prefix) :])
        except ValueError:
            raise ValueError(f"bad value in suffix {suffix!r} of method {method!r}") from None
        bounds = {
            "floor": (0.0, 1.0),
            "mom": (0.0, 0.999999),
            "bonus": (0.0, 1e6),
            "start": (0.0, 1e6),
            "halflife": (0.0, 1e6),
            "halfdist": (0.0, 1e6),
            "atstart": (0.0, 1e6),
        }.get(prefix)
        if prefix == "alloc":
            if value not in optg_jax.ALLOCATIONS:
                names = ", ".join(optg_jax.ALLOCATIONS)
                raise ValueError(f"{field}={value!r} of method {method!r} is not one of {names}")
        elif (bounds and not bounds[0] <= value <= bounds[1]) or (not bounds and value <= 0):
            raise ValueError(f"{field}={value!r} of method {method!r} is outside its range")
        options[field] = value
    return criterion, options


def label(method: str) -> str:
    """The method's name in tables and plots.

    Args:
      method: a method name.

    Returns:
      E.g. 'OptG (library default)', 'OptG, paper form', 'ablation: GMP (magnitude), sigmoid
      ramp'.
    """
    criterion, options = parse_method(method)
    if method == "optg":
        return "OptG (library default)"
    if method == PAPER_OPTG:
        return "OptG, paper form (recipe='paper')"
    parts = [LABELS[criterion]]
    if options.get("recipe") == "paper":
        parts.append("paper form")
    for suffix, (field, value, text) in FLAGS.items():
        if options.get(field) == value and suffix != "paper":
            parts.append(text)
    for field, _, text in SUFFIXES.values():
        if field == "score_half_distance" and options.get(field) == 0:
            parts.append("plain score sum (score_half_distance=0, the previous default)")
        elif field in options:
            parts.append(text.format(options[field]))
    return f"ablation: {', '.join(parts)}" if options else parts[0]


def method_order(method: str) -> tuple:
    """Sort key: criteria in `METHODS` order, each followed by its variants.

    Args:
      method: a method name.

    Returns:
      A tuple that sorts methods for tables.
    """
    criterion, options = parse_method(method)
    return (METHODS.index(criterion), sorted((k, str(v)) for k, v in options.items()))
