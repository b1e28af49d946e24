"""A multi-layer perceptron over flattened inputs: the baseline for any fixed-size input."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

import framework


class MLP(nn.Module):
    hidden_sizes: Sequence[int]
    num_classes: int
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
        x = x.reshape((x.shape[0], -1)).astype(self.dtype)
        for size in self.hidden_sizes:
            x = nn.relu(nn.Dense(size, dtype=self.dtype)(x))
            x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return nn.Dense(self.num_classes, dtype=self.dtype)(x)


def default_config() -> ml_collections.ConfigDict:
    return framework.fields(
        hidden_sizes=((512, 512), "Widths of the hidden dense layers (relu), in order."),
        dropout_rate=(0.0, "Dropout after each hidden layer."),
    )


def validate(config: ml_collections.ConfigDict) -> None:
    framework.check(0.0 <= config.dropout_rate < 1.0, "dropout_rate",
                    f"must be in [0, 1), got {config.dropout_rate}.")
    framework.check(all(s > 0 for s in config.hidden_sizes), "hidden_sizes",
                    f"must be positive widths, got {config.hidden_sizes}.")


def build(config: ml_collections.ConfigDict, metadata: framework.DatasetMetadata,
          dtype: Any) -> MLP:
    return MLP(hidden_sizes=tuple(config.hidden_sizes), num_classes=metadata.num_classes,
               dropout_rate=config.dropout_rate, dtype=dtype)


plugin = framework.Plugin(build=build, default_config=default_config, validate=validate,
                          api_version=1, description=__doc__.splitlines()[0])
