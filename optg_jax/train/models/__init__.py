"""The model zoo: plain `flax.linen` modules built by name.

Every model is applied as `model.apply(variables, x, train=bool, mutable=...)` on float NHWC input
and returns float32 logits `[B, num_classes]`. BatchNorm statistics (where a model has any) live in
the 'batch_stats' collection. `dtype` is the compute dtype; params are always float32. Models hold
no masks: sparsity is applied to the params pytree by the optimizer.

The OptG paper's networks are built as the authors' reference code builds them, with its
parameter counts: "resnet50" and "mobilenet_v1" (ImageNet, bias-free masked 1x1-conv
classifiers), "resnet50_cifar" (its CIFAR-10 "ResNet-50", a 6n+2 basic-block network) and
"vgg19_cifar" (bias-free convs, five pools, a 1x1-conv classifier with bias). Conv kernels are
kaiming normal with fan_in, as in its configs.
"""

import types
from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

from optg_jax.train.models.cifar_resnet import (
    CifarResNet,
    resnet20,
    resnet32,
    resnet50_cifar,
    resnet56,
)
from optg_jax.train.models.mobilenet import MobileNetV1, mobilenet_v1
from optg_jax.train.models.resnet import (
    BasicBlock,
    Bottleneck,
    ResNet,
    resnet18,
    resnet34,
    resnet50,
    resnet50_bottleneck_cifar,
    tiny_resnet,
)
from optg_jax.train.models.small import FashionMnistCNN, fmnist_cnn
from optg_jax.train.models.vgg import VGG, vgg19_cifar
from optg_jax.train.models.vit import VisionTransformer, vit_tiny

_FACTORIES: types.MappingProxyType[str, Callable[..., nn.Module]] = types.MappingProxyType(
    {
        # ImageNet
        "resnet18": resnet18,
        "resnet34": resnet34,
        "resnet50": resnet50,
        "mobilenet_v1": mobilenet_v1,
        # CIFAR
        "vgg19_cifar": vgg19_cifar,
        "resnet20": resnet20,
        "resnet32": resnet32,
        "resnet56": resnet56,
        "resnet50_cifar": resnet50_cifar,  # the OptG reference's: 6n+2 basic blocks, n = 8
        "resnet50_bottleneck_cifar": resnet50_bottleneck_cifar,
        # small
        "fmnist_cnn": fmnist_cnn,
        "tiny_resnet": tiny_resnet,
        "vit_tiny": vit_tiny,
    }
)


def names() -> list[str]:
    """The names `create` accepts.

    Returns:
      The model names, in the zoo's order.
    """
    return list(_FACTORIES)


def create(name: str, num_classes: int, dtype: Any = jnp.float32, **kwargs) -> nn.Module:
    """Builds the model called `name` with `num_classes` outputs computing in `dtype`.

    Args:
      name: one of `names()`.
      num_classes: the number of outputs (logits).
      dtype: the compute dtype (params are float32).
      **kwargs: passed to the model (e.g. `width_multiplier=0.5` for "mobilenet_v1",
        `zero_init_residual=True` for the ResNets in `resnet.py`).

    Returns:
      The `flax.linen` module.

    Raises:
      ValueError: `name` is not one of `names()`.
    """
    try:
        factory = _FACTORIES[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(names())}") from None
    return factory(num_classes=num_classes, dtype=dtype, **kwargs)


__all__ = [
    "create",
    "names",
    "ResNet",
    "BasicBlock",
    "Bottleneck",
    "CifarResNet",
    "VGG",
    "MobileNetV1",
    "FashionMnistCNN",
    "VisionTransformer",
]
