"""Starting a run from a pretrained network: `config.init_from` and `config.reinit`.

What `init_from` may name (checked in this order):
  - a training run's workdir, a directory holding config.json: the params and batch statistics
    of its latest checkpoint (workdir/checkpoints/<step>), nothing else (not the optimizer
    state with its OptG scores and masks, not the step); config.json names its model;
  - an export directory, one holding model_sparse.npz or model.npz as the training program
    writes them to workdir/export/: model_sparse.npz when present (read with
    `optg_jax.load_sparse`), else model.npz (the masked weights, zeros in place); info.json
    beside them names the model;
  - one of those two .npz files itself (its format is read from its contents); info.json in
    the same directory names the model.

The new run is a fresh run at step 0 (fresh optimizer and OptG state) whose params and batch
statistics are the source's, except under the modules `config.reinit` names: those keep the new
run's initialisation from its seed, which is how a classifier gets a new number of classes. The
weights are taken as they are, zeros of a sparse source included: OptG's masks start as the new
run's criterion selects them at p(0) (full on the ramped schedules) and the run prunes again by
its own criterion and schedule.

Everything is checked before the workdir is touched, each failure one line (`ConfigError`): a
missing or unreadable path, a source of another model, a leaf whose shape differs outside the
re-initialised modules, a reinit name that matches no leaf. Only step 0 reads the source: a
resumed run restores its own checkpoint and never opens it.
"""

from __future__ import annotations

import dataclasses
import io

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from optg_jax import export as export_lib
from optg_jax.train import checkpoints
from optg_jax.train import config as config_lib
from optg_jax.train.config import ConfigError

PLAIN_FILE = "model.npz"
INFO_FILE = "info.json"
# The item directory of a checkpoint written by a single-item orbax CheckpointManager.
_CHECKPOINT_ITEM = "default"


@dataclasses.dataclass(frozen=True)
class Pretrained:
    """What a run takes from its `init_from` source.

    Attributes:
      leaves: `{'params/<path>': array, 'batch_stats/<path>': array}` (host NumPy arrays): the
        source's leaves the new run starts from, every leaf of the model outside the
        re-initialised modules, with the model's shapes.
      reinit: `{'params/<path>': shape}` of the leaves left at the new run's initialisation.
      description: one line saying what was read (for the log).
    """

    leaves: dict[str, np.ndarray]
    reinit: dict[str, list[int]]
    description: str


def _fail(path: str, why: str):
    raise ConfigError(f"config.init_from={path!r}: {why}")


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())[:200]
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def locate(path: str) -> tuple[str, epath.Path, str]:
    """What `init_from` names, without reading any weights.

    Args:
      path: the (normalised) `config.init_from`.

    Returns:
      `(kind, location, model)`: kind "checkpoint" (location: the workdir) or "export"
      (location: the .npz file to read), and the model name the source's JSON records.

    Raises:
      ConfigError: the path is missing, is neither a workdir nor an export, or names no model.
    """
    p = epath.Path(path)
    if not p.exists():
        _fail(path, "no such file or directory")
    if p.is_dir() and (p / checkpoints.CONFIG_FILE).exists():
        stored = checkpoints.read_json(p / checkpoints.CONFIG_FILE)
        config = stored.get("config") if isinstance(stored, dict) else None
        model = config.get("model") if isinstance(config, dict) else None
        if not isinstance(model, str):
            _fail(path, f"its {checkpoints.CONFIG_FILE} is unreadable or names no model")
        return "checkpoint", p, model
    if p.is_dir():
        files = [p / export_lib.SPARSE_FILE, p / PLAIN_FILE]
        found = next((f for f in files if f.exists()), None)
        if found is None:
            _fail(
                path,
                f"neither a run's workdir ({checkpoints.CONFIG_FILE}) nor an export directory "
                f"({export_lib.SPARSE_FILE} or {PLAIN_FILE})",
            )
        p = found
    elif p.suffix != ".npz":
        _fail(path, "not a run's workdir, an export directory or an export's .npz file")
    info = checkpoints.read_json(p.parent / INFO_FILE)
    model = info.get("model") if isinstance(info, dict) else None
    if not isinstance(model, str):
        _fail(path, f"no readable {INFO_FILE} beside {p.name} names its model")
    return "export", p, model


