"""The data sets the program knows, where TFDS keeps them, and what both pipelines share.

A data set's fixed facts are a `Spec` (`dataset_spec`); how one process takes part in every
global batch is a `Shard`, made and checked once and passed down the pipelines whole. The
in-memory pipeline (`in_memory`) and the tf.data one (`streamed`) share the seeds, the
normalisation and the padding of the last eval batch defined here.
"""

from __future__ import annotations

import os
import types
from typing import Mapping, NamedTuple

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging

from optg_jax.train import files

Batch = Mapping[str, np.ndarray]

CIFAR_PAD = 4  # CIFAR-style augmentation: pad by 4 pixels, crop back at a random offset.
# Domain tags keep the random streams for shuffling and augmentation independent.
SHUFFLE_DOMAIN, AUGMENT_DOMAIN = 0, 1


class DatasetInfo(NamedTuple):
    """What a training program needs to know about a data set.

    `image_shape` is (H, W, C) of the model input after preprocessing; the example counts are
    those the iterators actually produce (under `tfds.testing.mock_data`, the mocked count).
    """

    num_classes: int
    num_train_examples: int
    num_eval_examples: int
    image_shape: tuple[int, int, int]
    train_split: str
    eval_split: str


class Spec(NamedTuple):
    """The fixed facts of a data set (`dataset_spec`), with its splits as the run reads them."""

    num_classes: int
    image_size: int
    channels: int
    train_split: str
    eval_split: str
    num_train: int
    num_eval: int
    mean: tuple[float, ...]  # Per channel, on the [0, 1] scale.
    std: tuple[float, ...]
    fits_in_memory: bool  # The whole split as uint8 numpy is small (under 200 MB).
    augment: bool  # Default for `train_iterator(augment=None)`.
    held_out: int = 0  # > 0: the last `held_out` training examples are the eval split.


SPECS: Mapping[str, Spec] = types.MappingProxyType(
    {
        "fashion_mnist": Spec(
            10,
            28,
            1,
            "train",
            "test",
            60_000,
            10_000,
            (0.2860,),
            (0.3530,),
            fits_in_memory=True,
            augment=False,
        ),
        "cifar10": Spec(
            10,
            32,
            3,
            "train",
            "test",
            50_000,
            10_000,
            (0.4914, 0.4822, 0.4465),
            (0.2023, 0.1994, 0.2010),  # The OptG reference's (and many CIFAR repos') std.
            fits_in_memory=True,
            augment=True,
        ),
        "imagenet2012": Spec(
            1000,
            224,
            3,
            "train",
            "validation",
            1_281_167,
            50_000,
            (0.485, 0.456, 0.406),
            (0.229, 0.224, 0.225),
            fits_in_memory=False,
            augment=True,
        ),
    }
)


def names() -> list[str]:
    """The data set names the pipelines accept.

    Returns:
      The names, e.g. `['fashion_mnist', 'cifar10', 'imagenet2012']`.
    """
    return list(SPECS)


def dataset_spec(name: str, validation_examples: int = 0) -> Spec:
    """The spec of data set `name`, with a held-out validation split when asked.

    Args:
      name: the data set (`names()`).
      validation_examples: n > 0 trains on all but the last n examples of the training split
        and evaluates on those n (a validation split for tuning that never touches the test
        split).

    Returns:
      The `Spec`; with n > 0 its splits are `train[:-n]` and `train[-n:]`.

    Raises:
      ValueError: an unknown `name`, or `validation_examples` is not an integer in
        `[0, num_train)`.
    """
    if name not in SPECS:
        raise ValueError(f"unknown data set {name!r}; known: {', '.join(sorted(SPECS))}")
    spec = SPECS[name]
    n = validation_examples
    if not isinstance(n, (int, np.integer)) or not 0 <= n < spec.num_train:
        raise ValueError(
            f"validation_examples={n!r} must be an integer in [0, {spec.num_train}) for {name}"
        )
    if not n:
        return spec
    return spec._replace(
        train_split=f"{spec.train_split}[:-{n}]",
        eval_split=f"{spec.train_split}[-{n}:]",
        num_train=spec.num_train - n,
        num_eval=n,
        held_out=int(n),
    )


def check_held_out(spec: Spec, total: int, name: str) -> None:
    """Checks that the data on disk keeps some training examples after the held-out ones.

    Args:
      spec: the data set's spec (`held_out` examples held out).
      total: the training examples on disk.
      name: the data set, for the message.

    Raises:
      ValueError: `held_out >= total`.
    """
    if spec.held_out >= total:
        raise ValueError(
            f"validation_examples={spec.held_out} leaves no training examples of "
            f"the {total} in {name}"
        )


def base_split(split: str) -> str:
    """The split without its slice.

    Args:
      split: a TFDS split name, e.g. `'train[:-5000]'`.

    Returns:
      The split it slices, e.g. `'train'`.
    """
    return split.split("[", 1)[0]


