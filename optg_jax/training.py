"""The training program: `train_and_evaluate(config, workdir)`.

One batch's path: `data.train_iterator` yields this process's share of the global batch as NumPy
arrays; `jax.make_array_from_process_local_data` makes it one global array sharded on its leading
axis over a 1-D mesh of all devices; the jitted `train_step` takes the replicated train state and
that batch, runs the model on the masked weights `W * M` (`optg_jax.apply_masks`), and hands the
gradient to the optax chain `optg_optax -> add_decayed_weights -> sgd`, whose first link moves the
OptG scores and refreshes the masks. Because the batch is one global array and the loss is a mean
over it, XLA averages the gradients and BatchNorm statistics over the global batch by itself.

Workdir: see `optg_jax.checkpoints` for the layout; metrics go to workdir/tb (TensorBoard) and
workdir/metrics.jsonl, the final figures to workdir/results.json.
"""

from __future__ import annotations

import functools
import math
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import optg_jax
from optg_jax import checkpoints, models
from optg_jax import config as config_lib
from optg_jax import flops as flops_lib
from optg_jax import metrics as metrics_lib
from optg_jax.config import ConfigError

RESULTS_FILE = "results.json"


class TrainingError(RuntimeError):
    """Training had to stop (e.g. a non-finite loss); the message is one line."""


@flax.struct.dataclass
class TrainState:
    """Everything a step changes. `opt_state` holds the OptG scores and masks."""

    step: jax.Array  # int32 scalar: number of updates done.
    params: Any  # Dense weights W (float32).
    batch_stats: Any  # BatchNorm running statistics ({} for models without BN).
    opt_state: Any  # optax chain state.


# --------------------------------------------------------------------------- building blocks


def learning_rate_schedule(
    config: ml_collections.ConfigDict, num_steps: int, steps_per_epoch: int
) -> optax.Schedule:
    """Linear warm-up to `learning_rate * batch_size / 256`, then cosine decay to 0."""
    peak = config_lib.effective_learning_rate(config)
    warmup = min(int(round(config.warmup_epochs * steps_per_epoch)), num_steps - 1)
    if warmup <= 0:
        return optax.cosine_decay_schedule(peak, decay_steps=num_steps)
    return optax.warmup_cosine_decay_schedule(
        0.0, peak, warmup_steps=warmup, decay_steps=num_steps, end_value=0.0
    )


def make_optimizer(
    config: ml_collections.ConfigDict,
    num_steps: int,
    steps_per_epoch: int,
    lr_schedule: optax.Schedule,
) -> optax.GradientTransformation:
    """`optg_optax -> add_decayed_weights -> sgd(momentum)`; no OptG link for dense runs."""
    links = []
    if not config_lib.is_dense(config):
        links.append(
            optg_jax.optg_optax(
                target_sparsity=float(config.sparsity),
                total_steps=num_steps,
                learning_rate=lr_schedule,
                criterion=config.criterion,
                schedule=config.schedule,
                mask_update_every=int(config.mask_update_every) or steps_per_epoch,
                beta=float(config.beta),
                steps_per_epoch=steps_per_epoch,
                pruning_start_step=0,
                pruning_end_step=pruning_end_step(config, num_steps),
                allocation=config.allocation,
                score_momentum=float(config.score_momentum),
                score_lr_floor=float(config.score_lr_floor),
                update_masks_after_pruning=bool(config.update_masks_after_pruning),
            )
        )
    if config.weight_decay:
        links.append(optax.add_decayed_weights(config.weight_decay))
    links.append(optax.sgd(lr_schedule, momentum=config.momentum or None))
    return optax.chain(*links)


def pruning_end_step(config: ml_collections.ConfigDict, num_steps: int) -> int:
    """The step at which the sparsity reaches the target (at least 1, at most `num_steps`)."""
    return int(min(num_steps, max(1, round(config.pruning_end_fraction * num_steps))))


def masked_params(params, opt_state, sparse: bool):
    """W * M on the masked leaves (the network that is trained and evaluated)."""
    return optg_jax.apply_masks(params, opt_state) if sparse else params


def _variables(params, batch_stats):
    return {"params": params, **({"batch_stats": batch_stats} if batch_stats else {})}


