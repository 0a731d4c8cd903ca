"""VGG-19 with BatchNorm for CIFAR, as the OptG reference code builds it (`models/vgg_cifar.py`).

Sixteen bias-free 3x3 convs (conv -> BatchNorm -> ReLU) in the configuration
64,64,M,128,128,M,256x4,M,512x4,M,512x4,M ("M" = 2x2/2 max-pool). Five pools take a 32x32 input
down to 1x1; the classifier is a masked 1x1 conv 512 -> num_classes WITH a bias (the reference's
`builder.conv1x1_fc`), written as a dense layer on the 1x1 map. With 10 classes: 20,035,018
parameters, of which 20,024,000 are kernels (masked by default) and 11,008 BatchNorm scales and
biases plus 10 classifier biases are not.

This is not the VGG-19 of SNIP/GraSP (conv biases, four pools, global mean, 20,040,522 params).
"""

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from optg_jax.train.models.layers import batch_norm, conv, conv_classifier

VGG19_CFG = (
    64,
    64,
    "M",
    128,
    128,
    "M",
    256,
    256,
    256,
    256,
    "M",
    512,
    512,
    512,
    512,
    "M",
    512,
    512,
    512,
    512,
    "M",
)


class VGG(nn.Module):
    """VGG over NHWC input; returns float32 logits `[B, num_classes]`.

    Convs are named `conv{k}` / `bn{k}` by their index among the convolutions, the classifier
    `fc`. On a 32x32 input the last feature map is 1x1; on larger inputs it is averaged to 1x1
    (the reference only accepts 32x32).
    """

    num_classes: int
    cfg: Sequence[Any] = VGG19_CFG
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        k = 0
        for v in self.cfg:
            if v == "M":
                x = nn.max_pool(x, (2, 2), strides=(2, 2))
                continue
            x = conv(v, 3, dtype=self.dtype, name=f"conv{k}")(x)
            x = nn.relu(batch_norm(train, dtype=self.dtype, name=f"bn{k}")(x))
            k += 1
        x = jnp.mean(x, axis=(1, 2))
        fc = conv_classifier(self.num_classes, x.shape[-1], use_bias=True, dtype=self.dtype)
        return fc(x).astype(jnp.float32)


def vgg19_cifar(num_classes: int, dtype=jnp.float32) -> VGG:
    """VGG-19 with BatchNorm for CIFAR (32x32 inputs).

    Args:
      num_classes: the number of outputs (float32 logits).
      dtype: the compute dtype (params are float32).

    Returns:
      The `VGG`.
    """
    return VGG(num_classes, dtype=dtype)
