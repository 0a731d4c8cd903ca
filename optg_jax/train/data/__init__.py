"""Input pipeline: TFDS data sets as deterministic, resumable, per-process numpy batches.

One batch's path: `train_iterator` yields this process's `local` rows of every global batch as
`{'image': uint8 [local, H, W, C] pixels, 'label': int32 [local]}` (the train and eval steps
normalise the pixels on the device; `Options(normalize=True)` gives normalised float32 instead,
4x the bytes). Order and augmentation depend only on `(seed, epoch, position in epoch)` and, for
streamed data, the process count that began the epoch, so `start_step=s` yields exactly what the
uninterrupted iterator yields from step `s` on. The
iterators check their arguments once, make this process's `Shard` of every global batch, and hand
it to one of two pipelines:

- `in_memory`: Fashion-MNIST and CIFAR-10 held in memory as uint8 NumPy arrays and batched with
  NumPy; N processes together see exactly the batches one process sees.
- `streamed`: ImageNet (and the small data sets with `cache=False`) through tf.data, each of the
  H processes reading only its own share of the split.

`datasets` holds the data sets' facts and what both pipelines share; `fashion_mnist` builds the
real Fashion-MNIST offline from Debian's files. Everything also runs under
`tfds.testing.mock_data`.

TensorFlow is only the input pipeline here: every public function first hides the GPUs from it
(`hide_gpus_from_tensorflow`), so that JAX keeps all of their memory.
"""

from __future__ import annotations

import os
from typing import Iterator

import tensorflow_datasets as tfds

from optg_jax.train import files
from optg_jax.train.data import fashion_mnist, in_memory, streamed
from optg_jax.train.data.datasets import (
    Batch,
    DatasetInfo,
    Options,
    Order,
    Position,
    Shard,
    Source,
    Spec,
    base_split,
    check_enough_examples,
    check_held_out,
    check_positive,
    check_seed_and_step,
    dataset_spec,
    hide_gpus_from_tensorflow,
    input_size,
    names,
    normalize,
    not_prepared_message,
    resolve_data_dir,
    split_size,
)


def ensure_dataset(name: str, data_dir: str | None = None) -> None:
    """Makes sure TFDS data set `name` can be loaded from `data_dir`.

    Fashion-MNIST is built offline from Debian's `dataset-fashion-mnist` files if missing (about
    20 s, once). Other data sets must already be prepared: FileNotFoundError says what to do.
    A remote data_dir (gs://...) is never prepared, only read. Under `tfds.testing.mock_data`
    every data set counts as prepared.

    Args:
      name: the data set (`names()`).
      data_dir: where TFDS data sets are (None: TFDS's default, see `resolve_data_dir`).

    Raises:
      ValueError: `name` is not a known data set.
      FileNotFoundError: the data set is not prepared (or Debian's Fashion-MNIST files are
        missing); the message says what to do.
    """
    hide_gpus_from_tensorflow()
    spec = dataset_spec(name)
    data_dir = resolve_data_dir(data_dir)
    if files.is_remote(data_dir):
        return
    builder = tfds.builder(name, data_dir=data_dir)
    if split_size(builder, spec.train_split) is not None:
        return
    if name != "fashion_mnist":
        raise FileNotFoundError(not_prepared_message(name, data_dir))
    if not os.path.isdir(fashion_mnist.DEBIAN_DIR):
        raise FileNotFoundError(
            fashion_mnist.missing_debian_files_message(fashion_mnist.DEBIAN_DIR, data_dir)
        )
    fashion_mnist.prepare(data_dir)


