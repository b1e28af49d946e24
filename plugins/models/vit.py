"""A Vision Transformer (Dosovitskiy et al. 2021), laid out and named as big_vision's ViT.

The image is cut into `patch_size` x `patch_size` patches, each linearly embedded (a strided
convolution, `embedding`), given a position embedding (`learned`, or the fixed 2-D sin-cos one
of MoCo v3: `sincos2d`) and passed through `depth` pre-norm encoder blocks (LayerNorm,
multi-head self-attention through `jax.nn.dot_product_attention`, LayerNorm, a GELU MLP). The
class comes from a learned `cls` token prepended to the patches, or from the mean of the
encoded patches (`gap`), through a zero-initialised `head`. big_vision's `mu` variant is
width 32, depth 1, mlp_dim 128, 2 heads; `Ti` 192, 12, 768, 3; `S` 384, 12, 1536, 6.

Every parameter carries logical axis names (`embed`, `heads`, `kv`, `mlp`, ...); the plugin's
`logical_axis_rules` split heads and MLP units over the mesh's `model` axis and the embedding
dimension over `fsdp` when `config.mesh.logical_axis_rules` is empty.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

import framework

POOLS = ("cls", "gap")
POSITION_EMBEDDINGS = ("learned", "sincos2d")
LOGICAL_AXIS_RULES = (("embed", "fsdp"), ("heads", "model"), ("mlp", "model"), ("kv", None),
                      ("norm", None), ("classes", None), ("patches", None),
                      ("patch_height", None), ("patch_width", None), ("channels", None))


def annotated(init: Any, *names: str) -> Any:
    return nn.with_logical_partitioning(init, names)


def sincos_2d(height: int, width: int, features: int, temperature: float = 10_000.0
              ) -> jax.Array:
    """The fixed position embedding [height * width, features] of MoCo v3 (as big_vision's
    posemb_sincos_2d): sines and cosines of x and of y, a quarter of the features each."""
    y, x = jnp.mgrid[:height, :width]
    omega = 1.0 / temperature ** (jnp.arange(features // 4) / (features // 4 - 1))
    y = jnp.einsum("m,d->md", y.flatten(), omega)
    x = jnp.einsum("m,d->md", x.flatten(), omega)
    return jnp.concatenate([jnp.sin(x), jnp.cos(x), jnp.sin(y), jnp.cos(y)], axis=1)


class MultiHeadAttention(nn.Module):
    """Self-attention over all tokens; q, k, v and out named as flax's
    MultiHeadDotProductAttention, so big_vision's checkpoints' paths match."""

    num_heads: int
    dtype: Any

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        head_dim = x.shape[-1] // self.num_heads

        def project(name: str) -> jax.Array:
            return nn.DenseGeneral((self.num_heads, head_dim), dtype=self.dtype, name=name,
                                   kernel_init=annotated(nn.initializers.xavier_uniform(),
                                                         "embed", "heads", "kv"),
                                   bias_init=annotated(nn.initializers.zeros, "heads", "kv"))(x)

        out = jax.nn.dot_product_attention(project("query"), project("key"), project("value"))
        return nn.DenseGeneral(x.shape[-1], axis=(-2, -1), dtype=self.dtype, name="out",
                               kernel_init=annotated(nn.initializers.xavier_uniform(),
                                                     "heads", "kv", "embed"),
                               bias_init=annotated(nn.initializers.zeros, "embed"))(out)


class MlpBlock(nn.Module):
    mlp_dim: int
    dropout_rate: float
    dtype: Any

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        def dense(features: int, names: tuple[str, str]) -> nn.Dense:
            return nn.Dense(features, dtype=self.dtype,
                            kernel_init=annotated(nn.initializers.xavier_uniform(), *names),
                            bias_init=annotated(nn.initializers.normal(1e-6), names[1]))

        y = nn.gelu(dense(self.mlp_dim, ("embed", "mlp"))(x))
        y = nn.Dropout(self.dropout_rate, deterministic=not train)(y)
        return dense(x.shape[-1], ("mlp", "embed"))(y)


def layer_norm(dtype: Any, name: str | None = None) -> nn.LayerNorm:
    return nn.LayerNorm(dtype=dtype, name=name, scale_init=annotated(nn.initializers.ones, "norm"),
                        bias_init=annotated(nn.initializers.zeros, "norm"))


class Encoder1DBlock(nn.Module):
    """x + attention(norm(x)), then x + mlp(norm(x)), with dropout on both branches."""

    num_heads: int
    mlp_dim: int
    dropout_rate: float
    dtype: Any

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        dropout = nn.Dropout(self.dropout_rate, deterministic=not train)
        x = x + dropout(MultiHeadAttention(self.num_heads, self.dtype,
                                           name="MultiHeadDotProductAttention_0")(
            layer_norm(self.dtype)(x)))
        y = MlpBlock(self.mlp_dim, self.dropout_rate, self.dtype)(layer_norm(self.dtype)(x),
                                                                    train=train)
        return x + dropout(y)


class Encoder(nn.Module):
    depth: int
    num_heads: int
    mlp_dim: int
    dropout_rate: float
    dtype: Any

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        for i in range(self.depth):
            x = Encoder1DBlock(self.num_heads, self.mlp_dim, self.dropout_rate, self.dtype,
                               name=f"encoderblock_{i}")(x, train=train)
        return layer_norm(self.dtype, "encoder_norm")(x)


class ViT(nn.Module):
    """Images [B, H, W, C] -> logits [B, num_classes]."""

    num_classes: int
    patch_size: int
    width: int
    depth: int
    mlp_dim: int
    num_heads: int
    pool: str = "gap"
    position_embedding: str = "learned"
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool) -> jax.Array:
        patch = (self.patch_size, self.patch_size)
        kernel_names = ("patch_height", "patch_width", "channels", "embed")
        x = nn.Conv(self.width, patch, strides=patch, padding="VALID", dtype=self.dtype,
                    name="embedding",
                    kernel_init=annotated(nn.initializers.lecun_normal(), *kernel_names),
                    bias_init=annotated(nn.initializers.zeros, "embed"))(
            images.astype(self.dtype))
        batch, height, width, features = x.shape
        x = x.reshape(batch, height * width, features) + self.positions(height, width)
        if self.pool == "cls":
            cls = self.param("cls", annotated(nn.initializers.zeros, "embed"), (features,))
            x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (batch, 1, features)), x],
                                axis=1)
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        x = Encoder(self.depth, self.num_heads, self.mlp_dim, self.dropout_rate, self.dtype,
                    name="Transformer")(x, train=train)
        x = x[:, 0] if self.pool == "cls" else jnp.mean(x, axis=1)
        logits = nn.Dense(self.num_classes, dtype=self.dtype, name="head",
                          kernel_init=annotated(nn.initializers.zeros, "embed", "classes"),
                          bias_init=annotated(nn.initializers.zeros, "classes"))(x)
        return logits.astype(jnp.float32)

    def positions(self, height: int, width: int) -> jax.Array:
        if self.position_embedding == "sincos2d":
            return sincos_2d(height, width, self.width).astype(self.dtype)
        return self.param("pos_embedding", annotated(
            nn.initializers.normal(1 / np.sqrt(self.width)), "patches", "embed"),
            (height * width, self.width)).astype(self.dtype)


def default_config() -> ml_collections.ConfigDict:
    return framework.fields(
        patch_size=(4, "Height and width of the square patches; must divide the image's."),
        width=(192, "The embedding dimension (big_vision's Ti: 192, S: 384, mu: 32)."),
        depth=(12, "Encoder blocks."),
        mlp_dim=(768, "Hidden units of each block's MLP; split over the mesh's `model` axis, "
                      "which must divide it."),
        num_heads=(3, "Attention heads; must divide width, and the mesh's `model` axis must "
                      "divide them."),
        pool=("gap", "cls: a learned token prepended to the patches gives the class | gap: the "
                     "mean of the encoded patches."),
        position_embedding=("learned", "learned | sincos2d: fixed 2-D sines and cosines "
                                       "(width a multiple of 4)."),
        dropout_rate=(0.0, "Dropout on the embedded patches, each residual branch and the MLP's "
                           "hidden units."),
    )


def validate(config: ml_collections.ConfigDict) -> None:
    for key in ("patch_size", "width", "depth", "mlp_dim", "num_heads"):
        framework.check(config[key] > 0, key, f"must be > 0, got {config[key]}.")
    framework.check(config.width % config.num_heads == 0, "num_heads",
                    f"must divide width={config.width}, got {config.num_heads}.")
    framework.check(config.pool in POOLS, "pool",
                    f"must be one of {', '.join(POOLS)}, got {config.pool!r}.")
    framework.check(config.position_embedding in POSITION_EMBEDDINGS, "position_embedding",
                    f"must be one of {', '.join(POSITION_EMBEDDINGS)}, got "
                    f"{config.position_embedding!r}.")
    framework.check(config.position_embedding != "sincos2d" or config.width % 4 == 0, "width",
                    f"must be a multiple of 4 for sincos2d position embeddings, got "
                    f"{config.width}.")
    framework.check(0.0 <= config.dropout_rate < 1.0, "dropout_rate",
                    f"must be in [0, 1), got {config.dropout_rate}.")


def check_images(patch_size: int, metadata: framework.DatasetMetadata) -> None:
    shape = tuple(metadata.input_shape)
    if len(shape) != 3 or shape[0] % patch_size or shape[1] % patch_size:
        raise framework.ConfigError(
            f"config.model.patch_size={patch_size} must divide the images' height and width; "
            f"the dataset's examples have shape {shape} (height, width, channels expected).",
            key="model.patch_size")


def build(config: ml_collections.ConfigDict, metadata: framework.DatasetMetadata,
          dtype: Any) -> ViT:
    check_images(config.patch_size, metadata)
    return ViT(num_classes=metadata.num_classes, patch_size=config.patch_size,
               width=config.width, depth=config.depth, mlp_dim=config.mlp_dim,
               num_heads=config.num_heads, pool=config.pool,
               position_embedding=config.position_embedding,
               dropout_rate=config.dropout_rate, dtype=dtype)


plugin = framework.Plugin(build=build, default_config=default_config, validate=validate,
                          logical_axis_rules=LOGICAL_AXIS_RULES, api_version=1,
                          description=__doc__.splitlines()[0])
