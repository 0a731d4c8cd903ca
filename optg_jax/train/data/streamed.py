"""The tf.data pipeline: a data set streamed from its TFDS files, each process reading its share.

ImageNet always streams (and Fashion-MNIST and CIFAR-10 with `cache=False`). Each of the H
processes reads only its own contiguous share of the split (a TFDS even split, about N/H
records), shuffled per epoch at file level and through a seeded buffer, and fills its rows of
every global batch from it; evaluation reads the same way. Augmentation uses stateless TF random
ops seeded by the example's position in the global batch order, so the order and the images are a
pure function of `(seed, step, H)`: a run resumed with the same number of processes is bitwise
exact. An epoch keeps the order of the process count that began it: a run resumed mid-epoch on
another count finishes that epoch with exactly the batches the old count would have made (each
process reads the old shares that cover its rows), so no example of it is seen twice or missed;
the next epoch follows the new count's order. Images leave as uint8 pixels (a resized image
rounded to whole grey levels) unless the `Source` asks for normalised float32.
"""

from __future__ import annotations

import math
from typing import Iterator, NamedTuple

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from optg_jax.train.data.datasets import (
    AUGMENT_DOMAIN,
    CIFAR_PAD,
    SHUFFLE_DOMAIN,
    Batch,
    Order,
    Shard,
    Source,
    Spec,
    check_enough_examples,
    derive_seed,
    not_prepared_message,
    pad_eval_batch,
    split_size,
)

EVAL_RESIZE_RATIO = 256 / 224  # ImageNet eval: resize the shorter side to 256, crop 224.


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
    scale = round(size * EVAL_RESIZE_RATIO) / tf.reduce_min(shape)
    new_shape = tf.maximum(tf.cast(tf.round(shape * scale), tf.int32), size)
    image = tf.image.resize(image, new_shape, method="bilinear", antialias=True)
    top = (new_shape[0] - size) // 2
    left = (new_shape[1] - size) // 2
    return image[top : top + size, left : left + size]


def _tf_normalize(image: tf.Tensor, spec: Spec) -> tf.Tensor:
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
    padded = tf.pad(image, [[CIFAR_PAD] * 2, [CIFAR_PAD] * 2, [0, 0]])
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


def _process_split(split: str, shard: Shard):
    """This process's contiguous share of `split`: a TFDS even split (shares differ by at most
    one example), so that the process reads only those records."""
    if shard.process_count == 1:
        return split
    return tfds.split_for_jax_process(
        split, process_index=shard.process_index, process_count=shard.process_count
    )


def _pipeline_options(deterministic: bool) -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = deterministic
    return options


def _open(name: str, data_dir: str, split: str) -> tuple[tfds.core.DatasetBuilder, int]:
    """The builder of data set `name` and the size of `split`, or FileNotFoundError."""
    builder = tfds.builder(name, data_dir=data_dir)
    n = split_size(builder, split)
    if n is None:
        raise FileNotFoundError(not_prepared_message(name, data_dir))
    return builder, n


def _output_image(image: tf.Tensor, source: Source) -> tf.Tensor:
    """The image as the batches carry it: uint8 pixels (a resized image rounded to whole grey
    levels), or normalised float32 when `source.normalize` asks for the host to do it."""
    if source.normalize:
        return _tf_normalize(image, source.spec)
    if image.dtype == tf.uint8:
        return image
    return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


class _Epochs(NamedTuple):
    """What the epochs of one `train_batches` iterator share."""

    builder: tfds.core.DatasetBuilder
    source: Source
    order: Order
    shard: Shard
    steps: int  # Steps per epoch.
    num_examples: int  # In the training split.


