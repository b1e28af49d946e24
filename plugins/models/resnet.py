"""A ResNet of basic blocks (He et al. 2016), for CIFAR-sized or ImageNet-sized images.

`stem="cifar"` (section 4.2) keeps the resolution: a 3x3 convolution. `stage_sizes=(3, 3, 3)`
with `width=16` is ResNet-20; `(2, 2, 2, 2)` with `width=64` the ResNet-18 layout used on CIFAR.
`stem="imagenet"` (table 1) quarters it first, a 7x7/2 convolution and a 3x3/2 max-pool, so
224x224 images reach the first stage at 56x56: with `(2, 2, 2, 2)` and `width=64` this is
ResNet-18, with `(3, 4, 6, 3)` ResNet-34.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

import framework

STEMS = ("cifar", "imagenet")


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
    stem: str = "cifar"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
        x = x.astype(self.dtype)
        if self.stem == "imagenet":
            x = nn.Conv(self.width, (7, 7), (2, 2), padding=((3, 3), (3, 3)), use_bias=False,
                        dtype=self.dtype)(x)
        else:
            x = nn.Conv(self.width, (3, 3), use_bias=False, dtype=self.dtype)(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=self.dtype)(x))
        if self.stem == "imagenet":
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for stage, blocks in enumerate(self.stage_sizes):
            for block in range(blocks):
                strides = 2 if stage > 0 and block == 0 else 1
                x = BasicBlock(self.width * 2**stage, strides, self.dtype)(x, train=train)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, dtype=self.dtype)(x)


def default_config() -> ml_collections.ConfigDict:
    return framework.fields(
        stage_sizes=((3, 3, 3), "Basic blocks per stage; each stage after the first halves the "
                                "resolution and doubles the width."),
        width=(16, "Channels of the stem and the first stage."),
        stem=("cifar", "cifar: 3x3 convolution | imagenet: 7x7/2 convolution and 3x3/2 "
                       "max-pool."),
    )


def validate(config: ml_collections.ConfigDict) -> None:
    framework.check(len(config.stage_sizes) > 0 and all(s > 0 for s in config.stage_sizes),
                    "stage_sizes", f"must be positive block counts, got "
                    f"{config.stage_sizes}.")
    framework.check(config.width > 0, "width", f"must be > 0, got {config.width}.")
    framework.check(config.stem in STEMS, "stem",
                    f"must be one of {', '.join(STEMS)}, got {config.stem!r}.")


def build(config: ml_collections.ConfigDict, metadata: framework.DatasetMetadata,
          dtype: Any) -> ResNet:
    return ResNet(stage_sizes=tuple(config.stage_sizes), width=config.width,
                  num_classes=metadata.num_classes, stem=config.stem, dtype=dtype)


plugin = framework.Plugin(build=build, default_config=default_config, validate=validate,
                          api_version=1, description=__doc__.splitlines()[0])
