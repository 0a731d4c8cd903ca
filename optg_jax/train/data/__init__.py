"""Input pipeline: TFDS data sets as deterministic, resumable, per-process numpy batches.

One batch's path: `train_iterator` yields this process's `local` rows of every global batch as
`{'image': float32 [local, H, W, C] normalised, 'label': int32 [local]}`. Order and augmentation
depend only on `(seed, epoch, position in epoch)` and, for streamed data, the process count, so
`start_step=s` yields exactly what the uninterrupted iterator yields from step `s` on.

Fashion-MNIST and CIFAR-10 are held in memory as uint8 numpy arrays and batched with numpy (a
2-core CPU host gives thousands of batches/s): every process builds the same global batch order
and takes its rows `[i*local:(i+1)*local]`, so N processes together see exactly the batches one
process sees. ImageNet (and the small data sets with `cache=False`) streams through tf.data, and
there each of the H processes reads only its own contiguous share of the split (a TFDS even
split, about N/H records), shuffled per epoch at file level and through a seeded buffer; its
augmentation uses stateless TF random ops seeded per example. Everything also runs under
`tfds.testing.mock_data`.

TensorFlow is only the input pipeline here: every public function first hides the GPUs from it
(`hide_gpus_from_tensorflow`), so that JAX keeps all of their memory.
"""

from __future__ import annotations

import math
import os
import types
from typing import Iterator, Mapping, NamedTuple

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging

from optg_jax.train.data import fashion_mnist
from optg_jax.train import files

Batch = Mapping[str, np.ndarray]


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


class _Spec(NamedTuple):
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


