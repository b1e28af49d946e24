"""Interleaved 2-D spirals, one class per arm: a small classification task no linear model solves.

Generated from `data_seed` on the host with numpy (no download); the run's `seed` only orders the
train examples. `framework.ArraySource` provides batching, process shards, the restorable train
iterator and padded eval batches.
"""

from __future__ import annotations

import ml_collections
import numpy as np

import framework


def default_config() -> ml_collections.ConfigDict:
    return framework.fields(
        num_arms=(3, "Spiral arms, one class each."),
        turns=(1.0, "How far each arm winds around the centre."),
        noise=(0.05, "Standard deviation of the Gaussian noise added to each point."),
        num_train=(3000, "Points in the train split."),
        num_eval=(600, "Points in the eval split."),
        data_seed=(0, "Seeds the points themselves; the run's `seed` only orders them."),
    )


def validate(config: ml_collections.ConfigDict) -> None:
    framework.check(config.num_arms >= 2, "num_arms", f"must be >= 2, got {config.num_arms}.")
    framework.check(config.turns > 0, "turns", f"must be > 0, got {config.turns}.")
    framework.check(config.noise >= 0, "noise", f"must be >= 0, got {config.noise}.")
    for key in ("num_train", "num_eval"):
        framework.check(config[key] > 0, key, f"must be > 0, got {config[key]}.")


def _points(rng: np.random.Generator, count: int, config: ml_collections.ConfigDict
            ) -> dict[str, np.ndarray]:
    label = rng.integers(0, config.num_arms, count)
    radius = np.sqrt(rng.uniform(0.0, 1.0, count))  # Denser towards the centre, as arms are.
    angle = 2 * np.pi * (config.turns * radius + label / config.num_arms)
    points = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=-1)
    points += rng.normal(0.0, config.noise, points.shape)
    return {"inputs": points.astype(np.float32), "label": label.astype(np.int32)}


def build(config: ml_collections.ConfigDict,
          context: framework.DataContext) -> framework.ArraySource:
    rng = np.random.default_rng(config.data_seed)
    train = _points(rng, config.num_train, config)
    evaluation = _points(rng, config.num_eval, config)
    metadata = framework.DatasetMetadata(input_shape=(2,), num_classes=config.num_arms,
                                         num_train=config.num_train, num_eval=config.num_eval)
    return framework.ArraySource(train, evaluation, metadata, config, context)


spirals = framework.Plugin(build=build, default_config=default_config, validate=validate,
                           api_version=1, description=__doc__.splitlines()[0])
