"""The model zoo: registry, published parameter counts, shapes, BatchNorm modes, dtypes."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optg_jax
from optg_jax.train import models

IMAGENET = (224, 224, 3)
CIFAR = (32, 32, 3)
FMNIST = (28, 28, 1)

# name -> (num_classes, one input's shape)
SPECS = {
    "resnet18": (1000, IMAGENET),
    "resnet34": (1000, IMAGENET),
    "resnet50": (1000, IMAGENET),
    "mobilenet_v1": (1000, IMAGENET),
    "vgg19_cifar": (10, CIFAR),
    "resnet20": (10, CIFAR),
    "resnet32": (10, CIFAR),
    "resnet56": (10, CIFAR),
    "resnet50_cifar": (10, CIFAR),
    "resnet50_bottleneck_cifar": (10, CIFAR),
    "fmnist_cnn": (10, FMNIST),
    "tiny_resnet": (10, CIFAR),
    "vit_tiny": (10, FMNIST),
}

# Trainable parameters (BatchNorm scale/bias included, running statistics not). The ResNets and
# MobileNet-V1 have the reference code's bias-free classifier: the published torchvision / Keras
# counts less num_classes biases.
PARAM_COUNTS = {
    "resnet18": 11_689_512 - 1000,  # torchvision resnet18
    "resnet34": 21_797_672 - 1000,  # torchvision resnet34
    "resnet50": 25_556_032,  # the OptG reference's ResNet50 (torchvision's 25,557,032 - 1000)
    "mobilenet_v1": 4_230_976,  # the reference's MobileNetV1 (Keras MobileNet's 4,231,976 - 1000)
    "vgg19_cifar": 20_035_018,  # the reference's vgg19_cifar10
    "resnet20": 269_722,  # He et al. 2016 Table 6: 0.27M (option A)
    "resnet32": 464_154,  # He et al. 2016 Table 6: 0.46M
    "resnet56": 853_018,  # He et al. 2016 Table 6: 0.85M
    "resnet50_cifar": 3_013_792,  # the reference's ResNet50_cifar10
    "resnet50_bottleneck_cifar": 23_520_842 - 10,  # ResNet-50, 3x3/1 stem, no max-pool
    # = 2_176 + 6_272 + 4 * (66_048 + 65_920 + 512) + 256 + 1_290: patch conv 4*4*1*128 + 128;
    # position embedding 49*128; 4 blocks of [attention 4*(128*128 + 128), MLP 128*256 + 256 +
    # 256*128 + 128, two LayerNorms 4*128]; final LayerNorm 2*128; head 128*10 + 10.
    "vit_tiny": 539_914,
}

# Of those, the parameters the library masks by default (kernels of rank >= 2), as counted from
# the reference code's networks (parameters other than BatchNorm and biases).
MASKED_COUNTS = {
    "resnet50": 25_502_912,
    "mobilenet_v1": 4_209_088,
    "resnet50_cifar": 3_006_560,
    "vgg19_cifar": 20_024_000,
}


def init_variables(model, shape, batch=1):
    """Concrete variables, initialised under one jit.

    The "rbg" PRNG keeps the compile short: threefry initialisers take tens of seconds to
    compile on a small shared CPU.
    """
    x = jnp.zeros((batch, *shape), jnp.float32)
    return jax.jit(lambda x: model.init(jax.random.key(0, impl="rbg"), x, train=False))(x)


@pytest.fixture(scope="module")
def tiny():
    """tiny_resnet (10 classes) and its variables; its params do not depend on the input size."""
    model = models.create("tiny_resnet", 10)
    return model, init_variables(model, (8, 8, 3))


def abstract_variables(model, shape, batch=1):
    x = jnp.zeros((batch, *shape), jnp.float32)
    return jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))


def num_params(variables):
    return sum(leaf.size for leaf in jax.tree.leaves(variables["params"]))


def test_names_lists_every_model():
    assert sorted(models.names()) == sorted(SPECS)


def test_unknown_name_raises_with_known_names():
    with pytest.raises(ValueError, match=r"'resnet1000'.*resnet50.*fmnist_cnn"):
        models.create("resnet1000", 10)


@pytest.mark.parametrize("name", sorted(PARAM_COUNTS))
def test_param_count_matches_published(name):
    num_classes, shape = SPECS[name]
    assert (
        num_params(abstract_variables(models.create(name, num_classes), shape))
        == PARAM_COUNTS[name]
    )


@pytest.mark.parametrize("name", sorted(MASKED_COUNTS))
def test_masked_count_matches_the_reference(name):
    num_classes, shape = SPECS[name]
    params = abstract_variables(models.create(name, num_classes), shape)["params"]
    leaves = jax.tree_util.tree_leaves_with_path(params)
    masked = sum(leaf.size for path, leaf in leaves if optg_jax.default_is_masked(path, leaf))
    assert masked == MASKED_COUNTS[name]


def test_reference_param_counts_by_hand():
    """The four reference networks' sizes, derived layer by layer from their definitions."""
    k3 = lambda cin, cout: 9 * cin * cout
    # ResNet50_cifar10: stem 3->32; three stages of 8 basic blocks (32, 64, 128 channels);
    # BatchNorm after every conv (2 params per channel); bias-free 1x1-conv classifier.
    kernels = k3(3, 32) + 16 * k3(32, 32) + k3(32, 64) + 15 * k3(64, 64)
    kernels += k3(64, 128) + 15 * k3(128, 128) + 128 * 10
    bn = 2 * (32 + 16 * 32 + 16 * 64 + 16 * 128)
    assert (kernels, kernels + bn) == (MASKED_COUNTS["resnet50_cifar"], 3_013_792)
    # vgg19_cifar10: 16 bias-free 3x3 convs, a 1x1 conv 512->10 with bias.
    widths = [3, 64, 64, 128, 128, 256, 256, 256, 256, 512, 512, 512, 512, 512, 512, 512, 512]
    kernels = sum(k3(a, b) for a, b in zip(widths, widths[1:])) + 512 * 10
    bn = 2 * sum(widths[1:])
    assert (kernels, kernels + bn + 10) == (MASKED_COUNTS["vgg19_cifar"], 20_035_018)
    # MobileNetV1: 3x3/2 stem 3->32; 13 x (3x3 depthwise + 1x1 pointwise); 1x1 conv 1024->1000.
    chans = [32, 64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024]
    kernels = k3(3, 32) + sum(9 * a + a * b for a, b in zip(chans, chans[1:])) + 1024 * 1000
    bn = 2 * (32 + sum(a + b for a, b in zip(chans, chans[1:])))
    assert (kernels, kernels + bn) == (MASKED_COUNTS["mobilenet_v1"], 4_230_976)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_bfloat16_model_output_shape_and_dtypes_in_both_modes(name):
    """bf16 compute: float32 params and logits [B, num_classes]; train mode updates batch_stats."""
    num_classes, shape = SPECS[name]
    model = models.create(name, num_classes, dtype=jnp.bfloat16)
    variables = abstract_variables(model, shape)
    assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
    x = jax.ShapeDtypeStruct((3, *shape), jnp.float32)
    logits = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
    assert logits.shape == (3, num_classes) and logits.dtype == jnp.float32
    logits, updates = jax.eval_shape(
        lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]), variables, x
    )
    assert logits.shape == (3, num_classes) and logits.dtype == jnp.float32
    assert jax.tree.structure(updates.get("batch_stats", {})) == jax.tree.structure(
        variables.get("batch_stats", {})
    )


