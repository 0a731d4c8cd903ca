"""ResNets in the torchvision v1.5 layout, with the OptG reference code's classifier and init.

ImageNet ResNet-18/34/50, a bottleneck CIFAR ResNet-50 kept for comparisons, a tiny ResNet.

Layout (torchvision `resnet.py`, "v1.5", which the reference's `models/resnet.py` follows):
7x7/2 stem conv + BatchNorm + ReLU + 3x3/2 max-pool, four stages of residual blocks whose first
block strides by 2 (except stage 1), global average pool, one classifier. The bottleneck strides
on its 3x3 conv, not on the first 1x1. Convs have no bias; a projection shortcut (1x1 conv +
BatchNorm) is used wherever the shape changes.

As in the reference (and unlike torchvision), the classifier is a bias-free masked 1x1 conv
(`layers.conv_classifier`) and every kernel is kaiming normal with fan_in. ResNet-50 with 1000
classes has 25,556,032 parameters (torchvision's 25,557,032 less the 1000 classifier biases),
25,502,912 of them kernels (masked by default).

Parameter names follow torchvision (`conv1`, `bn1`, `layer2_0/conv2`, `layer2_0/downsample_conv`,
`fc`) so per-layer tables read like the PyTorch literature.

The OptG reference's CIFAR-10 "ResNet-50" is a different network, `cifar_resnet.resnet50_cifar`.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from optg_jax.train.models.layers import batch_norm, conv, conv_classifier


def _residual_scale_init(zero_init_residual: bool):
    return nn.initializers.zeros if zero_init_residual else nn.initializers.ones


class BasicBlock(nn.Module):
    """Two 3x3 convs; output has `features` channels (expansion 1)."""

    features: int
    stride: int = 1
    zero_init_residual: bool = False
    dtype: Any = jnp.float32

    expansion = 1

    @nn.compact
    def __call__(self, x, train: bool):
        y = conv(self.features, 3, self.stride, dtype=self.dtype, name="conv1")(x)
        y = nn.relu(batch_norm(train, dtype=self.dtype, name="bn1")(y))
        y = conv(self.features, 3, dtype=self.dtype, name="conv2")(y)
        y = batch_norm(
            train,
            dtype=self.dtype,
            name="bn2",
            scale_init=_residual_scale_init(self.zero_init_residual),
        )(y)
        return nn.relu(y + _shortcut(x, y.shape[-1], self.stride, train, self.dtype))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided, v1.5), 1x1 expand; output has `4 * features` channels."""

    features: int
    stride: int = 1
    zero_init_residual: bool = False
    dtype: Any = jnp.float32

    expansion = 4

    @nn.compact
    def __call__(self, x, train: bool):
        y = conv(self.features, 1, dtype=self.dtype, name="conv1")(x)
        y = nn.relu(batch_norm(train, dtype=self.dtype, name="bn1")(y))
        y = conv(self.features, 3, self.stride, dtype=self.dtype, name="conv2")(y)
        y = nn.relu(batch_norm(train, dtype=self.dtype, name="bn2")(y))
        y = conv(self.features * self.expansion, 1, dtype=self.dtype, name="conv3")(y)
        y = batch_norm(
            train,
            dtype=self.dtype,
            name="bn3",
            scale_init=_residual_scale_init(self.zero_init_residual),
        )(y)
        return nn.relu(y + _shortcut(x, y.shape[-1], self.stride, train, self.dtype))


def _shortcut(x, features: int, stride: int, train: bool, dtype):
    """Identity when shapes agree, else a projection (torchvision's `downsample`).

    Called from inside a block's compact `__call__`, so the projection's params belong to it.
    """
    if stride == 1 and x.shape[-1] == features:
        return x
    x = conv(features, 1, stride, dtype=dtype, name="downsample_conv")(x)
    return batch_norm(train, dtype=dtype, name="downsample_bn")(x)


