"""Built-in loss plugins: cross-entropy for classes and tokens, mean squared error for values.

A loss plugin's `build(config, metadata)` returns `loss(outputs, batch)`; `framework.loss`
describes the two forms a loss returns. These losses average per target: a class per example
or every counted token of a sequence (`label_mask`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

import framework
from framework.loss import WeightedLoss, bits_per_token, perplexity
from framework.model import classification_loss

Batch = dict[str, jax.Array]


def _target_weights(batch: Batch) -> jax.Array:
    """1 for each target that counts, 0 for padding: `label_mask`, else all ones."""
    if "label_mask" in batch:
        return batch["label_mask"].astype(jnp.float32)
    return jnp.ones(batch["label"].shape, jnp.float32)


def _per_target(values: jax.Array, weights: jax.Array) -> jax.Array:
    """Each example's sum over its target axes of weighted per-target values: [B, ...] -> [B]."""
    return jnp.sum(values * weights, axis=tuple(range(1, values.ndim)))


def _counted(weights: jax.Array) -> jax.Array:
    """Each example's number of counted targets: [B, ...] -> [B]."""
    return jnp.sum(weights, axis=tuple(range(1, weights.ndim)))


def _check_shape(outputs: jax.Array, expected: tuple[int, ...], what: str) -> None:
    if tuple(outputs.shape) != expected:
        raise framework.JaxforgeError(f"The model's outputs have shape {tuple(outputs.shape)}; "
                                      f"the loss wants {what} of shape {expected}.")


def weighted_cross_entropy(logits: jax.Array, batch: Batch) -> WeightedLoss:
    """Softmax cross-entropy and accuracy summed over each example's counted targets."""
    weights = _target_weights(batch)
    labels = jnp.where(weights > 0, batch["label"], 0)  # Padding may hold any id.
    logits = logits.astype(jnp.float32)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
    return WeightedLoss(_per_target(loss, weights), {"accuracy": _per_target(correct, weights)},
                        _counted(weights))


def _build_cross_entropy(config: ml_collections.ConfigDict,
                         metadata: framework.DatasetMetadata) -> Callable[..., Any]:
    if not np.issubdtype(np.dtype(metadata.target_dtype), np.integer):
        raise framework.ConfigError(
            f"config.loss.name=cross_entropy needs integer targets (classes or tokens); the "
            f"dataset's are {metadata.target_dtype}: use loss.name=mse for float targets.")
    if metadata.num_classes <= 0:
        raise framework.ConfigError(
            f"config.loss.name=cross_entropy needs the dataset's num_classes (its classes or "
            f"vocabulary), > 0; it is {metadata.num_classes}.")
    target_shape = tuple(metadata.target_shape)

    if not target_shape:
        def cross_entropy(logits: jax.Array, batch: Batch) -> Any:
            if "label_mask" not in batch:  # One class per example (mixup/cutmix's labels too).
                return classification_loss(logits, batch)
            return weighted_cross_entropy(logits, batch)

        return cross_entropy

    def sequence_cross_entropy(logits: jax.Array, batch: Batch) -> WeightedLoss:
        expected = (*batch["label"].shape, metadata.num_classes)
        _check_shape(logits, expected, "logits (batch, *target_shape, num_classes)")
        return weighted_cross_entropy(logits, batch)

    sequence_cross_entropy.derived_metrics = {  # type: ignore[attr-defined]
        "perplexity": perplexity, "bits_per_token": bits_per_token}
    return sequence_cross_entropy


cross_entropy = framework.Plugin(
    build=_build_cross_entropy, api_version=1,
    description="Softmax cross-entropy on integer targets, with accuracy: one class per example, "
                "or every counted token of a sequence (label_mask), then also perplexity and "
                "bits per token (bits per byte for byte-level tokens).")


def _build_mse(config: ml_collections.ConfigDict,
               metadata: framework.DatasetMetadata) -> Callable[..., Any]:
    if not np.issubdtype(np.dtype(metadata.target_dtype), np.floating):
        raise framework.ConfigError(
            f"config.loss.name=mse needs float targets; the dataset's are "
            f"{metadata.target_dtype}: use loss.name=cross_entropy for classes and tokens.")
    target_shape = tuple(metadata.target_shape)

    def mse(outputs: jax.Array, batch: Batch) -> Any:
        targets = batch["label"].astype(jnp.float32)
        _check_shape(outputs, targets.shape, "one value per target, (batch, *target_shape),")
        error = jnp.square(outputs.astype(jnp.float32) - targets)
        if not target_shape and "label_mask" not in batch:
            return error, {}
        weights = _target_weights(batch)
        return WeightedLoss(_per_target(error, weights), {},
                            _counted(weights))

    mse.derived_metrics = {  # type: ignore[attr-defined]
        "rmse": lambda means: math.sqrt(means["loss"]) if means["loss"] >= 0 else math.nan}
    return mse


mse = framework.Plugin(
    build=_build_mse, api_version=1,
    description="Mean squared error on float targets, per target (label_mask counts), with "
                "its root (rmse).")
