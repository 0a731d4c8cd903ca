"""Checkpoints of the whole training state, the workdir's identity, and the sparse export.

The workdir layout:
  workdir/config.json        the config that created the workdir, its identity fields and the
                             parameter shapes (checked on every rerun: another experiment's
                             workdir is refused instead of overwritten)
  workdir/checkpoints/<step> orbax checkpoints of the train state (params, batch_stats, the whole
                             optimiser state with OptG scores and masks, step), written in the
                             background; the data position is the step, because the input order
                             is a function of (seed, step), and the metadata of each checkpoint
                             records the layout it was written with (`read_metadata`)
  workdir/export/            the masked weights (zeros in place) and batch statistics as .npz,
                             and the same in the compact sparse format of `optg_jax.export`

Orbax coordinates processes itself, so every process calls `save`/`restore`; only process 0
writes the JSON and the export.
"""

from __future__ import annotations

import io
import json
import logging
import os
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from optg_jax import export as export_lib
from optg_jax.train import files
from optg_jax.train.config import ConfigError

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"
EXPORT_DIR = "export"


class CheckpointError(RuntimeError):
    """No usable checkpoint where one was expected; the message is one line."""


# File helpers over etils.epath, so a workdir may be local or remote (gs://...).


def workdir_path(workdir: str) -> epath.Path:
    """The workdir as an `epath.Path`.

    Args:
      workdir: a local directory or a remote one (gs://...).

    Returns:
      The path, made absolute when local.
    """
    return epath.Path(workdir if files.is_remote(workdir) else os.path.abspath(workdir))


def read_json(path) -> dict | None:
    """Reads a JSON file.

    Args:
      path: the file (local or remote).

    Returns:
      The JSON object at `path`, or None when the file is absent or unreadable.
    """
    try:
        return json.loads(epath.Path(path).read_text())
    except (OSError, ValueError):
        return None


def write_json(path, obj: dict) -> None:
    """Writes `obj` as JSON (through a temporary file, so a reader never sees half a file).

    Args:
      path: the file (local or remote); its directory is created if missing.
      obj: a JSON-friendly dict (other values are written as `str(value)`).
    """
    files.write_text_atomic(path, json.dumps(obj, indent=1, default=str))


def checkpoint_steps_on_disk(workdir: str) -> list[int]:
    """The checkpoints on disk, found without opening orbax.

    Args:
      workdir: the run's directory.

    Returns:
      The steps of the finished checkpoints under workdir/checkpoints, ascending.
    """
    d = workdir_path(workdir) / CHECKPOINT_DIR
    if not d.exists():
        return []
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit())


def shapes(tree) -> dict[str, list[int]]:
    """The shapes of the array leaves of a pytree, by '/'-joined key path.

    Args:
      tree: a pytree of arrays or `jax.ShapeDtypeStruct`s.

    Returns:
      `{'conv1/kernel': [3, 3, 1, 32], ...}`.
    """
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {
        jax.tree_util.keystr(p, simple=True, separator="/"): list(np.shape(x)) for p, x in leaves
    }


# --------------------------------------------------------------------------- workdir identity


def check_workdir(
    workdir: str, identity: dict, param_shapes: dict, defaults: dict | None = None
) -> bool:
    """Refuses a workdir created by another experiment.

    Args:
      workdir: the run's directory.
      identity: this run's identity fields (`config.identity(config)`).
      param_shapes: this run's parameter shapes (`shapes(params)`).
      defaults: the value each identity field had before it existed (a workdir written by an
        older version lacks it): such a workdir is the same experiment if this config keeps
        that value.

    Returns:
      Whether workdir/config.json exists (it matches this run when it does).

    Raises:
      ConfigError: one line naming the differing fields (or the first differing parameter).
    """
    path = workdir_path(workdir) / CONFIG_FILE
    if not path.exists():
        return False
    stored = read_json(path)
    if not isinstance(stored, dict) or not {"identity", "param_shapes"} <= set(stored):
        raise ConfigError(f"{path} is unreadable; use another --workdir")
    old_identity, old_shapes = stored["identity"], stored["param_shapes"]
    defaults = defaults or {}
    old_identity = {k: old_identity.get(k, defaults.get(k)) for k in identity}
    diffs = [
        f"{k}={old_identity[k]!r} (this config: {v!r})"
        for k, v in identity.items()
        if old_identity[k] != v
    ]
    if diffs:
        raise ConfigError(
            f"workdir {workdir} holds another run: "
            + ", ".join(diffs[:4])
            + "; use another --workdir"
        )
    if old_shapes != param_shapes:
        bad = sorted(set(old_shapes) ^ set(param_shapes)) or [
            k for k in param_shapes if old_shapes[k] != param_shapes[k]
        ]
        raise ConfigError(
            f"workdir {workdir} holds a model with other parameters (first "
            f"difference: {bad[0]}); use another --workdir"
        )
    return True


