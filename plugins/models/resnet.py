"""A ResNet for CIFAR-sized images (He et al. 2016, section 4.2): 3x3 stem, basic blocks.

`stage_sizes=(3, 3, 3)` with `width=16` is ResNet-20; `(2, 2, 2, 2)` with `width=64` is the
ResNet-18 layout commonly used on CIFAR.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

import framework


class BasicBlock(nn.Module):
    features: int
    strides: int
    dtype: Any

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
        norm = lambda: nn.BatchNorm(use_running_average=not train, momentum=0.9,  # noqa: E731
                                    dtype=self.dtype)
        conv = lambda f, k, s: nn.Conv(f, (k, k), (s, s), use_bias=False,  # noqa: E731
                                       dtype=self.dtype)
        y = nn.relu(norm()(conv(self.features, 3, self.strides)(x)))
        y = norm()(conv(self.features, 3, 1)(y))
        if x.shape != y.shape:
            x = norm()(conv(self.features, 1, self.strides)(x))
        return nn.relu(x + y)


class ResNet(nn.Module):
    stage_sizes: Sequence[int]
    width: int
    num_classes: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
        x = x.astype(self.dtype)
        x = nn.Conv(self.width, (3, 3), use_bias=False, dtype=self.dtype)(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=self.dtype)(x))
        for stage, blocks in enumerate(self.stage_sizes):
            for block in range(blocks):
                strides = 2 if stage > 0 and block == 0 else 1
                x = BasicBlock(self.width * 2**stage, strides, self.dtype)(x, train=train)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, dtype=self.dtype)(x)


def default_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({"stage_sizes": (3, 3, 3), "width": 16})


def validate(config: ml_collections.ConfigDict) -> None:
    framework.check(len(config.stage_sizes) > 0 and all(s > 0 for s in config.stage_sizes),
                    "stage_sizes", f"must be positive block counts, got "
                    f"{config.stage_sizes}.")
    framework.check(config.width > 0, "width", f"must be > 0, got {config.width}.")


def build(config: ml_collections.ConfigDict, metadata: framework.DatasetMetadata,
          dtype: Any) -> ResNet:
    return ResNet(stage_sizes=tuple(config.stage_sizes), width=config.width,
                  num_classes=metadata.num_classes, dtype=dtype)


plugin = framework.Plugin(build=build, default_config=default_config, validate=validate,
                          api_version=1, description=__doc__.splitlines()[0])
