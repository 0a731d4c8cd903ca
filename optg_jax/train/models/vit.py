"""A small Vision Transformer (Dosovitskiy et al. 2021) for 28x28 and 32x32 images.

Layout: a 4x4/4 patch-embedding conv (no overlap: 7x7 = 49 tokens on 28x28, 64 on 32x32), a
learned position embedding added to the tokens (after an optional class token is prepended),
`depth` pre-norm encoder blocks (`x + MHA(LN(x))`, then `x + MLP(LN(x))` with a GELU MLP of
`mlp_dim` units), a final LayerNorm, the class token or the mean over tokens, and a linear
classifier.

Parameter names, and what `optg_jax.masking.default_is_masked` makes of them:
  masked    `patch_embed/kernel` [4, 4, C, D], `block<i>/attn/{query,key,value}/kernel`
            [D, heads, D/heads], `block<i>/attn/out/kernel` [heads, D/heads, D],
            `block<i>/mlp_in/kernel` [D, mlp_dim], `block<i>/mlp_out/kernel` [mlp_dim, D],
            `head/kernel` [D, num_classes];
  dense     `pos_embedding` [1, tokens, D], `cls` [1, 1, D] (class-token pooling only), every
            `bias` (rank 2 in the attention projections: heads x head size), every LayerNorm
            `scale` and `bias`.

`vit_tiny` (the zoo's `"vit_tiny"`): width 128, 4 blocks of 4 heads, MLP 256, mean pooling:
0.54M parameters and 28.3M MACs per 28x28 example (attention products included).
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from optg_jax.train.models.layers import classifier

_LAYER_NORM_EPSILON = 1e-6


class EncoderBlock(nn.Module):
    """Pre-norm transformer block on `[B, tokens, width]`; returns the same shape."""

    num_heads: int
    mlp_dim: int
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        width = x.shape[-1]
        dense_init = nn.initializers.xavier_uniform()
        norm = lambda name: nn.LayerNorm(
            epsilon=_LAYER_NORM_EPSILON, dtype=self.dtype, param_dtype=jnp.float32, name=name
        )
        y = nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads,
            qkv_features=width,
            dropout_rate=self.dropout_rate,
            deterministic=not train,
            kernel_init=dense_init,
            dtype=self.dtype,
            param_dtype=jnp.float32,
            name="attn",
        )(norm("norm1")(x))
        x = x + nn.Dropout(self.dropout_rate, deterministic=not train)(y)
        dense = lambda features, name: nn.Dense(
            features,
            kernel_init=dense_init,
            dtype=self.dtype,
            param_dtype=jnp.float32,
            name=name,
        )
        y = nn.gelu(dense(self.mlp_dim, "mlp_in")(norm("norm2")(x)))
        y = dense(width, "mlp_out")(nn.Dropout(self.dropout_rate, deterministic=not train)(y))
        return x + nn.Dropout(self.dropout_rate, deterministic=not train)(y)


class VisionTransformer(nn.Module):
    """Returns float32 logits `[B, num_classes]` for NHWC input whose sides divide by `patch`.

    Attributes:
      num_classes: classifier outputs.
      patch: side of the square, non-overlapping patches.
      width: token dimension `D` (divisible by `num_heads`).
      depth: number of encoder blocks.
      num_heads: attention heads per block.
      mlp_dim: hidden units of each block's MLP.
      pool: `"mean"` (average of the tokens) or `"cls"` (a learned class token).
      dropout_rate: dropout on attention weights and residual branches in train mode (needs a
        `'dropout'` rng when > 0); 0 turns it off.
      dtype: compute dtype; params are float32.
    """

    num_classes: int
    patch: int = 4
    width: int = 128
    depth: int = 4
    num_heads: int = 4
    mlp_dim: int = 256
    pool: str = "mean"
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        if self.pool not in ("mean", "cls"):
            raise ValueError(f"pool must be 'mean' or 'cls', got {self.pool!r}")
        if x.shape[1] % self.patch or x.shape[2] % self.patch:
            raise ValueError(
                f"input of {x.shape[1]}x{x.shape[2]} pixels does not divide into {self.patch}x"
                f"{self.patch} patches"
            )
        x = nn.Conv(
            self.width,
            (self.patch, self.patch),
            strides=(self.patch, self.patch),
            padding="VALID",
            dtype=self.dtype,
            param_dtype=jnp.float32,
            name="patch_embed",
        )(x.astype(self.dtype))
        batch = x.shape[0]
        x = x.reshape(batch, -1, self.width)
        if self.pool == "cls":
            cls = self.param("cls", nn.initializers.zeros, (1, 1, self.width), jnp.float32)
            x = jnp.concatenate(
                [jnp.broadcast_to(cls, (batch, 1, self.width)).astype(x.dtype), x], 1
            )
        pos = self.param(
            "pos_embedding", nn.initializers.normal(0.02), (1, *x.shape[1:]), jnp.float32
        )
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x + pos.astype(x.dtype))
        for i in range(self.depth):
            x = EncoderBlock(
                self.num_heads,
                self.mlp_dim,
                self.dropout_rate,
                dtype=self.dtype,
                name=f"block{i}",
            )(x, train)
        x = nn.LayerNorm(
            epsilon=_LAYER_NORM_EPSILON, dtype=self.dtype, param_dtype=jnp.float32, name="norm"
        )(x)
        x = x[:, 0] if self.pool == "cls" else x.mean(axis=1)
        return classifier(self.num_classes, dtype=self.dtype, name="head")(x).astype(jnp.float32)


def vit_tiny(num_classes: int, dtype=jnp.float32, **kwargs) -> VisionTransformer:
    """The zoo's `"vit_tiny"`: patch 4, width 128, 4 blocks, 4 heads, MLP 256, mean pooling.

    Args:
      num_classes: the number of outputs (float32 logits).
      dtype: the compute dtype (params are float32).
      **kwargs: `VisionTransformer` attributes to override (e.g. `pool="cls"`).

    Returns:
      The `VisionTransformer` (0.54M parameters with 10 classes on 28x28x1 inputs).
    """
    return VisionTransformer(num_classes, dtype=dtype, **kwargs)