def test_bfloat16_forward_runs_and_is_close_to_float32():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, *FMNIST)), jnp.float32)
    f32 = models.create("fmnist_cnn", 10)
    bf16 = models.create("fmnist_cnn", 10, dtype=jnp.bfloat16)
    variables = init_variables(f32, FMNIST)
    a = jax.jit(lambda v, x: f32.apply(v, x, train=False))(variables, x)
    b = jax.jit(lambda v, x: bf16.apply(v, x, train=False))(variables, x)
    assert b.dtype == jnp.float32
    np.testing.assert_allclose(b, a, atol=0.1, rtol=0.05)


@pytest.mark.parametrize("shape", [(32, 32, 3), (224, 224, 3), (28, 28, 3), (5, 7, 3)])
def test_tiny_resnet_runs_on_any_input_size(tiny, shape):
    model, variables = tiny
    x = jnp.ones((2, *shape))
    logits, _ = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(
        variables, x
    )
    assert logits.shape == (2, 10) and bool(jnp.all(jnp.isfinite(logits)))


def test_mobilenet_width_multiplier_scales_channels():
    model = models.create("mobilenet_v1", 1000, width_multiplier=0.5)
    params = abstract_variables(model, (64, 64, 3))["params"]
    assert params["conv1"]["kernel"].shape == (3, 3, 3, 16)
    assert params["dw13"]["kernel"].shape == (3, 3, 1, 512)  # depthwise: one input channel
    assert params["fc"]["kernel"].shape == (512, 1000)


