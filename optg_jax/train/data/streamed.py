"""The tf.data pipeline: a data set streamed from its TFDS files, each process reading its share.

ImageNet always streams (and Fashion-MNIST and CIFAR-10 with `cache=False`). Each of the H
processes reads only its own contiguous share of the split (a TFDS even split, about N/H
records), shuffled per epoch at file level and through a seeded buffer, and fills its rows of
every global batch from it; evaluation reads the same way. Augmentation uses stateless TF random
ops seeded by the example's position in the global batch order, so the order and the images are a
pure function of `(seed, step, H)`: a run resumed with the same number of processes is bitwise
exact.
"""

from __future__ import annotations

import math
from typing import Iterator

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from optg_jax.train.data.datasets import (
    AUGMENT_DOMAIN,
    CIFAR_PAD,
    SHUFFLE_DOMAIN,
    Batch,
    Shard,
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


def train_batches(
    name: str,
    data_dir: str,
    spec: Spec,
    shard: Shard,
    *,
    seed: int,
    start_step: int,
    image_size: int,
    augment: bool,
    deterministic: bool,
) -> Iterator[Batch]:
    """This process's training batches from global step `start_step` on, forever.

    The data set is opened and checked here (errors are raised at once); the batches come
    lazily, one tf.data pipeline per epoch.

    Args:
      name: the data set.
      data_dir: the TFDS data directory (resolved).
      spec: its spec.
      shard: this process's part of every global batch (and of the split it reads).
      seed: the seed of the order and of the augmentation.
      start_step: the global step of the first batch.
      image_size: the images' side in pixels.
      augment: random crops and flips (ImageNet: Inception-style crops; else pad-4 crops).
      deterministic: False lets tf.data hand out examples in the order they finish.

    Returns:
      An endless iterator of `{'image': float32 normalised, 'label': int32}` of `local_batch`
      rows.

    Raises:
      FileNotFoundError: the data set is not prepared under `data_dir`.
    """
    builder, n = _open(name, data_dir, spec.train_split)
    check_enough_examples(n, shard.global_batch)
    local_batch = shard.local_batch
    steps = n // shard.global_batch
    split = _process_split(spec.train_split, shard)
    # 16 steps of this process's data; encoded ImageNet records are about 110 kB each.
    buffer = min(n, 16 * local_batch)
    train_image = _streamed_train_image(name, image_size, augment)
    row_offset = shard.rows.start

    def epoch_dataset(epoch: int, first_step: int) -> tf.data.Dataset:
        # Per process: equal seeds would shuffle every share alike and keep the examples at equal
        # positions of the shares in the same global batch, epoch after epoch.
        shuffle_seed = derive_seed(seed, SHUFFLE_DOMAIN, epoch, shard.process_index)
        augment_seed = tf.constant(derive_seed(seed, AUGMENT_DOMAIN, epoch), tf.int64)
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
            decoders=_decoders(name),
        )
        ds = ds.shuffle(buffer, seed=shuffle_seed, reshuffle_each_iteration=False)
        # Every share holds at least steps * local_batch examples (n // process_count of them).
        ds = ds.take(steps * local_batch).enumerate().skip(first_step * local_batch)

        def preprocess(index, example):
            # The example's position in the global batch order seeds its augmentation, so no two
            # examples of an epoch share a seed, whatever the process count.
            position = (
                (index // local_batch) * shard.global_batch + row_offset + index % local_batch
            )
            image = train_image(example["image"], tf.stack([augment_seed, position]))
            return {
                "image": _tf_normalize(image, spec),
                "label": tf.cast(example["label"], tf.int32),
            }

        ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
        ds = ds.batch(local_batch, drop_remainder=True).prefetch(2)
        return ds.with_options(_pipeline_options(deterministic))

    def batches() -> Iterator[Batch]:
        epoch, first_step = divmod(start_step, steps)
        while True:
            yield from tfds.as_numpy(epoch_dataset(epoch, first_step))
            epoch, first_step = epoch + 1, 0

    return batches()


def eval_batches(
    name: str,
    data_dir: str,
    spec: Spec,
    shard: Shard,
    *,
    image_size: int,
    deterministic: bool,
) -> Iterator[Batch]:
    """One pass over this process's share of the eval split, padded to whole global batches.

    Args:
      name: the data set.
      data_dir: the TFDS data directory (resolved).
      spec: its spec.
      shard: this process's part of every global batch (and of the split it reads).
      image_size: the images' side in pixels.
      deterministic: False lets tf.data hand out examples in the order they finish.

    Returns:
      An iterator of `ceil(N / global_batch)` batches `{'image', 'label', 'mask'}` of
      `local_batch` rows; a process whose share runs out first yields empty (all-padding)
      batches, so that every process takes every step.

    Raises:
      FileNotFoundError: the data set is not prepared under `data_dir`.
    """
    builder, n = _open(name, data_dir, spec.eval_split)
    local_batch = shard.local_batch
    eval_image = _streamed_eval_image(name, image_size)

    def preprocess(example):
        return {
            "image": _tf_normalize(eval_image(example["image"]), spec),
            "label": tf.cast(example["label"], tf.int32),
        }

    def batches() -> Iterator[Batch]:
        ds = builder.as_dataset(
            split=_process_split(spec.eval_split, shard),
            shuffle_files=False,
            read_config=tfds.ReadConfig(try_autocache=False),
            decoders=_decoders(name),
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
        empty_image = np.zeros((0, image_size, image_size, spec.channels), np.float32)
        for _ in range(produced, num_batches):
            yield pad_eval_batch(empty_image, np.zeros(0, np.int32), local_batch)

    return batches()