def read_checkpoint(
    workdir: str, step: int | None = None, keys: tuple[str, ...] = ("params", "batch_stats")
) -> tuple[dict, int]:
    """Parts of a train state checkpoint, as host arrays, without its model or optimizer.

    Args:
      workdir: a training run's directory.
      step: the checkpoint's step; None for the latest.
      keys: the `steps.TrainState` fields to read (the others are not read at all).

    Returns:
      `({key: nested dicts of np.ndarray}, step)`.

    Raises:
      FileNotFoundError: the workdir holds no (such) checkpoint.
      Exception: whatever orbax raises for a checkpoint it cannot read.
    """
    steps = checkpoints.checkpoint_steps_on_disk(workdir)
    if step is None and steps:
        step = steps[-1]
    if step is None or step not in steps:
        raise FileNotFoundError(f"no checkpoint in {workdir}/{checkpoints.CHECKPOINT_DIR}/")
    item = checkpoints.workdir_path(workdir) / checkpoints.CHECKPOINT_DIR / str(step)
    item = item / _CHECKPOINT_ITEM
    handler = ocp.PyTreeCheckpointHandler()
    try:
        tree = handler.metadata(item)
        tree = getattr(tree, "tree", tree)
        missing = [k for k in keys if k not in tree]
        if missing:
            raise KeyError(f"the checkpoint holds no {missing[0]}")
        wanted = {k: tree[k] for k in keys}
        args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), wanted)
        restored = handler.restore(
            item, args=ocp.args.PyTreeRestore(item=wanted, restore_args=args, partial_restore=True)
        )
    finally:
        handler.close()
    return restored, step


def _read_checkpoint(path: str, workdir: epath.Path) -> tuple[dict, str]:
    """The params and batch statistics of a workdir's latest checkpoint, flat, and its step."""
    steps = checkpoints.checkpoint_steps_on_disk(str(workdir))
    if not steps:
        _fail(path, f"the workdir holds no checkpoint in {checkpoints.CHECKPOINT_DIR}/")
    try:
        restored, step = read_checkpoint(str(workdir), steps[-1])
    except Exception as e:  # pylint: disable=broad-except  # Any failure to read: one line.
        _fail(path, f"cannot read its checkpoint at step {steps[-1]} ({_one_line(e)})")
    return export_lib.flatten(restored), f"its checkpoint at step {step}"


def _read_export(path: str, file: epath.Path) -> tuple[dict, str]:
    """The variables of an export file (sparse or plain), flat."""
    try:
        with np.load(io.BytesIO(file.read_bytes()), allow_pickle=False) as entries:
            if "__index__" in entries.files:
                flat = export_lib.flatten(export_lib.load_sparse(str(file)))
                what = "sparse export"
            else:
                flat = {k: entries[k] for k in entries.files}
                what = "export"
    except Exception as e:  # pylint: disable=broad-except  # Any failure to read: one line.
        _fail(path, f"cannot read {file.name} ({_one_line(e)})")
    odd = [k for k in flat if k.split("/")[0] not in export_lib.COLLECTIONS]
    if odd or not any(k.startswith("params/") for k in flat):
        _fail(path, f"{file.name} is not an export of the training program (no params/ leaves)")
    return flat, f"the {what} {file.name}"


def _reinit_leaves(shapes: dict, names: tuple[str, ...], model: str) -> set[str]:
    """The model's leaves under a reinit name; a name that matches none is an error."""
    under = {name: {k for k in shapes if name in k.split("/")[1:]} for name in names}
    for name, keys in under.items():
        if not keys:
            raise ConfigError(
                f"config.reinit name {name!r} matches no leaf of the model {model} "
                "(give the name of a module, e.g. its classifier's)"
            )
    return set().union(*under.values()) if under else set()


