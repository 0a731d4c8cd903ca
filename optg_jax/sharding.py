"""FSDP-style shardings: every leaf split over one mesh axis on one of its dimensions.

The rule is per leaf and depends only on its shape: split the largest dimension that the mesh
axis divides (the first of equal ones), replicate leaves with no such dimension (scalars, odd
sizes). The OptG scores, score momentum and masks have their weight's shape, and so does SGD's
momentum, so the rule puts each of them on the same devices as its weight, split the same way::

    mesh = Mesh(np.asarray(jax.devices()), ("data",))
    param_sharding = fsdp_shardings(params, mesh)
    state_sharding = fsdp_shardings(jax.eval_shape(tx.init, params), mesh)
    update = jax.jit(
        tx.update,
        in_shardings=(param_sharding, state_sharding, param_sharding),
        out_shardings=(param_sharding, state_sharding),
    )

`optg_optax`'s update then runs shard by shard: the straight-through step is elementwise and
the global top-k threshold (`optg_jax.topk`) needs only per-device partial counts and all-reduces
of scalars, so no device ever holds a whole leaf of the optimizer state (`tests/test_fsdp.py`
checks the compiled program). The forward and backward passes gather each layer's weights when
they use them, as every FSDP scheme does. (The mesh's axis is of the `Auto` type that
`Mesh(...)` gives; `jax.make_mesh` makes `Explicit` axes unless told otherwise.)

Splitting the largest dimension also keeps `optg_jax.topk`'s strided sample (taken for more
than a million masked weights) local to each device: it flattens a leaf with its largest
dimension first. A rule that splits a masked leaf on another dimension gives the same results,
but XLA then gathers that leaf to take its sample at each refresh.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

# How the training program lays out its state (`config.param_sharding`).
PARAM_SHARDINGS = ("replicated", "fsdp")


def fsdp_spec(shape: Sequence[int], num_shards: int, axis_name: str = "data") -> P:
    """The partition spec of one leaf under the FSDP rule.

    Args:
      shape: the leaf's shape.
      num_shards: the size of the mesh axis the leaf is split over (> 0).
      axis_name: the mesh axis's name.

    Returns:
      `P(None, ..., axis_name, ..., None)` with `axis_name` at the largest dimension divisible by
      `num_shards` (the first of equal ones), or `P()` (replicated) when no dimension is, or when
      `num_shards` is 1.

    Raises:
      ValueError: `num_shards` is not a positive integer.
    """
    if isinstance(num_shards, bool) or not isinstance(num_shards, int) or num_shards <= 0:
        raise ValueError(f"num_shards must be a positive integer, got {num_shards!r}")
    divisible = [i for i, size in enumerate(shape) if size % num_shards == 0 and size > 0]
    if num_shards == 1 or not divisible:
        return P()
    axis = max(divisible, key=lambda i: (shape[i], -i))
    return P(*(axis_name if i == axis else None for i in range(len(shape))))


def fsdp_shardings(tree: Any, mesh: Mesh, axis_name: str = "data") -> Any:
    """The FSDP rule's `NamedSharding` for every leaf of a pytree.

    Args:
      tree: a pytree of arrays or `jax.ShapeDtypeStruct`s (params, an optimizer state, a whole
        train state); `None` leaves (unmasked entries of an `OptGState`) stay `None`.
      mesh: the device mesh.
      axis_name: the mesh axis the leaves are split over.

    Returns:
      A pytree like `tree` of `NamedSharding(mesh, fsdp_spec(leaf.shape, ...))`.

    Raises:
      ValueError: `axis_name` is not an axis of `mesh`.
    """
    if axis_name not in mesh.shape:
        raise ValueError(f"axis_name {axis_name!r} is not an axis of the mesh {dict(mesh.shape)}")
    num_shards = int(mesh.shape[axis_name])
    return jax.tree.map(
        lambda leaf: NamedSharding(mesh, fsdp_spec(leaf.shape, num_shards, axis_name)), tree
    )


def state_shardings(tree: Any, mesh: Mesh, param_sharding: str, axis_name: str = "data") -> Any:
    """The sharding of every leaf of a train state under one of `PARAM_SHARDINGS`.

    Args:
      tree: a pytree of arrays or `jax.ShapeDtypeStruct`s (a whole train state).
      mesh: the device mesh.
      param_sharding: `"replicated"` (every leaf whole on every device) or `"fsdp"`
        (`fsdp_shardings`).
      axis_name: the mesh axis FSDP splits over.

    Returns:
      A pytree like `tree` of `NamedSharding`s.

    Raises:
      ValueError: `param_sharding` is not one of `PARAM_SHARDINGS`.
    """
    if param_sharding == "fsdp":
        return fsdp_shardings(tree, mesh, axis_name)
    if param_sharding == "replicated":
        return jax.tree.map(lambda _: NamedSharding(mesh, P()), tree)
    raise ValueError(
        f"param_sharding must be one of {', '.join(PARAM_SHARDINGS)}, got {param_sharding!r}"
    )


__all__ = ["PARAM_SHARDINGS", "fsdp_shardings", "fsdp_spec", "state_shardings"]
