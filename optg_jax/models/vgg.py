"""VGG-19 with BatchNorm for CIFAR, as used in the pruning literature (SNIP, GraSP, SynFlow).

Sixteen 3x3 convs (each conv with bias -> BatchNorm -> ReLU) in the configuration
64,64,M,128,128,M,256x4,M,512x4,M,512x4 ("M" = 2x2/2 max-pool), then a global average pool and
ONE linear classifier 512 -> num_classes. With 10 classes this has 20,040,522 parameters, the
"20.0M" / "20.04M" quoted for VGG-19 in the CIFAR pruning literature (e.g. GraSP, Wang et al.
2020, whose PyTorch VGG keeps the default conv bias; without conv biases it would be 20,035,018).
"""

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from optg_jax.models.layers import batch_norm, classifier, conv

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
)


class VGG(nn.Module):
    """VGG over NHWC input; returns float32 logits `[B, num_classes]`.

    Convs are named `conv{k}` / `bn{k}` by their index among the convolutions.
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
            x = conv(v, 3, dtype=self.dtype, use_bias=True, name=f"conv{k}")(x)
            x = nn.relu(batch_norm(train, dtype=self.dtype, name=f"bn{k}")(x))
            k += 1
        x = jnp.mean(x, axis=(1, 2))
        return classifier(self.num_classes, dtype=self.dtype)(x).astype(jnp.float32)


def vgg19_cifar(num_classes: int, dtype=jnp.float32) -> VGG:
    """VGG-19 with BatchNorm for CIFAR (32x32 inputs).

    Args:
      num_classes: the number of outputs (float32 logits).
      dtype: the compute dtype (params are float32).

    Returns:
      The `VGG`.
    """
    return VGG(num_classes, dtype=dtype)