def write_workdir_config(
    workdir: str, config_dict: dict, identity: dict, param_shapes: dict
) -> None:
    """Writes workdir/config.json (process 0, first run only).

    Args:
      workdir: the run's directory.
      config_dict: the whole config as a dict.
      identity: the identity fields, checked by `check_workdir` on every rerun.
      param_shapes: the parameter shapes, checked likewise.
    """
    write_json(
        workdir_path(workdir) / CONFIG_FILE,
        {"config": config_dict, "identity": identity, "param_shapes": param_shapes},
    )


# --------------------------------------------------------------------------- train state


def manager(
    workdir: str, keep: int, create: bool = True, asynchronous: bool = True
) -> ocp.CheckpointManager:
    """An orbax checkpoint manager over workdir/checkpoints.

    Args:
      workdir: the run's directory.
      keep: how many of the latest checkpoints to keep.
      create: whether to create workdir/checkpoints if it is missing.
      asynchronous: whether `save` returns once the state is copied off the devices, with the
        files written by a background thread (orbax's asynchronous checkpointing), or only
        once they are on disk.

    Returns:
      The `ocp.CheckpointManager`. A checkpoint is complete only once it has its final name
      (orbax writes it under a temporary one and renames it last), so a process killed during
      a save leaves the previous checkpoint as the latest readable one. Call
      `wait_until_finished()` (or `close()`) before relying on the last save being on disk.
    """
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=create, enable_async_checkpointing=asynchronous
    )
    return ocp.CheckpointManager(
        workdir_path(workdir) / CHECKPOINT_DIR,
        options=options,
        item_handlers=ocp.StandardCheckpointHandler(),
    )


def save(mngr: ocp.CheckpointManager, step: int, state, metadata: dict | None = None) -> None:
    """Saves `state` at `step` (a no-op when that step is already saved).

    Args:
      mngr: the workdir's checkpoint manager.
      step: the step count of `state`.
      state: the train state (a pytree of arrays).
      metadata: JSON-friendly facts kept with the checkpoint (`read_metadata`), e.g. the input
        pipeline's position.
    """
    if step in mngr.all_steps():
        return
    mngr.save(step, args=ocp.args.StandardSave(state), custom_metadata=metadata)


def read_metadata(mngr: ocp.CheckpointManager, step: int) -> dict:
    """The `metadata` that `save` kept with the checkpoint at `step`.

    Args:
      mngr: the workdir's checkpoint manager.
      step: a saved step.

    Returns:
      The dict given to `save`; empty for a checkpoint written without one.
    """
    try:
        custom = mngr.metadata(step).custom_metadata
    except (OSError, ValueError, AttributeError):
        return {}
    return dict(custom) if isinstance(custom, dict) else {}


def _metadata_shapes(mngr, step) -> dict:
    tree = mngr.item_metadata(step)
    tree = getattr(tree, "tree", tree)
    leaves = jax.tree_util.tree_flatten_with_path(
        tree, is_leaf=lambda x: hasattr(x, "shape") and not isinstance(x, dict)
    )[0]
    return {
        jax.tree_util.keystr(p, simple=True, separator="/"): list(x.shape)
        for p, x in leaves
        if hasattr(x, "shape")
    }


