"""The mask-aware MAC counter: hand-checked layers, masks, nesting, and the published totals."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optg_jax import macs as macs_lib
from optg_jax.train import models


def abstract_variables(model, shape):
    x = jnp.zeros((1, *shape), jnp.float32)
    return jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))


def macs(model, shape, masks=None):
    return macs_lib.count(model, abstract_variables(model, shape), shape, masks)


class OneConv(nn.Module):
    features: int
    kernel: int = 3
    stride: int = 1
    padding: str = "SAME"
    groups: int = 1

    @nn.compact
    def __call__(self, x, train: bool = False):
        return nn.Conv(
            self.features,
            (self.kernel, self.kernel),
            strides=self.stride,
            padding=self.padding,
            feature_group_count=self.groups,
        )(x)


class FlattenDense(nn.Module):
    features: int

    @nn.compact
    def __call__(self, x, train: bool = False):
        return nn.Dense(self.features)(x.reshape(x.shape[0], -1))


# --- single layers, by hand -------------------------------------------------------------------


def test_conv_same_padding_by_hand():
    assert macs(OneConv(4), (5, 5, 2)) == 5 * 5 * 3 * 3 * 2 * 4


def test_conv_valid_padding_by_hand():
    assert macs(OneConv(4, padding="VALID"), (5, 5, 2)) == 3 * 3 * 3 * 3 * 2 * 4


def test_strided_conv_by_hand():
    # 7x7 input, stride 2, SAME: 4x4 outputs.
    assert macs(OneConv(4, stride=2), (7, 7, 2)) == 4 * 4 * 3 * 3 * 2 * 4


def test_depthwise_conv_by_hand():
    # Each of the 8 outputs (depth multiplier 2) sees one input channel: 3x3 taps.
    assert macs(OneConv(8, groups=4), (6, 6, 4)) == 6 * 6 * 3 * 3 * 1 * 8


def test_grouped_conv_by_hand():
    assert macs(OneConv(6, kernel=1, groups=2), (3, 3, 4)) == 3 * 3 * 2 * 6


def test_dense_by_hand():
    assert macs(FlattenDense(7), (3, 3, 2)) == 18 * 7


class PerPixelDense(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        return nn.Dense(5)(x)


def test_dense_on_feature_map_costs_every_position():
    # 4x4 positions, 3 -> 5 features each.
    assert macs(PerPixelDense(), (4, 4, 3)) == 16 * 3 * 5


def test_fmnist_cnn_by_hand_in_bfloat16():
    model = models.create("fmnist_cnn", 10, dtype=jnp.bfloat16)
    # conv1 28x28x9x1x32, conv2 14x14x9x32x64, fc1 3136x256, fc2 256x10
    expected = 28 * 28 * 9 * 32 + 14 * 14 * 9 * 32 * 64 + 3136 * 256 + 256 * 10
    assert macs(model, (28, 28, 1)) == expected == 4_643_840


def test_vit_tiny_by_hand():
    """28x28, patch 4: 49 tokens of width 128; 4 blocks; MLP 256; 10 classes."""
    model = models.create("vit_tiny", 10)
    by_layer = macs_lib.count_by_layer(model, abstract_variables(model, (28, 28, 1)), (28, 28, 1))
    tokens, width, mlp = 49, 128, 256
    projection = tokens * width * width  # each of query, key, value, out
    assert by_layer["block2/attn/value/kernel"] == projection == 802_816
    assert (
        by_layer["block0/mlp_in/kernel"] == by_layer["block3/mlp_out/kernel"] == tokens * 128 * mlp
    )
    # q k^T and (attention weights) v: tokens x tokens x width each, no param involved.
    assert by_layer[macs_lib.UNATTRIBUTED] == 4 * 2 * tokens * tokens * width
    patch = tokens * 4 * 4 * 1 * width
    block = 4 * projection + 2 * tokens * width * mlp + 2 * tokens * tokens * width
    assert sum(by_layer.values()) == patch + 4 * block + width * 10 == 28_250_368


# --- masks --------------------------------------------------------------------------------------


def test_masked_conv_at_90_percent_sparsity_costs_10_percent():
    model = OneConv(5)  # kernel 3x3x2x5: 90 weights
    variables = abstract_variables(model, (6, 6, 2))
    mask = np.zeros(90, np.uint8)
    mask[np.random.default_rng(0).choice(90, 9, replace=False)] = 1
    masks = {"Conv_0": {"kernel": mask.reshape(3, 3, 2, 5), "bias": None}}
    dense = macs_lib.count(model, variables, (6, 6, 2))
    assert dense == 6 * 6 * 90
    assert macs_lib.count(model, variables, (6, 6, 2), masks) == dense // 10 == 6 * 6 * 9


def test_masked_dense_counts_nonzeros():
    model = FlattenDense(10)
    variables = abstract_variables(model, (2, 5, 1))  # kernel 10x10
    mask = np.eye(10, dtype=bool)
    assert macs_lib.count(model, variables, (2, 5, 1), {"Dense_0": {"kernel": mask}}) == 10


def test_mask_in_a_big_model_affects_only_its_layer():
    model = models.create("resnet20", 10)
    variables = abstract_variables(model, (32, 32, 3))
    dense = macs_lib.count_by_layer(model, variables, (32, 32, 3))
    kernel = variables["params"]["layer2_0"]["conv2"]["kernel"]
    keep = np.zeros(kernel.size, bool)
    keep[: kernel.size // 4] = True  # 9216 weights: exactly 25% kept
    # None leaves and missing subtrees are dense.
    masks = jax.tree.map(lambda _: None, variables["params"])
    masks["layer2_0"]["conv2"]["kernel"] = keep.reshape(kernel.shape)
    del masks["layer3_0"]
    masked = macs_lib.count_by_layer(model, variables, (32, 32, 3), masks)
    name = "layer2_0/conv2/kernel"
    assert masked[name] * 4 == dense[name] == 16 * 16 * kernel.size
    assert {k: v for k, v in masked.items() if k != name} == {
        k: v for k, v in dense.items() if k != name
    }
    assert macs_lib.count(model, variables, (32, 32, 3), masks) == sum(masked.values())


def test_all_zero_mask_costs_nothing():
    model = OneConv(4)
    variables = abstract_variables(model, (5, 5, 2))
    masks = {"Conv_0": {"kernel": jnp.zeros((3, 3, 2, 4), jnp.bool_)}}
    assert macs_lib.count(model, variables, (5, 5, 2), masks) == 0


def test_mask_of_wrong_size_is_rejected():
    model = OneConv(4)
    variables = abstract_variables(model, (5, 5, 2))
    with pytest.raises(ValueError, match="Conv_0/kernel"):
        macs_lib.count(model, variables, (5, 5, 2), {"Conv_0": {"kernel": np.ones((3, 3))}})


# --- kernels reached through nested jaxprs --------------------------------------------------------


class Nested(nn.Module):
    """A rematerialised conv, a jitted dense, and a dense kernel reused 3 times in a scan."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.remat(nn.Conv)(4, (3, 3), padding="SAME", name="conv")(x)  # 5x5x2 -> 5x5x4
        x = x.reshape(x.shape[0], -1)  # 100
        kernel = self.param("w", nn.initializers.lecun_normal(), (100, 6))
        x = jax.jit(lambda a, w: a @ w.astype(jnp.bfloat16).astype(jnp.float32))(x, kernel)
        loop = self.param("loop", nn.initializers.lecun_normal(), (6, 6))
        x, _ = jax.lax.scan(lambda c, _: (c @ loop, None), x, None, length=3)
        return x


