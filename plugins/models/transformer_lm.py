"""A decoder-only Transformer language model: rotary positions, RMSNorm, SwiGLU, causal attention.

The current standard form (as in LLaMA and MaxText): token embedding, `depth` pre-norm blocks of
causal self-attention (rotary position embeddings on queries and keys,
`jax.nn.dot_product_attention` so that GPUs get cuDNN's fused kernel) and a SwiGLU MLP, a final
RMSNorm, and logits from the embedding matrix (`tied_embedding`) or from a separate output
matrix. No biases.

It is trained with the `cross_entropy` loss (`loss.name`, the default): next-token
cross-entropy per token, the dataset having shifted the labels. Every parameter carries
MaxText's logical axis names (`embed`, `heads`, `kv`, `mlp`, `vocab`,
`norm`, and `layers` for the stacked weights of `scan_layers`); the plugin's
`logical_axis_rules` map them onto the mesh when `config.mesh.logical_axis_rules` is empty:
Megatron-style tensor parallelism over `model` (attention heads, the MLP's hidden units and the
vocabulary split) and parameter sharding over `fsdp` (the embedding dimension).

Generation: called with `decode=True` and `start` (the position of the first token given), the
model writes its keys and values into a `cache` collection of fixed length (the length of the
tokens it was initialised with) and attends to the positions up to each token's own, so a prompt
is prefilled in one call and each further token costs one call of the same shapes.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

import framework

# MaxText's names, mapped as Megatron splits a Transformer: heads, MLP units and vocabulary over
# `model`; the embedding dimension over `fsdp`. Per-head features, norms and layers stay whole.
LOGICAL_AXIS_RULES = (("embed", "fsdp"), ("heads", "model"), ("mlp", "model"),
                      ("vocab", "model"), ("kv", None), ("norm", None), ("layers", None))


def annotated(init: Any, *names: str) -> Any:
    return nn.with_logical_partitioning(init, names)


def rotary(x: jax.Array, positions: jax.Array, base: float) -> jax.Array:
    """Rotary position embedding (Su et al. 2021) of `x` [B, T, heads, head_dim] at `positions`
    [T]: feature i of the first half and feature i of the second are rotated together by the
    angle position * base^(-i / half)."""
    half = x.shape[-1] // 2
    frequencies = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angles = positions.astype(jnp.float32)[:, None] * frequencies  # [T, half]
    sin, cos = jnp.sin(angles)[:, None, :], jnp.cos(angles)[:, None, :]
    first, second = x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)
    rotated = jnp.concatenate([first * cos - second * sin, second * cos + first * sin], -1)
    return rotated.astype(x.dtype)


class Attention(nn.Module):
    """Causal multi-head self-attention; with `decode`, over a cache of keys and values."""

    num_heads: int
    head_dim: int
    rope_base: float
    decode: bool
    dtype: Any

    @nn.compact
    def __call__(self, x: jax.Array, positions: jax.Array) -> jax.Array:
        def project(name: str) -> jax.Array:
            return nn.DenseGeneral((self.num_heads, self.head_dim), use_bias=False,
                                   dtype=self.dtype, name=name, kernel_init=annotated(
                                       nn.initializers.lecun_normal(), "embed", "heads", "kv"))(x)

        query = rotary(project("query"), positions, self.rope_base)
        key = rotary(project("key"), positions, self.rope_base)
        value = project("value")
        if self.decode:
            key, value, mask = self.cached(key, value, positions)
            out = jax.nn.dot_product_attention(query, key, value, mask=mask)
        else:
            out = jax.nn.dot_product_attention(query, key, value, is_causal=True)
        return nn.DenseGeneral(x.shape[-1], axis=(-2, -1), use_bias=False, dtype=self.dtype,
                               name="out", kernel_init=annotated(
                                   nn.initializers.lecun_normal(), "heads", "kv", "embed"))(out)

    def cached(self, key: jax.Array, value: jax.Array, positions: jax.Array
               ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Write this block's keys and values at `positions` into the cache (its length fixed
        at initialisation); all cached ones, and which of them each query may see."""
        cached_key = self.variable("cache", "cached_key", jnp.zeros, key.shape, key.dtype)
        cached_value = self.variable("cache", "cached_value", jnp.zeros, value.shape, value.dtype)
        at = (0, positions[0], 0, 0)
        cached_key.value = jax.lax.dynamic_update_slice(cached_key.value, key, at)
        cached_value.value = jax.lax.dynamic_update_slice(cached_value.value, value, at)
        length = cached_key.value.shape[1]
        visible = jnp.arange(length)[None, :] <= positions[:, None]  # [T, cache length]
        return cached_key.value, cached_value.value, visible[None, None]


