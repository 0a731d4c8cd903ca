"""MobileNet-V1 (Howard et al. 2017) for ImageNet-sized input, as the OptG reference builds it.

A 3x3/2 conv with 32 channels, then 13 depthwise-separable blocks (3x3 depthwise conv + BN + ReLU,
1x1 pointwise conv + BN + ReLU), global average pool and a classifier that is, as in the
reference (`models/mobilenetv1.py`), a bias-free masked 1x1 conv (`layers.conv_classifier`).
Convs have no bias; depthwise kernels are masked like the others. Channel counts are
`int(c * width_multiplier)`, as in Keras. At width 1.0 with 1000 classes there are 4,230,976
parameters (Keras `MobileNet`'s 4,231,976 less the 1000 classifier biases), 4,209,088 of them
kernels (masked by default), and about 569M MACs at 224x224 (the paper's "1.0 MobileNet-224":
569M mult-adds, 4.2M params).
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from optg_jax.train.models.layers import batch_norm, conv, conv_classifier

# (pointwise output channels, depthwise stride) for the 13 separable blocks.
MOBILENET_V1_BLOCKS = (
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (1024, 2),
    (1024, 1),
)


class MobileNetV1(nn.Module):
    """MobileNet-V1 over NHWC input; returns float32 logits `[B, num_classes]`.

    Block `k` (1-based) has params `dw{k}`, `dw{k}_bn`, `pw{k}`, `pw{k}_bn`.
    """

    num_classes: int
    width_multiplier: float = 1.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        width = lambda c: max(1, int(c * self.width_multiplier))
        x = conv(width(32), 3, 2, dtype=self.dtype, name="conv1")(x)
        x = nn.relu(batch_norm(train, dtype=self.dtype, name="bn1")(x))
        for k, (features, stride) in enumerate(MOBILENET_V1_BLOCKS, start=1):
            channels = x.shape[-1]
            x = conv(channels, 3, stride, groups=channels, dtype=self.dtype, name=f"dw{k}")(x)
            x = nn.relu(batch_norm(train, dtype=self.dtype, name=f"dw{k}_bn")(x))
            x = conv(width(features), 1, dtype=self.dtype, name=f"pw{k}")(x)
            x = nn.relu(batch_norm(train, dtype=self.dtype, name=f"pw{k}_bn")(x))
        x = jnp.mean(x, axis=(1, 2))
        fc = conv_classifier(self.num_classes, x.shape[-1], use_bias=False, dtype=self.dtype)
        return fc(x).astype(jnp.float32)


def mobilenet_v1(num_classes: int, dtype=jnp.float32, width_multiplier: float = 1.0) -> MobileNetV1:
    """MobileNet-V1 for ImageNet (Howard et al. 2017).

    Args:
      num_classes: the number of outputs (float32 logits).
      dtype: the compute dtype (params are float32).
      width_multiplier: scales every layer's channels (1.0 = the standard network).

    Returns:
      The `MobileNetV1`.
    """
    return MobileNetV1(num_classes, width_multiplier=width_multiplier, dtype=dtype)
