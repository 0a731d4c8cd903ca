"""The compact sparse export of a trained model, and `load_sparse` to read it back.

A training run's `export/` directory holds `model.npz` (the masked weights with zeros in place:
as large as the dense model) and `model_sparse.npz`, written here: every leaf whose zeros make it
cheaper is stored as its non-zero values (row-major order, the leaf's dtype) plus a bitmask of
their positions (`np.packbits`, one bit per weight); every other leaf (biases, BatchNorm
parameters and statistics, a dense run's kernels) is stored as it is. The archive is
zip-deflated, which shrinks the mostly-zero bitmasks of very sparse kernels much further. An
entry `__index__` (a JSON string) records each leaf's shape, dtype and encoding; no pickles.

At 99% sparsity the file is 1.2% of the dense one for ResNet-50 (see
`benchmarks/export_size.py`).

Storing the non-zeros rather than the optimizer's masks reproduces the masked weights exactly: a
kept weight that happens to be exactly zero is stored as the zero it is.

Local files need nothing beyond NumPy; a remote path (`gs://...`) is read and written through
`etils.epath`, which the training program's dependencies (`optg-jax[train]`) include.
"""

from __future__ import annotations

import io
import json
import math
import os
import pathlib
from typing import Any

import jax
import numpy as np

SPARSE_FILE = "model_sparse.npz"
FORMAT = "optg-jax sparse export v1"
COLLECTIONS = ("params", "batch_stats")
_INDEX = "__index__"
_VALUES, _MASK = ":values", ":mask"


def flatten(variables: dict) -> dict[str, np.ndarray]:
    """`{'params/conv1/kernel': array, 'batch_stats/bn1/mean': array, ...}` as NumPy arrays.

    Args:
      variables: `{'params': ..., 'batch_stats': ...}` (either may be absent or empty); leaves
        are device or host arrays.

    Returns:
      The leaves keyed by collection and '/'-joined path, in pytree order.
    """
    flat = {}
    for collection in COLLECTIONS:
        tree = variables.get(collection) or {}
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
            name = jax.tree_util.keystr(path, simple=True, separator="/")
            flat[f"{collection}/{name}"] = np.asarray(jax.device_get(leaf))
    return flat


def encode(flat: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The archive's entries for `flat` arrays: sparse where that is smaller, else as they are.

    A leaf of `size` entries, `nnz` of them non-zero, costs `ceil(size / 8) + nnz * itemsize`
    bytes as bitmask plus values and `size * itemsize` as it is; the smaller one is taken.

    Args:
      flat: arrays keyed by name (see `flatten`).

    Returns:
      `{name: array}` for dense leaves, `{name + ':mask': uint8 bits, name + ':values': 1-D}`
      for sparse ones, and `'__index__'`: the JSON index as a 0-d unicode array.
    """
    entries, leaves = {}, {}
    for name, array in flat.items():
        nonzero = array.reshape(-1) != 0
        nnz = int(np.count_nonzero(nonzero))
        sparse_bytes = math.ceil(array.size / 8) + nnz * array.itemsize
        sparse = array.size > 0 and sparse_bytes < array.nbytes
        if sparse:
            entries[name + _MASK] = np.packbits(nonzero)
            entries[name + _VALUES] = array.reshape(-1)[nonzero]
        else:
            entries[name] = array
        leaves[name] = {
            "shape": list(array.shape),
            "dtype": array.dtype.str,
            "encoding": "bitmask" if sparse else "dense",
        }
    entries[_INDEX] = np.array(json.dumps({"format": FORMAT, "leaves": leaves}))
    return entries


def decode(entries: Any) -> dict[str, np.ndarray]:
    """The arrays `encode` was given, from its entries (a dict or an opened `.npz`).

    Args:
      entries: `encode`'s output, or the `np.load` of a file `write_sparse` wrote.

    Returns:
      `{'/'-joined name: array}` with the original shapes and dtypes, zeros restored.

    Raises:
      ValueError: the entries are not an optg-jax sparse export.
    """
    if _INDEX not in entries:
        raise ValueError("not an optg-jax sparse export: no __index__ entry")
    index = json.loads(str(entries[_INDEX][()]))
    if index.get("format") != FORMAT:
        raise ValueError(f"unknown sparse export format {index.get('format')!r}")
    flat = {}
    for name, leaf in index["leaves"].items():
        shape, dtype = tuple(leaf["shape"]), np.dtype(leaf["dtype"])
        if leaf["encoding"] == "dense":
            flat[name] = np.asarray(entries[name], dtype).reshape(shape)
            continue
        size = math.prod(shape)
        nonzero = np.unpackbits(entries[name + _MASK], count=size).astype(bool)
        array = np.zeros(size, dtype)
        array[nonzero] = entries[name + _VALUES]
        flat[name] = array.reshape(shape)
    return flat


def unflatten(flat: dict[str, np.ndarray]) -> dict:
    """Nested variables from '/'-joined names.

    Args:
      flat: `{'params/conv1/kernel': array, ...}`.

    Returns:
      `{'params': {...}, 'batch_stats': {...}}` nested dicts (empty collections included).
    """
    variables: dict = {collection: {} for collection in COLLECTIONS}
    for name, array in flat.items():
        *parents, leaf = name.split("/")
        node = variables
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = array
    return variables


def file_path(path: str | os.PathLike) -> Any:
    """A path object for a local file or, through `etils.epath`, a remote one.

    Args:
      path: a local path, or a URL with a scheme (`gs://bucket/x`).

    Returns:
      A `pathlib.Path` for a local path; an `etils.epath.Path` for a remote one (the same
      methods: `exists`, `is_dir`, `read_bytes`, `write_bytes`, `parent.mkdir`, `/`).

    Raises:
      ImportError: the path is remote and `etils` is not installed.
    """
    text = str(path)
    if "://" not in text:
        return pathlib.Path(text)
    try:
        from etils import epath  # pylint: disable=import-outside-toplevel
    except ImportError as e:
        raise ImportError(
            f"{text} is a remote path, which needs etils (pip install 'etils[epath]')"
        ) from e
    return epath.Path(text)


def write_sparse(path, variables: dict) -> str:
    """Writes `variables` (masked params, batch statistics) as a compact sparse `.npz`.

    Args:
      path: the file to write (local or remote, e.g. `gs://...`).
      variables: `{'params': masked params, 'batch_stats': statistics}`.

    Returns:
      The path written, as a string.
    """
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **encode(flatten(variables)))
    path = file_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())
    return str(path)


def load_sparse(path) -> dict:
    """The variables of a plain model from a sparse export, ready for `model.apply`.

    Args:
      path: a training run's `export/` directory (holding `model_sparse.npz`) or the `.npz`
        file itself.

    Returns:
      `{'params': ..., 'batch_stats': ...}`: nested dicts of NumPy arrays, the masked weights
      with zeros in place; `batch_stats` is `{}` for a model without BatchNorm. Use as
      `model.apply(variables, x, train=False)`.

    Raises:
      FileNotFoundError: there is no sparse export at `path`.
      ValueError: the file is not an optg-jax sparse export.
    """
    path = file_path(path)
    if path.is_dir():
        path = path / SPARSE_FILE
    if not path.exists():
        raise FileNotFoundError(f"no sparse export at {path}")
    with np.load(io.BytesIO(path.read_bytes()), allow_pickle=False) as entries:
        return unflatten(decode(entries))


__all__ = ["SPARSE_FILE", "load_sparse", "write_sparse"]