def test_resnet50_layout_is_torchvision_v1_5():
    params = abstract_variables(models.create("resnet50", 1000), (64, 64, 3))["params"]
    assert params["conv1"]["kernel"].shape == (7, 7, 3, 64)
    assert "bias" not in params["conv1"]
    block = params["layer2_0"]
    assert block["conv2"]["kernel"].shape == (3, 3, 128, 128)
    assert block["downsample_conv"]["kernel"].shape == (1, 1, 256, 512)


def test_resnet50_v1_5_strides_on_the_3x3_conv():
    model = models.create("resnet50", 10)
    x = jnp.zeros((1, 64, 64, 3))
    variables = abstract_variables(model, (64, 64, 3))
    _, state = jax.eval_shape(
        lambda v: model.apply(
            v, x, train=False, capture_intermediates=True, mutable=["intermediates"]
        ),
        variables,
    )
    block = state["intermediates"]["layer2_0"]
    assert block["conv1"]["__call__"][0].shape == (1, 16, 16, 128)  # 1x1: no stride
    assert block["conv2"]["__call__"][0].shape == (1, 8, 8, 128)  # 3x3: stride 2


def test_zero_init_residual_zeroes_last_bn_scale():
    params = abstract_variables(
        models.create("resnet50", 10, zero_init_residual=True), (32, 32, 3)
    )["params"]
    tiny = models.create("tiny_resnet", 10, zero_init_residual=True)
    concrete = init_variables(tiny, (8, 8, 3))["params"]
    assert "bn3" in params["layer1_0"]
    assert not np.any(concrete["layer1_0"]["bn2"]["scale"])
    assert np.all(concrete["layer1_0"]["bn1"]["scale"] == 1)


def test_models_without_options_reject_unknown_kwargs():
    with pytest.raises(TypeError):
        models.create("resnet20", 10, width_multiplier=0.5)


