"""Size of the compact sparse export against the dense one, at 90/95/99% sparsity.

For each model the initialised weights are masked globally by magnitude at each sparsity (an
`optg_optax(criterion="magnitude", schedule="constant")` state: the same number of kept weights
as a trained OptG run, no training needed) and exported by the training program's
`checkpoints.export`, which writes `export/model.npz` (zeros in place) and
`export/model_sparse.npz` (`optg_jax.export`). The script checks that `optg_jax.load_sparse`
gives back exactly the masked weights, then prints the file sizes.

A second table: each model's kernels masked 2:4 by magnitude (`optg_jax.nm.nm_masks` along each
kernel's group axis; a kernel whose group axis does not divide by 4, the 1- or 3-channel stem,
stays dense) and written by `export.write_sparse(..., pattern="2:4")`, against the dense file
and against today's bitmask encoding of the same weights.

  .venv/bin/python -m benchmarks.export_size

Prints the table and writes it to benchmarks/results/export_size.md.
"""

from __future__ import annotations

import math
import os
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

import optg_jax
from optg_jax import export, masking, nm
from optg_jax.train import checkpoints, models

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "export_size.md")
SPARSITIES = (0.9, 0.95, 0.99)
# name -> (num_classes, one input's shape); the shape only sizes the init.
MODELS = {
    "resnet50": (1000, (224, 224, 3)),
    "vit_tiny": (10, (28, 28, 1)),
    "fmnist_cnn": (10, (28, 28, 1)),
}


def init_variables(name: str):
    num_classes, shape = MODELS[name]
    model = models.create(name, num_classes)
    x = jnp.zeros((1, *shape), jnp.float32)
    return jax.jit(lambda x: model.init(jax.random.key(0, impl="rbg"), x, train=False))(x)


def measure(name: str, sparsity: float, variables, workdir: str) -> dict:
    params, batch_stats = variables["params"], variables.get("batch_stats", {})
    tx = optg_jax.optg_optax(sparsity, 10, 0.1, criterion="magnitude", schedule="constant")
    state = jax.jit(tx.init)(params)
    masked = jax.device_get(optg_jax.apply_masks(params, state))
    checkpoints.export(workdir, masked, jax.device_get(batch_stats), {"model": name})
    out = os.path.join(workdir, checkpoints.EXPORT_DIR)
    loaded = optg_jax.load_sparse(out)
    jax.tree.map(np.testing.assert_array_equal, loaded["params"], masked)
    flat = export.flatten(loaded)
    raw = sum(v.nbytes for k, v in export.encode(flat).items() if k != "__index__")
    summary = optg_jax.sparsity_summary(state)
    return {
        "model": name,
        "sparsity": summary["global"],
        "num_params": sum(x.size for x in jax.tree.leaves(params)),
        "num_masked": summary["num_masked"],
        "num_kept": summary["num_kept"],
        "dense": os.path.getsize(os.path.join(out, "model.npz")),
        "sparse": os.path.getsize(os.path.join(out, export.SPARSE_FILE)),
        "raw": raw,
    }


def table(rows: list[dict]) -> str:
    mb = lambda n: f"{n / 1e6:.3f}"
    lines = [
        "| model | sparsity | params (masked) | kept | dense `model.npz` (MB) | "
        "sparse `model_sparse.npz` (MB) | sparse / dense | before deflate (MB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['sparsity']:.2%} | {r['num_params']:,} ({r['num_masked']:,}) | "
            f"{r['num_kept']:,} | {mb(r['dense'])} | {mb(r['sparse'])} | "
            f"{r['sparse'] / r['dense']:.2%} | {mb(r['raw'])} |"
        )
    return "\n".join(lines)


def two_four_masked(params):
    """Every kernel `masking.default_is_masked` picks kept 2:4 by magnitude, where it can be."""

    def mask(path, leaf):
        if not (masking.default_is_masked(path, leaf) and nm.nm_applicable(path, leaf, 4)):
            return leaf
        return leaf * nm.nm_masks(jnp.abs(leaf), 2, 4, nm.group_axis(path, leaf), leaf.dtype)

    return jax.device_get(jax.jit(lambda p: jax.tree_util.tree_map_with_path(mask, p))(params))


