"""The training program: `train_and_evaluate(config, workdir)` and its loop.

One batch's path: `data.train_iterator` yields this process's share of the global batch as NumPy
arrays; `Run.train_batches` makes it one global array sharded on its leading axis over a 1-D mesh
of all devices (`jax.make_array_from_process_local_data`); `Run.train_step`
(`steps.jit_train_step`) takes the train state (replicated, or with
`config.param_sharding="fsdp"` every leaf split over the same devices by `optg_jax.sharding`) and
that batch, runs the model on the masked weights `W * M` (`optg_jax.apply_masks`), and hands the
gradient to the optax chain `optg_optax -> add_decayed_weights -> sgd`, whose first link moves
the OptG scores and refreshes the masks. Because the batch is one global array and the loss is a
mean over it, XLA averages the gradients and BatchNorm statistics over the global batch by
itself. The step's metrics go to `metrics.MetricWriter`; at each epoch's end `assess` evaluates
the state (`Run.eval_step`, `steps.jit_eval_step`) and counts its sparsity and MACs, and the
last epoch's `Outcome` becomes the results.

What a run derives once from its config (data set facts, model, optimizer, lr schedule, whether
it is sparse, shardings, jitted steps, batch iterators) is a `Run`; `train_and_evaluate` builds
it, applies the workdir policy, restores or creates the train state, runs `train_loop` (or
`assess`, when there is nothing to train) and writes the results from its `Outcome`.

Workdir: see `optg_jax.train.checkpoints` for the layout; metrics go to workdir/tb (TensorBoard)
and workdir/metrics.jsonl, the final figures to workdir/results.json.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Any, Callable, Iterator, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import optg_jax
from optg_jax import macs as macs_lib
from optg_jax import sharding
from optg_jax.train import checkpoints, data, models, preemption, pretrained, steps
from optg_jax.train import config as config_lib
from optg_jax.train import metrics as metrics_lib
from optg_jax.train.config import ConfigError

RESULTS_FILE = "results.json"
EVAL_RESULTS_FILE = "eval_results.json"
# results.json keys before multiply-accumulates were called MACs everywhere; read as the new keys.
_RENAMED_RESULT_KEYS = {"flops": "macs", "dense_flops": "dense_macs"}
_EXPORT_INFO_KEYS = (
    "model",
    "dataset",
    "criterion",
    "steps",
    "sparsity",
    "top1",
    "top5",
    "macs",
    "dense_macs",
    "pattern",
)


class TrainingError(RuntimeError):
    """Training had to stop (e.g. a non-finite loss); the message is one line."""


def to_host(x: Any) -> Any:
    """A NumPy copy of a global array, replicated or sharded, also when not fully addressable.

    Args:
      x: a `jax.Array` or any other value. For an array sharded over several processes every
        process must call this (the shards are gathered from all of them).

    Returns:
      The whole array's data on this host as `np.ndarray`; anything else unchanged.
    """
    if not isinstance(x, jax.Array):
        return x
    if x.is_fully_replicated:
        return np.asarray(x.addressable_data(0))
    if x.is_fully_addressable:
        return np.asarray(x)
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _say(line: str) -> None:
    if jax.process_index() == 0:
        print(line, flush=True)


# --------------------------------------------------------------------------- what a run derives


def dataset_info(config: ml_collections.ConfigDict) -> data.DatasetInfo:
    """The facts of the config's data set, as the run sees it.

    Args:
      config: the run's config (`dataset`, `data_dir`, `image_size`, `validation_examples`).

    Returns:
      `data.dataset_info` at the config's image size, with its held-out split.
    """
    return data.dataset_info(
        config.dataset,
        config.data_dir or None,
        image_size=config.image_size or None,
        validation_examples=int(config.validation_examples),
    )


def run_length(config: ml_collections.ConfigDict, info: data.DatasetInfo) -> tuple[int, int]:
    """How many steps an epoch and the whole run of `config` take.

    Args:
      config: the run's config (`batch_size`, `steps_per_epoch`, `num_train_steps`,
        `num_epochs`).
      info: the data set's facts (`dataset_info`).

    Returns:
      `(steps per epoch, total steps)`: the config's overrides where it sets them (> 0), else a
      full epoch of the data set and `num_epochs` of them.

    Raises:
      ValueError: the data set is too small for the batch (checked even when
        `steps_per_epoch` overrides the epoch).
    """
    full_epoch = data.steps_per_epoch(info, config.batch_size)
    steps_per_epoch = int(config.steps_per_epoch if config.steps_per_epoch > 0 else full_epoch)
    num_steps = int(
        config.num_train_steps
        if config.num_train_steps > 0
        else config.num_epochs * steps_per_epoch
    )
    return steps_per_epoch, num_steps


@dataclasses.dataclass(frozen=True, eq=False)
class Run:
    """What a run derives once from its config; the loop and the evaluation read it.

    Attributes:
      config: the validated config.
      workdir: the run's directory (local path or gs://...).
      info: the data set's `data.DatasetInfo` (classes, example counts, input shape, splits).
      model: the Flax module.
      tx: the optimizer (`steps.make_optimizer`).
      lr_schedule: the weights' learning rate, `step -> lr`.
      sparse: whether the run has an OptG link (`not config_lib.is_dense(config)`, decided
        here once; the optimizer and both steps are told).
      steps_per_epoch: training steps per epoch.
      num_steps: total training steps.
      replicated: the sharding of a value whole on every device (the step's metrics).
      state_sharding: the sharding of each leaf of the train state (a `steps.TrainState` of
        `NamedSharding`s): `replicated` everywhere, or split by `config.param_sharding`.
      batch_sharding: the sharding of a global batch (leading axis over the mesh).
      train_step: `steps.jit_train_step`, `(state, batch) -> (state, metrics)`; donates the
        state.
      eval_step: `steps.jit_eval_step`, `(state, batch) -> sums`.
    """

    config: ml_collections.ConfigDict
    workdir: str
    info: data.DatasetInfo
    model: nn.Module
    tx: optax.GradientTransformation
    lr_schedule: optax.Schedule
    sparse: bool
    steps_per_epoch: int
    num_steps: int
    replicated: NamedSharding
    state_sharding: Any
    batch_sharding: NamedSharding
    train_step: Callable
    eval_step: Callable

    @classmethod
    def create(cls, config: ml_collections.ConfigDict, workdir: str) -> Run:
        """Derives a run from a validated config; reads the data set's metadata, writes nothing.

        Args:
          config: a config that passed `config_lib.validate`.
          workdir: the run's directory.

        Returns:
          The `Run`.

        Raises:
          FileNotFoundError: the data set is not prepared (the message says what to do).
          ValueError: the data set is too small for the batch or the held-out split.
        """
        data.ensure_dataset(config.dataset, config.data_dir or None)
        info = dataset_info(config)
        steps_per_epoch, num_steps = run_length(config, info)
        sparse = not config_lib.is_dense(config)  # The run's one answer; the steps are told.
        model = models.create(
            config.model, num_classes=info.num_classes, dtype=jnp.dtype(config.dtype)
        )
        lr_schedule = steps.learning_rate_schedule(config, num_steps, steps_per_epoch)
        tx = steps.make_optimizer(config, num_steps, steps_per_epoch, lr_schedule, sparse=sparse)

        mesh = Mesh(np.asarray(jax.devices()), ("data",))
        replicated = NamedSharding(mesh, P())
        batch_sharding = NamedSharding(mesh, P("data"))
        # The state's shapes do not depend on the key, so any key gives them.
        state_shapes = jax.eval_shape(
            functools.partial(
                steps.create_train_state, model=model, tx=tx, input_shape=info.image_shape
            ),
            jax.random.key(0),
        )
        state_sharding = sharding.state_shardings(state_shapes, mesh, config.param_sharding)
        shardings = steps.Shardings(state_sharding, batch_sharding, replicated)
        # The batches carry uint8 pixels; the steps normalise them on the devices.
        spec = data.dataset_spec(config.dataset)
        normalization = steps.Normalization.create(spec.mean, spec.std)
        train_step = steps.jit_train_step(
            model,
            tx,
            info.num_classes,
            sparse=sparse,
            label_smoothing=float(config.label_smoothing),
            normalization=normalization,
            shardings=shardings,
        )
        eval_step = steps.jit_eval_step(
            model, info.num_classes, sparse=sparse, normalization=normalization, shardings=shardings
        )
        return cls(
            config=config,
            workdir=workdir,
            info=info,
            model=model,
            tx=tx,
            lr_schedule=lr_schedule,
            sparse=sparse,
            steps_per_epoch=steps_per_epoch,
            num_steps=num_steps,
            replicated=replicated,
            state_sharding=state_sharding,
            batch_sharding=batch_sharding,
            train_step=train_step,
            eval_step=eval_step,
        )

    @property
    def is_main(self) -> bool:
        """Whether this is process 0, the one that writes files."""
        return jax.process_index() == 0

    def init_state(self, rng: jax.Array) -> steps.TrainState:
        """A fresh train state (`steps.create_train_state` for this run's model and optimizer).

        Args:
          rng: the PRNG key of the model's initialisation.

        Returns:
          The `steps.TrainState` at step 0.
        """
        return steps.create_train_state(rng, self.model, self.tx, self.info.image_shape)

    @property
    def streamed(self) -> bool:
        """Whether the training batches stream through tf.data (each process reads its share)."""
        spec = data.dataset_spec(self.config.dataset)
        return not (self.config.data_in_memory and spec.fits_in_memory)

    def _data_options(self) -> data.Options:
        """The `data.Options` of the training and eval iterators."""
        c = self.config
        return data.Options(
            image_size=c.image_size or None,
            cache=c.data_in_memory,
            augment=config_lib.AUGMENT[c.augment],
            validation_examples=int(c.validation_examples),
        )

    def _shard_args(self) -> tuple:
        """`(global batch, process index, process count)` of this process."""
        return self.config.batch_size, jax.process_index(), jax.process_count()

    def train_batches(self, start: data.Position) -> Iterator[dict]:
        """The global training batches from `start` on, forever.

        Args:
          start: the first step (a resumed run continues the same order) and the process count
            that began its epoch.

        Returns:
          An iterator of `{'image' (uint8), 'label'}` global arrays sharded by
          `batch_sharding`.
        """
        batch, index, count = self._shard_args()
        local = data.train_iterator(
            self.config.dataset,
            self.config.data_dir or None,
            batch,
            self.config.seed,
            start,
            index,
            count,
            self._data_options(),
        )
        return (self._global_batch(b, ("image", "label")) for b in local)

    def data_position(self, step: int, epoch_process_count: int) -> dict:
        """The input pipeline's position at `step`, as a checkpoint keeps it.

        Args:
          step: the steps done.
          epoch_process_count: the process count that began the epoch of `step`.

        Returns:
          A JSON-friendly dict: `step`, `epoch`, `step_in_epoch`, `global_batch`,
          `process_count`, `epoch_process_count` (this run's count at an epoch's start),
          `num_devices` and `pipeline` (`in_memory` or `streamed`).
        """
        epoch, within = divmod(step, self.steps_per_epoch)
        return {
            "step": step,
            "epoch": epoch,
            "step_in_epoch": within,
            "global_batch": self.config.batch_size,
            "process_count": jax.process_count(),
            "epoch_process_count": epoch_process_count if within else jax.process_count(),
            "num_devices": jax.device_count(),
            "pipeline": "streamed" if self.streamed else "in_memory",
        }

    def eval_batches(self) -> Iterator[dict]:
        """One pass over the eval split (at most `config.steps_per_eval` batches when > 0).

        Yields:
          An iterator of `{'image' (uint8), 'label', 'mask'}` global arrays sharded by
          `batch_sharding`.
        """
        batch, index, count = self._shard_args()
        local = data.eval_iterator(
            self.config.dataset,
            self.config.data_dir or None,
            batch,
            index,
            count,
            self._data_options(),
        )
        for i, batch in enumerate(local):
            if 0 < self.config.steps_per_eval <= i:
                return
            yield self._global_batch(batch, ("image", "label", "mask"))

    def _global_batch(self, local: dict, keys: tuple[str, ...]) -> dict:
        """Pads a short local batch (mask 0) and assembles the global array from every process."""
        local = {k: local[k] for k in keys}
        local_batch = self.config.batch_size // jax.process_count()
        n = next(iter(local.values())).shape[0]
        if n < local_batch:
            if "mask" not in local:
                raise ValueError(f"a training batch of {n} examples, expected {local_batch}")
            pad = local_batch - n
            local = {
                k: np.concatenate([v, np.zeros((pad, *v.shape[1:]), v.dtype)])
                for k, v in local.items()
            }
        return {
            k: jax.make_array_from_process_local_data(self.batch_sharding, np.asarray(v))
            for k, v in local.items()
        }


def _start_devices(config: ml_collections.ConfigDict) -> None:
    """Joins the other processes (distributed runs) and checks the batch splits over devices."""
    if config.distributed and not jax.distributed.is_initialized():
        jax.distributed.initialize()  # Cluster details come from the environment (SLURM, TPU, ...).
    n, procs = jax.device_count(), jax.process_count()
    if config.batch_size % n:
        raise ConfigError(
            f"config.batch_size={config.batch_size} is not divisible by the number of "
            f"devices {n} ({procs} process(es) x {jax.local_device_count()} local)"
        )


# --------------------------------------------------------------------------- workdir policy


def read_results(workdir: str) -> dict | None:
    """The results.json of a run in `workdir`, with keys of older versions renamed.

    Args:
      workdir: the run's directory.

    Returns:
      The results dict (`flops`/`dense_flops` of runs written before the rename read as
      `macs`/`dense_macs`), or None when there is no readable results.json.
    """
    results = checkpoints.read_json(checkpoints.workdir_path(workdir) / RESULTS_FILE)
    if results is None:
        return None
    return {_RENAMED_RESULT_KEYS.get(k, k): v for k, v in results.items()}


def _check_workdir(run: Run, param_shapes: dict) -> tuple[dict | None, bool]:
    """Refuses a workdir this run must not use, before anything is written.

    Returns:
      (the results.json of an earlier run in the workdir or None, whether that run is finished
      and this one has nothing to do).
    """
    config, workdir = run.config, run.workdir
    _check_identity(config, workdir, param_shapes)
    has_checkpoints = bool(checkpoints.checkpoint_steps_on_disk(workdir))
    if config.eval_only and not has_checkpoints:
        raise ConfigError(
            f"config.eval_only=True but {workdir}/{checkpoints.CHECKPOINT_DIR} holds no checkpoint"
        )
    previous = read_results(workdir)
    finished = (
        not config.eval_only
        and previous is not None
        and previous.get("steps") == run.num_steps
        and has_checkpoints
    )
    return previous, finished


def _stored_batch_size(workdir: str) -> int | None:
    """The batch_size in the identity of workdir/config.json, or None."""
    stored = checkpoints.read_json(checkpoints.workdir_path(workdir) / checkpoints.CONFIG_FILE)
    identity = stored.get("identity") if isinstance(stored, dict) else None
    return identity.get("batch_size") if isinstance(identity, dict) else None


def _check_identity(config: ml_collections.ConfigDict, workdir: str, param_shapes: dict) -> None:
    """Refuses a workdir of another experiment; a changed global batch alone (the data order and
    the step count of an epoch change with it, so the run cannot go on as it would have) only
    with `config.allow_reshard` (`_create_workdir` then records the new batch)."""
    identity = config_lib.identity(config)
    defaults = {**config_lib.identity(config_lib.base_config()), **config_lib.LEGACY_IDENTITY}
    stored_batch = _stored_batch_size(workdir)
    if stored_batch is None or stored_batch == config.batch_size:
        checkpoints.check_workdir(workdir, identity, param_shapes, defaults)
        return
    checkpoints.check_workdir(
        workdir, dict(identity, batch_size=stored_batch), param_shapes, defaults
    )
    if not config.allow_reshard:
        raise ConfigError(
            f"workdir {workdir} holds a run with batch_size={stored_batch} (this config: "
            f"{config.batch_size}), which cannot resume exactly; set --config.allow_reshard=True "
            "to resume it with the new batch anyway, or use another --workdir"
        )


def _create_workdir(run: Run, param_shapes: dict) -> None:
    """Makes the workdir and, on the first run (or a change of batch that `allow_reshard`
    lets through), its config.json (process 0 only)."""
    if not run.is_main:
        return
    path = checkpoints.workdir_path(run.workdir)
    path.mkdir(parents=True, exist_ok=True)
    stored_batch = _stored_batch_size(run.workdir)
    if stored_batch is None or stored_batch != run.config.batch_size:
        checkpoints.write_workdir_config(
            run.workdir, run.config.to_dict(), config_lib.identity(run.config), param_shapes
        )


# --------------------------------------------------------------------------- the program


class Outcome(NamedTuple):
    """Where a run ended: the state, its evaluation and figures, and the best epoch so far.

    `train_loop` returns it after the last step (whose end-of-epoch evaluation it holds), and
    `assess` for a state that is not trained further (`eval_only`, or a run already at its last
    step); the results are assembled from it alone.

    Attributes:
      state: the final train state.
      step: its step count (a host int).
      evaluation: `evaluate(run, state)`: `top1`, `top5`, `loss`, `num_examples`.
      figures: `sparsity_figures(run, state)`: sparsity, per-layer sparsity, MACs, score lr.
      best_top1: the best top-1 of the per-epoch evaluations, this one included.
      best_top1_epoch: the epoch (epochs done, a float) it came from.
    """

    state: steps.TrainState
    step: int
    evaluation: dict
    figures: dict
    best_top1: float
    best_top1_epoch: float


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains (or resumes, or only evaluates) the run described by `config` in `workdir`.

    Args:
      config: a config from `configs/` (see `optg_jax.train.config.base_config` for the fields).
      workdir: directory for checkpoints, metrics, config.json, results.json and the export.

    Returns:
      The results dict (also written to workdir/results.json): top1, top5, best_top1 (the
      best eval top-1 over the epochs) and best_top1_epoch, sparsity, macs, dense_macs, steps and
      more.

    Raises:
      ConfigError: a bad config or a workdir of another run (a ValueError); nothing is written.
      FileNotFoundError: the data set is not prepared; nothing is written.
      TrainingError: a non-finite loss; the last good checkpoint is kept.
      checkpoints.CheckpointError: checkpoints exist but none is readable.
      preemption.Preempted: SIGTERM; the state was saved at the step it reached.
    """
    wall_start = time.time()
    config_lib.validate(config)
    _start_devices(config)
    run = Run.create(config, workdir)

    # The "rbg" generator: the same draws for a given seed, and the init compiles in seconds where
    # threefry takes ~15 s for a small ResNet on a 2-core CPU.
    rng = jax.random.key(config.seed, impl="rbg")
    abstract_state = jax.eval_shape(run.init_state, rng)
    param_shapes = checkpoints.shapes(abstract_state.params)
    previous, finished = _check_workdir(run, param_shapes)
    if finished:
        _say(f"{workdir} holds a finished run ({run.num_steps} steps); its results:")
        _say(metrics_lib.summary_table(previous))
        return previous
    source = _pretrained(run, abstract_state)  # Read and checked before anything is written.
    _create_workdir(run, param_shapes)

    mngr = checkpoints.manager(workdir, config.keep_checkpoints)
    # From here on SIGTERM saves the state at a step boundary instead of ending the process.
    with preemption.Watch(mngr) as watch:
        state, start_step = _restore_or_init(run, mngr, abstract_state, rng, source)
        start, epoch_sums = _resume(run, mngr, start_step)
        # The best eval top-1 of the epochs up to the checkpoint survives a restart in
        # metrics.jsonl (an earlier process evaluated them); it is read once, here.
        best = metrics_lib.best_top1(metrics_lib.read_records(workdir), up_to_step=start_step)

        train_time = 0.0
        if not config.eval_only and start_step < run.num_steps:
            t0 = time.time()
            outcome = train_loop(
                run, state, mngr, best, start=start, epoch_sums=epoch_sums, watch=watch
            )
            train_time = time.time() - t0
        else:
            outcome = assess(run, state, start_step, best)

    results = _final_results(run, outcome, train_time, wall_start, previous)
    _write_outputs(run, outcome.state, results)
    mngr.close()
    return results


def _pretrained(run: Run, abstract_state) -> pretrained.Pretrained | None:
    """What a new run starts from with `config.init_from` (`pretrained.load`), else None.

    None also for a workdir with checkpoints: a resumed run restores its own and never reads
    the source.
    """
    if not run.config.init_from or checkpoints.checkpoint_steps_on_disk(run.workdir):
        return None
    source = pretrained.load(run.config, pretrained.model_shapes(abstract_state))
    _say(source.description)
    return source


def _restore_or_init(
    run: Run, mngr, abstract_state, rng: jax.Array, source: pretrained.Pretrained | None = None
) -> tuple[Any, int]:
    """The latest readable checkpoint's state and step, or a new state at step 0 (from the
    seed, with `source`'s leaves when given)."""
    abstract_state = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        abstract_state,
        run.state_sharding,
    )
    state, step = checkpoints.restore_latest(mngr, abstract_state, run.workdir, log=_say)
    if state is None:
        state = jax.jit(run.init_state, out_shardings=run.state_sharding)(rng)
        if source is not None:
            state = pretrained.start_state(state, source, run.tx, run.state_sharding)
        return state, 0
    _say(f"resuming from the checkpoint at step {step}")
    return state, step


class _Progress:
    """The loop's host-side work: each step's checks and logs, the epoch's sums, the saves."""

    def __init__(self, run: Run, mngr, start_step: int, sums: dict | None):
        self.run, self.mngr = run, mngr
        self.bar = metrics_lib.ProgressBar(run.num_steps, start_step, enabled=run.is_main)
        self.writer = metrics_lib.MetricWriter(run.workdir, enabled=run.is_main)
        self.sums: dict[str, float] = dict(sums or {})  # The epoch's so far (a resumed one's).
        self.last_saved = max(mngr.all_steps(), default=None)

    def step_done(self, step: int, step_metrics: dict) -> None:
        """Checks, sums and logs the metrics of the finished step `step` (0-based)."""
        m = {k: float(to_host(v)) for k, v in step_metrics.items()}
        bad = next((k for k in ("loss", "grad_norm") if not math.isfinite(m[k])), None)
        if bad is not None:
            self.bar.close()
            self.mngr.wait_until_finished()
            what = "loss" if bad == "loss" else "gradient norm"
            kept = f"the last good checkpoint is step {self.last_saved} in {self.mngr.directory}"
            raise TrainingError(
                f"{what} became {m[bad]} at step {step + 1}; training stopped, {kept}"
            )
        for k, v in m.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.sums["n"] = self.sums.get("n", 0.0) + 1
        postfix = {"loss": m["loss"]}
        if "sparsity" in m:
            postfix["sparsity"] = max(0.0, m["sparsity"])
        self.bar.update(1, **postfix)
        if (step + 1) % self.run.config.log_every_steps == 0:
            lr = float(self.run.lr_schedule(step))
            self.writer.write(
                step + 1, {f"train/{k}_step": v for k, v in m.items()} | {"train/lr": lr}
            )

    def save(self, step: int, state: steps.TrainState, epoch_process_count: int) -> None:
        """Starts saving `state` at `step` (in the background) with the input pipeline's
        position and the epoch's train sums so far (a run resumed mid-epoch logs the same
        epoch means as an uninterrupted one)."""
        metadata = {
            "data_position": self.run.data_position(step, epoch_process_count),
            "epoch_sums": dict(self.sums),
        }
        checkpoints.save(self.mngr, step, state, metadata)
        self.last_saved = step

    def epoch_done(self, outcome: Outcome) -> None:
        """Logs an epoch's end (the train means over its steps and `outcome`) and resets the sums."""
        n = max(self.sums.pop("n", 1.0), 1.0)
        train_means = {k: v / n for k, v in self.sums.items()}
        self.sums.clear()
        _log_epoch(self.run, outcome, train_means, self.writer, self.bar)

    def preempted(self, step: int) -> preemption.Preempted:
        """The `Preempted` error of a run that saved at `step` on SIGTERM."""
        self.bar.close()
        epoch, within = divmod(step, self.run.steps_per_epoch)
        return preemption.Preempted(
            f"SIGTERM at step {step} of {self.run.num_steps} (epoch {epoch}, step {within} of "
            f"{self.run.steps_per_epoch}); saved the checkpoint at step {step} in "
            f"{self.mngr.directory}; rerun the same command to resume",
            step,
        )


def _resume(run: Run, mngr, step: int) -> tuple[data.Position, dict]:
    """Where the input pipeline resumes at the restored `step`, and the epoch's train sums so
    far, from what the checkpoint recorded.

    Refuses (one line) a resume that cannot continue as the saved run would have, unless
    `config.allow_reshard`: another global batch, or a streamed data set on another process
    count. An in-memory data set gives every process count the same batches, and a change of
    devices alone changes nothing in the data.
    """
    metadata = checkpoints.read_metadata(mngr, step) if step else {}
    saved = metadata.get("data_position")
    sums = metadata.get("epoch_sums") if step % run.steps_per_epoch else None
    if not isinstance(saved, dict):
        return data.Position(step), sums
    config, count = run.config, jax.process_count()
    old_batch, old_count = saved.get("global_batch"), saved.get("process_count")
    problem = None
    if old_batch is not None and old_batch != config.batch_size:
        problem = f"with batch_size={old_batch} (this run: {config.batch_size})"
    elif run.streamed and old_count is not None and old_count != count:
        problem = (
            f"by {old_count} process(es), each reading its own share of {config.dataset} through "
            f"tf.data (this run: {count}; later epochs would take another order)"
        )
    if problem is None:
        return data.Position(step, saved.get("epoch_process_count")), sums
    where = f"the checkpoint at step {step} in {mngr.directory} was written {problem}"
    if not config.allow_reshard:
        raise ConfigError(f"{where}; set --config.allow_reshard=True to resume from it anyway")
    _say(f"{where}; resuming anyway (config.allow_reshard=True)")
    if old_batch not in (None, config.batch_size):  # The old epoch's order cannot be kept.
        return data.Position(step), None
    return data.Position(step, saved.get("epoch_process_count")), sums


def train_loop(
    run: Run,
    state: steps.TrainState,
    mngr,
    best: tuple[float, float] | None = None,
    *,
    start: data.Position | None = None,
    epoch_sums: dict | None = None,
    watch: preemption.Watch | None = None,
) -> Outcome:
    """Runs the steps from `state.step` to `run.num_steps`, evaluating at every epoch's end.

    Saves a checkpoint every `config.checkpoint_every_steps` steps and at the end (and the
    initial state of a fresh run), in the background (the saves overlap the next steps), and
    logs train metrics every `config.log_every_steps` steps and eval/sparsity figures every
    epoch. The last step ends an epoch, so the returned `Outcome` holds the evaluation of the
    final state. When `watch` asks to stop after a step (SIGTERM), the loop finishes that step
    (and the evaluation, at an epoch's end), saves it, waits for the save and raises.

    Args:
      run: the run.
      state: the train state to start from (restored or fresh), before `run.num_steps`.
      mngr: the orbax checkpoint manager of the workdir.
      best: `(top1, epoch)` of the best evaluation up to `state.step` (a resumed run's, from
        metrics.jsonl), or None.
      start: the input pipeline's position at `state.step` (None: this run's own order).
      epoch_sums: the train metrics' sums over the steps of `state.step`'s epoch done before it
        (a run resumed mid-epoch; None: none).
      watch: asked after every step whether to save and stop (None: never).

    Returns:
      The `Outcome` of the last step.

    Raises:
      TrainingError: the loss or the gradient norm became non-finite.
      preemption.Preempted: `watch` asked to stop; the checkpoint at that step is on disk.
    """
    start_step = int(to_host(state.step))
    start = start or data.Position(start_step)
    epoch_count = start.epoch_process_count or jax.process_count()
    progress = _Progress(run, mngr, start_step, epoch_sums)
    outcome, pending = None, None
    try:
        if progress.last_saved is None:  # A fresh run: keep the initial state, a good one.
            progress.save(start_step, state, epoch_count)
        batches = run.train_batches(start)
        for step in range(start_step, run.num_steps):
            state, step_metrics = run.train_step(state, next(batches))
            # At most two steps in flight: wait for the previous one (a long queue of
            # all-reduces can deadlock XLA's CPU collectives, and its loss must be checked anyway).
            if pending is not None:
                progress.step_done(*pending)
            pending, done = (step, step_metrics), step + 1
            if done % run.steps_per_epoch == 0:  # The next epoch follows this run's count.
                epoch_count = jax.process_count()
            end_of_epoch = done % run.steps_per_epoch == 0 or done == run.num_steps
            save_now = done % run.config.checkpoint_every_steps == 0 or done == run.num_steps
            stop = watch is not None and watch.requested(done) and done < run.num_steps
            if end_of_epoch or save_now or stop:
                progress.step_done(*pending)
                pending = None
            if save_now or stop:
                progress.save(done, state, epoch_count)
            if end_of_epoch:
                outcome = assess(run, state, done, best)
                best = (outcome.best_top1, outcome.best_top1_epoch)
                progress.epoch_done(outcome)
            if stop:
                raise progress.preempted(done)
        progress.bar.close()
    finally:
        mngr.wait_until_finished()
        progress.writer.close()
    return outcome


def assess(
    run: Run, state: steps.TrainState, step: int, best: tuple[float, float] | None
) -> Outcome:
    """Evaluates `state` at `step`, with its sparsity figures, and updates the best top-1.

    Args:
      run: the run.
      state: the train state.
      step: its step count (`state.step` on the host).
      best: `(top1, epoch)` of the best earlier evaluation, or None.

    Returns:
      The `Outcome`. This evaluation becomes the best when its top-1 beats `best` (a tie keeps
      the earlier epoch); its epoch is `step / run.steps_per_epoch`.
    """
    evaluation = evaluate(run, state)
    figures = sparsity_figures(run, state)
    if best is None or evaluation["top1"] > best[0]:
        best = (evaluation["top1"], step / run.steps_per_epoch)
    return Outcome(state, step, evaluation, figures, best[0], best[1])


def _log_epoch(run: Run, outcome: Outcome, train_means: dict, writer, bar) -> None:
    """Logs an epoch's end: the train means, the evaluation, sparsity and MACs."""
    ev, figures, done = outcome.evaluation, outcome.figures, outcome.step
    epoch = done / run.steps_per_epoch
    writer.write(
        done,
        {
            "epoch": epoch,
            "train/loss": train_means.get("loss"),
            "train/accuracy": train_means.get("accuracy"),
            "eval/top1": ev["top1"],
            "eval/top5": ev["top5"],
            "eval/loss": ev["loss"],
            "eval/best_top1": outcome.best_top1,
            "eval/best_top1_epoch": outcome.best_top1_epoch,
            "sparsity/global": figures["sparsity"],
            "sparsity/target": figures["target_sparsity"],
            "sparsity/scheduled": train_means.get("sparsity", 0.0),
            "sparsity/layers": figures["layer_sparsity"],
            "macs/sparse": figures["macs"],
            "macs/dense": figures["dense_macs"],
            "lr": float(run.lr_schedule(done - 1)),
            "score_lr": figures["score_lr"],
        }
        | _nm_scalars(figures),
    )
    bar.write(
        f"epoch {epoch:.2f} step {done}: train loss {train_means.get('loss', 0):.4f} "
        f"acc {train_means.get('accuracy', 0):.4f} | eval top-1 {ev['top1']:.4f} "
        f"top-5 {ev['top5']:.4f} | sparsity {figures['sparsity']:.4f} | "
        f"MACs {figures['macs']:,}/{figures['dense_macs']:,}"
    )


def _nm_scalars(figures: dict) -> dict:
    """An N:M run's per-epoch metrics: the valid fraction of all groups and of each leaf's."""
    if "pattern" not in figures:
        return {}
    layers = figures["nm_layers"]
    return {
        "nm/valid_fraction": figures["nm_valid_fraction"],
        "nm/layers": {k: v["valid_fraction"] for k, v in layers.items() if v["covered"]},
    }


# --------------------------------------------------------------------------- figures and results


def evaluate(run: Run, state: steps.TrainState) -> dict:
    """Top-1, top-5 and mean loss of the masked model over the eval split.

    Args:
      run: the run (its eval split, capped at `config.steps_per_eval` batches when > 0).
      state: the train state to evaluate.

    Returns:
      `{'top1', 'top5', 'loss'}` as Python floats and `num_examples` (int).
    """
    totals = None
    for batch in run.eval_batches():
        out = run.eval_step(state, batch)
        totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
    totals = jax.tree.map(lambda x: float(to_host(x)), totals)
    count = max(totals["count"], 1.0)
    return {
        "top1": totals["correct1"] / count,
        "top5": totals["correct5"] / count,
        "loss": totals["loss"] / count,
        "num_examples": int(totals["count"]),
    }


def sparsity_figures(run: Run, state: steps.TrainState) -> dict:
    """Global and per-layer sparsity, sparse and dense MACs per example, the score lr.

    Args:
      run: the run (its model, input shape and whether it is sparse).
      state: the train state (its masks, for a sparse run).

    Returns:
      Host values: `sparsity`, `target_sparsity`, `layer_sparsity` (`{}` when dense), `macs`,
      `dense_macs` and `score_lr`, plus `num_masked` and `num_kept` for a sparse run.
    """
    host_params = jax.tree.map(to_host, state.params)
    variables = steps.model_variables(host_params, jax.tree.map(to_host, state.batch_stats))
    input_shape = run.info.image_shape
    dense_by_layer = macs_lib.count_by_layer(run.model, variables, input_shape)
    dense = sum(dense_by_layer.values())
    if not run.sparse:
        return {
            "sparsity": 0.0,
            "target_sparsity": 0.0,
            "layer_sparsity": {},
            "macs": dense,
            "dense_macs": dense,
            "score_lr": 0.0,
        }
    optg_state = jax.tree.map(to_host, optg_jax.get_optg_state(state.opt_state))
    summary = optg_jax.sparsity_summary(optg_state)
    by_layer = macs_lib.count_by_layer(run.model, variables, input_shape, masks=optg_state.masks)
    figures = {
        "sparsity": summary["global"],
        "target_sparsity": summary["target"],
        "layer_sparsity": summary["layers"],
        "macs": sum(by_layer.values()),
        "dense_macs": dense,
        "score_lr": summary["score_lr"],
        "num_masked": summary["num_masked"],
        "num_kept": summary["num_kept"],
    }
    if run.config.pattern is not None:
        figures.update(nm_figures(run.config.pattern, optg_state.masks, dense_by_layer, by_layer))
    return figures


def nm_figures(pattern: str, masks: Any, dense_by_layer: dict, by_layer: dict) -> dict:
    """The N:M figures of a run with a pattern: per masked leaf and over the covered ones.

    Args:
      pattern: the run's `"N:M"`.
      masks: the masks pytree (host arrays).
      dense_by_layer: `macs.count_by_layer` of the dense model, by param path.
      by_layer: the same with the masks (a kernel at `nnz / size` of its dense MACs).

    Returns:
      `pattern`; `nm_layers`: per masked leaf `nm.nm_report`'s `covered` and `valid_fraction`
      (the fraction of its groups of M that keep exactly N; `None` for a leaf left dense because
      its group axis does not divide by M) with its `dense_macs` and `macs`; `nm_valid_fraction`:
      the fraction of all the covered leaves' groups that keep exactly N (1.0 with none).
    """
    report = optg_jax.nm.nm_report(masks, pattern)
    layers = {
        name: {
            "covered": leaf["covered"],
            "valid_fraction": leaf["valid_fraction"],
            "dense_macs": dense_by_layer.get(name, 0),
            "macs": by_layer.get(name, 0),
        }
        for name, leaf in report.items()
    }
    groups = sum(leaf["groups"] for leaf in report.values())
    valid = sum(leaf["valid_groups"] for leaf in report.values())
    return {
        "pattern": pattern,
        "nm_layers": layers,
        "nm_valid_fraction": valid / groups if groups else 1.0,
    }


def _final_results(
    run: Run,
    outcome: Outcome,
    train_time: float,
    wall_start: float,
    previous: dict | None,
) -> dict:
    """The results dict of the run: eval figures, sparsity, MACs and what the run was."""
    config = run.config
    step, ev, figures = outcome.step, outcome.evaluation, outcome.figures
    results = {
        "top1": ev["top1"],
        "top5": ev["top5"],
        # The best of the per-epoch evaluations (as the reference logs it), the final one included.
        "best_top1": outcome.best_top1,
        "best_top1_epoch": outcome.best_top1_epoch,
        "eval_loss": ev["loss"],
        "sparsity": figures["sparsity"],
        "macs": figures["macs"],
        "dense_macs": figures["dense_macs"],
        "steps": step,
        "model": config.model,
        "dataset": config.dataset,
        "criterion": config.criterion,
        "recipe": config.recipe,
        "reference_schedules": config.reference_schedules,
        "schedule": config.schedule,
        "target_sparsity": float(config.sparsity) if run.sparse else 0.0,
        "layer_sparsity": figures["layer_sparsity"],
        "num_eval_examples": ev["num_examples"],
        "eval_split": run.info.eval_split,
        "num_devices": jax.device_count(),
        "batch_size": config.batch_size,
        "train_time_s": train_time,
        "wall_time_s": time.time() - wall_start,
        # Where the run started: "" (a fresh init) or the source it was initialised from.
        "init_from": config_lib.init_from_path(config.init_from),
        "reinit": list(config_lib.reinit_names(config)),
    }
    if "pattern" in figures:  # N:M: each leaf's validity and MACs (`nm_figures`).
        for key in ("pattern", "nm_valid_fraction", "nm_layers"):
            results[key] = figures[key]
    if run.sparse:  # What optg_optax ran with, the recipe's values filled in.
        settings = steps.optg_settings(config, run.num_steps, run.steps_per_epoch).resolved()
        results["optg_settings"] = settings.to_dict()
        results["schedule"] = results["optg_settings"]["schedule"]
    if config.eval_only:
        results["eval_only"] = True
        if previous is not None:  # The training run's results.
            results["train_time_s"] = previous.get("train_time_s", 0.0)
    return results


def _write_outputs(run: Run, state: steps.TrainState, results: dict) -> None:
    """Process 0: the export, results.json (eval_results.json when evaluating only), the table."""
    # Every process takes part in gathering a sharded state; only process 0 writes.
    masked = jax.tree.map(to_host, steps.masked_params(state.params, state.opt_state, run.sparse))
    batch_stats = jax.tree.map(to_host, state.batch_stats)
    if not run.is_main:
        return
    info = {k: results[k] for k in _EXPORT_INFO_KEYS if k in results}
    results["export"] = checkpoints.export(
        run.workdir, masked, batch_stats, info, pattern=results.get("pattern")
    )
    name = EVAL_RESULTS_FILE if run.config.eval_only else RESULTS_FILE
    checkpoints.write_json(checkpoints.workdir_path(run.workdir) / name, results)
    print(metrics_lib.summary_table(results), flush=True)