class TestBatchNorm:
    """The stem BatchNorm of tiny_resnet against a hand computation on a tiny input."""

    @pytest.fixture
    def setup(self, tiny):
        model, variables = tiny
        rng = np.random.default_rng(0)
        x = jnp.asarray(rng.normal(size=(4, 6, 6, 3)), jnp.float32)
        c = variables["params"]["bn1"]["scale"].shape[0]
        f32 = lambda a: jnp.asarray(a, jnp.float32)
        # Non-trivial affine params and running statistics, so every term matters.
        params = dict(variables["params"])
        params["bn1"] = {"scale": f32(1 + rng.uniform(size=c)), "bias": f32(rng.normal(size=c))}
        stats = dict(variables["batch_stats"])
        stats["bn1"] = {"mean": f32(rng.normal(size=c)), "var": f32(0.5 + rng.uniform(size=c))}
        return model, {"params": params, "batch_stats": stats}, x

    @staticmethod
    def stem(model, variables, x, train):
        """(conv1 output, bn1 output, new batch_stats)."""
        _, state = jax.jit(
            lambda v, x: model.apply(
                v,
                x,
                train=train,
                capture_intermediates=True,
                mutable=["intermediates", "batch_stats"],
            )
        )(variables, x)
        inter = state["intermediates"]
        return inter["conv1"]["__call__"][0], inter["bn1"]["__call__"][0], state["batch_stats"]

    def test_train_mode_uses_batch_statistics_and_updates_running_ones(self, setup):
        model, variables, x = setup
        conv_out, bn_out, new_stats = self.stem(model, variables, x, train=True)
        conv_out = np.asarray(conv_out, np.float64)
        mean = conv_out.mean(axis=(0, 1, 2))
        var = conv_out.var(axis=(0, 1, 2))  # biased, as Flax (and PyTorch's normalisation) use
        p, s = variables["params"]["bn1"], variables["batch_stats"]["bn1"]
        expected = (conv_out - mean) / np.sqrt(var + 1e-5) * p["scale"] + p["bias"]
        np.testing.assert_allclose(bn_out, expected, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(
            new_stats["bn1"]["mean"], 0.9 * s["mean"] + 0.1 * mean, rtol=1e-5, atol=1e-5
        )
        np.testing.assert_allclose(
            new_stats["bn1"]["var"], 0.9 * s["var"] + 0.1 * var, rtol=1e-5, atol=1e-5
        )

    def test_eval_mode_uses_running_statistics_and_leaves_them(self, setup):
        model, variables, x = setup
        conv_out, bn_out, new_stats = self.stem(model, variables, x, train=False)
        p, s = variables["params"]["bn1"], variables["batch_stats"]["bn1"]
        expected = (np.asarray(conv_out) - s["mean"]) / np.sqrt(s["var"] + 1e-5) * p["scale"] + p[
            "bias"
        ]
        np.testing.assert_allclose(bn_out, expected, rtol=1e-4, atol=1e-4)
        jax.tree.map(np.testing.assert_array_equal, new_stats, variables["batch_stats"])

    def test_train_and_eval_outputs_differ(self, setup):
        model, variables, x = setup
        train_logits, _ = jax.jit(
            lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"])
        )(variables, x)
        eval_logits = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
        assert not np.allclose(train_logits, eval_logits)


def test_every_model_is_a_flax_module():
    for name, (num_classes, _) in SPECS.items():
        assert isinstance(models.create(name, num_classes), nn.Module)


def test_reshape_max_pool_equals_flax_max_pool():
    import flax.linen as nn

    from optg_jax.train.models.small import max_pool_2x2

    x = jax.random.normal(jax.random.key(0), (2, 7, 9, 3))
    np.testing.assert_array_equal(max_pool_2x2(x), nn.max_pool(x, (2, 2), strides=(2, 2)))


class TestReferenceNetworks:
    """Layout and init of the networks built as the OptG reference code builds them."""

    def test_resnet50_cifar_is_the_6n_plus_2_basic_block_network(self):
        params = abstract_variables(models.create("resnet50_cifar", 10), CIFAR)["params"]
        assert params["conv1"]["kernel"].shape == (3, 3, 3, 32)
        assert sorted(k for k in params if k.startswith("layer")) == sorted(
            f"layer{i}_{j}" for i in (1, 2, 3) for j in range(8)
        )
        assert params["layer2_0"]["conv1"]["kernel"].shape == (3, 3, 32, 64)
        assert params["layer3_7"]["conv2"]["kernel"].shape == (3, 3, 128, 128)
        assert not any("downsample" in k for block in params.values() for k in block)
        assert params["fc"] == {"kernel": jax.ShapeDtypeStruct((128, 10), jnp.float32)}

    @pytest.mark.parametrize("name", ["resnet50", "mobilenet_v1", "resnet18"])
    def test_imagenet_classifiers_have_no_bias(self, name):
        params = abstract_variables(models.create(name, 1000), (32, 32, 3))["params"]
        assert list(params["fc"]) == ["kernel"]

    def test_vgg19_has_bias_free_convs_five_pools_and_a_classifier_with_bias(self):
        model = models.create("vgg19_cifar", 10)
        variables = abstract_variables(model, CIFAR)
        params = variables["params"]
        convs = [k for k in params if k.startswith("conv")]
        assert len(convs) == 16 and all(list(params[k]) == ["kernel"] for k in convs)
        assert params["fc"]["kernel"].shape == (512, 10) and params["fc"]["bias"].shape == (10,)
        _, state = jax.eval_shape(
            lambda v: model.apply(
                v, jnp.zeros((1, *CIFAR)), capture_intermediates=True, mutable=["intermediates"]
            ),
            variables,
        )
        # The last conv runs at 2x2; the fifth pool leaves 1x1 for the classifier.
        assert state["intermediates"]["conv15"]["__call__"][0].shape == (1, 2, 2, 512)

    def test_convs_and_classifier_are_kaiming_normal_fan_in(self):
        """std sqrt(2 / fan_in); fan_out (or Flax's lecun default) would be off by sqrt(2)."""
        model = models.CifarResNet(8, 1000, widths=(8, 16, 32), reference_classifier=True)
        params = init_variables(model, (8, 8, 3))["params"]
        kernel = np.asarray(params["layer2_0"]["conv1"]["kernel"])  # 3x3x8x16: fan_in 72
        assert kernel.shape == (3, 3, 8, 16)
        assert kernel.std() == pytest.approx(np.sqrt(2 / 72), rel=0.08)
        fc = np.asarray(params["fc"]["kernel"])  # 32x1000: fan_in 32
        assert fc.std() == pytest.approx(np.sqrt(2 / 32), rel=0.05)
        assert np.abs(fc).max() > 3 * np.sqrt(2 / 32)  # a normal, not a truncated normal

    def test_classifier_bias_is_pytorch_conv_default(self):
        """Uniform in +-1/sqrt(fan_in) (fan_in 32 here; 512 in VGG-19): std bound / sqrt(3)."""
        model = models.VGG(1000, cfg=(32, "M"))
        bias = np.asarray(init_variables(model, (4, 4, 3))["params"]["fc"]["bias"])
        bound = 1 / np.sqrt(32)
        assert np.abs(bias).max() <= bound and np.abs(bias).max() > 0.98 * bound
        assert bias.std() == pytest.approx(bound / np.sqrt(3), rel=0.1)

    def test_option_a_shortcut_subsamples_and_zero_pads_channels(self):
        """With zero conv kernels a strided block outputs relu(shortcut(x)), which the reference
        writes as `F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, (p - i) // 2, p - i - (p - i) // 2))`."""
        from optg_jax.train.models.cifar_resnet import CifarBlock

        block = CifarBlock(8, stride=2)
        x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 6, 6, 3)), jnp.float32)
        variables = jax.jit(lambda x: block.init(jax.random.key(0, impl="rbg"), x, False))(x)
        variables = {
            "params": jax.tree.map(jnp.zeros_like, variables["params"]),
            "batch_stats": variables["batch_stats"],
        }
        out = block.apply(variables, x, False)
        expected = np.pad(np.asarray(x)[:, ::2, ::2, :], ((0, 0), (0, 0), (0, 0), (2, 3)))
        np.testing.assert_allclose(out, np.maximum(expected, 0), atol=1e-6)


