"""Checkpoints of the whole training state, the workdir's identity, and the sparse export.

The workdir layout:
  workdir/config.json        the config that created the workdir, its identity fields and the
                             parameter shapes (checked on every rerun: another experiment's
                             workdir is refused instead of overwritten)
  workdir/checkpoints/<step> orbax checkpoints of the train state (params, batch_stats, the whole
                             optimiser state with OptG scores and masks, step); the data position
                             is the step, because the input order is a function of (seed, step)
  workdir/export/            the masked weights (zeros in place) and batch statistics as .npz

Orbax coordinates processes itself, so every process calls `save`/`restore`; only process 0
writes the JSON and the export.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp

from optg_jax.config import ConfigError

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"
EXPORT_DIR = "export"


class CheckpointError(RuntimeError):
  """No usable checkpoint where one was expected; the message is one line."""


def path_str(path) -> str:
  """'params/conv1/kernel' from a jax key path."""
  parts = []
  for k in path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
    else:
      parts.append(str(k))
  return "/".join(parts)


def shapes(tree) -> dict[str, list[int]]:
  """{'conv1/kernel': [3, 3, 1, 32], ...} for the array leaves of `tree`."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {path_str(p): list(np.shape(x)) for p, x in leaves}


# --------------------------------------------------------------------------- workdir identity


def check_workdir(workdir: str, identity: dict, param_shapes: dict) -> bool:
  """Refuses a workdir created by another experiment; returns whether config.json exists.

  Raises:
    ConfigError: one line naming the differing fields (or the first differing parameter).
  """
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    return False
  try:
    with open(path, encoding="utf-8") as f:
      stored = json.load(f)
    old_identity, old_shapes = stored["identity"], stored["param_shapes"]
  except (OSError, ValueError, KeyError) as e:
    raise ConfigError(f"{path} is unreadable ({type(e).__name__}); use another --workdir") from e
  diffs = [f"{k}={old_identity.get(k)!r} (this config: {v!r})"
           for k, v in identity.items() if old_identity.get(k) != v]
  if diffs:
    raise ConfigError(f"workdir {workdir} holds another run: " + ", ".join(diffs[:4])
                      + "; use another --workdir")
  if old_shapes != param_shapes:
    bad = sorted(set(old_shapes) ^ set(param_shapes)) or [
        k for k in param_shapes if old_shapes[k] != param_shapes[k]]
    raise ConfigError(f"workdir {workdir} holds a model with other parameters (first "
                      f"difference: {bad[0]}); use another --workdir")
  return True


def write_workdir_config(workdir: str, config_dict: dict, identity: dict,
                         param_shapes: dict) -> None:
  """Writes workdir/config.json (process 0, first run only)."""
  os.makedirs(workdir, exist_ok=True)
  tmp = os.path.join(workdir, CONFIG_FILE + ".tmp")
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump({"config": config_dict, "identity": identity, "param_shapes": param_shapes}, f,
              indent=1, default=str)
  os.replace(tmp, os.path.join(workdir, CONFIG_FILE))


# --------------------------------------------------------------------------- train state


def manager(workdir: str, keep: int, create: bool = True) -> ocp.CheckpointManager:
  """An orbax CheckpointManager over workdir/checkpoints keeping the last `keep` steps."""
  # Synchronous saves: a checkpoint is on disk when `save` returns (the "last good checkpoint"
  # of a diverged run is real), and no background thread writes while the input pipeline runs
  # (tfds.testing.mock_data swaps the file system under every thread while it builds a
  # dataset). A save costs a few seconds every `checkpoint_every_steps` steps at most.
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=create,
                                         enable_async_checkpointing=False)
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR),
                               options=options, item_handlers=ocp.StandardCheckpointHandler())


def save(mngr: ocp.CheckpointManager, step: int, state) -> None:
  """Saves `state` at `step` (a no-op when that step is already saved)."""
  if step in mngr.all_steps():
    return
  mngr.save(step, args=ocp.args.StandardSave(state))


def _metadata_shapes(mngr, step) -> dict:
  tree = mngr.item_metadata(step)
  tree = getattr(tree, "tree", tree)
  leaves = jax.tree_util.tree_flatten_with_path(
      tree, is_leaf=lambda x: hasattr(x, "shape") and not isinstance(x, dict))[0]
  return {path_str(p): list(x.shape) for p, x in leaves if hasattr(x, "shape")}


def restore_latest(mngr: ocp.CheckpointManager, abstract_state, workdir: str,
                   log: Callable[[str], None] = logging.warning) -> tuple[Any, int]:
  """Restores the newest readable checkpoint onto `abstract_state`'s shapes and shardings.

  A checkpoint that cannot be read (truncated, corrupt) is moved to workdir/corrupt_checkpoints
  with a one-line message, and the previous one is tried.

  Returns:
    (state, step), or (None, 0) when the workdir holds no checkpoint.
  Raises:
    ConfigError: the checkpoint's parameters do not fit the model (another experiment).
    CheckpointError: checkpoints exist but none can be read.
  """
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
        raise ConfigError(f"the checkpoint at step {step} in {mngr.directory} holds parameters "
                          "of another model; use another --workdir")
      try:
        return mngr.restore(step, args=ocp.args.StandardRestore(abstract_state)), step
      except Exception as e:  # pylint: disable=broad-except
        error = e
    message = str(error).strip().splitlines()[0][:160] if str(error).strip() else ""
    later = f"falling back to step {steps[i + 1]}" if i + 1 < len(steps) else "none left"
    log(f"checkpoint at step {step} is unreadable ({type(error).__name__}: {message}); "
        f"moving it to corrupt_checkpoints/ and {later}")
    if jax.process_index() == 0:
      aside = os.path.join(workdir, "corrupt_checkpoints")
      os.makedirs(aside, exist_ok=True)
      shutil.move(os.path.join(str(mngr.directory), str(step)),
                  os.path.join(aside, f"{step}"))
    mngr.reload()
  if steps:
    raise CheckpointError(f"no readable checkpoint in {mngr.directory} (tried steps "
                          f"{', '.join(map(str, steps))})")
  return None, 0


# --------------------------------------------------------------------------- export


def export(workdir: str, masked_params, batch_stats, info: dict) -> str:
  """Writes the masked parameters (zeros in place) and BN statistics as a plain .npz.

  Keys are 'params/<module path>' and 'batch_stats/<module path>'; `info` goes to
  export/info.json. Returns the .npz path.
  """
  out = os.path.join(workdir, EXPORT_DIR)
  os.makedirs(out, exist_ok=True)
  arrays = {}
  for prefix, tree in (("params", masked_params), ("batch_stats", batch_stats or {})):
    for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]:
      arrays[f"{prefix}/{path_str(p)}"] = np.asarray(jax.device_get(x))
  path = os.path.join(out, "model.npz")
  np.savez(path, **arrays)
  with open(os.path.join(out, "info.json"), "w", encoding="utf-8") as f:
    json.dump(info, f, indent=1, default=str)
  return path