def dataset_info(
    name: str,
    data_dir: str | None = None,
    image_size: int | None = None,
    validation_examples: int = 0,
) -> DatasetInfo:
    """What a training program needs to know about a data set.

    Counts come from the data in `data_dir` when it is loadable (so mocked data reports its
    mocked size), otherwise from the published split sizes.

    Args:
      name: the data set (`names()`).
      data_dir: where TFDS data sets are (None: TFDS's default).
      image_size: the model input's height and width (None/0: the data set's native size).
      validation_examples: n > 0 takes the last n examples of the training split as the eval
        split (the training split loses them).

    Returns:
      The `DatasetInfo`.

    Raises:
      ValueError: an unknown `name`, a negative `image_size`, or `validation_examples` out of
        range.
    """
    hide_gpus_from_tensorflow()
    spec = dataset_spec(name, validation_examples)
    size = input_size(spec, image_size)
    builder = tfds.builder(name, data_dir=resolve_data_dir(data_dir))
    if spec.held_out:
        total = split_size(builder, base_split(spec.train_split))
        num_train = None if total is None else total - spec.held_out
        num_eval = None if total is None else spec.held_out
        if total is not None:
            check_held_out(spec, total, name)
    else:
        num_train = split_size(builder, spec.train_split)
        num_eval = split_size(builder, spec.eval_split)
    return DatasetInfo(
        num_classes=spec.num_classes,
        num_train_examples=spec.num_train if num_train is None else num_train,
        num_eval_examples=spec.num_eval if num_eval is None else num_eval,
        image_shape=(size, size, spec.channels),
        train_split=spec.train_split,
        eval_split=spec.eval_split,
    )


def steps_per_epoch(info: DatasetInfo, global_batch_size: int) -> int:
    """The number of full global batches in one pass over the training split.

    Args:
      info: the data set's `DatasetInfo`.
      global_batch_size: the batch over all processes.

    Returns:
      `info.num_train_examples // global_batch_size`.

    Raises:
      ValueError: the batch size is not positive or exceeds the training examples.
    """
    check_positive("global_batch_size", global_batch_size)
    check_enough_examples(info.num_train_examples, global_batch_size)
    # The last partial batch is dropped (every step sees a full global batch). The reference's
    # DataLoader keeps it: ImageNet at batch 256 runs 5,004 steps here against 5,005 there (its
    # last with 143 examples), CIFAR-10 195 against 196 (its last with 80).
    return info.num_train_examples // global_batch_size


def _source(name: str, data_dir: str | None, options: Options) -> Source:
    """The `Source` of data set `name` for `options` (checked: name, size, held-out split)."""
    spec = dataset_spec(name, options.validation_examples)
    size = input_size(spec, options.image_size)
    return Source(name, resolve_data_dir(data_dir), spec, size, bool(options.normalize))


