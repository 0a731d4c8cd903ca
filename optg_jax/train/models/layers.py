"""Layer factories shared by the model zoo: PyTorch-style convolutions, BatchNorm, classifiers.

Every model builds its convolutions and BatchNorms through these functions so the whole zoo
agrees on the conventions the pruning literature assumes: explicit symmetric padding (as in
PyTorch, so strided convs see the same pixels), BatchNorm momentum 0.9 / epsilon 1e-5 (PyTorch's
momentum 0.1 written the Flax way), float32 parameters whatever the compute dtype, and conv
kernels initialised as the OptG reference code's configs ask (`init: kaiming_normal`,
`mode: fan_in`).
"""

import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5

# He et al. (2015) normal initialisation, std sqrt(2 / fan_in) with fan_in = kh * kw * in / groups:
# PyTorch's `kaiming_normal_(mode="fan_in")`, the reference code's conv init. Not truncated.
kaiming_normal_fan_in = nn.initializers.variance_scaling(2.0, "fan_in", "normal")
# The same with fan_out = kh * kw * out: torchvision's default for conv kernels.
kaiming_normal_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def conv(
    features: int,
    kernel_size: int,
    stride: int = 1,
    *,
    dtype: Any,
    groups: int = 1,
    use_bias: bool = False,
    kernel_init: Callable[..., Any] = kaiming_normal_fan_in,
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
      kernel_init: the kernel initialiser (kaiming normal, fan_in, by default).
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
        kernel_init=kernel_init,
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


def _torch_conv_bias_init(fan_in: int) -> Callable[..., jax.Array]:
    """PyTorch's default conv bias init, uniform in `[-1/sqrt(fan_in), 1/sqrt(fan_in)]`."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def conv_classifier(
    num_classes: int, in_features: int, *, use_bias: bool, dtype: Any, name: str = "fc"
) -> nn.Dense:
    """The reference code's classifier: a masked 1x1 conv on the pooled `[B, 1, 1, C]` map.

    A 1x1 conv on a 1x1 map is a dense layer, so it is written as one: kernel `(in_features,
    num_classes)` (a rank-2 kernel, masked by default like the convs), kaiming normal fan_in
    as the reference's `builder.conv1x1`. With `use_bias` (the reference's VGG,
    `builder.conv1x1_fc`) the bias starts as PyTorch's conv bias, uniform in
    `[-1/sqrt(in_features), 1/sqrt(in_features)]`.

    Args:
      num_classes: outputs.
      in_features: channels of the pooled map (the kernel's fan_in).
      use_bias: add a bias (not masked).
      dtype: compute dtype; params are float32.
      name: the param scope.

    Returns:
      An `nn.Dense` mapping `[B, in_features]` to `[B, num_classes]` in `dtype`.
    """
    return nn.Dense(
        num_classes,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=kaiming_normal_fan_in,
        bias_init=_torch_conv_bias_init(in_features),
        name=name,
    )