_SPECS: Mapping[str, _Spec] = types.MappingProxyType(
    {
        "fashion_mnist": _Spec(
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
        "cifar10": _Spec(
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
        "imagenet2012": _Spec(
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
    """The data set names the functions here accept.

    Returns:
      The names, e.g. `['fashion_mnist', 'cifar10', 'imagenet2012']`.
    """
    return list(_SPECS)


_CIFAR_PAD = 4
_EVAL_RESIZE_RATIO = 256 / 224  # ImageNet eval: resize the shorter side to 256, crop 224.
# Domain tags keep the random streams for shuffling and augmentation independent.
_SHUFFLE, _AUGMENT = 0, 1


def _spec(name: str, validation_examples: int = 0) -> _Spec:
    """The spec of `name`; with `validation_examples` = n > 0, train on all but the last n
    examples of the training split and evaluate on those n (a validation split for tuning that
    never touches the test split)."""
    if name not in _SPECS:
        raise ValueError(f"unknown data set {name!r}; known: {', '.join(sorted(_SPECS))}")
    spec = _SPECS[name]
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


def _check_held_out(spec: _Spec, total: int, name: str) -> None:
    """The data on disk (`total` training examples) must keep some after the held-out ones."""
    if spec.held_out >= total:
        raise ValueError(
            f"validation_examples={spec.held_out} leaves no training examples of "
            f"the {total} in {name}"
        )


def _base_split(split: str) -> str:
    """'train[:-5000]' -> 'train'."""
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
    (at the first TF op), so this must run before that; every public function of this module calls
    it first. Calling it again is harmless. If the runtime already started with GPUs visible (some
    other code ran TF first), it logs a warning instead: TF then holds GPU memory until exit.
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


def _image_size(spec: _Spec, image_size: int | None) -> int:
    if image_size is None or image_size == 0:
        return spec.image_size
    if image_size < 0:
        raise ValueError(f"image_size must be positive (or 0/None for native), got {image_size}")
    return int(image_size)


def _num_examples(builder: tfds.core.DatasetBuilder, split: str) -> int | None:
    """Returns the size of `split`, or None if the data set can't be loaded from its data_dir."""
    try:
        ds = builder.as_dataset(split=split, shuffle_files=False)
    except (AssertionError, FileNotFoundError):
        return None  # TFDS raises AssertionError for "not prepared".
    n = int(ds.cardinality())
    if n >= 0:
        return n
    return int(builder.info.splits[split].num_examples)


def _not_prepared_message(name: str, data_dir: str) -> str:
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
    spec = _spec(name)
    data_dir = resolve_data_dir(data_dir)
    if files.is_remote(data_dir):
        return
    builder = tfds.builder(name, data_dir=data_dir)
    if _num_examples(builder, spec.train_split) is not None:
        return
    if name != "fashion_mnist":
        raise FileNotFoundError(_not_prepared_message(name, data_dir))
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
    spec = _spec(name, validation_examples)
    size = _image_size(spec, image_size)
    builder = tfds.builder(name, data_dir=resolve_data_dir(data_dir))
    if spec.held_out:
        total = _num_examples(builder, _base_split(spec.train_split))
        num_train = None if total is None else total - spec.held_out
        num_eval = None if total is None else spec.held_out
        if total is not None:
            _check_held_out(spec, total, name)
    else:
        num_train = _num_examples(builder, spec.train_split)
        num_eval = _num_examples(builder, spec.eval_split)
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
    _check_positive("global_batch_size", global_batch_size)
    _check_enough_examples(info.num_train_examples, global_batch_size)
    # The last partial batch is dropped (every step sees a full global batch). The reference's
    # DataLoader keeps it: ImageNet at batch 256 runs 5,004 steps here against 5,005 there (its
    # last with 143 examples), CIFAR-10 195 against 196 (its last with 80).
    return info.num_train_examples // global_batch_size


# ------------------------------------------------------------------------------ argument checks


def _check_positive(what: str, value: int) -> None:
    if not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")


def _local_batch_size(global_batch_size: int, process_index: int, process_count: int) -> int:
    _check_positive("global_batch_size", global_batch_size)
    _check_positive("process_count", process_count)
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} must be in [0, {process_count})")
    if global_batch_size % process_count:
        raise ValueError(
            f"global_batch_size={global_batch_size} is not divisible by "
            f"process_count={process_count}"
        )
    return global_batch_size // process_count


def _check_enough_examples(num_examples: int, global_batch_size: int) -> None:
    if num_examples < global_batch_size:
        raise ValueError(
            f"global_batch_size={global_batch_size} exceeds the {num_examples} training examples"
        )


def _check_seed_and_step(seed: int, start_step: int) -> None:
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not isinstance(start_step, (int, np.integer)) or start_step < 0:
        raise ValueError(f"start_step must be a non-negative integer, got {start_step!r}")


def _derive_seed(*entropy: int) -> int:
    """Returns a 31-bit seed that is a pure function of `entropy` (usable by numpy and TF)."""
    state = np.random.SeedSequence([int(e) for e in entropy]).generate_state(1, np.uint32)
    return int(state[0] >> 1)


def _normalize(images: np.ndarray, spec: _Spec) -> np.ndarray:
    mean = np.asarray(spec.mean, np.float32) * 255
    std = np.asarray(spec.std, np.float32) * 255
    return (images.astype(np.float32) - mean) / std


# -------------------------------------------------------------------- small data sets in memory


def _load_split(name: str, data_dir: str, split: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Returns (uint8 [N, size, size, C], int32 [N]) of a whole split, in the stored order."""
    builder = tfds.builder(name, data_dir=data_dir)
    n = _num_examples(builder, split)
    if n is None:
        raise FileNotFoundError(
            _not_prepared_message(name, data_dir)
            if name != "fashion_mnist"
            else f"fashion_mnist is not prepared under {data_dir}: call "
            "optg_jax.train.data.ensure_dataset('fashion_mnist', data_dir) first"
        )
    ds = builder.as_dataset(split=split, shuffle_files=False)
    arrays = next(iter(tfds.as_numpy(ds.batch(max(n, 1)))))
    images, labels = arrays["image"], arrays["label"].astype(np.int32)
    if images.shape[1:3] != (size, size):
        resized = [
            tf.image.resize(images[i : i + 4096], (size, size), antialias=True)
            for i in range(0, len(images), 4096)
        ]
        images = np.clip(np.round(np.concatenate(resized)), 0, 255).astype(np.uint8)
    return images, labels


def _load_rows(
    name: str, data_dir: str, spec: _Spec, train: bool, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """The training (`train`) or eval rows of `spec` as `_load_split` returns them."""
    if not spec.held_out:
        return _load_split(name, data_dir, spec.train_split if train else spec.eval_split, size)
    images, labels = _load_split(name, data_dir, _base_split(spec.train_split), size)
    _check_held_out(spec, len(labels), name)
    rows = slice(None, -spec.held_out) if train else slice(-spec.held_out, None)
    return images[rows], labels[rows]


def _pad_crop_flip(images: np.ndarray, offsets: np.ndarray, flips: np.ndarray) -> np.ndarray:
    """Crops each zero-padded image at `offsets` [B, 2] and mirrors it where `flips` [B]."""
    b, h, w, _ = images.shape
    padded = np.pad(images, ((0, 0), (_CIFAR_PAD,) * 2, (_CIFAR_PAD,) * 2, (0, 0)))
    rows = offsets[:, :1] + np.arange(h)
    cols = offsets[:, 1:] + np.arange(w)
    cols = np.where(flips[:, None], cols[:, ::-1], cols)
    return padded[np.arange(b)[:, None, None], rows[:, :, None], cols[:, None, :]]


def _in_memory_train(
    images, labels, spec, global_batch, local_batch, process_index, seed, start_step, augment
) -> Iterator[Batch]:
    n = len(labels)
    steps = n // global_batch
    rows = slice(process_index * local_batch, (process_index + 1) * local_batch)
    epoch, first_step = divmod(start_step, steps)
    while True:
        order = np.random.default_rng(_derive_seed(seed, _SHUFFLE, epoch)).permutation(n)
        for step in range(first_step, steps):
            index = order[step * global_batch : (step + 1) * global_batch][rows]
            batch = images[index]
            if augment:
                # Draws cover the whole global batch, so every process count sees the same ones.
                rng = np.random.default_rng(_derive_seed(seed, _AUGMENT, epoch, step))
                offsets = rng.integers(0, 2 * _CIFAR_PAD + 1, size=(global_batch, 2))
                flips = rng.random(global_batch) < 0.5
                batch = _pad_crop_flip(batch, offsets[rows], flips[rows])
            yield {"image": _normalize(batch, spec), "label": labels[index]}
        epoch, first_step = epoch + 1, 0


def _in_memory_eval(
    images, labels, spec, global_batch, local_batch, process_index
) -> Iterator[Batch]:
    n = len(labels)
    for start in range(0, n, global_batch):
        lo = min(n, start + process_index * local_batch)
        hi = min(n, lo + local_batch)
        yield _pad_eval_batch(_normalize(images[lo:hi], spec), labels[lo:hi], local_batch)


def _pad_eval_batch(images: np.ndarray, labels: np.ndarray, local_batch: int) -> Batch:
    real = len(labels)
    pad = local_batch - real
    mask = np.concatenate([np.ones(real, np.float32), np.zeros(pad, np.float32)])
    if pad:
        images = np.concatenate([images, np.zeros((pad,) + images.shape[1:], images.dtype)])
        labels = np.concatenate([labels, np.zeros(pad, labels.dtype)])
    return {"image": images, "label": labels, "mask": mask}


# ------------------------------------------------------------------------- ImageNet via tf.data


def _imagenet_train_image(encoded: tf.Tensor, seed: tf.Tensor, size: int) -> tf.Tensor:
    """Random-resized crop (Inception style) to size x size and random horizontal flip."""
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    shape = tf.io.extract_jpeg_shape(encoded)
    begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape,
        bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], shape=[1, 1, 4]),
        seed=crop_seed,
        min_object_covered=0.1,
        aspect_ratio_range=(3 / 4, 4 / 3),
        area_range=(0.08, 1.0),
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    offset_y, offset_x, _ = tf.unstack(begin)
    height, width, _ = tf.unstack(crop_size)
    image = tf.io.decode_and_crop_jpeg(
        encoded, tf.stack([offset_y, offset_x, height, width]), channels=3
    )
    # Bilinear with antialiasing: torchvision's default (PIL's bilinear filter), as the reference.
    image = tf.image.resize(image, (size, size), method="bilinear", antialias=True)
    return tf.image.stateless_random_flip_left_right(image, seed=flip_seed)


def _imagenet_eval_image(encoded: tf.Tensor, size: int) -> tf.Tensor:
    """Resizes the shorter side to size * 256/224 and takes the central size x size crop."""
    image = tf.io.decode_jpeg(encoded, channels=3)
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = round(size * _EVAL_RESIZE_RATIO) / tf.reduce_min(shape)
    new_shape = tf.maximum(tf.cast(tf.round(shape * scale), tf.int32), size)
    image = tf.image.resize(image, new_shape, method="bilinear", antialias=True)
    top = (new_shape[0] - size) // 2
    left = (new_shape[1] - size) // 2
    return image[top : top + size, left : left + size]


def _tf_normalize(image: tf.Tensor, spec: _Spec) -> tf.Tensor:
    mean = tf.constant(spec.mean, tf.float32) * 255
    std = tf.constant(spec.std, tf.float32) * 255
    return (tf.cast(image, tf.float32) - mean) / std


def _small_image(image: tf.Tensor, size: int) -> tf.Tensor:
    if tuple(image.shape[:2]) != (size, size):
        image = tf.image.resize(image, (size, size), antialias=True)
    return image


def _pad_crop_flip_tf(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Pad-4 random crop and random horizontal flip with stateless ops (CIFAR style)."""
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    padded = tf.pad(image, [[_CIFAR_PAD] * 2, [_CIFAR_PAD] * 2, [0, 0]])
    image = tf.image.stateless_random_crop(padded, tf.shape(image), seed=crop_seed)
    return tf.image.stateless_random_flip_left_right(image, seed=flip_seed)


def _streamed_train_image(name: str, size: int, augment: bool):
    """Returns `(stored image, int64 [2] seed) -> image [size, size, C]` for training."""
    if name == "imagenet2012":
        if augment:
            return lambda encoded, seed: _imagenet_train_image(encoded, seed, size)
        return lambda encoded, seed: _imagenet_eval_image(encoded, size)
    if augment:
        return lambda image, seed: _pad_crop_flip_tf(_small_image(image, size), seed)
    return lambda image, seed: _small_image(image, size)


def _streamed_eval_image(name: str, size: int):
    if name == "imagenet2012":
        return lambda encoded: _imagenet_eval_image(encoded, size)
    return lambda image: _small_image(image, size)


def _decoders(name: str):
    # ImageNet JPEGs are decoded together with the crop, which saves decoding whole images.
    return {"image": tfds.decode.SkipDecoding()} if name == "imagenet2012" else None


def _process_split(split: str, process_index: int, process_count: int):
    """This process's contiguous share of `split`: a TFDS even split (shares differ by at most
    one example), so that the process reads only those records."""
    if process_count == 1:
        return split
    return tfds.split_for_jax_process(
        split, process_index=process_index, process_count=process_count
    )


def _pipeline_options(deterministic: bool) -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = deterministic
    return options


def _streamed_train(
    builder,
    spec,
    n,
    global_batch,
    local_batch,
    process_index,
    process_count,
    seed,
    start_step,
    size,
    augment,
    deterministic,
) -> Iterator[Batch]:
    steps = n // global_batch
    split = _process_split(spec.train_split, process_index, process_count)
    # 16 steps of this process's data; encoded ImageNet records are about 110 kB each.
    buffer = min(n, 16 * local_batch)
    train_image = _streamed_train_image(builder.name, size, augment)
    row_offset = process_index * local_batch

    def epoch_dataset(epoch: int, first_step: int) -> tf.data.Dataset:
        # Per process: equal seeds would shuffle every share alike and keep the examples at equal
        # positions of the shares in the same global batch, epoch after epoch.
        shuffle_seed = _derive_seed(seed, _SHUFFLE, epoch, process_index)
        augment_seed = tf.constant(_derive_seed(seed, _AUGMENT, epoch), tf.int64)
        # No autocache: each epoch builds a fresh pipeline, so TFDS's cache would never be reused.
        read_config = tfds.ReadConfig(
            shuffle_seed=shuffle_seed,
            try_autocache=False,
            options=_pipeline_options(deterministic),
        )
        ds = builder.as_dataset(
            split=split,
            shuffle_files=True,
            read_config=read_config,
            decoders=_decoders(builder.name),
        )
        ds = ds.shuffle(buffer, seed=shuffle_seed, reshuffle_each_iteration=False)
        # Every share holds at least steps * local_batch examples (n // process_count of them).
        ds = ds.take(steps * local_batch).enumerate().skip(first_step * local_batch)

        def preprocess(index, example):
            # The example's position in the global batch order seeds its augmentation, so no two
            # examples of an epoch share a seed, whatever the process count.
            position = (index // local_batch) * global_batch + row_offset + index % local_batch
            image = train_image(example["image"], tf.stack([augment_seed, position]))
            return {
                "image": _tf_normalize(image, spec),
                "label": tf.cast(example["label"], tf.int32),
            }

        ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
        ds = ds.batch(local_batch, drop_remainder=True).prefetch(2)
        return ds.with_options(_pipeline_options(deterministic))

    epoch, first_step = divmod(start_step, steps)
    while True:
        yield from tfds.as_numpy(epoch_dataset(epoch, first_step))
        epoch, first_step = epoch + 1, 0


def _streamed_eval(
    builder,
    spec,
    n,
    global_batch,
    local_batch,
    process_index,
    process_count,
    size,
    deterministic,
) -> Iterator[Batch]:
    ds = builder.as_dataset(
        split=_process_split(spec.eval_split, process_index, process_count),
        shuffle_files=False,
        read_config=tfds.ReadConfig(try_autocache=False),
        decoders=_decoders(builder.name),
    )
    eval_image = _streamed_eval_image(builder.name, size)

    def preprocess(example):
        return {
            "image": _tf_normalize(eval_image(example["image"]), spec),
            "label": tf.cast(example["label"], tf.int32),
        }

    ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    ds = ds.batch(local_batch).prefetch(2).with_options(_pipeline_options(deterministic))
    # A share holds at most ceil(n / process_count) examples, which fill at most this many.
    num_batches = math.ceil(n / global_batch)
    produced = 0
    for batch in tfds.as_numpy(ds):
        produced += 1
        yield _pad_eval_batch(batch["image"], batch["label"], local_batch)
    # Processes with fewer examples pad with empty batches, so that all take every step.
    empty_image = np.zeros((0, size, size, spec.channels), np.float32)
    for _ in range(produced, num_batches):
        yield _pad_eval_batch(empty_image, np.zeros(0, np.int32), local_batch)


# ------------------------------------------------------------------------------------ public


def train_iterator(
    name: str,
    data_dir: str | None,
    global_batch_size: int,
    seed: int,
    start_step: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    image_size: int | None = None,
    cache: bool = True,
    augment: bool | None = None,
    validation_examples: int = 0,
    deterministic: bool = True,
) -> Iterator[Batch]:
    """Yields this process's training batches forever, from global step `start_step` on.

    An epoch has num_train_examples // global_batch_size steps and, over all processes, yields
    every example once except num_train_examples % global_batch_size left out. Augmentation
    (default per data set: ImageNet random-resized crop + flip, CIFAR-10 pad-4 crop + flip,
    Fashion-MNIST none) is seeded by (seed, epoch, position), so resuming is bitwise exact.

    With `cache` (the default) Fashion-MNIST and CIFAR-10 are loaded into memory once (a few
    seconds) and batched with numpy: epoch e is a permutation that depends only on (seed, e), and
    process i takes rows [i*local:(i+1)*local] of each global batch, so any process count sees the
    same global batches. ImageNet, and the small data sets with `cache=False`, stream through
    tf.data: process i reads only its own share of the split (a TFDS even split, about
    num_train_examples / process_count records per epoch), shuffled per epoch with seeds of
    (seed, epoch, i). Every global batch then holds `local` examples of each share: the order is a
    function of (seed, step, process_count), and a run resumed with another process count still
    sees every example once per epoch, in another order.

    Args:
      name: `fashion_mnist`, `cifar10` or `imagenet2012`.
      data_dir: TFDS data directory (None: TFDS's default, see `resolve_data_dir`).
      global_batch_size: examples per step over all processes; divisible by `process_count`.
      seed: non-negative seed of the order and of the augmentation.
      start_step: global step of the first batch (a resumed run's step).
      process_index: this process, in [0, process_count).
      process_count: processes that share each global batch.
      image_size: model-input side in pixels (None or 0: the data set's own).
      cache: hold the small data sets in memory (ImageNet always streams).
      augment: random crops and flips (None: the data set's default).
      validation_examples: n > 0 leaves out the last n training examples (see `eval_iterator`).
      deterministic: streamed data only; False lets tf.data hand out examples in the order they
        finish, so batches differ from run to run and resuming is no longer exact (see
        BENCHMARKS.md for what it saves).

    Returns:
      An endless iterator of {'image': float32 [local, H, W, C] normalised per channel, 'label':
      int32 [local]}, local = global_batch_size // process_count.

    Raises:
      ValueError: a bad argument, or more examples per batch than the split holds.
      FileNotFoundError: the data set is not prepared under `data_dir`.
    """
    hide_gpus_from_tensorflow()
    spec = _spec(name, validation_examples)
    local_batch = _local_batch_size(global_batch_size, process_index, process_count)
    _check_seed_and_step(seed, start_step)
    size = _image_size(spec, image_size)
    augment = spec.augment if augment is None else augment
    data_dir = resolve_data_dir(data_dir)
    if cache and spec.fits_in_memory:
        images, labels = _load_rows(name, data_dir, spec, True, size)
        _check_enough_examples(len(labels), global_batch_size)
        return _in_memory_train(
            images,
            labels,
            spec,
            global_batch_size,
            local_batch,
            process_index,
            seed,
            start_step,
            augment,
        )
    builder = tfds.builder(name, data_dir=data_dir)
    n = _num_examples(builder, spec.train_split)
    if n is None:
        raise FileNotFoundError(_not_prepared_message(name, data_dir))
    _check_enough_examples(n, global_batch_size)
    return _streamed_train(
        builder,
        spec,
        n,
        global_batch_size,
        local_batch,
        process_index,
        process_count,
        seed,
        start_step,
        size,
        augment,
        deterministic,
    )


def eval_iterator(
    name: str,
    data_dir: str | None,
    global_batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
    image_size: int | None = None,
    validation_examples: int = 0,
    deterministic: bool = True,
) -> Iterator[Batch]:
    """Yields one pass over the eval split, padded to whole global batches.

    The eval split is the data set's test split (ImageNet: validation), or with
    `validation_examples` = n > 0 the last n examples of the training split, which
    `train_iterator(validation_examples=n)` never yields. In-memory data sets give process i
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
      image_size: model-input side in pixels (None or 0: the data set's own).
      validation_examples: n > 0 evaluates on the last n examples of the training split.
      deterministic: streamed data only; False lets tf.data hand out examples in the order they
        finish (the same examples, so the same metrics, in another order).

    Returns:
      An iterator of {'image': float32 [local, H, W, C], 'label': int32 [local], 'mask': float32
      [local]}: mask is 1 for real examples and 0 for padding.

    Raises:
      ValueError: a bad argument.
      FileNotFoundError: the data set is not prepared under `data_dir`.
    """
    hide_gpus_from_tensorflow()
    spec = _spec(name, validation_examples)
    local_batch = _local_batch_size(global_batch_size, process_index, process_count)
    size = _image_size(spec, image_size)
    data_dir = resolve_data_dir(data_dir)
    if spec.fits_in_memory:
        images, labels = _load_rows(name, data_dir, spec, False, size)
        return _in_memory_eval(images, labels, spec, global_batch_size, local_batch, process_index)
    builder = tfds.builder(name, data_dir=data_dir)
    n = _num_examples(builder, spec.eval_split)
    if n is None:
        raise FileNotFoundError(_not_prepared_message(name, data_dir))
    return _streamed_eval(
        builder,
        spec,
        n,
        global_batch_size,
        local_batch,
        process_index,
        process_count,
        size,
        deterministic,
    )