def test_kernels_are_found_inside_remat_jit_and_scan():
    model = Nested()
    variables = abstract_variables(model, (5, 5, 2))
    by_layer = macs_lib.count_by_layer(model, variables, (5, 5, 2))
    assert by_layer == {"conv/kernel": 5 * 5 * 9 * 2 * 4, "w": 100 * 6, "loop": 3 * 36}
    masks = {"w": np.arange(600).reshape(100, 6) % 2, "loop": np.eye(6)}
    masked = macs_lib.count_by_layer(model, variables, (5, 5, 2), masks)
    assert masked == {"conv/kernel": 5 * 5 * 9 * 2 * 4, "w": 300, "loop": 3 * 6}


class Attention(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        tokens = x.reshape(x.shape[0], -1, x.shape[-1])  # [B, 4, 3]
        return jnp.einsum("bic,bjc->bij", tokens, tokens)


def test_products_without_params_are_reported_separately():
    by_layer = macs_lib.count_by_layer(Attention(), {}, (2, 2, 3))
    assert by_layer == {macs_lib.UNATTRIBUTED: 4 * 4 * 3}


# --- the published totals ----------------------------------------------------------------------


def test_resnet50_imagenet_is_4_1_gmacs():
    model = models.create("resnet50", 1000)
    variables = abstract_variables(model, (224, 224, 3))
    by_layer = macs_lib.count_by_layer(model, variables, (224, 224, 3))
    total = sum(by_layer.values())
    assert total == pytest.approx(4.1e9, rel=0.02)
    assert total == 4_089_184_256  # the usual "4.09 GFLOPs" of torchvision / thop
    assert by_layer["conv1/kernel"] == 112 * 112 * 7 * 7 * 3 * 64
    assert by_layer["fc/kernel"] == 2048 * 1000
    assert len(by_layer) == 54  # 53 convs + fc
    assert macs_lib.count(model, variables, (224, 224, 3)) == total


def test_mobilenet_v1_is_569_mmacs():
    model = models.create("mobilenet_v1", 1000)
    total = macs(model, (224, 224, 3))
    assert total == pytest.approx(569e6, rel=0.02)  # Howard et al. 2017: 1.0 MobileNet-224
    assert total == 568_740_352


def test_mobilenet_width_multiplier_reduces_macs():
    # Howard et al. 2017, width-multiplier table: 0.5 MobileNet-224 has 149M mult-adds.
    total = macs(models.create("mobilenet_v1", 1000, width_multiplier=0.5), (224, 224, 3))
    assert total == pytest.approx(149e6, rel=0.02)


def test_concrete_variables_give_the_same_count():
    model = models.create("tiny_resnet", 10)
    x = jnp.zeros((1, 8, 8, 3))
    variables = jax.jit(lambda x: model.init(jax.random.key(0, impl="rbg"), x, train=False))(x)
    assert macs_lib.count(model, variables, (16, 16, 3)) == macs(model, (16, 16, 3)) > 0


def test_reference_cifar_resnet50_macs_by_hand():
    """6n+2, n = 8: every 3x3 conv costs H * W * 9 * C_in * C_out at its output resolution."""
    conv = lambda hw, cin, cout: hw * hw * 9 * cin * cout
    expected = (
        conv(32, 3, 32)
        + 16 * conv(32, 32, 32)
        + conv(16, 32, 64)
        + 15 * conv(16, 64, 64)
        + conv(8, 64, 128)
        + 15 * conv(8, 128, 128)
        + 128 * 10
    )
    assert macs(models.create("resnet50_cifar", 10), (32, 32, 3)) == expected == 444_433_664


def test_reference_vgg19_macs_by_hand():
    conv = lambda hw, cin, cout: hw * hw * 9 * cin * cout
    expected = (
        conv(32, 3, 64)
        + conv(32, 64, 64)
        + conv(16, 64, 128)
        + conv(16, 128, 128)
        + conv(8, 128, 256)
        + 3 * conv(8, 256, 256)
        + conv(4, 256, 512)
        + 3 * conv(4, 512, 512)
        + 4 * conv(2, 512, 512)
        + 512 * 10
    )
    assert macs(models.create("vgg19_cifar", 10), (32, 32, 3)) == expected == 398_136_320