def train_iterator(
    name: str,
    data_dir: str | None,
    global_batch_size: int,
    seed: int,
    start_step: int | Position = 0,
    process_index: int = 0,
    process_count: int = 1,
    options: Options | None = None,
) -> Iterator[Batch]:
    """Yields this process's training batches forever, from global step `start_step` on.

    An epoch has num_train_examples // global_batch_size steps and, over all processes, yields
    every example once except num_train_examples % global_batch_size left out. Augmentation
    (default per data set: ImageNet random-resized crop + flip, CIFAR-10 pad-4 crop + flip,
    Fashion-MNIST none) is seeded by (seed, epoch, position), so resuming is bitwise exact.

    With `options.cache` (the default) Fashion-MNIST and CIFAR-10 are loaded into memory once
    (a few seconds) and batched with numpy: epoch e is a permutation that depends only on
    (seed, e), and process i takes rows [i*local:(i+1)*local] of each global batch, so any
    process count sees the same global batches. ImageNet, and the small data sets with
    `cache=False`, stream through tf.data: process i reads only its own share of the split (a
    TFDS even split, about num_train_examples / process_count records per epoch), shuffled per
    epoch with seeds of (seed, epoch, i). Every global batch then holds `local` examples of each
    share: the order is a function of (seed, step, process_count). An epoch keeps the order of
    the count that began it (`Position.epoch_process_count`), so a run resumed mid-epoch on
    another count still sees every example of that epoch once, in the uninterrupted order, and
    the later epochs every example once, in its own count's order.

    Args:
      name: `fashion_mnist`, `cifar10` or `imagenet2012`.
      data_dir: TFDS data directory (None: TFDS's default, see `resolve_data_dir`).
      global_batch_size: examples per step over all processes; divisible by `process_count`.
      seed: non-negative seed of the order and of the augmentation.
      start_step: global step of the first batch (a resumed run's step), or a `Position` that
        also names the process count that began its epoch.
      process_index: this process, in [0, process_count).
      process_count: processes that share each global batch.
      options: image size, caching, augmentation, held-out examples, determinism and the
        images' form (`Options`; None: the defaults).

    Returns:
      An endless iterator of {'image': uint8 [local, H, W, C] pixels (float32 normalised per
      channel with `options.normalize`), 'label': int32 [local]}, local = global_batch_size //
      process_count.

    Raises:
      ValueError: a bad argument, or more examples per batch than the split holds.
      FileNotFoundError: the data set is not prepared under `data_dir`.
    """
    hide_gpus_from_tensorflow()
    options = options or Options()
    source = _source(name, data_dir, options)
    shard = Shard.create(global_batch_size, process_index, process_count)
    start = start_step if isinstance(start_step, Position) else Position(start_step)
    check_seed_and_step(seed, start.step)
    augment = source.spec.augment if options.augment is None else bool(options.augment)
    order = Order(seed, start, augment, bool(options.deterministic))
    if options.cache and source.spec.fits_in_memory:
        return in_memory.train_batches(source, shard, order)
    return streamed.train_batches(source, shard, order)


def eval_iterator(
    name: str,
    data_dir: str | None,
    global_batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
    options: Options | None = None,
) -> Iterator[Batch]:
    """Yields one pass over the eval split, padded to whole global batches.

    The eval split is the data set's test split (ImageNet: validation), or with
    `options.validation_examples` = n > 0 the last n examples of the training split, which
    `train_iterator` with the same option never yields. In-memory data sets give process i
    rows [i*local:(i+1)*local] of each global batch of the stored order; streamed ones give
    process i its own share of the split (a TFDS even split), read by it alone. Either way every
    process yields ceil(num_eval_examples / global_batch_size) batches, and summing masked
    metrics over all processes counts every example exactly once.

    Args:
      name: `fashion_mnist`, `cifar10` or `imagenet2012`.
      data_dir: TFDS data directory (None: TFDS's default).
      global_batch_size: examples per step over all processes; divisible by `process_count`.
      process_index: this process, in [0, process_count).
      process_count: processes that share each global batch.
      options: image size, held-out examples, determinism (streamed data: False hands out the
        same examples in another order) and the images' form; `cache` and `augment` play no
        part (None: the defaults).

    Returns:
      An iterator of {'image': uint8 [local, H, W, C] pixels (float32 normalised with
      `options.normalize`), 'label': int32 [local], 'mask': float32 [local]}: mask is 1 for
      real examples and 0 for padding.

    Raises:
      ValueError: a bad argument.
      FileNotFoundError: the data set is not prepared under `data_dir`.
    """
    hide_gpus_from_tensorflow()
    options = options or Options()
    source = _source(name, data_dir, options)
    shard = Shard.create(global_batch_size, process_index, process_count)
    if source.spec.fits_in_memory:
        return in_memory.eval_batches(source, shard)
    return streamed.eval_batches(source, shard, bool(options.deterministic))


__all__ = [
    "Batch",
    "DatasetInfo",
    "Options",
    "Position",
    "Shard",
    "Spec",
    "dataset_info",
    "dataset_spec",
    "ensure_dataset",
    "eval_iterator",
    "hide_gpus_from_tensorflow",
    "names",
    "normalize",
    "resolve_data_dir",
    "steps_per_epoch",
    "train_iterator",
]
