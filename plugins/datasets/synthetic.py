"""Random inputs of any shape and their labels, generated from a seed: tests and benchmarks.

With `learnable=True` (default) the label of an input is the argmax of a fixed random linear map
of it, so a model can learn it and a test can check that it does; otherwise labels are uniform.
"""

from __future__ import annotations

import ml_collections
import numpy as np

import framework


def default_config() -> ml_collections.ConfigDict:
    return framework.fields(
        shape=((28, 28, 1), "One example's shape."),
        num_classes=(10, "Number of classes; labels are in [0, num_classes)."),
        num_train=(2048, "Examples in the train split."),
        num_eval=(512, "Examples in the eval split."),
        learnable=(True, "Labels are the argmax of a fixed random linear map of the input; "
                         "False: uniform random labels."),
        data_seed=(0, "Seeds the data itself; the run's `seed` only orders it."),
    )


def validate(config: ml_collections.ConfigDict) -> None:
    for key in ("num_classes", "num_train", "num_eval"):
        framework.check(config[key] > 0, key, f"must be > 0, got {config[key]}.")
    framework.check(all(d > 0 for d in config.shape), "shape",
                    f"must be positive sizes, got {config.shape}.")


def _split(rng: np.random.Generator, projection: np.ndarray | None, count: int,
           config: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
    inputs = rng.standard_normal((count, *config.shape), dtype=np.float32)
    if projection is None:
        labels = rng.integers(0, config.num_classes, count)
    else:
        labels = np.argmax(inputs.reshape(count, -1) @ projection, axis=-1)
    return {"inputs": inputs, "label": labels.astype(np.int32)}


def build(config: ml_collections.ConfigDict,
          context: framework.DataContext) -> framework.ArraySource:
    rng = np.random.default_rng(config.data_seed)
    size = int(np.prod(config.shape))
    projection = (rng.standard_normal((size, config.num_classes), dtype=np.float32)
                  if config.learnable else None)
    train = _split(rng, projection, config.num_train, config)
    evaluation = _split(rng, projection, config.num_eval, config)
    metadata = framework.DatasetMetadata(
        input_shape=tuple(config.shape), num_classes=config.num_classes,
        num_train=config.num_train, num_eval=config.num_eval)
    return framework.ArraySource(train, evaluation, metadata, config, context)


plugin = framework.Plugin(build=build, default_config=default_config, validate=validate,
                          api_version=1, description=__doc__.splitlines()[0])
