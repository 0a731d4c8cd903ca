"""The default masking policy: exact lists of masked leaves, written out by hand, for the ViT,
the ResNets, a Linen model with embeddings and rank-3 kernels, and an NNX model (its plain
state, and the state with `Variable`s in it that `nnx.Optimizer` hands `tx.init`)."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
import pytest
from flax import nnx

import optg_jax
from optg_jax import masking
from optg_jax.masking import default_is_masked, leaf_name, masked_paths, rank_at_least_2
from optg_jax.train import models


def abstract_params(model, shape):
    x = jnp.zeros((1, *shape), jnp.float32)
    return jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))["params"]


def optg_masked_paths(params):
    """The '/'-paths of the leaves that `optg_optax`'s default masks (from its state)."""
    state = jax.eval_shape(optg_jax.optg_optax(0.5, 10, 0.1).init, params)
    return [
        jax.tree_util.keystr(path, simple=True, separator="/")
        for path, mask in jax.tree_util.tree_leaves_with_path(state.masks)
    ]


# --- leaf names -------------------------------------------------------------------------------

D, G, S = jax.tree_util.DictKey, jax.tree_util.GetAttrKey, jax.tree_util.SequenceKey


@pytest.mark.parametrize(
    "path, name",
    [
        ((D("params"), D("fc"), D("kernel")), "kernel"),  # Linen variables
        ((D("fc"), D("kernel")), "kernel"),  # Linen params, NNX state
        ((D("fc"), D("kernel"), G("value")), "kernel"),  # NNX state with its Variables
        ((G("fc"), G("kernel"), G("value")), "kernel"),  # an NNX module as a pytree
        ((D("layers"), D(0), D("kernel")), "kernel"),  # nnx.List: integer keys
        ((D("blocks"), S(2), D("bias")), "bias"),  # a list of dicts
        ((D("attn"), D("value"), D("kernel")), "kernel"),  # Linen MHA's "value" projection
        ((D("attn"), D("value")), "value"),  # a param named "value" (not a Variable's)
        ((S(0),), None),
        ((), None),
    ],
)
def test_leaf_name(path, name):
    assert leaf_name(path) == name


def test_kernel_needs_rank_2_and_the_name():
    leaf2, leaf1 = jnp.zeros((3, 4)), jnp.zeros(4)
    assert default_is_masked((D("fc"), D("kernel")), leaf2)
    assert not default_is_masked((D("fc"), D("kernel")), leaf1)  # no rank-1 kernel is pruned
    assert not default_is_masked((D("emb"), D("embedding")), leaf2)
    assert not default_is_masked((D("w"),), leaf2)
    assert rank_at_least_2((D("w"),), leaf2) and not rank_at_least_2((D("w"),), leaf1)


def test_package_exports_the_policy():
    assert optg_jax.default_is_masked is masking.default_is_masked


# --- the zoo ----------------------------------------------------------------------------------

VIT_MASKED_PER_BLOCK = [
    "attn/key/kernel",
    "attn/out/kernel",
    "attn/query/kernel",
    "attn/value/kernel",
    "mlp_in/kernel",
    "mlp_out/kernel",
]


def test_vit_masks_its_projections_only():
    params = abstract_params(models.create("vit_tiny", 10, pool="cls"), (28, 28, 1))
    want = [f"block{i}/{name}" for i in range(4) for name in VIT_MASKED_PER_BLOCK] + [
        "head/kernel",
        "patch_embed/kernel",
    ]
    assert masked_paths(params) == want
    assert optg_masked_paths(params) == want
    # The rank-3 attention kernels are among them; the rank-2 attention biases are not.
    assert params["block0"]["attn"]["query"]["kernel"].shape == (128, 4, 32)
    assert params["block0"]["attn"]["query"]["bias"].shape == (4, 32)
    # Masked weights: 4 blocks x (4 x 128^2 + 2 x 128 x 256), the 4x4 patch conv, the head.
    per_block = 4 * 128 * 128 + 2 * 128 * 256
    shapes = {p: math.prod(x.shape) for p, x in flat(params).items()}
    assert sum(shapes[p] for p in want) == 4 * per_block + 4 * 4 * 1 * 128 + 128 * 10 == 527_616
    # The old rule also takes the position embedding, the class token and the attention
    # biases (heads x head size) of every block.
    old = set(masked_paths(params, rank_at_least_2)) - set(want)
    assert old == {"pos_embedding", "cls"} | {
        f"block{i}/attn/{p}/bias" for i in range(4) for p in ("query", "key", "value")
    }


def test_keep_dense_leaves_the_named_layers_out():
    """The ViT with its first and last layers unpruned: the 24 block kernels only."""
    params = abstract_params(models.create("vit_tiny", 10), (28, 28, 1))
    keep_ends = masking.keep_dense("patch_embed", "head")
    want = [f"block{i}/{name}" for i in range(4) for name in VIT_MASKED_PER_BLOCK]
    assert masked_paths(params, keep_ends) == want
    state = jax.eval_shape(optg_jax.optg_optax(0.9, 10, 0.1, is_masked=keep_ends).init, params)
    assert sum(math.prod(m.shape) for m in jax.tree.leaves(state.masks)) == 4 * (
        4 * 128 * 128 + 2 * 128 * 256
    )
    # A name anywhere on the path counts (a whole block), and `base` is narrowed, not replaced.
    block0 = masking.keep_dense("block0", base=rank_at_least_2)
    assert not any(p.startswith("block0/") for p in masked_paths(params, block0))
    assert "pos_embedding" in masked_paths(params, block0)
    for bad in [(), ("",), (3,)]:
        with pytest.raises(ValueError, match="keep_dense needs one or more module names"):
            masking.keep_dense(*bad)


