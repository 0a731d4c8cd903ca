"""Layer factories shared by the model zoo: PyTorch-style convolutions and BatchNorm.

Every model builds its convolutions and BatchNorms through these two functions so the whole zoo
agrees on the conventions the pruning literature assumes: explicit symmetric padding (as in
PyTorch, so strided convs see the same pixels), BatchNorm momentum 0.9 / epsilon 1e-5 (PyTorch's
momentum 0.1 written the Flax way), float32 parameters whatever the compute dtype.
"""

from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5

# He et al. (2015) "fan_out" normal initialisation, the torchvision default for conv kernels.
conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def conv(
    features: int,
    kernel_size: int,
    stride: int = 1,
    *,
    dtype: Any,
    groups: int = 1,
    use_bias: bool = False,
    name: str | None = None,
) -> nn.Conv:
    """A square `nn.Conv` with PyTorch padding `(kernel_size - 1) // 2` on every side.

    Args:
      features: output channels.
      kernel_size: the kernel's height and width `k`.
      stride: the stride in both directions.
      dtype: the compute dtype (params are float32).
      groups: the feature group count (`in_features` for a depthwise conv).
      use_bias: whether the conv has a bias.
      name: the module name.

    Returns:
      The `nn.Conv`; its kernel shape is `(k, k, in_features // groups, features)`.
    """
    pad = (kernel_size - 1) // 2
    return nn.Conv(
        features,
        (kernel_size, kernel_size),
        strides=(stride, stride),
        padding=((pad, pad), (pad, pad)),
        feature_group_count=groups,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=conv_kernel_init,
        name=name,
    )


def batch_norm(
    train: bool,
    *,
    dtype: Any,
    scale_init: Callable[..., Any] = nn.initializers.ones,
    name: str | None = None,
) -> nn.BatchNorm:
    """BatchNorm over the channel (last) axis; batch statistics in train mode, running ones in eval.

    Running statistics live in the 'batch_stats' collection and are updated as
    `new = 0.9 * old + 0.1 * batch` when the caller marks 'batch_stats' mutable.

    Args:
      train: use the batch statistics (and update the running ones) instead of the running ones.
      dtype: the compute dtype (params are float32).
      scale_init: the initialiser of the scale (e.g. zeros for a block's last BatchNorm).
      name: the module name.

    Returns:
      The `nn.BatchNorm`.
    """
    return nn.BatchNorm(
        use_running_average=not train,
        momentum=BN_MOMENTUM,
        epsilon=BN_EPSILON,
        dtype=dtype,
        param_dtype=jnp.float32,
        scale_init=scale_init,
        name=name,
    )


def classifier(num_classes: int, *, dtype: Any, name: str = "fc") -> nn.Dense:
    """The final linear layer (with bias); callers cast its output to float32 logits.

    Args:
      num_classes: the number of outputs.
      dtype: the compute dtype (params are float32).
      name: the module name.

    Returns:
      The `nn.Dense`.
    """
    return nn.Dense(num_classes, dtype=dtype, param_dtype=jnp.float32, name=name)
