"""The method-name grammar of the accuracy-vs-sparsity benchmark.

Method names: `dense`, `magnitude`, `taylor`, `supermask`, `optg`, each optionally with suffixes
that override config fields for that method alone: `-floor<F>` (optg: `score_lr_floor`, the score
learning-rate factor becomes `F + (1 - F) * p(t)/P`), `-mom<M>` (optg/supermask:
`score_momentum`), `-every<N>` (`mask_update_every`), `-beta<B>` (`beta`) and `-frozen`
(`update_masks_after_pruning=False`: no mask refresh after the ramp), e.g. `optg-every50-frozen`.
The verdict is given for `optg` (the paper's settings) and for `TUNED_OPTG`, the variant whose
OptG-specific settings were chosen with `--validation` (a held-out part of the training split).
"""

from __future__ import annotations

METHODS = ("dense", "magnitude", "taylor", "supermask", "optg")
LABELS = {
    "dense": "dense",
    "magnitude": "GMP (magnitude)",
    "taylor": "Taylor",
    "supermask": "supermask (no supermask optimizer)",
    "optg": "OptG",
}
# OptG with its OptG-specific settings (refresh policy, β, score momentum) chosen on a validation
# split carved from the training set (`--validation`; section accuracy_vs_sparsity_validation of
# BENCHMARKS.md): every other setting is the shared protocol's.
TUNED_OPTG = "optg-every50-mom0.99-frozen"

# Method-name suffixes -> (config field, type, label). Each variant is a config override of
# the shared protocol for that method alone (ablations and the validation-tuned OptG).
SUFFIXES = {
    "floor": ("score_lr_floor", float, "score-lr floor {:g}"),
    "every": ("mask_update_every", int, "refresh every {} steps"),
    "mom": ("score_momentum", float, "score momentum {:g}"),
    "beta": ("beta", float, "β = {:g}"),
}
SCORED = ("optg", "supermask")  # Criteria whose scores have a learning rate and momentum.


def parse_method(method: str) -> tuple[str, dict]:
    """A method name -> (criterion, config overrides). Raises ValueError naming the bad part.

    'optg' -> ('optg', {}); 'optg-floor0.5' -> ('optg', {'score_lr_floor': 0.5});
    'optg-every50-frozen' -> ('optg', {'mask_update_every': 50,
    'update_masks_after_pruning': False}). Suffixes: floor<F> (optg), mom<M> (optg, supermask),
    every<N>, beta<B>, frozen (sparse methods).
    """
    criterion, *suffixes = method.split("-")
    if criterion not in METHODS or (suffixes and criterion == "dense"):
        raise ValueError(
            f"unknown method {method!r}: one of {', '.join(METHODS)}, optionally "
            "with -floor<F>, -mom<M>, -every<N>, -beta<B> and/or -frozen"
        )
    options = {}
    for suffix in suffixes:
        if suffix == "frozen":
            options["update_masks_after_pruning"] = False
            continue
        prefix = next((p for p in SUFFIXES if suffix.startswith(p)), None)
        allowed = prefix is not None and (
            (prefix == "floor" and criterion == "optg")
            or (prefix == "mom" and criterion in SCORED)
            or prefix in ("every", "beta")
        )
        if not allowed:
            raise ValueError(f"unknown suffix {suffix!r} in method {method!r}")
        field, kind, _ = SUFFIXES[prefix]
        try:
            value = kind(suffix[len(prefix) :])
        except ValueError:
            raise ValueError(f"bad value in suffix {suffix!r} of method {method!r}") from None
        bounds = {"floor": (0.0, 1.0), "mom": (0.0, 0.999999)}.get(prefix)
        if (bounds and not bounds[0] <= value <= bounds[1]) or (not bounds and value <= 0):
            raise ValueError(f"{field}={value!r} of method {method!r} is outside its range")
        options[field] = value
    return criterion, options


def label(method: str) -> str:
    """The method's name in tables and plots, e.g. 'ablation: OptG, refresh every 50 steps'."""
    criterion, options = parse_method(method)
    parts = [LABELS[criterion]]
    for field, _, text in SUFFIXES.values():
        if field in options:
            parts.append(text.format(options[field]))
    if options.get("update_masks_after_pruning") is False:
        parts.append("masks frozen after the ramp")
    if method == TUNED_OPTG:
        return f"OptG tuned on validation ({', '.join(parts[1:])})"
    return f"ablation: {', '.join(parts)}" if options else parts[0]


def method_order(method: str) -> tuple:
    """Sort key: criteria in `METHODS` order, each followed by its variants."""
    criterion, options = parse_method(method)
    return (METHODS.index(criterion), sorted(options.items()))
