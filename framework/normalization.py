"""Inputs normalised on the device: what a dataset's `DatasetMetadata.normalize` asks for.

A dataset that stores images as uint8 declares `normalize=InputNormalization(mean=..., std=...)`
and yields its batches as stored; the trainer turns `inputs` into float32 at the start of the
compiled train and eval steps (before augmentations), and prediction and export do the same, so
the model sees what it would see had the dataset normalised on the host, and a loaded or exported
model takes inputs as the dataset yields them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp

from framework.plugin import DatasetMetadata, InputNormalization

MODEL_INPUT_DTYPE = "float32"


def normalize(inputs: Any, normalization: InputNormalization | None) -> Any:
    """`(inputs / scale - mean) / std` in float32 (a jax array); `inputs` unchanged for None."""
    if normalization is None:
        return inputs
    scaled = jnp.asarray(inputs).astype(jnp.float32) / normalization.scale
    return ((scaled - jnp.asarray(normalization.mean, jnp.float32))
            / jnp.asarray(normalization.std, jnp.float32))


def normalize_batch(batch: dict[str, Any], normalization: InputNormalization | None
                    ) -> dict[str, Any]:
    """The batch with its `inputs` normalised (any leading dimensions: stacked steps too)."""
    if normalization is None:
        return batch
    return {**batch, "inputs": normalize(batch["inputs"], normalization)}


def model_metadata(metadata: DatasetMetadata) -> DatasetMetadata:
    """The metadata as the model sees its inputs: float32 where the dataset's are normalised on
    the device (model and loss plugins are built from this)."""
    if metadata.normalize is None:
        return metadata
    return dataclasses.replace(metadata, input_dtype=MODEL_INPUT_DTYPE, normalize=None)


def normalizing(step: Callable[..., Any], normalization: InputNormalization | None
                ) -> Callable[..., Any]:
    """`step(state, accumulator, batch)` that first normalises the batch's inputs: under jit the
    normalisation is part of the compiled step, so the stored bytes are what cross to it."""
    if normalization is None:
        return step

    def normalized_step(state: Any, accumulator: Any, batch: dict[str, Any]) -> Any:
        return step(state, accumulator, normalize_batch(batch, normalization))

    return normalized_step
