"""FSDP: `optg_optax` with params, scores, momentum and masks sharded over 8 CPU devices.

The jitted training update (OptG first in an optax chain, one global top-k over all leaves,
then `apply_updates`) is compiled with every leaf laid out by `optg_jax.sharding.fsdp_shardings`,
and its compiled HLO is read: nothing but scalars crosses devices, apart from `optg_jax.topk`'s
strided sample when there are more than a million masked weights; the memory analysis bounds
the per-device buffers. The same steps run replicated give the same masks (exactly) and scores
(to float tolerance) after every update, refreshes included. Both runs take their gradients from
one replicated jitted function of their own params, so that any difference between them would
come from the update.

XLA's device count is fixed when JAX starts, so the 8-device part runs in its own process
(`python -m tests.test_fsdp OUT.json`) and the tests read what it measured.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from optg_jax import sharding

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_DEVICES = 8
NUM_STEPS = 12
REFRESH_EVERY = 2  # refreshes at the updates with counts 2, 4, 6 and 8 (the ramp's end)
TARGET = 0.9
PATTERN = "2:4"  # the N:M runs (`_pattern_runs`)
SAMPLE_SIZE = 1 << 18  # optg_jax.topk's default sample size
IMAGE = (8, 8, 8)
BATCH = 16
CLASSES = 10
# fc1's width. `small` (43k masked weights) is compiled only, for the strict HLO check. `large`
# (1.08M masked weights, over 4 * SAMPLE_SIZE, so the threshold takes the sampled bracket) is
# trained both ways. Its conv kernel is split on its last axis, fc1's on its first; fc2's kernel
# (522, 10) has no dimension divisible by 8, so it stays whole on every device (masked and
# ranked with the others all the same), as do the fc1 and fc2 biases.
WIDTHS = {"small": 24, "large": 522}

# Collective ops in XLA's HLO text (synchronous on the CPU, `-start` forms on accelerators).
_COLLECTIVE = re.compile(
    r"^\s*(?:ROOT )?%?[\w.\-]+ = (?P<type>.+?) "
    r"(?P<op>all-gather|all-reduce|all-to-all|collective-permute|reduce-scatter|"
    r"collective-broadcast|ragged-all-to-all)(?:-start)?\("
)
_ARRAY_TYPE = re.compile(r"\b[a-z]+\d*\[([\d,]*)\]")


def collectives(hlo_text: str) -> list[dict]:
    """Every collective instruction of an HLO module: its op and the array shapes it produces."""
    found = []
    for line in hlo_text.splitlines():
        match = _COLLECTIVE.match(line)
        if match:
            shapes = [
                [int(d) for d in dims.split(",") if d]
                for dims in _ARRAY_TYPE.findall(match["type"])
            ]
            found.append({"op": match["op"], "shapes": shapes})
    return found


def test_collectives_reads_hlo_lines():
    hlo = """
      %all-gather.1 = u32[264192]{0} all-gather(%x), channel_id=1, dimensions={0}
      %r = (s32[], f32[]) all-reduce(%a, %b), channel_id=2, to_apply=%add
      ROOT %cp = f32[3,11]{1,0} collective-permute-start(%y), channel_id=3
      %add.2 = f32[8]{0} add(%p, %q)
    """
    assert collectives(hlo) == [
        {"op": "all-gather", "shapes": [[264192]]},
        {"op": "all-reduce", "shapes": [[], []]},
        {"op": "collective-permute", "shapes": [[3, 11]]},
    ]


def params_of(width: int, seed: int = 0) -> dict:
    """conv (3x3, 8 -> 32 channels), fc1 (2048 -> width), fc2 (width -> 10): float32 NumPy."""
    rng = np.random.default_rng(seed)

    def he(*shape):
        return (rng.normal(size=shape) * math.sqrt(2.0 / math.prod(shape[:-1]))).astype(np.float32)

    return {
        "conv": {"kernel": he(3, 3, IMAGE[2], 32), "bias": np.zeros(32, np.float32)},
        "fc1": {"kernel": he(IMAGE[0] * IMAGE[1] * 32, width), "bias": np.zeros(width, np.float32)},
        "fc2": {"kernel": he(width, CLASSES), "bias": np.zeros(CLASSES, np.float32)},
    }


def loss_fn(params, images, labels):
    """Cross-entropy of conv -> relu -> fc1 -> relu -> fc2 on NHWC images."""
    import jax
    import optax

    h = jax.lax.conv_general_dilated(
        images, params["conv"]["kernel"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    h = jax.nn.relu(h + params["conv"]["bias"]).reshape(images.shape[0], -1)
    h = jax.nn.relu(h @ params["fc1"]["kernel"] + params["fc1"]["bias"])
    logits = h @ params["fc2"]["kernel"] + params["fc2"]["bias"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def _optimizer(pattern=None):
    import optax

    import optg_jax

    target = TARGET if pattern is None else 0.5  # PATTERN removes half of every group
    return optax.chain(
        optg_jax.optg_optax(
            target, NUM_STEPS, 0.05, mask_update_every=REFRESH_EVERY, pattern=pattern
        ),
        optax.add_decayed_weights(1e-4),
        optax.sgd(0.05, momentum=0.9),
    )


def _compile(tx, params, param_sh, state_sh):
    """The compiled `tx.init` and training update for one layout, and the initial state."""
    import jax
    import optax

    def step(grads, state, p):
        updates, state = tx.update(grads, state, p)
        return optax.apply_updates(p, updates), state

    p = jax.device_put(params, param_sh)
    init = jax.jit(tx.init, out_shardings=state_sh).lower(p).compile()
    state = init(p)
    step = (
        jax.jit(
            step,
            in_shardings=(param_sh, state_sh, param_sh),
            out_shardings=(param_sh, state_sh),
            donate_argnums=(1, 2),
        )
        .lower(p, state, p)
        .compile()
    )
    return {"init": init, "step": step}, p, state


def _compare_ties(mesh, rng) -> dict:
    """Top-k with many ties at the threshold (the position cut-off), sharded and replicated."""
    import jax
    from jax.sharding import NamedSharding

    from optg_jax import topk
    from tests.test_topk import numpy_topk_masks

    small = params_of(WIDTHS["small"])
    scores = [
        rng.integers(-2, 3, size=small[name]["kernel"].shape).astype(np.float32)
        for name in ("conv", "fc1", "fc2")
    ]
    ks = [1, 7 * sum(s.size for s in scores) // 10]
    layouts = {
        "fsdp": [NamedSharding(mesh, sharding.fsdp_spec(s.shape, NUM_DEVICES)) for s in scores],
        "replicated": [NamedSharding(mesh, P()) for _ in scores],
    }
    fn = jax.jit(topk.topk_masks)
    masks = {
        layout: [[np.asarray(m, bool) for m in fn(jax.device_put(scores, sh), k)] for k in ks]
        for layout, sh in layouts.items()
    }
    masks["numpy"] = [numpy_topk_masks(scores, k) for k in ks]
    return {
        "ks": ks,
        "kept": [int(sum(m.sum() for m in ms)) for ms in masks["fsdp"]],
        "differences": {
            other: [
                int(sum(np.sum(a != b) for a, b in zip(f, o)))
                for f, o in zip(masks["fsdp"], masks[other])
            ]
            for other in ("replicated", "numpy")
        },
    }


def _step_record(rep, fsdp) -> dict:
    """How the OptG states (host copies) of the two runs after one update compare."""
    import jax

    rep_masks, fsdp_masks = jax.tree.leaves(rep.masks), jax.tree.leaves(fsdp.masks)
    rep_scores, fsdp_scores = jax.tree.leaves(rep.scores), jax.tree.leaves(fsdp.scores)
    return {
        "mask_differences": int(sum(np.sum(a != b) for a, b in zip(rep_masks, fsdp_masks))),
        "kept": int(sum(np.sum(m) for m in fsdp_masks)),
        "kept_replicated": int(sum(np.sum(m) for m in rep_masks)),
        "max_score_difference": float(
            max(np.max(np.abs(a - b)) for a, b in zip(rep_scores, fsdp_scores))
        ),
        "max_score": float(max(np.max(np.abs(s)) for s in rep_scores)),
        "last_refresh": int(fsdp.last_refresh),
    }


def worker(out_path: str) -> None:
    """The 8-device part: compiles, runs and measures; writes what it found to `out_path`."""
    import jax
    from jax.sharding import Mesh, NamedSharding

    import optg_jax

    assert jax.device_count() == NUM_DEVICES, jax.devices()
    mesh = Mesh(np.asarray(jax.devices()), ("data",))
    replicate = lambda tree: jax.tree.map(lambda _: NamedSharding(mesh, P()), tree)
    rng = np.random.default_rng(1)
    report = {"ties": _compare_ties(mesh, rng)}
    tx = _optimizer()
    for name, width in WIDTHS.items():
        params = params_of(width)
        abstract_state = jax.eval_shape(tx.init, params)
        layouts = {
            "fsdp": (
                sharding.fsdp_shardings(params, mesh),
                sharding.fsdp_shardings(abstract_state, mesh),
            ),
            "replicated": (replicate(params), replicate(abstract_state)),
        }
        leaf_shapes = {
            jax.tree_util.keystr(path, simple=True, separator="/"): list(np.shape(leaf))
            for path, leaf in jax.tree_util.tree_leaves_with_path(params)
        }
        report[name] = entry = {
            "leaf_shapes": leaf_shapes,
            "num_masked": sum(math.prod(s) for k, s in leaf_shapes.items() if k.endswith("kernel")),
        }
        if name != "large":  # compiled sharded only, for its collectives
            layouts.pop("replicated")
        runs = {layout: _compile(tx, params, *layouts[layout]) for layout in layouts}
        entry["collectives"] = {
            layout: {fn: collectives(c.as_text()) for fn, c in runs[layout][0].items()}
            for layout in layouts
        }
        entry["memory"] = {
            layout: {
                "argument_bytes": int(
                    runs[layout][0]["step"].memory_analysis().argument_size_in_bytes
                ),
                "temp_bytes": int(runs[layout][0]["step"].memory_analysis().temp_size_in_bytes),
            }
            for layout in layouts
        }
        if name != "large":
            continue

        history = _train_both(runs, layouts, params, rng, mesh)

        # Where the sharded run's state lives: each leaf's shard on one device.
        optg_state = optg_jax.get_optg_state(runs["fsdp"][2])
        entry["shard_shapes"] = {}
        for field in ("scores", "momentum", "masks"):
            for path, leaf in jax.tree_util.tree_leaves_with_path(getattr(optg_state, field)):
                key = f"{field}/" + jax.tree_util.keystr(path, simple=True, separator="/")
                entry["shard_shapes"][key] = {
                    "shape": list(leaf.shape),
                    "shard": list(leaf.addressable_shards[0].data.shape),
                    "num_shards": len({str(s.index) for s in leaf.addressable_shards}),
                }
        entry["steps"] = [
            _step_record(r, f) for r, f in zip(history["replicated"], history["fsdp"])
        ]
        entry["weight_difference"] = max(
            float(np.max(np.abs(a - b)))
            for a, b in zip(
                jax.tree.leaves(runs["replicated"][1]), jax.tree.leaves(runs["fsdp"][1])
            )
        )
    report["pattern"] = _pattern_runs(mesh, rng)
    with open(out_path, "w") as f:
        json.dump(report, f)


def _train_both(runs: dict, layouts: dict, params, rng, mesh) -> dict:
    """NUM_STEPS updates of each layout's compiled step on the same batches; `runs[layout]`
    becomes (compiled, host params, state). Returns each layout's host OptG states, the initial
    one first."""
    import jax
    from jax.sharding import NamedSharding

    import optg_jax

    replicate = lambda tree: jax.tree.map(lambda _: NamedSharding(mesh, P()), tree)
    # One replicated gradient function for both runs: the same params give bitwise the same
    # gradients, which each run then lays out as its update expects.
    grad_fn = jax.jit(
        lambda p, masks, x, y: jax.grad(loss_fn)(optg_jax.apply_masks(p, masks), x, y),
        out_shardings=replicate(params),
    )
    batches = [
        (
            rng.normal(size=(BATCH, *IMAGE)).astype(np.float32),
            rng.integers(0, CLASSES, size=BATCH).astype(np.int32),
        )
        for _ in range(NUM_STEPS)
    ]
    history = {}
    for layout, (compiled, p, state) in runs.items():
        history[layout] = [jax.device_get(optg_jax.get_optg_state(state))]
        for images, labels in batches:
            masks = optg_jax.get_masks(state)
            grads = grad_fn(
                jax.device_put(p, replicate(p)),
                jax.device_put(masks, replicate(masks)),
                images,
                labels,
            )
            p, state = compiled["step"](jax.device_put(grads, layouts[layout][0]), state, p)
            history[layout].append(jax.device_get(optg_jax.get_optg_state(state)))
        runs[layout] = (compiled, jax.device_get(p), state)
    return history


def _pattern_runs(mesh, rng) -> dict:
    """The `small` network under PATTERN, FSDP and replicated: per update how their states
    compare, and how many groups of the final masks keep exactly N. fc1's kernel is split on
    its group axis (256 of the 2048 inputs per device); fc2's (24, 10) on its group axis too,
    3 rows per device, so its groups of 4 straddle devices."""
    import jax
    from jax.sharding import NamedSharding

    from optg_jax import nm

    params = params_of(WIDTHS["small"])
    tx = _optimizer(PATTERN)
    abstract_state = jax.eval_shape(tx.init, params)
    replicate = lambda tree: jax.tree.map(lambda _: NamedSharding(mesh, P()), tree)
    layouts = {
        "fsdp": (
            sharding.fsdp_shardings(params, mesh),
            sharding.fsdp_shardings(abstract_state, mesh),
        ),
        "replicated": (replicate(params), replicate(abstract_state)),
    }
    runs = {layout: _compile(tx, params, *layouts[layout]) for layout in layouts}
    history = _train_both(runs, layouts, params, rng, mesh)
    final = jax.device_get(history["fsdp"][-1].masks)
    return {
        "specs": {
            key: str(sharding.fsdp_spec(shape, NUM_DEVICES))
            for key, shape in (
                ("fc1", params["fc1"]["kernel"].shape),
                ("fc2", params["fc2"]["kernel"].shape),
            )
        },
        "steps": [_step_record(r, f) for r, f in zip(history["replicated"], history["fsdp"])],
        "report": nm.nm_report(final, PATTERN),
    }


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp") / "report.json"
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        PYTHONPATH=ROOT,
        XLA_FLAGS=f"--xla_force_host_platform_device_count={NUM_DEVICES}",
    )
    proc = subprocess.run(
        [sys.executable, "-m", "tests.test_fsdp", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


def test_fsdp_spec_splits_the_largest_divisible_dimension():
    assert sharding.fsdp_spec((3, 3, 8, 32), 8) == P(None, None, None, "data")
    assert sharding.fsdp_spec((2048, 522), 8) == P("data", None)
    assert sharding.fsdp_spec((16, 16), 8, "fsdp") == P("fsdp", None)  # first of equal sizes
    assert sharding.fsdp_spec((522, 10), 8) == P()  # no divisible dimension: replicated
    assert sharding.fsdp_spec((), 8) == P()
    assert sharding.fsdp_spec((64, 24), 1) == P()
    with pytest.raises(ValueError, match="num_shards must be a positive integer, got 0"):
        sharding.fsdp_spec((8,), 0)


def test_state_shardings_and_the_config_field():
    """`config.param_sharding` names a layout of `optg_jax.sharding`; bad names fail in one line."""
    import jax
    from jax.sharding import Mesh

    from optg_jax.train import config as config_lib

    mesh = Mesh(np.asarray(jax.devices()[:1]), ("data",))
    tree = {"w": jax.ShapeDtypeStruct((16, 8), np.float32), "b": np.zeros(3), "none": None}
    for layout in sharding.PARAM_SHARDINGS:
        got = sharding.state_shardings(tree, mesh, layout)
        assert got["none"] is None and got["w"].mesh == mesh
        assert got["w"].spec == got["b"].spec == P()  # one device: nothing to split
    with pytest.raises(
        ValueError, match="param_sharding must be one of replicated, fsdp, got 'zero3'"
    ):
        sharding.state_shardings(tree, mesh, "zero3")
    with pytest.raises(ValueError, match="axis_name 'model' is not an axis of the mesh"):
        sharding.fsdp_shardings(tree, mesh, "model")
    config = config_lib.base_config()
    assert config.param_sharding == "replicated"
    assert config_lib.choices()["param_sharding"] == sharding.PARAM_SHARDINGS
    config.param_sharding = "zero3"
    with pytest.raises(config_lib.ConfigError) as e:
        config_lib.validate(config)
    assert str(e.value) == "config.param_sharding='zero3' is not one of replicated, fsdp"
    # Where the state lives does not change the experiment: a checkpoint resumes either way.
    assert "param_sharding" not in config_lib.IDENTITY_FIELDS


def test_state_is_split_over_the_devices(measured):
    """Scores, momentum and masks of every leaf with a divisible dimension are 1/8 per device."""
    shards = measured["large"]["shard_shapes"]
    assert shards == {
        f"{field}/{leaf}": {"shape": shape, "shard": shard, "num_shards": n}
        for field in ("scores", "momentum", "masks")
        for leaf, shape, shard, n in (
            ("conv/kernel", [3, 3, 8, 32], [3, 3, 8, 4], 8),
            ("fc1/kernel", [2048, 522], [256, 522], 8),
            ("fc2/kernel", [522, 10], [522, 10], 1),
        )
    }


def test_update_moves_only_scalars_between_devices(measured):
    """Below a million masked weights: every collective of init and update is a scalar all-reduce.

    A gathered leaf would show up as an all-gather (or all-to-all, or collective-permute) of its
    shape; the top-k's counting passes are partial counts per device plus scalar all-reduces.
    """
    found = measured["small"]["collectives"]
    for fn in ("init", "step"):
        ops = found["fsdp"][fn]
        assert ops, fn  # the counts do cross devices
        assert {op["op"] for op in ops} == {"all-reduce"}, (fn, ops)
        assert all(shape == [] for op in ops for shape in op["shapes"]), (fn, ops)


def test_sampled_threshold_gathers_only_the_sample(measured):
    """Above a million masked weights, `topk`'s strided sample is all that is gathered.

    The sample is `ceil(n / stride)` entries of each kernel (`stride` = 4 here: a quarter of
    it). Every all-gather is one kernel's sample (padded to equal blocks per device), those of
    the split kernels among them; XLA may also split and re-gather the sample of the whole fc2
    kernel, passing a few entries between neighbours to do so. Nothing else but scalars.
    """
    report = measured["large"]
    total = report["num_masked"]
    assert total > 4 * SAMPLE_SIZE
    stride = total // SAMPLE_SIZE
    assert stride == 4
    kernels = {k: math.prod(s) for k, s in report["leaf_shapes"].items() if k.endswith("kernel")}
    samples = {k: math.ceil(n / stride) for k, n in kernels.items()}
    padded = {k: NUM_DEVICES * math.ceil(n / NUM_DEVICES) for k, n in samples.items()}
    for fn in ("init", "step"):
        ops = report["collectives"]["fsdp"][fn]
        kinds = {"all-reduce", "all-gather", "collective-permute"}
        assert {op["op"] for op in ops} <= kinds, (fn, ops)
        sizes = {
            kind: [math.prod(s) for op in ops if op["op"] == kind for s in op["shapes"]]
            for kind in kinds
        }
        assert sizes["all-reduce"] and set(sizes["all-reduce"]) == {1}, fn
        if fn == "init":  # At sparsity 0 every weight is kept: no threshold, no sample.
            assert not sizes["all-gather"] and not sizes["collective-permute"], fn
            continue
        # fc2's kernel does not split (522 x 10 over 8 devices): every device holds it whole, and
        # XLA may compute its ranking (score + bonus) split and gather it back, its own size.
        shards = report["shard_shapes"]
        whole = {k: n for k, n in kernels.items() if shards[f"scores/{k}"]["num_shards"] == 1}
        assert set(whole) == {"fc2/kernel"}, whole
        unmatched = dict(padded)
        for size in sizes["all-gather"]:
            leaf = next((k for k, n in unmatched.items() if n == size), None)
            if leaf is None and size in whole.values():
                continue
            assert leaf is not None, (size, padded, whole)
            del unmatched[leaf]
        assert "conv/kernel" not in unmatched and "fc1/kernel" not in unmatched
        block = min(samples.values()) // NUM_DEVICES
        assert all(n < block for n in sizes["collective-permute"]), sizes


def test_per_device_memory_is_a_shard_of_the_state(measured):
    """The compiled update's per-device buffers: its arguments are 1/8 of the replicated ones
    (plus the leaves that stay whole), and its scratch space at most twice 1/8 of the replicated
    update's: gathering one fc1 kernel whole on a device would exceed that.

    Replicated, every device holds the whole state and its scratch space is larger than fc1."""
    report = measured["large"]
    memory = report["memory"]
    whole = [s for s in report["leaf_shapes"].values() if sharding.fsdp_spec(s, NUM_DEVICES) == P()]
    # A whole leaf is on every device as params, grads and SGD momentum, and a kernel also as
    # scores, score momentum, the starting weights (score_half_distance) and the uint8 mask:
    # less than 7 * 4 bytes per entry.
    bound = (
        memory["replicated"]["argument_bytes"] / NUM_DEVICES
        + sum(28 * math.prod(s) for s in whole)
        + 64
    )
    assert memory["fsdp"]["argument_bytes"] <= bound
    fc1_bytes = 4 * math.prod(report["leaf_shapes"]["fc1/kernel"])
    scratch_bound = 2 * memory["replicated"]["temp_bytes"] / NUM_DEVICES
    assert memory["fsdp"]["temp_bytes"] <= scratch_bound < memory["fsdp"]["temp_bytes"] + fc1_bytes
    assert fc1_bytes < memory["replicated"]["temp_bytes"]


def test_masks_equal_and_scores_agree_with_the_replicated_run(measured):
    report = measured["large"]
    steps = report["steps"]
    assert len(steps) == NUM_STEPS + 1  # the initial state and the state after every update
    for t, step in enumerate(steps):
        assert step["mask_differences"] == 0, t
        assert step["kept"] == step["kept_replicated"], t
        assert step["max_score_difference"] <= 1e-6 * max(step["max_score"], 1.0), t
    # The updates with counts 2, 4, 6 and 8 (the end of the ramp) re-select the masks.
    assert [s["last_refresh"] for s in steps] == [0, 0, 0, 2, 2, 4, 4, 6, 6, 8, 8, 8, 8]
    kept = [s["kept"] for s in steps]
    assert kept[:3] == [report["num_masked"]] * 3
    assert kept[3] > kept[5] > kept[7] > kept[9] == kept[-1]
    assert kept[-1] == math.floor(report["num_masked"] * (1 - TARGET) + 1e-9)
    assert steps[-1]["max_score"] > 0
    assert report["weight_difference"] <= 1e-6


def test_ties_at_the_threshold_keep_the_same_first_positions(measured):
    """Scores of five values: the kept ties are the first by position, sharded or not."""
    ties = measured["ties"]
    assert ties["kept"] == ties["ks"]
    assert ties["differences"] == {"replicated": [0, 0], "numpy": [0, 0]}


def test_pattern_masks_equal_the_replicated_run_and_hold_it(measured):
    """2:4 with FSDP: the same masks as replicated after every update, and exact 2:4 at the end
    on every kernel, fc2's groups across devices included."""
    report = measured["pattern"]
    assert report["specs"] == {"fc1": str(P("data", None)), "fc2": str(P("data", None))}
    steps = report["steps"]
    for t, step in enumerate(steps):
        assert step["mask_differences"] == 0, t
        assert step["max_score_difference"] <= 1e-6 * max(step["max_score"], 1.0), t
    num_masked = 3 * 3 * 8 * 32 + 2048 * 24 + 24 * 10
    assert steps[0]["kept"] == num_masked  # the ramp starts at 0
    assert steps[-1]["kept"] == num_masked // 2
    assert {k: (v["covered"], v["valid_fraction"]) for k, v in report["report"].items()} == {
        "conv/kernel": (True, 1.0),
        "fc1/kernel": (True, 1.0),
        "fc2/kernel": (True, 1.0),
    }


if __name__ == "__main__":
    worker(sys.argv[1])
