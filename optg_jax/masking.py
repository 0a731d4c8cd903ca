"""Which parameters `optg_optax` masks: predicates on `(key_path, leaf)`.

A predicate receives a leaf's key path (as `jax.tree_util.tree_flatten_with_path` gives it) and
the leaf, and says whether the leaf is pruned. Pass one as `optg_optax(is_masked=...)`.

The default, `default_is_masked`, masks the weight matrices of layers and nothing else: every
parameter named `kernel` of rank >= 2. Flax names the weights of `Dense`, `Conv`,
`ConvTranspose`, `DenseGeneral`, `Einsum` and the query/key/value/output projections of its
attention modules `kernel`, in Linen and in NNX alike (rank 2 for dense layers, rank 3 for
attention projections, rank 4 for 2-D convolutions). Embedding tables (`embedding`), position
embeddings and class tokens (parameters of their own, under other names), norm scales (`scale`)
and biases (`bias`, rank 2 in attention projections: heads x head size) are not masked.

`rank_at_least_2` is the rule before this policy (every leaf of rank >= 2, whatever its name):
it is the one to use for parameters that do not follow Flax's names, e.g. a hand-written
`{"w": ...}` pytree, and it does prune embeddings and position embeddings.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax

KERNEL_NAME = "kernel"

# NNX `Variable`s are pytree nodes whose single child, the array, sits under this attribute:
# `nnx.Optimizer` hands `tx.init` the model state with the Variables in it, so a kernel's path
# ends in `.../kernel/.value` there and in `.../kernel` everywhere else.
_VARIABLE_VALUE_ATTRS = ("value", "raw_value")


def key_name(key: Any) -> str | None:
    """The name one key of a key path gives.

    Args:
      key: a `jax.tree_util` key (`DictKey`, `GetAttrKey`, `SequenceKey`, ...).

    Returns:
      A `DictKey`'s string key or a `GetAttrKey`'s attribute name; `None` for the other keys
      (sequence indices, non-string dict keys).
    """
    if isinstance(key, jax.tree_util.DictKey) and isinstance(key.key, str):
        return key.key
    if isinstance(key, jax.tree_util.GetAttrKey):
        return key.name
    return None


def leaf_name(path: Sequence[Any]) -> str | None:
    """The name of the parameter a key path leads to: its last named key.

    An NNX `Variable`'s own `.value` attribute at the end of the path is skipped, so the Linen
    path `('params', 'fc', 'kernel')`, the NNX state path `('fc', 'kernel')` and the path
    `('fc', 'kernel', .value)` that `nnx.Optimizer` passes at init all name `'kernel'`.

    Args:
      path: a key path: a sequence of `jax.tree_util` keys (`DictKey`, `GetAttrKey`,
        `SequenceKey`, ...).

    Returns:
      The name (a `str`), or `None` when no key of the path is a name (e.g. a bare array or a
      list of arrays).
    """
    keys = list(path)
    if (
        keys
        and isinstance(keys[-1], jax.tree_util.GetAttrKey)
        and keys[-1].name in _VARIABLE_VALUE_ATTRS
    ):
        keys.pop()
    names = [key_name(key) for key in reversed(keys)]
    return next((name for name in names if name is not None), None)


def rank_at_least_2(path: Sequence[Any], leaf: Any) -> bool:
    """Every leaf of rank >= 2, whatever its name (the rule before `default_is_masked`).

    Args:
      path: the leaf's key path (unused).
      leaf: the parameter array (or anything with `ndim`).

    Returns:
      Whether the leaf is masked.
    """
    del path
    return getattr(leaf, "ndim", 0) >= 2


def default_is_masked(path: Sequence[Any], leaf: Any) -> bool:
    """The weight matrices of dense, conv and attention layers: leaves named `kernel`, rank >= 2.

    Args:
      path: the leaf's key path in the params pytree (Linen variables, an NNX state, or an NNX
        state holding `Variable`s).
      leaf: the parameter array.

    Returns:
      Whether `optg_optax` masks the leaf.
    """
    return rank_at_least_2(path, leaf) and leaf_name(path) == KERNEL_NAME


def keep_dense(*module_names: str, base=default_is_masked):
    """A predicate: `base`'s leaves, except those under a module with one of `module_names`.

    For leaving chosen layers unpruned, e.g. a network's first and last layers
    (`keep_dense("patch_embed", "head")` on the zoo's ViT). A leaf is left dense when any name
    on its path (`key_name`) is one of the names.

    Args:
      *module_names: names of modules (or parameters) to leave dense; at least one.
      base: the predicate to narrow (default `default_is_masked`).

    Returns:
      A predicate on `(key_path, leaf)` for `optg_optax(is_masked=...)`.

    Raises:
      ValueError: no name, or a name that is not a non-empty string.
    """
    if not module_names or not all(isinstance(n, str) and n for n in module_names):
        raise ValueError(f"keep_dense needs one or more module names, got {module_names!r}")
    names = frozenset(module_names)

    def is_masked(path: Sequence[Any], leaf: Any) -> bool:
        return base(path, leaf) and names.isdisjoint(key_name(k) for k in path)

    return is_masked


def masked_paths(params: Any, is_masked=default_is_masked) -> list[str]:
    """The '/'-joined paths of the leaves `is_masked` selects, in the pytree's leaf order.

    Args:
      params: a params pytree.
      is_masked: a predicate on `(key_path, leaf)`.

    Returns:
      E.g. `['conv1/kernel', 'fc/kernel']`.
    """
    return [
        jax.tree_util.keystr(path, simple=True, separator="/")
        for path, leaf in jax.tree_util.tree_leaves_with_path(params)
        if is_masked(path, leaf)
    ]


__all__ = [
    "KERNEL_NAME",
    "default_is_masked",
    "keep_dense",
    "key_name",
    "leaf_name",
    "masked_paths",
    "rank_at_least_2",
]