def _stream_rows(shard: Shard, count: int) -> list[tuple[Shard, slice]]:
    """The process shares of `count` processes that fill `shard`'s rows of a global batch.

    Returns:
      `[(share, rows)]`: each share as the `Shard` of the process that reads it among `count`,
      and the rows of that process's local batch that fall into `shard`'s rows. With
      `count == shard.process_count` that is `shard` itself and all of its rows.
    """
    local = shard.global_batch // count
    first, last = shard.rows.start, shard.rows.stop
    out = []
    for j in range(first // local, (last - 1) // local + 1):
        share = Shard.create(shard.global_batch, j, count)
        lo, hi = max(first, share.rows.start), min(last, share.rows.stop)
        out.append((share, slice(lo - share.rows.start, hi - share.rows.start)))
    return out


def _stream(epochs: _Epochs, epoch: int, first_step: int, share: Shard, rows: slice):
    """Epoch `epoch` of the share that `share`'s process reads, from `first_step` on, as that
    process would read it: the examples of `rows` of its local batches, preprocessed, one batch
    of them per step."""
    source, order, local = epochs.source, epochs.order, share.local_batch
    # Per process: equal seeds would shuffle every share alike and keep the examples at equal
    # positions of the shares in the same global batch, epoch after epoch.
    shuffle_seed = derive_seed(order.seed, SHUFFLE_DOMAIN, epoch, share.process_index)
    augment_seed = tf.constant(derive_seed(order.seed, AUGMENT_DOMAIN, epoch), tf.int64)
    # No autocache: each epoch builds a fresh pipeline, so TFDS's cache would never be reused.
    read_config = tfds.ReadConfig(
        shuffle_seed=shuffle_seed,
        try_autocache=False,
        options=_pipeline_options(order.deterministic),
    )
    ds = epochs.builder.as_dataset(
        split=_process_split(source.spec.train_split, share),
        shuffle_files=True,
        read_config=read_config,
        decoders=_decoders(source.name),
    )
    # 16 steps of the process's data; encoded ImageNet records are about 110 kB each.
    buffer = min(epochs.num_examples, 16 * local)
    ds = ds.shuffle(buffer, seed=shuffle_seed, reshuffle_each_iteration=False)
    # Every share holds at least steps * local examples (num_examples // count of them).
    ds = ds.take(epochs.steps * local).enumerate().skip(first_step * local)
    if rows.stop - rows.start < local:  # Another process count's share: only our rows.
        ds = ds.filter(lambda index, _: (index % local >= rows.start) & (index % local < rows.stop))
    train_image = _streamed_train_image(source.name, source.image_size, order.augment)

    def preprocess(index, example):
        # The example's position in the global batch order seeds its augmentation, so no two
        # examples of an epoch share a seed, whatever the process count.
        row = share.rows.start + index % local
        position = (index // local) * share.global_batch + row
        image = train_image(example["image"], tf.stack([augment_seed, position]))
        return {"image": _output_image(image, source), "label": tf.cast(example["label"], tf.int32)}

    ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE, deterministic=order.deterministic)
    return ds.batch(rows.stop - rows.start, drop_remainder=True)


def _epoch_dataset(epochs: _Epochs, epoch: int, first_step: int, count: int) -> tf.data.Dataset:
    """This process's batches of epoch `epoch` from `first_step` on, in the order of `count`
    processes (the count that began the epoch)."""
    parts = [
        _stream(epochs, epoch, first_step, share, rows)
        for share, rows in _stream_rows(epochs.shard, count)
    ]
    ds = parts[0]
    if len(parts) > 1:
        ds = tf.data.Dataset.zip(tuple(parts)).map(
            lambda *batches: {k: tf.concat([b[k] for b in batches], 0) for k in batches[0]}
        )
    return ds.prefetch(2).with_options(_pipeline_options(epochs.order.deterministic))


def train_batches(source: Source, shard: Shard, order: Order) -> Iterator[Batch]:
    """This process's training batches from `order.start` on, forever.

    The data set is opened and checked here (errors are raised at once); the batches come
    lazily, one tf.data pipeline per epoch. The order of an epoch is that of the process count
    that began it: a run resumed mid-epoch on another count (`order.start.epoch_process_count`)
    reads, for the rest of that epoch, the shares of the old count that cover its rows, and so
    yields exactly the batches the old processes would have; later epochs follow its own count.

    Args:
      source: the data set, its directory and spec, the images' side and form.
      shard: this process's part of every global batch (and of the split it reads).
      order: the seed, the start, the augmentation (ImageNet: Inception-style crops; else pad-4
        crops) and whether tf.data must keep the order.

    Returns:
      An endless iterator of `{'image': uint8 (float32 normalised with `source.normalize`),
      'label': int32}` of `local_batch` rows.

    Raises:
      FileNotFoundError: the data set is not prepared under `data_dir`.
      ValueError: the global batch does not split over `order.start.epoch_process_count`.
    """
    builder, n = _open(source.name, source.data_dir, source.spec.train_split)
    check_enough_examples(n, shard.global_batch)
    epochs = _Epochs(builder, source, order, shard, n // shard.global_batch, n)
    epoch, first_step = divmod(order.start.step, epochs.steps)
    count = order.start.epoch_process_count or shard.process_count
    if first_step == 0:  # A whole epoch: this process count begins it.
        count = shard.process_count
    Shard.create(shard.global_batch, 0, count)  # Checks that the batch splits over `count`.

    def batches() -> Iterator[Batch]:
        nonlocal epoch, first_step, count
        while True:
            yield from tfds.as_numpy(_epoch_dataset(epochs, epoch, first_step, count))
            epoch, first_step, count = epoch + 1, 0, shard.process_count

    return batches()


def eval_batches(source: Source, shard: Shard, deterministic: bool = True) -> Iterator[Batch]:
    """One pass over this process's share of the eval split, padded to whole global batches.

    Args:
      source: the data set, its directory and spec, the images' side and form.
      shard: this process's part of every global batch (and of the split it reads).
      deterministic: False lets tf.data hand out examples in the order they finish.

    Returns:
      An iterator of `ceil(N / global_batch)` batches `{'image', 'label', 'mask'}` of
      `local_batch` rows; a process whose share runs out first yields empty (all-padding)
      batches, so that every process takes every step.

    Raises:
      FileNotFoundError: the data set is not prepared under `data_dir`.
    """
    builder, n = _open(source.name, source.data_dir, source.spec.eval_split)
    local_batch = shard.local_batch
    eval_image = _streamed_eval_image(source.name, source.image_size)

    def preprocess(example):
        return {
            "image": _output_image(eval_image(example["image"]), source),
            "label": tf.cast(example["label"], tf.int32),
        }

    def batches() -> Iterator[Batch]:
        ds = builder.as_dataset(
            split=_process_split(source.spec.eval_split, shard),
            shuffle_files=False,
            read_config=tfds.ReadConfig(try_autocache=False),
            decoders=_decoders(source.name),
        )
        ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
        ds = ds.batch(local_batch).prefetch(2).with_options(_pipeline_options(deterministic))
        # A share holds at most ceil(n / process_count) examples, which fill at most this many.
        num_batches = math.ceil(n / shard.global_batch)
        produced = 0
        for batch in tfds.as_numpy(ds):
            produced += 1
            yield pad_eval_batch(batch["image"], batch["label"], local_batch)
        # Processes with fewer examples pad with empty batches, so that all take every step.
        dtype = np.float32 if source.normalize else np.uint8
        size, channels = source.image_size, source.spec.channels
        empty_image = np.zeros((0, size, size, channels), dtype)
        for _ in range(produced, num_batches):
            yield pad_eval_batch(empty_image, np.zeros(0, np.int32), local_batch)

    return batches()