def restore_latest(
    mngr: ocp.CheckpointManager,
    abstract_state,
    workdir: str,
    log: Callable[[str], None] = logging.warning,
) -> tuple[Any, int]:
    """Restores the newest readable checkpoint onto `abstract_state`'s shapes and shardings.

    A checkpoint that cannot be read (truncated, corrupt) is moved to workdir/corrupt_checkpoints
    with a one-line message, and the previous one is tried.

    Args:
      mngr: the workdir's checkpoint manager.
      abstract_state: the train state's shapes, dtypes and shardings (`jax.ShapeDtypeStruct`s).
      workdir: the run's directory.
      log: where the one-line messages go.

    Returns:
      (state, step), or (None, 0) when the workdir holds no checkpoint.

    Raises:
      ConfigError: the checkpoint's parameters do not fit the model (another experiment).
      CheckpointError: checkpoints exist but none can be read.
    """
    mngr.wait_until_finished()  # A save still in flight is not yet readable.
    steps = sorted(mngr.all_steps(), reverse=True)
    want = shapes(abstract_state)
    for i, step in enumerate(steps):
        try:
            got = _metadata_shapes(mngr, step)
        except Exception as e:  # pylint: disable=broad-except
            got, error = None, e
        if got is not None:
            params_got = {k: v for k, v in got.items() if k.startswith("params/")}
            params_want = {k: v for k, v in want.items() if k.startswith("params/")}
            if params_got and params_got != params_want:
                raise ConfigError(
                    f"the checkpoint at step {step} in {mngr.directory} holds parameters "
                    "of another model; use another --workdir"
                )
            try:
                return mngr.restore(step, args=ocp.args.StandardRestore(abstract_state)), step
            except Exception as e:  # pylint: disable=broad-except
                error = e
        message = str(error).strip().splitlines()[0][:160] if str(error).strip() else ""
        later = f"falling back to step {steps[i + 1]}" if i + 1 < len(steps) else "none left"
        log(
            f"checkpoint at step {step} is unreadable ({type(error).__name__}: {message}); "
            f"moving it to corrupt_checkpoints/ and {later}"
        )
        if jax.process_index() == 0:
            aside = workdir_path(workdir) / "corrupt_checkpoints"
            aside.mkdir(parents=True, exist_ok=True)
            (epath.Path(mngr.directory) / str(step)).rename(aside / str(step))
        mngr.reload()
    if steps:
        raise CheckpointError(
            f"no readable checkpoint in {mngr.directory} (tried steps {', '.join(map(str, steps))})"
        )
    return None, 0


# --------------------------------------------------------------------------- export


def export(workdir: str, masked_params, batch_stats, info: dict, pattern: str | None = None) -> str:
    """Writes the masked parameters (zeros in place) and BN statistics as a plain .npz.

    Args:
      workdir: the run's directory; the files go to workdir/export.
      masked_params: the weights `W * M` (host arrays).
      batch_stats: the BatchNorm statistics (host arrays; `{}` or None for none).
      info: what the export is (model, sparsity, figures), written to export/info.json.
      pattern: the run's N:M pattern (`"2:4"`) or None: with one, the kernels that hold it are
        written in the N:M encoding of `optg_jax.export` (kept values and their positions).

    Returns:
      The path of export/model.npz, whose keys are 'params/<module path>' and
      'batch_stats/<module path>'. The same variables also go to export/model_sparse.npz in the
      compact sparse format of `optg_jax.export` (read back with `optg_jax.load_sparse`).
    """
    out = workdir_path(workdir) / EXPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    variables = {"params": masked_params, "batch_stats": batch_stats or {}}
    buffer = io.BytesIO()
    np.savez(buffer, **export_lib.flatten(variables))
    path = out / "model.npz"
    path.write_bytes(buffer.getvalue())
    export_lib.write_sparse(out / export_lib.SPARSE_FILE, variables, pattern)
    write_json(out / "info.json", info)
    return str(path)