def train_step(
    state: TrainState,
    batch: dict,
    *,
    model,
    tx,
    num_classes: int,
    label_smoothing: float,
    sparse: bool,
) -> tuple[TrainState, dict]:
    """One SGD step on the global batch; returns the new state and scalar metrics.

    batch: {'image': float [B, H, W, C], 'label': int32 [B]}, sharded on B.
    Metrics: loss, accuracy, grad_norm (float32 scalars) and, for sparse runs, the scheduled
    sparsity and score lr after this step.
    """
    mparams = masked_params(state.params, state.opt_state, sparse)

    def loss_fn(mp):
        logits, new_vars = model.apply(
            _variables(mp, state.batch_stats), batch["image"], train=True, mutable=["batch_stats"]
        )
        targets = jax.nn.one_hot(batch["label"], num_classes)
        if label_smoothing:
            targets = optax.smooth_labels(targets, label_smoothing)
        loss = optax.softmax_cross_entropy(logits, targets).mean()
        return loss, (logits, new_vars.get("batch_stats", state.batch_stats))

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(mparams)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {
        "loss": loss,
        "accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"]),
        "grad_norm": optax.global_norm(grads),
    }
    if sparse:
        optg_state = optg_jax.get_optg_state(opt_state)
        metrics["sparsity"] = optg_state.sparsity
        metrics["score_lr"] = optg_state.score_lr
    new_state = TrainState(
        step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state
    )
    return new_state, metrics


def eval_step(state: TrainState, batch: dict, *, model, num_classes: int, sparse: bool) -> dict:
    """Sums over the (padded) global batch: correct top-1/top-5, cross-entropy, example count."""
    mparams = masked_params(state.params, state.opt_state, sparse)
    logits = model.apply(_variables(mparams, state.batch_stats), batch["image"], train=False)
    weight = batch["mask"].astype(jnp.float32)
    labels = batch["label"]
    top1 = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    _, top_k = jax.lax.top_k(logits, min(5, num_classes))
    top5 = jnp.any(top_k == labels[:, None], axis=-1).astype(jnp.float32)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return {
        "correct1": jnp.sum(top1 * weight),
        "correct5": jnp.sum(top5 * weight),
        "loss": jnp.sum(ce * weight),
        "count": jnp.sum(weight),
    }


def to_host(x):
    """A NumPy copy of a (replicated) global array; works when it is not fully addressable."""
    if isinstance(x, jax.Array):
        return np.asarray(x.addressable_data(0))
    return x


# --------------------------------------------------------------------------- the program


class _Run:
    """Static facts of one run, derived once from the config (no JAX state)."""

    def __init__(self, config, data, info):
        self.sparse = not config_lib.is_dense(config)
        computed = data.steps_per_epoch(info, config.batch_size)
        self.steps_per_epoch = int(
            config.steps_per_epoch if config.steps_per_epoch > 0 else computed
        )
        self.num_steps = int(
            config.num_train_steps
            if config.num_train_steps > 0
            else config.num_epochs * self.steps_per_epoch
        )
        self.image_size = config.image_size or None
        self.data_dir = config.data_dir or None
        self.input_shape = tuple(info.image_shape)


def _check_devices(config) -> None:
    n, procs = jax.device_count(), jax.process_count()
    if config.batch_size % n:
        raise ConfigError(
            f"config.batch_size={config.batch_size} is not divisible by the number of "
            f"devices {n} ({procs} process(es) x {jax.local_device_count()} local)"
        )


def _global_batch(local: dict, sharding, local_batch: int) -> dict:
    """Pads a short local batch (mask 0) and assembles the global array from every process."""
    n = next(iter(local.values())).shape[0]
    if n < local_batch:
        if "mask" not in local:
            raise ValueError(f"a training batch of {n} examples, expected {local_batch}")
        pad = local_batch - n
        local = {
            k: np.concatenate([v, np.zeros((pad, *v.shape[1:]), v.dtype)]) for k, v in local.items()
        }
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local.items()
    }


def evaluate(p_eval_step, state, data, config, run: _Run, batch_sharding) -> dict:
    """Top-1, top-5 and mean loss of the masked model over the eval split (or steps_per_eval)."""
    local_batch = config.batch_size // jax.process_count()
    it = data.eval_iterator(
        config.dataset,
        run.data_dir,
        config.batch_size,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        image_size=run.image_size,
        validation_examples=int(config.validation_examples),
    )
    totals = None
    for i, batch in enumerate(it):
        if 0 < config.steps_per_eval <= i:
            break
        batch = {k: batch[k] for k in ("image", "label", "mask")}
        out = p_eval_step(state, _global_batch(batch, batch_sharding, local_batch))
        totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
    totals = jax.tree.map(lambda x: float(to_host(x)), totals)
    count = max(totals["count"], 1.0)
    return {
        "top1": totals["correct1"] / count,
        "top5": totals["correct5"] / count,
        "loss": totals["loss"] / count,
        "num_examples": int(totals["count"]),
    }


