"""A residual MLP written with Flax NNX: pre-norm blocks of dense -> gelu -> dense with dropout.

An NNX model plugin's build() takes `rngs` and constructs the module with them; jaxforge calls it
inside its jitted initialisation, with rngs from the run's seed. The module is called as
`module(x, train=...)`, like a Linen one.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

import framework


class Block(nnx.Module):
    def __init__(self, width: int, dropout_rate: float, dtype: Any, rngs: nnx.Rngs) -> None:
        self.norm = nnx.LayerNorm(width, dtype=dtype, rngs=rngs)
        self.expand = nnx.Linear(width, 2 * width, dtype=dtype, rngs=rngs)
        self.project = nnx.Linear(2 * width, width, dtype=dtype, rngs=rngs)
        self.dropout = nnx.Dropout(dropout_rate, rngs=rngs)

    def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
        y = self.project(nnx.gelu(self.expand(self.norm(x))))
        return x + self.dropout(y, deterministic=not train)


class ResidualMLP(nnx.Module):
    def __init__(self, in_features: int, num_classes: int, width: int, depth: int,
                 dropout_rate: float, dtype: Any, rngs: nnx.Rngs) -> None:
        self.dtype = dtype
        self.embed = nnx.Linear(in_features, width, dtype=dtype, rngs=rngs)
        self.blocks = nnx.List([Block(width, dropout_rate, dtype, rngs) for _ in range(depth)])
        self.norm = nnx.LayerNorm(width, dtype=dtype, rngs=rngs)
        self.head = nnx.Linear(width, num_classes, dtype=dtype, rngs=rngs)

    def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
        x = self.embed(x.reshape((x.shape[0], -1)).astype(self.dtype))
        for block in self.blocks:
            x = block(x, train=train)
        return self.head(self.norm(x))


def default_config() -> ml_collections.ConfigDict:
    return framework.fields(
        width=(64, "Features of the residual stream."),
        depth=(2, "Residual blocks."),
        dropout_rate=(0.1, "Dropout on each block's output before it is added."),
    )


def validate(config: ml_collections.ConfigDict) -> None:
    framework.check(config.width > 0, "width", f"must be > 0, got {config.width}.")
    framework.check(config.depth >= 0, "depth", f"must be >= 0, got {config.depth}.")
    framework.check(0.0 <= config.dropout_rate < 1.0, "dropout_rate",
                    f"must be in [0, 1), got {config.dropout_rate}.")


def build(config: ml_collections.ConfigDict, metadata: framework.DatasetMetadata, dtype: Any,
          rngs: nnx.Rngs) -> ResidualMLP:
    return ResidualMLP(int(np.prod(metadata.input_shape)), metadata.num_classes, config.width,
                       config.depth, config.dropout_rate, dtype, rngs)


residual_mlp = framework.Plugin(build=build, default_config=default_config, validate=validate,
                                api_version=1, description=__doc__.splitlines()[0])