def resolve_data_dir(data_dir: str | None) -> str:
    """Where the TFDS data sets are.

    Args:
      data_dir: a directory (`~` is expanded when local), or None/"" for TFDS's default.

    Returns:
      `data_dir`, or $TFDS_DATA_DIR, else ~/tensorflow_datasets.
    """
    if data_dir:
        return data_dir if files.is_remote(data_dir) else os.path.expanduser(data_dir)
    return os.path.expanduser(os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets"))


def hide_gpus_from_tensorflow() -> None:
    """Makes TensorFlow see no GPU, so that it takes none of the memory JAX trains in.

    TensorFlow only runs the input pipeline here. Its device list is fixed when its runtime starts
    (at the first TF op), so this must run before that; every public function of
    `optg_jax.train.data` calls it first. Calling it again is harmless. If the runtime already
    started with GPUs visible (some other code ran TF first), it logs a warning instead: TF then
    holds GPU memory until exit.
    """
    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:
        if tf.config.list_logical_devices("GPU"):
            logging.warning(
                "TensorFlow started on the GPUs before the input pipeline could hide them and "
                "keeps GPU memory that JAX cannot use; call "
                "optg_jax.train.data.hide_gpus_from_tensorflow() before any other TensorFlow code."
            )


def input_size(spec: Spec, image_size: int | None) -> int:
    """The model input's side in pixels.

    Args:
      spec: the data set's spec.
      image_size: the side asked for; None or 0 for the data set's own.

    Returns:
      `image_size`, or `spec.image_size`.

    Raises:
      ValueError: a negative `image_size`.
    """
    if image_size is None or image_size == 0:
        return spec.image_size
    if image_size < 0:
        raise ValueError(f"image_size must be positive (or 0/None for native), got {image_size}")
    return int(image_size)


def split_size(builder: tfds.core.DatasetBuilder, split: str) -> int | None:
    """The number of examples in `split`, as the data on disk (or mocked) holds them.

    Args:
      builder: the TFDS builder of the data set.
      split: a split name (slices allowed).

    Returns:
      The count, or None when the data set cannot be loaded from the builder's data_dir.
    """
    try:
        ds = builder.as_dataset(split=split, shuffle_files=False)
    except (AssertionError, FileNotFoundError):
        return None  # TFDS raises AssertionError for "not prepared".
    n = int(ds.cardinality())
    if n >= 0:
        return n
    return int(builder.info.splits[split].num_examples)


def not_prepared_message(name: str, data_dir: str) -> str:
    """What to do when data set `name` is not prepared under `data_dir`.

    Args:
      name: the data set.
      data_dir: where it was looked for.

    Returns:
      One line: how to prepare it (ImageNet: the manual download), or where else to point.
    """
    if name == "imagenet2012":
        return (
            f"imagenet2012 is not prepared under {data_dir}: download ILSVRC2012_img_train.tar "
            f"and ILSVRC2012_img_val.tar manually from image-net.org into "
            f"{os.path.join(data_dir, 'downloads', 'manual')} and run "
            f"`tfds build imagenet2012 --data_dir={data_dir}`, or set --config.data_dir to a "
            "directory where it is prepared."
        )
    return (
        f"{name} is not prepared under {data_dir}: on a machine with network access run "
        f"`tfds build {name} --data_dir={data_dir}` and copy the result here, or set "
        "--config.data_dir to a directory where it is prepared."
    )


# ------------------------------------------------------------------------------ argument checks


def check_positive(what: str, value: int) -> None:
    """Checks that `value` is a positive integer.

    Args:
      what: the argument's name, for the message.
      value: its value.

    Raises:
      ValueError: `value` is not a positive integer.
    """
    if not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")


def check_enough_examples(num_examples: int, global_batch_size: int) -> None:
    """Checks that the training split fills at least one global batch.

    Args:
      num_examples: the training examples.
      global_batch_size: the examples per step over all processes.

    Raises:
      ValueError: the batch is larger than the split.
    """
    if num_examples < global_batch_size:
        raise ValueError(
            f"global_batch_size={global_batch_size} exceeds the {num_examples} training examples"
        )


def check_seed_and_step(seed: int, start_step: int) -> None:
    """Checks a training iterator's seed and first step.

    Args:
      seed: the seed of the order and augmentation.
      start_step: the global step of the first batch.

    Raises:
      ValueError: either is not a non-negative integer.
    """
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not isinstance(start_step, (int, np.integer)) or start_step < 0:
        raise ValueError(f"start_step must be a non-negative integer, got {start_step!r}")


class Shard(NamedTuple):
    """This process's part of every global batch; `Shard.create` checks the arguments once.

    Attributes:
      process_index: this process, in `[0, process_count)`.
      process_count: the processes that share each global batch.
      global_batch: the examples per step over all processes.
      local_batch: this process's examples per step, `global_batch // process_count`.
    """

    process_index: int
    process_count: int
    global_batch: int
    local_batch: int

    @classmethod
    def create(
        cls, global_batch_size: int, process_index: int = 0, process_count: int = 1
    ) -> Shard:
        """The shard of process `process_index` of `process_count` in batches of the given size.

        Args:
          global_batch_size: the examples per step over all processes; divisible by
            `process_count`.
          process_index: this process, in `[0, process_count)`.
          process_count: the processes that share each global batch.

        Returns:
          The `Shard`.

        Raises:
          ValueError: a non-positive size or count, an index out of range, or a batch that does
            not split evenly over the processes.
        """
        check_positive("global_batch_size", global_batch_size)
        check_positive("process_count", process_count)
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index={process_index} must be in [0, {process_count})")
        if global_batch_size % process_count:
            raise ValueError(
                f"global_batch_size={global_batch_size} is not divisible by "
                f"process_count={process_count}"
            )
        return cls(
            process_index=int(process_index),
            process_count=int(process_count),
            global_batch=int(global_batch_size),
            local_batch=int(global_batch_size // process_count),
        )

    @property
    def rows(self) -> slice:
        """This process's rows of a global batch, `[index * local, (index + 1) * local)`."""
        start = self.process_index * self.local_batch
        return slice(start, start + self.local_batch)


class Options(NamedTuple):
    """How a caller wants its batches made (`train_iterator`, `eval_iterator`).

    Attributes:
      image_size: the model input's side in pixels (None or 0: the data set's own).
      cache: hold the small data sets in memory (training only; ImageNet always streams).
      augment: random crops and flips (training only; None: the data set's default).
      validation_examples: n > 0 trains on all but the last n training examples and evaluates
        on those n.
      deterministic: streamed data only; False lets tf.data hand out examples in the order they
        finish (batches then differ from run to run, and resuming is no longer exact).
      normalize: float32 images normalised on the host (`normalize`), the form the device
        received before; by default the images stay uint8 pixels, 4x fewer bytes to send, and
        the train and eval steps normalise them (`optg_jax.train.steps.Normalization`).
    """

    image_size: int | None = None
    cache: bool = True
    augment: bool | None = None
    validation_examples: int = 0
    deterministic: bool = True
    normalize: bool = False


class Position(NamedTuple):
    """Where a training iterator starts: a global step, and whose order its epoch follows.

    Attributes:
      step: the global step of the first batch.
      epoch_process_count: the process count that began the epoch of `step` (None: the
        iterator's own). A streamed data set gives each process count its own order; a run
        resumed mid-epoch on another count finishes that epoch in the order of the count that
        began it (in-memory data sets have one order for every count and ignore it).
    """

    step: int
    epoch_process_count: int | None = None


class Source(NamedTuple):
    """Where one pipeline reads, and the form of the images it yields.

    Attributes:
      name: the data set.
      data_dir: the TFDS data directory (resolved).
      spec: its spec.
      image_size: the images' side in pixels.
      normalize: float32 images normalised on the host instead of uint8 pixels.
    """

    name: str
    data_dir: str
    spec: Spec
    image_size: int
    normalize: bool = False


class Order(NamedTuple):
    """What fixes the training batches of a `Source`: the seed, the start and the augmentation.

    Attributes:
      seed: the seed of the order and of the augmentation.
      start: the `Position` of the first batch (its `epoch_process_count` filled in).
      augment: random crops and flips.
      deterministic: streamed data only; False lets tf.data hand out examples as they finish.
    """

    seed: int
    start: Position
    augment: bool
    deterministic: bool = True


# ------------------------------------------------------------------------ shared by both pipelines


def derive_seed(*entropy: int) -> int:
    """A 31-bit seed that is a pure function of `entropy` (usable by NumPy and TF).

    Args:
      *entropy: integers, e.g. `(seed, domain, epoch)`.

    Returns:
      The seed.
    """
    state = np.random.SeedSequence([int(e) for e in entropy]).generate_state(1, np.uint32)
    return int(state[0] >> 1)


def normalize(images: np.ndarray, spec: Spec) -> np.ndarray:
    """Per-channel normalisation of uint8 images with the data set's mean and std.

    Args:
      images: uint8 (or float on the 0-255 scale) `[..., C]`.
      spec: the data set's spec (`mean`, `std` on the [0, 1] scale).

    Returns:
      float32 `(images - 255 mean) / (255 std)`.
    """
    mean = np.asarray(spec.mean, np.float32) * 255
    std = np.asarray(spec.std, np.float32) * 255
    return (images.astype(np.float32) - mean) / std


def pad_eval_batch(images: np.ndarray, labels: np.ndarray, local_batch: int) -> Batch:
    """An eval batch padded to `local_batch` rows, with a mask of the real ones.

    Args:
      images: this process's real images, `[n, H, W, C]` with `n <= local_batch`.
      labels: their labels, `[n]`.
      local_batch: the rows of a full local batch.

    Returns:
      `{'image', 'label', 'mask'}` of `local_batch` rows: zeros and mask 0 after the real rows.
    """
    real = len(labels)
    pad = local_batch - real
    mask = np.concatenate([np.ones(real, np.float32), np.zeros(pad, np.float32)])
    if pad:
        images = np.concatenate([images, np.zeros((pad,) + images.shape[1:], images.dtype)])
        labels = np.concatenate([labels, np.zeros(pad, labels.dtype)])
    return {"image": images, "label": labels, "mask": mask}
