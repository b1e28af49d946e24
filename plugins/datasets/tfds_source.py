"""Any TensorFlow Datasets dataset by name, read without TensorFlow through `tfds.data_source`.

The splits are read from TFDS's array_record files (random access, no TensorFlow needed) into
memory, which suits MNIST- and CIFAR-sized datasets. Input shape, number of classes and split
sizes come from the dataset itself. Without network access, prepare the dataset once elsewhere
(`tfds build NAME --file_format=array_record --data_dir DIR`) and point `data_dir` at it.
"""

from __future__ import annotations

from typing import Any

import ml_collections
import numpy as np

import framework

NORMALIZATIONS = ("unit", "standardize", "none")


def default_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({
        "tfds_name": "mnist",  # e.g. mnist, fashion_mnist, cifar10; "name:version" works too.
        "data_dir": "",  # Empty: TFDS's default (~/tensorflow_datasets or $TFDS_DATA_DIR).
        "download": True,  # Download and prepare the dataset when it is not there yet.
        "train_split": "train",
        "eval_split": "test",
        "image_key": "image",
        "label_key": "label",
        "normalize": "unit",  # unit: pixels / 255; standardize: per-channel train mean/std.
    })


def validate(config: ml_collections.ConfigDict) -> None:
    framework.check(config.normalize in NORMALIZATIONS, "normalize",
                    f"must be one of {', '.join(NORMALIZATIONS)}, got {config.normalize!r}.")
    framework.check(bool(config.tfds_name), "tfds_name", "must name a TFDS dataset, e.g. 'mnist'.")


def _open(config: ml_collections.ConfigDict, split: str) -> Any:
    import tensorflow_datasets as tfds

    try:
        return tfds.data_source(config.tfds_name, split=split, data_dir=config.data_dir or None,
                                download=config.download)
    except Exception as error:
        where = config.data_dir or "TFDS's default data_dir"
        raise framework.JaxforgeError(
            f"Cannot read TFDS dataset {config.tfds_name!r} split {split!r} from {where} "
            f"({type(error).__name__}: {error}). jaxforge reads TFDS data as array_record without "
            f"TensorFlow. Prepare it where there is network access: `tfds build "
            f"{config.tfds_name} --file_format=array_record --data_dir DIR`, then pass "
            "--config.dataset.data_dir=DIR.") from error


def _read(source: Any, config: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
    """The whole split as arrays, one random-access lookup per example."""
    images, labels = [], []
    for index in range(len(source)):
        example = source[index]
        images.append(example[config.image_key])
        labels.append(example[config.label_key])
    return {"inputs": np.stack(images), "label": np.asarray(labels, np.int32)}


def _normalize(train: np.ndarray, evaluation: np.ndarray, how: str
               ) -> tuple[np.ndarray, np.ndarray]:
    train, evaluation = train.astype(np.float32), evaluation.astype(np.float32)
    if how == "unit":
        return train / 255.0, evaluation / 255.0
    if how == "standardize":
        axes = tuple(range(train.ndim - 1))
        mean, std = train.mean(axis=axes), train.std(axis=axes) + 1e-6
        return (train - mean) / std, (evaluation - mean) / std
    return train, evaluation


def build(config: ml_collections.ConfigDict,
          context: framework.DataContext) -> framework.ArraySource:
    import tensorflow_datasets as tfds

    train = _read(_open(config, config.train_split), config)
    evaluation = _read(_open(config, config.eval_split), config)
    train["inputs"], evaluation["inputs"] = _normalize(train["inputs"], evaluation["inputs"],
                                                       config.normalize)
    info = tfds.builder(config.tfds_name, data_dir=config.data_dir or None).info
    metadata = framework.DatasetMetadata(
        input_shape=tuple(train["inputs"].shape[1:]),
        num_classes=info.features[config.label_key].num_classes,
        num_train=len(train["label"]), num_eval=len(evaluation["label"]))
    return framework.ArraySource(train, evaluation, metadata, config, context)


plugin = framework.Plugin(build=build, default_config=default_config, validate=validate,
                          api_version=1, description=__doc__.splitlines()[0])