def _sparsity_figures(state, run: _Run, model) -> dict:
    """Global/per-layer sparsity and sparse/dense MACs per example (host values)."""
    host_params = jax.tree.map(to_host, state.params)
    variables = _variables(host_params, jax.tree.map(to_host, state.batch_stats))
    dense = flops_lib.count(model, variables, run.input_shape)
    if not run.sparse:
        return {
            "sparsity": 0.0,
            "target_sparsity": 0.0,
            "layer_sparsity": {},
            "flops": dense,
            "dense_flops": dense,
            "score_lr": 0.0,
        }
    optg_state = jax.tree.map(to_host, optg_jax.get_optg_state(state.opt_state))
    summary = optg_jax.sparsity_summary(optg_state)
    sparse = flops_lib.count(model, variables, run.input_shape, masks=optg_state.masks)
    return {
        "sparsity": summary["global"],
        "target_sparsity": summary["target"],
        "layer_sparsity": summary["layers"],
        "flops": sparse,
        "dense_flops": dense,
        "score_lr": summary["score_lr"],
        "num_masked": summary["num_masked"],
        "num_kept": summary["num_kept"],
    }


def _read_results(workdir: str) -> dict | None:
    return checkpoints.read_json(checkpoints.workdir_path(workdir) / RESULTS_FILE)