def measure_nm(name: str, variables, workdir: str) -> dict:
    params = variables["params"]
    batch_stats = jax.device_get(variables.get("batch_stats", {}))
    masked = two_four_masked(params)
    saved = {"params": masked, "batch_stats": batch_stats}
    plan = nm.nm_plan(params, 4)
    sizes = {}
    for label, pattern in (("bitmask", None), ("nm", "2:4")):
        path = export.write_sparse(os.path.join(workdir, f"{label}.npz"), saved, pattern)
        loaded = optg_jax.load_sparse(path)
        jax.tree.map(np.testing.assert_array_equal, loaded["params"], masked)
        sizes[label] = os.path.getsize(path)
    dense = os.path.join(workdir, "model.npz")
    np.savez(dense, **export.flatten(saved))  # as checkpoints.export writes model.npz
    entries = export.encode(export.flatten(saved), "2:4")
    shapes = {k: v.shape for k, v in export.flatten({"params": params}).items()}
    in_nm = sum(math.prod(shapes["params/" + k]) for k, axis in plan.items() if axis is not None)
    return {
        "model": name,
        "num_params": sum(x.size for x in jax.tree.leaves(params)),
        "num_nm": in_nm,
        "dense_kernels": [k for k, axis in plan.items() if axis is None],
        "dense": os.path.getsize(dense),
        "sparse": sizes["nm"],
        "bitmask": sizes["bitmask"],
        "raw": sum(v.nbytes for k, v in entries.items() if k != "__index__"),
    }


def nm_table(rows: list[dict]) -> str:
    mb = lambda n: f"{n / 1e6:.3f}"
    lines = [
        "| model | params (in 2:4 kernels) | kernels left dense | dense `model.npz` (MB) | "
        "2:4 `model_sparse.npz` (MB) | 2:4 / dense | bitmask file (MB) | 2:4 / bitmask | "
        "before deflate (MB) |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['num_params']:,} ({r['num_nm']:,}) | "
            f"{', '.join(r['dense_kernels']) or '-'} | {mb(r['dense'])} | {mb(r['sparse'])} | "
            f"{r['sparse'] / r['dense']:.2%} | {mb(r['bitmask'])} | "
            f"{r['sparse'] / r['bitmask']:.2%} | {mb(r['raw'])} |"
        )
    return "\n".join(lines)


def main() -> None:
    rows, nm_rows = [], []
    for name in MODELS:
        variables = init_variables(name)
        for sparsity in SPARSITIES:
            with tempfile.TemporaryDirectory(prefix="export_size_") as workdir:
                rows.append(measure(name, sparsity, variables, workdir))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
        with tempfile.TemporaryDirectory(prefix="export_size_") as workdir:
            nm_rows.append(measure_nm(name, variables, workdir))
        print(nm_table(nm_rows[-1:]).splitlines()[-1], flush=True)
    text = "\n".join(
        [
            "## Size of the sparse export (benchmarks/export_size.py)",
            "",
            "Initialised weights masked globally by magnitude (exactly `floor(N (1 - P))` of the "
            "`N` masked weights kept), exported by `checkpoints.export`. `model.npz` holds the "
            "masked weights with zeros in place (what the training program always wrote); "
            "`model_sparse.npz` the non-zero values plus a bitmask (one bit per weight) of each "
            "leaf where that is smaller, zip-deflated; 'before deflate' is the size of its "
            "arrays. `optg_jax.load_sparse` gives back exactly the masked weights in every row. "
            "MB = 10^6 bytes.",
            "",
            table(rows),
            "",
            "### 2:4",
            "",
            "The initialised kernels kept 2:4 by magnitude along their group axis "
            "(`optg_jax.nm`; a kernel whose group axis does not divide by 4 stays dense) and "
            "written with `export.write_sparse(..., pattern='2:4')`: each 2:4 kernel as its kept "
            "values plus a 2-bit position per value. 'bitmask file' is the same weights in "
            "today's encoding (no pattern): the same bytes before deflate (4 bits per group "
            "either way), but the bitmask's bytes span groups and hardly deflate. "
            "`optg_jax.load_sparse` gives back exactly the masked weights in every row.",
            "",
            nm_table(nm_rows),
            "",
        ]
    )
    print()
    print(text)
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