def _select(path: str, source: dict, shapes: dict, reinit: set[str]) -> dict:
    """The source's leaves for every model leaf not re-initialised; shapes must agree."""
    for key, shape in shapes.items():
        if key in reinit:
            continue
        if key not in source:
            _fail(path, f"has no leaf {key}, which the model has")
        got = list(np.shape(source[key]))
        if got != list(shape):
            _fail(
                path,
                f"leaf {key} has shape {tuple(got)} there but {tuple(shape)} in this model "
                "(re-initialise its module with config.reinit)",
            )
    extra = [k for k in source if k not in shapes]
    if extra:
        _fail(path, f"has a leaf {extra[0]} that the model does not have")
    return {k: source[k] for k in shapes if k not in reinit}


def load(config, shapes: dict) -> Pretrained:
    """Reads and checks what the run starts from; writes nothing.

    Args:
      config: the run's validated config (`init_from`, `reinit`, `model`).
      shapes: the new model's leaf shapes, `{'params/<path>': shape, 'batch_stats/<path>':
        shape}` (`checkpoints.shapes` of `{'params': ..., 'batch_stats': ...}`).

    Returns:
      The `Pretrained` leaves.

    Raises:
      ConfigError: one line: a missing or unreadable path, a source of another model, a reinit
        name that matches no leaf, or a leaf whose shape differs (named, with both shapes).
    """
    path = config_lib.init_from_path(config.init_from)
    kind, location, model = locate(path)
    if model != config.model:
        _fail(path, f"holds the model {model}, not this config's model {config.model}")
    reinit = _reinit_leaves(shapes, config_lib.reinit_names(config), config.model)
    if kind == "checkpoint":
        source, what = _read_checkpoint(path, location)
    else:
        source, what = _read_export(path, location)
    source = {k: v for k, v in source.items() if k not in reinit}
    leaves = _select(path, source, shapes, reinit)
    names = ", ".join(config_lib.reinit_names(config))
    fresh = f"; {len(reinit)} leaves under {names} initialised afresh" if reinit else ""
    description = f"starting from {path}: {what}, {len(leaves)} leaves{fresh}"
    return Pretrained(leaves, {k: shapes[k] for k in sorted(reinit)}, description)


def start_state(fresh, pretrained: Pretrained, tx, state_sharding):
    """The run's state at step 0 from a fresh one: the pretrained leaves, a new optimizer state.

    Args:
      fresh: the new run's initial `steps.TrainState` (its params and batch statistics from the
        seed; those under the re-initialised modules are kept).
      pretrained: what `load` returned.
      tx: the run's optimizer; its state is initialised on the pretrained params (OptG's masks
        and scores start from them).
      state_sharding: the `steps.TrainState` of shardings the state lives in.

    Returns:
      The `steps.TrainState` at step 0.
    """

    def take(collection, tree, shardings):
        def leaf(path, x, sharding):
            key = f"{collection}/{jax.tree_util.keystr(path, simple=True, separator='/')}"
            if key not in pretrained.leaves:
                return x
            value = np.asarray(pretrained.leaves[key], x.dtype)
            return jax.make_array_from_callback(value.shape, sharding, lambda i: value[i])

        return jax.tree_util.tree_map_with_path(leaf, tree, shardings)

    params = take("params", fresh.params, state_sharding.params)
    batch_stats = take("batch_stats", fresh.batch_stats, state_sharding.batch_stats)
    opt_state = jax.jit(tx.init, out_shardings=state_sharding.opt_state)(params)
    return fresh.replace(params=params, batch_stats=batch_stats, opt_state=opt_state)


def model_shapes(abstract_state) -> dict[str, list[int]]:
    """The leaf shapes `load` compares, from the run's (abstract) train state.

    Args:
      abstract_state: a `steps.TrainState` of arrays or `jax.ShapeDtypeStruct`s.

    Returns:
      `{'params/<path>': shape, 'batch_stats/<path>': shape}`.
    """
    variables = {"params": abstract_state.params, "batch_stats": abstract_state.batch_stats}
    return checkpoints.shapes(variables)


__all__ = ["Pretrained", "load", "locate", "model_shapes", "read_checkpoint", "start_state"]