@pytest.mark.parametrize("shape, tokens", [(FMNIST, 49), (CIFAR, 64)])
def test_vit_tokens_and_class_token(shape, tokens):
    """Patch 4: 7x7 tokens on 28x28, 8x8 on 32x32; the class token adds one and 128 params."""
    mean = abstract_variables(models.create("vit_tiny", 10), shape)["params"]
    cls = abstract_variables(models.create("vit_tiny", 10, pool="cls"), shape)["params"]
    assert mean["pos_embedding"].shape == (1, tokens, 128)
    assert cls["pos_embedding"].shape == (1, tokens + 1, 128) and cls["cls"].shape == (1, 1, 128)
    assert num_params({"params": cls}) - num_params({"params": mean}) == 128 + 128
    assert "batch_stats" not in abstract_variables(models.create("vit_tiny", 10), shape)


def test_vit_rejects_inputs_that_do_not_divide_into_patches():
    with pytest.raises(ValueError, match="30x30"):
        abstract_variables(models.create("vit_tiny", 10), (30, 30, 1))
    with pytest.raises(ValueError, match="'max'"):
        abstract_variables(models.create("vit_tiny", 10, pool="max"), FMNIST)


def test_vit_dropout_only_in_train_mode():
    model = models.create("vit_tiny", 10, dropout_rate=0.5)
    variables = init_variables(model, FMNIST)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, *FMNIST)), jnp.float32)
    apply = jax.jit(lambda v, x, key: model.apply(v, x, train=True, rngs={"dropout": key}))
    a = apply(variables, x, jax.random.key(1))
    b = apply(variables, x, jax.random.key(2))
    assert not np.allclose(a, b)
    e1 = model.apply(variables, x, train=False)
    e2 = models.create("vit_tiny", 10).apply(variables, x, train=False)
    np.testing.assert_allclose(e1, e2, rtol=1e-6, atol=1e-6)
