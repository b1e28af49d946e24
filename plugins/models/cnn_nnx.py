"""The Keras MNIST-tutorial CNN of `cnn`, written with Flax NNX: the same fields, the same network.

Given the same weights, `cnn_nnx` and `cnn` compute the same outputs and train identically; it is
the reference for writing an NNX model plugin: `build` takes `rngs` and constructs the module with
them, and the module is called as `module(x, train=...)`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import ml_collections
from flax import nnx

import framework
from plugins.models.cnn import default_config, validate


def _spatial_size(size: int, kernel_size: int, padding: str) -> int:
    """One side of the feature map after a conv block (conv, then 2x2 max-pool)."""
    return (size - kernel_size + 1 if padding == "VALID" else size) // 2


class CNN(nnx.Module):
    """Conv blocks (conv, optional batch norm, relu, 2x2 max-pool), then dense layers."""

    def __init__(self, input_shape: Sequence[int], num_classes: int,
                 conv_features: Sequence[int], dense_features: Sequence[int], *,
                 kernel_size: int, padding: str, dropout_rate: float, batch_norm: bool,
                 dtype: Any, rngs: nnx.Rngs) -> None:
        height, width, channels = input_shape
        self.dtype = dtype
        self.convs, self.norms = nnx.List(), nnx.List()
        for features in conv_features:
            self.convs.append(nnx.Conv(channels, features, (kernel_size, kernel_size),
                                       padding=padding, use_bias=not batch_norm, dtype=dtype,
                                       rngs=rngs))
            if batch_norm:
                self.norms.append(nnx.BatchNorm(features, dtype=dtype, rngs=rngs))
            height = _spatial_size(height, kernel_size, padding)
            width = _spatial_size(width, kernel_size, padding)
            channels = features
        in_features = height * width * channels
        self.hidden = nnx.List()
        for features in dense_features:
            self.hidden.append(nnx.Linear(in_features, features, dtype=dtype, rngs=rngs))
            in_features = features
        self.dropout = nnx.Dropout(dropout_rate, rngs=rngs)
        self.classifier = nnx.Linear(in_features, num_classes, dtype=dtype, rngs=rngs)

    def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
        x = x.astype(self.dtype)
        for index, conv in enumerate(self.convs):
            x = conv(x)
            if self.norms:
                x = self.norms[index](x, use_running_average=not train)
            x = nnx.max_pool(nnx.relu(x), (2, 2), strides=(2, 2))
        x = x.reshape((x.shape[0], -1))
        for dense in self.hidden:
            x = self.dropout(nnx.relu(dense(x)), deterministic=not train)
        return self.classifier(x)


def build(config: ml_collections.ConfigDict, metadata: framework.DatasetMetadata, dtype: Any,
          rngs: nnx.Rngs) -> CNN:
    if len(metadata.input_shape) != 3:
        raise framework.ConfigError(
            f"config.model: cnn_nnx needs images of shape (height, width, channels); the dataset "
            f"gives examples of shape {tuple(metadata.input_shape)}. Use the mlp model instead.")
    height, width, _ = metadata.input_shape
    for _ in config.conv_features:
        height = _spatial_size(height, config.kernel_size, config.padding)
        width = _spatial_size(width, config.kernel_size, config.padding)
    if min(height, width) < 1:
        raise framework.ConfigError(
            f"config.model.conv_features: {len(config.conv_features)} conv blocks of kernel "
            f"{config.kernel_size} with {config.padding} padding shrink the "
            f"{metadata.input_shape[0]}x{metadata.input_shape[1]} input to nothing; use fewer "
            "blocks or padding 'SAME'.")
    return CNN(metadata.input_shape, metadata.num_classes, tuple(config.conv_features),
               tuple(config.dense_features), kernel_size=config.kernel_size,
               padding=config.padding, dropout_rate=config.dropout_rate,
               batch_norm=config.batch_norm, dtype=dtype, rngs=rngs)


plugin = framework.Plugin(build=build, default_config=default_config, validate=validate,
                          api_version=1, description=__doc__.splitlines()[0])
