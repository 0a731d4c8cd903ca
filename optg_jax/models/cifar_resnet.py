"""CIFAR ResNet-20/32/56 (He et al. 2016, section 4.2) with the option-A shortcut.

Three stages of `n = (depth - 2) / 6` basic blocks with 16, 32 and 64 channels after a 3x3/1 conv
with 16 channels; global average pool; one linear classifier. Option A: where a block halves the
resolution and doubles the channels, the shortcut takes every other pixel and zero-pads the new
channels, so shortcuts carry no parameters. This gives the published sizes (10 classes):
ResNet-20 269,722 (0.27M), ResNet-32 464,154 (0.46M), ResNet-56 853,018 (0.85M).
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from optg_jax.models.layers import batch_norm, classifier, conv


class CifarBlock(nn.Module):
    """Basic block with a parameter-free (option A) shortcut."""

    features: int
    stride: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        y = conv(self.features, 3, self.stride, dtype=self.dtype, name="conv1")(x)
        y = nn.relu(batch_norm(train, dtype=self.dtype, name="bn1")(y))
        y = conv(self.features, 3, dtype=self.dtype, name="conv2")(y)
        y = batch_norm(train, dtype=self.dtype, name="bn2")(y)
        shortcut = x[:, :: self.stride, :: self.stride, :]
        extra = self.features - x.shape[-1]
        if extra:
            shortcut = jnp.pad(shortcut, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))
        return nn.relu(y + shortcut.astype(y.dtype))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 NHWC input; returns float32 logits `[B, num_classes]`."""

    depth: int
    num_classes: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        if (self.depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2, got {self.depth}")
        blocks_per_stage = (self.depth - 2) // 6
        x = conv(16, 3, dtype=self.dtype, name="conv1")(x)
        x = nn.relu(batch_norm(train, dtype=self.dtype, name="bn1")(x))
        for i, width in enumerate((16, 32, 64)):
            for j in range(blocks_per_stage):
                x = CifarBlock(
                    width,
                    stride=2 if i > 0 and j == 0 else 1,
                    dtype=self.dtype,
                    name=f"layer{i + 1}_{j}",
                )(x, train)
        x = jnp.mean(x, axis=(1, 2))
        return classifier(self.num_classes, dtype=self.dtype)(x).astype(jnp.float32)


def resnet20(num_classes: int, dtype=jnp.float32) -> CifarResNet:
    """ResNet-20 for CIFAR (3 stages of 3 basic blocks).

    Args:
      num_classes: the number of outputs (float32 logits).
      dtype: the compute dtype (params are float32).

    Returns:
      The `CifarResNet` of depth 20.
    """
    return CifarResNet(20, num_classes, dtype=dtype)


def resnet32(num_classes: int, dtype=jnp.float32) -> CifarResNet:
    """ResNet-32 for CIFAR (3 stages of 5 basic blocks).

    Args:
      num_classes: the number of outputs (float32 logits).
      dtype: the compute dtype (params are float32).

    Returns:
      The `CifarResNet` of depth 32.
    """
    return CifarResNet(32, num_classes, dtype=dtype)


def resnet56(num_classes: int, dtype=jnp.float32) -> CifarResNet:
    """ResNet-56 for CIFAR (3 stages of 9 basic blocks).

    Args:
      num_classes: the number of outputs (float32 logits).
      dtype: the compute dtype (params are float32).

    Returns:
      The `CifarResNet` of depth 56.
    """
    return CifarResNet(56, num_classes, dtype=dtype)