def _say(line: str) -> None:
    if jax.process_index() == 0:
        print(line, flush=True)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains (or resumes, or only evaluates) the run described by `config` in `workdir`.

    Args:
      config: a config from `configs/` (see `optg_jax.config.base_config` for the fields).
      workdir: directory for checkpoints, metrics, config.json, results.json and the export.

    Returns:
      The results dict (also written to workdir/results.json): top1, top5, sparsity, flops,
      dense_flops, steps and more.

    Raises:
      ConfigError (a ValueError): a bad config or a workdir of another run; nothing is written.
      TrainingError: a non-finite loss; the last good checkpoint is kept.
      checkpoints.CheckpointError: checkpoints exist but none is readable.
    """
    wall_start = time.time()
    config_lib.validate(config)
    if config.distributed and not jax.distributed.is_initialized():
        jax.distributed.initialize()  # Cluster details come from the environment (SLURM, TPU, ...).
    _check_devices(config)
    # Imported here: it imports TensorFlow, which a bad config should not have to wait for.
    from optg_jax import data  # pylint: disable=import-outside-toplevel

    data.ensure_dataset(config.dataset, config.data_dir or None)
    info = data.dataset_info(
        config.dataset,
        config.data_dir or None,
        image_size=config.image_size or None,
        validation_examples=int(config.validation_examples),
    )
    run = _Run(config, data, info)
    model = models.create(config.model, num_classes=info.num_classes, dtype=jnp.dtype(config.dtype))
    lr_schedule = learning_rate_schedule(config, run.num_steps, run.steps_per_epoch)
    tx = make_optimizer(config, run.num_steps, run.steps_per_epoch, lr_schedule)

    mesh = Mesh(np.asarray(jax.devices()), ("data",))
    replicated = NamedSharding(mesh, P())
    batch_sharding = NamedSharding(mesh, P("data"))

    def init(rng):
        variables = model.init(rng, jnp.zeros((1, *run.input_shape), jnp.float32), train=False)
        params = variables["params"]
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            batch_stats=variables.get("batch_stats", {}),
            opt_state=tx.init(params),
        )

    # The "rbg" generator: the same draws for a given seed, and the init compiles in seconds where
    # threefry takes ~15 s for a small ResNet on a 2-core CPU.
    rng = jax.random.key(config.seed, impl="rbg")
    abstract = jax.eval_shape(init, rng)
    param_shapes = checkpoints.shapes(abstract.params)
    identity = config_lib.identity(config)

    # Everything above only reads; refuse another experiment's workdir before writing anything.
    has_config = checkpoints.check_workdir(
        workdir, identity, param_shapes, config_lib.identity(config_lib.base_config())
    )
    has_checkpoints = bool(checkpoints.checkpoint_steps_on_disk(workdir))
    if config.eval_only and not has_checkpoints:
        raise ConfigError(
            f"config.eval_only=True but {workdir}/{checkpoints.CHECKPOINT_DIR} holds no checkpoint"
        )
    done = _read_results(workdir)
    if (
        not config.eval_only
        and done is not None
        and done.get("steps") == run.num_steps
        and has_checkpoints
    ):
        _say(f"{workdir} holds a finished run ({run.num_steps} steps); its results:")
        _say(metrics_lib.summary_table(done))
        return done

    is_main = jax.process_index() == 0
    if is_main:
        checkpoints.workdir_path(workdir).mkdir(parents=True, exist_ok=True)
        if not has_config:
            checkpoints.write_workdir_config(workdir, config.to_dict(), identity, param_shapes)
    mngr = checkpoints.manager(workdir, config.keep_checkpoints)

    abstract_sharded = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), abstract
    )
    state, start_step = checkpoints.restore_latest(mngr, abstract_sharded, workdir, log=_say)
    if state is None:
        state = jax.jit(init, out_shardings=replicated)(rng)
    else:
        _say(f"resuming from the checkpoint at step {start_step}")

    p_eval_step = jax.jit(
        functools.partial(eval_step, model=model, num_classes=info.num_classes, sparse=run.sparse),
        in_shardings=(replicated, batch_sharding),
        out_shardings=replicated,
    )

    train_time = 0.0
    if not config.eval_only and start_step < run.num_steps:
        writer = metrics_lib.MetricWriter(workdir, enabled=is_main)
        try:
            t0 = time.time()
            state = _train_loop(
                config,
                run,
                model,
                tx,
                lr_schedule,
                state,
                start_step,
                mngr,
                writer,
                p_eval_step,
                info,
                data,
                replicated,
                batch_sharding,
            )
            train_time = time.time() - t0
        finally:
            mngr.wait_until_finished()
            writer.close()

    step = int(to_host(state.step))
    ev = evaluate(p_eval_step, state, data, config, run, batch_sharding)
    figures = _sparsity_figures(state, run, model)
    results = {
        "top1": ev["top1"],
        "top5": ev["top5"],
        "eval_loss": ev["loss"],
        "sparsity": figures["sparsity"],
        "flops": figures["flops"],
        "dense_flops": figures["dense_flops"],
        "steps": step,
        "model": config.model,
        "dataset": config.dataset,
        "criterion": config.criterion,
        "schedule": config.schedule,
        "target_sparsity": float(config.sparsity) if run.sparse else 0.0,
        "layer_sparsity": figures["layer_sparsity"],
        "num_eval_examples": ev["num_examples"],
        "eval_split": info.eval_split,
        "num_devices": jax.device_count(),
        "batch_size": config.batch_size,
        "train_time_s": train_time,
        "wall_time_s": time.time() - wall_start,
    }
    if config.eval_only:
        results["eval_only"] = True
        if done is not None:  # the training run's results, read above
            results["train_time_s"] = done.get("train_time_s", 0.0)
    masked = masked_params(state.params, state.opt_state, run.sparse)
    export_info = {
        k: results[k]
        for k in (
            "model",
            "dataset",
            "criterion",
            "steps",
            "sparsity",
            "top1",
            "top5",
            "flops",
            "dense_flops",
        )
    }
    if is_main:
        export_path = checkpoints.export(
            workdir,
            jax.tree.map(to_host, masked),
            jax.tree.map(to_host, state.batch_stats),
            export_info,
        )
        results["export"] = export_path
        name = "eval_results.json" if config.eval_only else RESULTS_FILE
        checkpoints.write_json(checkpoints.workdir_path(workdir) / name, results)
        print(metrics_lib.summary_table(results), flush=True)
    mngr.close()
    return results


def _train_loop(
    config,
    run: _Run,
    model,
    tx,
    lr_schedule,
    state,
    start_step,
    mngr,
    writer,
    p_eval_step,
    info,
    data,
    replicated,
    batch_sharding,
) -> TrainState:
    """Runs steps start_step..num_steps-1 with evaluation each epoch; returns the final state."""
    p_train_step = jax.jit(
        functools.partial(
            train_step,
            model=model,
            tx=tx,
            num_classes=info.num_classes,
            label_smoothing=float(config.label_smoothing),
            sparse=run.sparse,
        ),
        in_shardings=(replicated, batch_sharding),
        out_shardings=(replicated, replicated),
        donate_argnums=(0,),
    )
    local_batch = config.batch_size // jax.process_count()
    it = data.train_iterator(
        config.dataset,
        run.data_dir,
        config.batch_size,
        config.seed,
        start_step=start_step,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        image_size=run.image_size,
        validation_examples=int(config.validation_examples),
    )
    is_main = jax.process_index() == 0
    bar = metrics_lib.ProgressBar(run.num_steps, start_step, enabled=is_main)
    epoch_sums: dict[str, float] = {}
    last_saved = max((s for s in mngr.all_steps()), default=None)

    if last_saved is None:  # A fresh run: keep the initial state, so there is always a good one.
        checkpoints.save(mngr, start_step, state)
        last_saved = start_step

    def finish(step: int, m) -> None:
        """Host-side work for the finished step `step` (0-based): checks, sums, logs."""
        m = {k: float(to_host(v)) for k, v in m.items()}
        if not (math.isfinite(m["loss"]) and math.isfinite(m["grad_norm"])):
            bar.close()
            mngr.wait_until_finished()
            bad = m["loss"] if not math.isfinite(m["loss"]) else m["grad_norm"]
            what = "loss" if not math.isfinite(m["loss"]) else "gradient norm"
            kept = (
                f"the last good checkpoint is step {last_saved} in {mngr.directory}"
                if last_saved is not None
                else "no checkpoint was written"
            )
            raise TrainingError(f"{what} became {bad} at step {step + 1}; training stopped, {kept}")
        for k, v in m.items():
            epoch_sums[k] = epoch_sums.get(k, 0.0) + v
        epoch_sums["n"] = epoch_sums.get("n", 0.0) + 1
        postfix = {"loss": m["loss"]}
        if "sparsity" in m:
            postfix["sparsity"] = max(0.0, m["sparsity"])
        bar.update(1, **postfix)
        if (step + 1) % config.log_every_steps == 0:
            writer.write(
                step + 1,
                {f"train/{k}_step": v for k, v in m.items()}
                | {"train/lr": float(lr_schedule(step))},
            )

    pending = None  # (step, metrics) of the step launched before the current one.
    for step in range(start_step, run.num_steps):
        batch = next(it)
        batch = _global_batch(
            {k: batch[k] for k in ("image", "label")}, batch_sharding, local_batch
        )
        state, step_metrics = p_train_step(state, batch)
        # At most two steps in flight: wait for the previous one (a long queue of all-reduces can
        # deadlock XLA's CPU collectives, and its loss must be checked anyway).
        if pending is not None:
            finish(*pending)
        pending = (step, step_metrics)
        done = step + 1
        end_of_epoch = done % run.steps_per_epoch == 0 or done == run.num_steps
        save_now = done % config.checkpoint_every_steps == 0 or done == run.num_steps
        if end_of_epoch or save_now:
            finish(*pending)
            pending = None
        if save_now:
            checkpoints.save(mngr, done, state)
            last_saved = done
        if end_of_epoch:
            n = max(epoch_sums.pop("n", 1.0), 1.0)
            train_means = {k: v / n for k, v in epoch_sums.items()}
            epoch_sums.clear()
            ev = evaluate(p_eval_step, state, data, config, run, batch_sharding)
            figures = _sparsity_figures(state, run, model)
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
                    "sparsity/global": figures["sparsity"],
                    "sparsity/target": figures["target_sparsity"],
                    "sparsity/scheduled": train_means.get("sparsity", 0.0),
                    "sparsity/layers": figures["layer_sparsity"],
                    "flops/sparse": figures["flops"],
                    "flops/dense": figures["dense_flops"],
                    "lr": float(lr_schedule(done - 1)),
                    "score_lr": figures["score_lr"],
                },
            )
            bar.write(
                f"epoch {epoch:.2f} step {done}: train loss {train_means.get('loss', 0):.4f} "
                f"acc {train_means.get('accuracy', 0):.4f} | eval top-1 {ev['top1']:.4f} "
                f"top-5 {ev['top5']:.4f} | sparsity {figures['sparsity']:.4f} | "
                f"MACs {figures['flops']:,}/{figures['dense_flops']:,}"
            )
    bar.close()
    return state
