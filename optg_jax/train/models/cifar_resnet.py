"""CIFAR ResNets of 6n+2 layers with the option-A shortcut: He et al. (2016, section 4.2)'s
ResNet-20/32/56, and the OptG reference code's CIFAR-10 "ResNet-50".

Three stages of `n = (depth - 2) / 6` basic blocks after a 3x3/1 stem conv; global average pool;
one classifier. Option A: where a block halves the resolution and doubles the channels, the
shortcut takes every other pixel and zero-pads the new channels (half before, half after), so
shortcuts carry no parameters.

- ResNet-20/32/56: stages of 16, 32 and 64 channels, a linear classifier with bias. The
  published sizes (10 classes): 269,722 (0.27M), 464,154 (0.46M), 853,018 (0.85M).
- `resnet50_cifar`, the reference's `ResNet50_cifar10` (`models/resnet_cifar.py`): n = 8 and
  stages of 32, 64 and 128 channels (the stem has 32), classifier a bias-free masked 1x1 conv.
  3,013,792 parameters with 10 classes, 3,006,560 of them kernels (masked by default).
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from optg_jax.train.models.layers import batch_norm, classifier, conv, conv_classifier


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
    """ResNet-(6n+2) for 32x32 NHWC input; returns float32 logits `[B, num_classes]`.

    Attributes:
      depth: 6n + 2.
      num_classes: classifier outputs.
      widths: channels of the three stages; the stem has `widths[0]`.
      reference_classifier: the OptG reference's bias-free 1x1-conv classifier
        (`conv_classifier`) instead of a linear layer with bias.
      dtype: compute dtype; params are always float32.
    """

    depth: int
    num_classes: int
    widths: tuple[int, int, int] = (16, 32, 64)
    reference_classifier: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        if (self.depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2, got {self.depth}")
        blocks_per_stage = (self.depth - 2) // 6
        x = conv(self.widths[0], 3, dtype=self.dtype, name="conv1")(x)
        x = nn.relu(batch_norm(train, dtype=self.dtype, name="bn1")(x))
        for i, width in enumerate(self.widths):
            for j in range(blocks_per_stage):
                x = CifarBlock(
                    width,
                    stride=2 if i > 0 and j == 0 else 1,
                    dtype=self.dtype,
                    name=f"layer{i + 1}_{j}",
                )(x, train)
        x = jnp.mean(x, axis=(1, 2))
        if self.reference_classifier:
            fc = conv_classifier(self.num_classes, x.shape[-1], use_bias=False, dtype=self.dtype)
        else:
            fc = classifier(self.num_classes, dtype=self.dtype)
        return fc(x).astype(jnp.float32)


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


def resnet50_cifar(num_classes: int, dtype=jnp.float32) -> CifarResNet:
    """The OptG reference's CIFAR "ResNet-50": 6n+2 with n = 8, widths 32/64/128, option A.

    Basic blocks with zero-padding shortcuts and a bias-free classifier, as the reference's
    `models/resnet_cifar.py`: 3,013,792 parameters with 10 classes, 3,006,560 of them masked.

    Args:
      num_classes: the number of outputs (float32 logits).
      dtype: the compute dtype (params are float32).

    Returns:
      The `CifarResNet` of depth 50.
    """
    return CifarResNet(
        50, num_classes, widths=(32, 64, 128), reference_classifier=True, dtype=dtype
    )
