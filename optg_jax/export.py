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

N:M leaves (`write_sparse(..., pattern="2:4")`, `optg_jax.nm`): a leaf of rank >= 2 whose group
axis (`nm.group_axis_from_name`, the rule the masks use) divides by M and that holds at most N
non-zeros in every group of M along it can be stored as its kept values, the leaf with that
axis shrunk from `G * M` to `G * N` (in each group the kept positions in increasing order: the
non-zeros, padded with the group's first zeros where it has fewer than N), plus the position in
its group of every value, `ceil(log2(M))` bits each (2 for 2:4), as one little-endian bit stream
in the values' row-major order (`np.packbits(..., bitorder="little")`: for 2:4 a byte holds the
positions of 4 values, the first in its lowest 2 bits). That is the compressed operand and
metadata of sparse tensor cores. It is taken for every leaf that holds the pattern and is not
all zero when the positions cost no more than the pattern's bitmask (`N * ceil(log2(M)) <= M`):
2:4 ties (4 bits per group of 4), 1:2, 1:4 and 2:8 cost less; under 3:4 or 4:8 they would cost
more and the leaves keep the bitmask. A leaf that does not hold the pattern (a dense stem conv
on 3 input channels, a dense layer) is written as above. Files with N:M leaves are marked `FORMAT_NM`; `load_sparse`
reads both formats.

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

from optg_jax import nm

SPARSE_FILE = "model_sparse.npz"
FORMAT = "optg-jax sparse export v1"
COLLECTIONS = ("params", "batch_stats")
_INDEX = "__index__"
_VALUES, _MASK = ":values", ":mask"
FORMAT_NM = "optg-jax sparse export v2"  # v1 plus the "nm" encoding
_POSITIONS = ":positions"


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


def encode(flat: dict[str, np.ndarray], pattern=None) -> dict[str, np.ndarray]:
    """The archive's entries for `flat` arrays: sparse where that is smaller, else as they are.

    A leaf of `size` entries, `nnz` of them non-zero, costs `ceil(size / 8) + nnz * itemsize`
    bytes as bitmask plus values and `size * itemsize` as it is; the smaller one is taken. With
    a `pattern`, a leaf that holds it is stored N:M (module docstring) where that is no larger.

    Args:
      flat: arrays keyed by name (see `flatten`).
      pattern: `None`, or an N:M pattern (`"2:4"` or an `nm.NMPattern`).

    Returns:
      `{name: array}` for dense leaves, `{name + ':mask': uint8 bits, name + ':values': 1-D}`
      for sparse ones, `{name + ':values': kept values, name + ':positions': uint8 bits}` for
      N:M ones, and `'__index__'`: the JSON index as a 0-d unicode array.
    """
    pattern = None if pattern is None else nm.parse_pattern(pattern)
    entries, leaves = {}, {}
    for name, array in flat.items():
        if pattern is not None and (encoded := _encode_nm(name, array, pattern)) is not None:
            entries.update(encoded[0])
            leaves[name] = encoded[1]
            continue
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
    has_nm = any(leaf["encoding"] == "nm" for leaf in leaves.values())
    index = {"format": FORMAT_NM if has_nm else FORMAT, "leaves": leaves}
    entries[_INDEX] = np.array(json.dumps(index))
    return entries


def _split_axis(array: np.ndarray, m: int, axis: int) -> np.ndarray:
    """`array` with `axis` split into `(size // m, m)`: the groups on axis `axis + 1`."""
    shape = array.shape
    return array.reshape(shape[:axis] + (shape[axis] // m, m) + shape[axis + 1 :])


def _encode_nm(name: str, array: np.ndarray, pattern: nm.NMPattern):
    """(entries, index record) of `array` stored N:M, or None where it does not fit or pays."""
    n, m = pattern
    if array.ndim < 2 or array.size == 0:
        return None
    axis = nm.group_axis_from_name(name, array.ndim)
    if array.shape[axis] % m:
        return None
    kept, bits = array.size // m * n, nm.index_bits(m)
    if math.ceil(kept * bits / 8) > math.ceil(array.size / 8):
        return None  # the positions would cost more than the bitmask (N * bits > M)
    nonzero = _split_axis(array != 0, m, axis)
    if not nonzero.any() or nonzero.sum(axis=axis + 1).max() > n:
        return None  # all zero (e.g. a zero-initialised bias: the bitmask is smaller), or not N:M
    # In each group: the non-zeros first, then the first zeros; n positions, in order.
    order = np.argsort(~nonzero, axis=axis + 1, kind="stable")
    positions = np.sort(np.take(order, np.arange(n), axis=axis + 1), axis=axis + 1)
    values = np.take_along_axis(_split_axis(array, m, axis), positions, axis=axis + 1)
    shape = array.shape[:axis] + (array.shape[axis] // m * n,) + array.shape[axis + 1 :]
    stream = (positions.reshape(-1, 1) >> np.arange(bits)) & 1  # each position, low bit first
    entries = {
        name + _VALUES: values.reshape(shape),
        name + _POSITIONS: np.packbits(stream.astype(np.uint8).reshape(-1), bitorder="little"),
    }
    record = {"shape": list(array.shape), "dtype": array.dtype.str, "encoding": "nm"}
    return entries, {**record, "n": n, "m": m, "axis": axis}


def _decode_nm(entries: Any, name: str, leaf: dict) -> np.ndarray:
    """The array `_encode_nm` stored as `name`, from its entries and index record."""
    shape, n, m, axis = tuple(leaf["shape"]), leaf["n"], leaf["m"], leaf["axis"]
    values = np.asarray(entries[name + _VALUES], np.dtype(leaf["dtype"]))
    bits = nm.index_bits(m)
    stream = np.unpackbits(entries[name + _POSITIONS], count=values.size * bits, bitorder="little")
    positions = (stream.reshape(-1, bits).astype(np.int64) << np.arange(bits)).sum(axis=1)
    grouped = values.shape[:axis] + (shape[axis] // m, n) + values.shape[axis + 1 :]
    array = np.zeros(shape[:axis] + (shape[axis] // m, m) + shape[axis + 1 :], values.dtype)
    np.put_along_axis(array, positions.reshape(grouped), values.reshape(grouped), axis=axis + 1)
    return array.reshape(shape)


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
    if index.get("format") not in (FORMAT, FORMAT_NM):
        raise ValueError(f"unknown sparse export format {index.get('format')!r}")
    flat = {}
    for name, leaf in index["leaves"].items():
        shape, dtype = tuple(leaf["shape"]), np.dtype(leaf["dtype"])
        if leaf["encoding"] == "dense":
            flat[name] = np.asarray(entries[name], dtype).reshape(shape)
            continue
        if leaf["encoding"] == "nm":
            flat[name] = _decode_nm(entries, name, leaf)
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


def write_sparse(path, variables: dict, pattern=None) -> str:
    """Writes `variables` (masked params, batch statistics) as a compact sparse `.npz`.

    Args:
      path: the file to write (local or remote, e.g. `gs://...`).
      variables: `{'params': masked params, 'batch_stats': statistics}`.
      pattern: `None`, or the N:M pattern the run's masks hold (`"2:4"`): the leaves that hold
        it are stored N:M (module docstring).

    Returns:
      The path written, as a string.
    """
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **encode(flatten(variables), pattern))
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