class ResNet(nn.Module):
    """A ResNet over NHWC float input; returns float32 logits `[B, num_classes]`.

    Attributes:
      stage_sizes: number of blocks in each stage.
      block_cls: `BasicBlock` or `Bottleneck`.
      num_classes: classifier outputs.
      stage_widths: base width of each stage (the bottleneck's inner width).
      stem: "imagenet" (7x7/2 conv + 3x3/2 max-pool) or "cifar" (3x3/1 conv, no pool).
      stem_features: channels of the stem conv.
      zero_init_residual: start each block's last BatchNorm scale at zero (Goyal et al. 2017).
        Off by default, as in torchvision.
      dtype: compute dtype; params are always float32.
    """

    stage_sizes: Sequence[int]
    block_cls: type
    num_classes: int
    stage_widths: Sequence[int] = (64, 128, 256, 512)
    stem: str = "imagenet"
    stem_features: int = 64
    zero_init_residual: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        if self.stem == "imagenet":
            x = conv(self.stem_features, 7, 2, dtype=self.dtype, name="conv1")(x)
        elif self.stem == "cifar":
            x = conv(self.stem_features, 3, 1, dtype=self.dtype, name="conv1")(x)
        else:
            raise ValueError(f"stem must be 'imagenet' or 'cifar', got {self.stem!r}")
        x = nn.relu(batch_norm(train, dtype=self.dtype, name="bn1")(x))
        if self.stem == "imagenet":
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for i, (num_blocks, width) in enumerate(zip(self.stage_sizes, self.stage_widths)):
            for j in range(num_blocks):
                x = self.block_cls(
                    width,
                    stride=2 if i > 0 and j == 0 else 1,
                    zero_init_residual=self.zero_init_residual,
                    dtype=self.dtype,
                    name=f"layer{i + 1}_{j}",
                )(x, train)
        x = jnp.mean(x, axis=(1, 2))
        x = conv_classifier(self.num_classes, x.shape[-1], use_bias=False, dtype=self.dtype)(x)
        return x.astype(jnp.float32)


def resnet18(num_classes: int, dtype=jnp.float32, **kwargs) -> ResNet:
    """ResNet-18 for ImageNet (basic blocks, 2-2-2-2).

    Args:
      num_classes: the number of outputs (float32 logits).
      dtype: the compute dtype (params are float32).
      **kwargs: further `ResNet` fields (e.g. `zero_init_residual=True`).

    Returns:
      The `ResNet`.
    """
    return ResNet((2, 2, 2, 2), BasicBlock, num_classes, dtype=dtype, **kwargs)


def resnet34(num_classes: int, dtype=jnp.float32, **kwargs) -> ResNet:
    """ResNet-34 for ImageNet (basic blocks, 3-4-6-3).

    Args:
      num_classes: the number of outputs (float32 logits).
      dtype: the compute dtype (params are float32).
      **kwargs: further `ResNet` fields (e.g. `zero_init_residual=True`).

    Returns:
      The `ResNet`.
    """
    return ResNet((3, 4, 6, 3), BasicBlock, num_classes, dtype=dtype, **kwargs)


def resnet50(num_classes: int, dtype=jnp.float32, **kwargs) -> ResNet:
    """ResNet-50 for ImageNet (bottleneck blocks, 3-4-6-3).

    Args:
      num_classes: the number of outputs (float32 logits).
      dtype: the compute dtype (params are float32).
      **kwargs: further `ResNet` fields (e.g. `zero_init_residual=True`).

    Returns:
      The `ResNet`.
    """
    return ResNet((3, 4, 6, 3), Bottleneck, num_classes, dtype=dtype, **kwargs)


def resnet50_bottleneck_cifar(num_classes: int, dtype=jnp.float32, **kwargs) -> ResNet:
    """The ImageNet ResNet-50 with a 3x3/1 stem and no max-pool, for 32x32 input.

    Not the OptG reference's CIFAR-10 "ResNet-50" (that is `resnet50_cifar`, a 6n+2 network of
    basic blocks with 3.0M parameters). This bottleneck network is what several CIFAR pruning
    papers call ResNet-50, and it is kept to compare with them. Its classifier and init are the
    zoo's (bias-free, fan_in): 23,520,832 parameters with 10 classes.

    Args:
      num_classes: the number of outputs (float32 logits).
      dtype: the compute dtype (params are float32).
      **kwargs: further `ResNet` fields (e.g. `zero_init_residual=True`).

    Returns:
      The `ResNet`.
    """
    return ResNet((3, 4, 6, 3), Bottleneck, num_classes, stem="cifar", dtype=dtype, **kwargs)


def tiny_resnet(num_classes: int, dtype=jnp.float32, **kwargs) -> ResNet:
    """Two basic blocks (8 and 16 channels) behind the strided stem: for fast end-to-end tests.

    The 7x7/2 stem and max-pool divide the resolution by 4 before any block, so a step is cheap
    at 224x224 too; any input of at least 1x1 works.

    Args:
      num_classes: the number of outputs (float32 logits).
      dtype: the compute dtype (params are float32).
      **kwargs: further `ResNet` fields (e.g. `zero_init_residual=True`).

    Returns:
      The `ResNet`.
    """
    return ResNet(
        (1, 1),
        BasicBlock,
        num_classes,
        stage_widths=(8, 16),
        stem_features=8,
        dtype=dtype,
        **kwargs,
    )