def flat(params):
    return {
        jax.tree_util.keystr(p, simple=True, separator="/"): x
        for p, x in jax.tree_util.tree_leaves_with_path(params)
    }


@pytest.mark.parametrize(
    "name, shape, num_leaves, num_weights",
    [
        # 53 convs + fc; the reference's masked count (its classifier is a 1x1 conv).
        ("resnet50", (224, 224, 3), 54, 25_502_912),
        # 19 convs + fc: 3x3x3x16 + 6 x 3x3x16x16 + 3x3x16x32 + 5 x 3x3x32x32 + 3x3x32x64
        # + 5 x 3x3x64x64 + 64x10 (option A: no projection convs).
        ("resnet20", (32, 32, 3), 20, 268_336),
    ],
)
def test_resnets_mask_every_conv_and_dense_kernel_as_before(name, shape, num_leaves, num_weights):
    params = abstract_params(models.create(name, 10 if shape[0] == 32 else 1000), shape)
    paths = masked_paths(params)
    assert paths == masked_paths(params, rank_at_least_2)  # unchanged from the old rule
    assert len(paths) == num_leaves and all(p.endswith("/kernel") for p in paths)
    assert sum(math.prod(flat(params)[p].shape) for p in paths) == num_weights
    assert optg_masked_paths(params) == paths


class LinenText(nn.Module):
    """Token embedding, a position embedding, an Einsum and a DenseGeneral, norms."""

    @nn.compact
    def __call__(self, tokens, train: bool = False):
        x = nn.Embed(50, 8, name="embed")(tokens)  # [B, T, 8]
        x = x + self.param("pos_embedding", nn.initializers.normal(0.02), (1, 6, 8))
        x = nn.LayerNorm(name="norm")(x)
        x = nn.Einsum((8, 2, 4), "btd,dhk->bthk", name="einsum")(x)  # kernel [8, 2, 4]
        x = nn.DenseGeneral(8, axis=(-2, -1), name="merge")(x)  # kernel [2, 4, 8]
        return nn.Dense(3, name="out")(x.mean(1))


def test_linen_embeddings_and_rank_3_kernels():
    params = jax.eval_shape(
        lambda: LinenText().init(jax.random.key(0), jnp.zeros((1, 6), jnp.int32))
    )["params"]
    assert masked_paths(params) == ["einsum/kernel", "merge/kernel", "out/kernel"]
    assert params["einsum"]["kernel"].shape == (8, 2, 4)
    assert params["einsum"]["bias"].shape == (2, 4)  # rank 2, not masked
    assert masked_paths(params, rank_at_least_2) == [
        "einsum/bias",
        "einsum/kernel",
        "embed/embedding",
        "merge/kernel",
        "out/kernel",
        "pos_embedding",
    ]


# --- NNX ----------------------------------------------------------------------------------------


class NnxModel(nnx.Module):
    def __init__(self, rngs):
        self.conv = nnx.Conv(1, 4, (3, 3), rngs=rngs)
        self.bn = nnx.BatchNorm(4, rngs=rngs)
        self.embed = nnx.Embed(20, 8, rngs=rngs)
        self.pos_embedding = nnx.Param(jnp.zeros((1, 5, 8)))
        self.attn = nnx.MultiHeadAttention(
            num_heads=2, in_features=8, qkv_features=8, decode=False, rngs=rngs
        )
        self.norm = nnx.LayerNorm(8, rngs=rngs)
        self.einsum = nnx.Einsum("btd,dhk->bthk", (8, 2, 3), (2, 3), rngs=rngs)
        self.fc = nnx.Linear(8, 10, rngs=rngs)


NNX_MASKED = [
    "attn/key/kernel",
    "attn/out/kernel",
    "attn/query/kernel",
    "attn/value/kernel",
    "conv/kernel",
    "einsum/kernel",
    "fc/kernel",
]


def test_nnx_state_and_nnx_optimizer_mask_the_kernels_only():
    # Abstract (shapes only): an eager NNX init compiles every initialiser on its own.
    model = nnx.eval_shape(lambda: NnxModel(nnx.Rngs(0)))
    assert masked_paths(nnx.as_pure(nnx.state(model, nnx.Param))) == NNX_MASKED
    # With the Variables in the state (what nnx.Optimizer passes to tx.init) the paths end in
    # `.value`; the same leaves are masked.
    with_variables = masked_paths(nnx.state(model, nnx.Param))
    assert with_variables == [f"{p}/value" for p in NNX_MASKED]
    tx = optax.chain(optg_jax.optg_optax(0.5, 10, 0.1), optax.sgd(0.1))
    optimizer = nnx.eval_shape(lambda: nnx.Optimizer(NnxModel(nnx.Rngs(0)), tx, wrt=nnx.Param))
    masks = optg_jax.get_masks(nnx.as_pure(optimizer.opt_state))
    got = [
        jax.tree_util.keystr(path, simple=True, separator="/")
        for path, _ in jax.tree_util.tree_leaves_with_path(masks)
    ]
    assert got == NNX_MASKED
    # The attention biases are rank 2 (heads x head size) and stay dense under the policy.
    assert model.attn.query.bias.shape == (2, 4) and model.einsum.bias.shape == (2, 3)