class SwiGLU(nn.Module):
    """The gated MLP of Shazeer (2020): wo(silu(wi_gate x) * wi_up x)."""

    mlp_dim: int
    dtype: Any

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        def dense(features: int, names: tuple[str, str], name: str) -> nn.Dense:
            return nn.Dense(features, use_bias=False, dtype=self.dtype, name=name,
                            kernel_init=annotated(nn.initializers.lecun_normal(), *names))

        gate = dense(self.mlp_dim, ("embed", "mlp"), "wi_gate")(x)
        up = dense(self.mlp_dim, ("embed", "mlp"), "wi_up")(x)
        return dense(x.shape[-1], ("mlp", "embed"), "wo")(nn.silu(gate) * up)


def rms_norm(dtype: Any, name: str) -> nn.RMSNorm:
    return nn.RMSNorm(epsilon=1e-6, dtype=dtype, name=name,
                      scale_init=annotated(nn.initializers.ones, "norm"))


class Block(nn.Module):
    """A pre-norm decoder block; `(x, start) -> (x, None)`, the form `nn.scan` takes."""

    num_heads: int
    head_dim: int
    mlp_dim: int
    dropout_rate: float
    rope_base: float
    train: bool
    decode: bool
    dtype: Any

    @nn.compact
    def __call__(self, x: jax.Array, start: jax.Array) -> tuple[jax.Array, None]:
        positions = start + jnp.arange(x.shape[1])
        dropout = nn.Dropout(self.dropout_rate, deterministic=not self.train)
        y = rms_norm(self.dtype, "attention_norm")(x)
        y = Attention(self.num_heads, self.head_dim, self.rope_base, self.decode, self.dtype,
                      name="attention")(y, positions)
        x = x + dropout(y)
        y = SwiGLU(self.mlp_dim, self.dtype, name="mlp")(rms_norm(self.dtype, "mlp_norm")(x))
        return x + dropout(y), None


class TransformerLM(nn.Module):
    """Tokens [B, T] (int) -> next-token logits [B, T, vocab_size] (float32)."""

    vocab_size: int
    width: int
    depth: int
    num_heads: int
    head_dim: int
    mlp_dim: int
    max_len: int
    dropout_rate: float = 0.0
    tied_embedding: bool = True
    scan_layers: bool = False
    remat: bool = False
    rope_base: float = 10000.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, tokens: jax.Array, *, train: bool, decode: bool = False,
                 start: Any = 0) -> jax.Array:
        embedding = nn.Embed(self.vocab_size, self.width, dtype=self.dtype, name="embedding",
                             embedding_init=annotated(nn.initializers.normal(1.0), "vocab",
                                                      "embed"))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(embedding(tokens))
        x = self.blocks(train, decode)(x, jnp.asarray(start, jnp.int32))[0]
        x = rms_norm(self.dtype, "final_norm")(x)
        if self.tied_embedding:  # Scaled as MaxText's normalize_embedding_logits.
            logits = embedding.attend(x) / jnp.sqrt(self.width).astype(x.dtype)
        else:
            logits = nn.Dense(self.vocab_size, use_bias=False, dtype=self.dtype, name="logits",
                              kernel_init=annotated(nn.initializers.lecun_normal(), "embed",
                                                    "vocab"))(x)
        return logits.astype(jnp.float32)

    def blocks(self, train: bool, decode: bool) -> Any:
        """The `depth` blocks as one callable `(x, start) -> (x, None)`."""
        block = nn.remat(Block, prevent_cse=not self.scan_layers) if self.remat else Block
        fields = dict(num_heads=self.num_heads, head_dim=self.head_dim, mlp_dim=self.mlp_dim,
                      dropout_rate=self.dropout_rate, rope_base=self.rope_base, train=train,
                      decode=decode, dtype=self.dtype)
        if self.scan_layers:
            scanned = nn.scan(block, variable_axes={"params": 0, "cache": 0},
                              split_rngs={"params": True, "dropout": True},
                              in_axes=nn.broadcast, length=self.depth,
                              metadata_params={nn.PARTITION_NAME: "layers"})
            return scanned(**fields, name="layers")
        layers = [block(**fields, name=f"layers_{i}") for i in range(self.depth)]

        def stacked(x: jax.Array, start: jax.Array) -> tuple[jax.Array, None]:
            for layer in layers:
                x, _ = layer(x, start)
            return x, None

        return stacked


