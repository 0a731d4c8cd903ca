"""The in-memory pipeline: a small data set as uint8 NumPy arrays, batched with NumPy.

Fashion-MNIST and CIFAR-10 are loaded once (a few seconds) and batched with NumPy (a 2-core CPU
host gives thousands of batches/s). Epoch e is a permutation that depends only on `(seed, e)`;
every process builds the same global batch order and takes its rows of each global batch
(`Shard.rows`), so N processes together see exactly the batches one process sees. CIFAR-style
augmentation (pad-4 crop, horizontal flip) draws for the whole global batch from
`(seed, epoch, step)`, so every process count sees the same augmented batches. Images stay
uint8 pixels (normalised by the train and eval steps on the device) unless the `Source` asks for
normalised float32.
"""

from __future__ import annotations

from typing import Iterator

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
    base_split,
    check_enough_examples,
    check_held_out,
    derive_seed,
    normalize,
    not_prepared_message,
    pad_eval_batch,
    split_size,
)


def load_split(name: str, data_dir: str, split: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A whole split in memory, in the stored order.

    Args:
      name: the data set.
      data_dir: the TFDS data directory (resolved).
      split: the split (slices allowed).
      size: the images' side in pixels (resized, antialiased, when the stored side differs).

    Returns:
      `(uint8 [N, size, size, C], int32 [N])`.

    Raises:
      FileNotFoundError: the data set is not prepared under `data_dir`.
    """
    builder = tfds.builder(name, data_dir=data_dir)
    n = split_size(builder, split)
    if n is None:
        raise FileNotFoundError(
            not_prepared_message(name, data_dir)
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


def load_rows(
    name: str, data_dir: str, spec: Spec, train: bool, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """The training (`train`) or eval rows of `spec`, as `load_split` returns them.

    Args:
      name: the data set.
      data_dir: the TFDS data directory (resolved).
      spec: its spec; with `held_out` > 0 both come from the training split.
      train: the training rows, else the eval rows.
      size: the images' side in pixels.

    Returns:
      `(uint8 images, int32 labels)`.
    """
    if not spec.held_out:
        return load_split(name, data_dir, spec.train_split if train else spec.eval_split, size)
    images, labels = load_split(name, data_dir, base_split(spec.train_split), size)
    check_held_out(spec, len(labels), name)
    rows = slice(None, -spec.held_out) if train else slice(-spec.held_out, None)
    return images[rows], labels[rows]


def pad_crop_flip(images: np.ndarray, offsets: np.ndarray, flips: np.ndarray) -> np.ndarray:
    """CIFAR-style augmentation: pad by `CIFAR_PAD`, crop at `offsets`, mirror where `flips`.

    Args:
      images: `[B, H, W, C]`.
      offsets: `[B, 2]` row and column of each crop in the padded image, in
        `[0, 2 * CIFAR_PAD]`.
      flips: `[B]` bools, True to mirror the crop horizontally.

    Returns:
      The crops, `[B, H, W, C]`, zeros where they reach into the padding.
    """
    b, h, w, _ = images.shape
    padded = np.pad(images, ((0, 0), (CIFAR_PAD,) * 2, (CIFAR_PAD,) * 2, (0, 0)))
    rows = offsets[:, :1] + np.arange(h)
    cols = offsets[:, 1:] + np.arange(w)
    cols = np.where(flips[:, None], cols[:, ::-1], cols)
    return padded[np.arange(b)[:, None, None], rows[:, :, None], cols[:, None, :]]


def _pixels(images: np.ndarray, source: Source) -> np.ndarray:
    """The images as the batches carry them: uint8 pixels, or normalised float32 on request."""
    return normalize(images, source.spec) if source.normalize else images


def train_batches(source: Source, shard: Shard, order: Order) -> Iterator[Batch]:
    """This process's training batches from global step `order.start.step` on, forever.

    The split is loaded here (errors are raised at once); the batches come lazily. The order
    does not depend on the process count, so `order.start.epoch_process_count` plays no part.

    Args:
      source: the data set, its directory and spec, the images' side and form.
      shard: this process's part of every global batch.
      order: the seed, the first step and whether to augment (pad-4 crops, horizontal flips).

    Returns:
      An endless iterator of `{'image': uint8 (float32 normalised with `source.normalize`),
      'label': int32}` of `local_batch` rows.
    """
    images, labels = load_rows(source.name, source.data_dir, source.spec, True, source.image_size)
    check_enough_examples(len(labels), shard.global_batch)
    n = len(labels)
    steps = n // shard.global_batch
    rows = shard.rows
    seed = order.seed

    def batches() -> Iterator[Batch]:
        epoch, first_step = divmod(order.start.step, steps)
        while True:
            shuffle = derive_seed(seed, SHUFFLE_DOMAIN, epoch)
            permutation = np.random.default_rng(shuffle).permutation(n)
            for step in range(first_step, steps):
                index = permutation[step * shard.global_batch : (step + 1) * shard.global_batch]
                index = index[rows]
                batch = images[index]
                if order.augment:
                    # Draws cover the whole global batch, so every process count sees the same.
                    rng = np.random.default_rng(derive_seed(seed, AUGMENT_DOMAIN, epoch, step))
                    offsets = rng.integers(0, 2 * CIFAR_PAD + 1, size=(shard.global_batch, 2))
                    flips = rng.random(shard.global_batch) < 0.5
                    batch = pad_crop_flip(batch, offsets[rows], flips[rows])
                yield {"image": _pixels(batch, source), "label": labels[index]}
            epoch, first_step = epoch + 1, 0

    return batches()


def eval_batches(source: Source, shard: Shard) -> Iterator[Batch]:
    """One pass over the eval rows, this process's rows of each global batch, padded.

    Args:
      source: the data set, its directory and spec, the images' side and form.
      shard: this process's part of every global batch.

    Returns:
      An iterator of `ceil(N / global_batch)` batches `{'image', 'label', 'mask'}` of
      `local_batch` rows (`pad_eval_batch`).
    """
    images, labels = load_rows(source.name, source.data_dir, source.spec, False, source.image_size)
    n = len(labels)

    def batches() -> Iterator[Batch]:
        for start in range(0, n, shard.global_batch):
            lo = min(n, start + shard.rows.start)
            hi = min(n, lo + shard.local_batch)
            yield pad_eval_batch(_pixels(images[lo:hi], source), labels[lo:hi], shard.local_batch)

    return batches()