def default_config() -> ml_collections.ConfigDict:
    return framework.fields(
        width=(256, "The embedding dimension (the residual stream's width)."),
        depth=(4, "Decoder blocks."),
        num_heads=(4, "Attention heads; split over the mesh's `model` axis, which must divide "
                      "it."),
        head_dim=(64, "Features per attention head (even: rotary embeddings rotate pairs)."),
        mlp_dim=(768, "Hidden units of the SwiGLU MLP; split over the mesh's `model` axis, "
                      "which must divide it."),
        max_len=(1024, "The longest sequence: the dataset's sequence length and a generated "
                       "text (prompt and new tokens) must fit."),
        dropout_rate=(0.0, "Dropout on the embeddings and on each block's residual branches."),
        tied_embedding=(True, "Logits from the token embedding matrix (scaled by "
                              "1/sqrt(width)); false: a separate output matrix."),
        scan_layers=(False, "Run the blocks with nn.scan over stacked weights (one block "
                            "compiled, whatever the depth)."),
        remat=(False, "Rematerialise each block's activations in the backward pass (less "
                      "memory, more compute)."),
        rope_base=(10000.0, "The base of the rotary embeddings' wavelengths."),
    )


def validate(config: ml_collections.ConfigDict) -> None:
    for key in ("width", "depth", "num_heads", "head_dim", "mlp_dim", "max_len"):
        framework.check(config[key] > 0, key, f"must be > 0, got {config[key]}.")
    framework.check(config.head_dim % 2 == 0, "head_dim",
                    f"must be even (rotary embeddings rotate pairs of features), got "
                    f"{config.head_dim}.")
    framework.check(0.0 <= config.dropout_rate < 1.0, "dropout_rate",
                    f"must be in [0, 1), got {config.dropout_rate}.")


def check_data(config: ml_collections.ConfigDict, metadata: framework.DatasetMetadata) -> None:
    """The dataset must give token sequences [T] that fit the model's maximum length."""
    if len(metadata.input_shape) != 1 or not jnp.issubdtype(metadata.input_dtype, jnp.integer):
        raise framework.ConfigError(
            f"transformer_lm takes token sequences (input_shape (T,), an integer dtype); the "
            f"dataset gives {metadata.input_dtype} examples of shape {metadata.input_shape}.")
    length = metadata.input_shape[0]
    if length > config.max_len:
        raise framework.ConfigError(
            f"config.model.max_len={config.max_len} is shorter than the dataset's sequences "
            f"({length} tokens); raise max_len or shorten the sequences.", key="model.max_len")


def build(config: ml_collections.ConfigDict, metadata: framework.DatasetMetadata,
          dtype: Any) -> TransformerLM:
    check_data(config, metadata)
    return TransformerLM(vocab_size=metadata.num_classes, width=config.width,
                         depth=config.depth, num_heads=config.num_heads,
                         head_dim=config.head_dim, mlp_dim=config.mlp_dim,
                         max_len=config.max_len, dropout_rate=config.dropout_rate,
                         tied_embedding=config.tied_embedding, scan_layers=config.scan_layers,
                         remat=config.remat, rope_base=config.rope_base, dtype=dtype)


plugin = framework.Plugin(build=build, default_config=default_config, validate=validate,
                          logical_axis_rules=LOGICAL_AXIS_RULES,
                          api_version=1, description=__doc__.splitlines()[0])
