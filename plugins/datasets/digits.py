"""scikit-learn's bundled handwritten digits: 1,797 images of 8x8 pixels, 10 classes.

It ships inside scikit-learn, so it works on any machine with no download: jaxforge's default
data. The split is fixed: 360 test images (20%), stratified by class, chosen with
`sklearn.model_selection.train_test_split(..., test_size=360, stratify=y, random_state=0)`;
the other 1,437 are the train split. Pixels are scaled from 0..16 to [0, 1].

`classes` keeps some digits (both splits), their labels renumbered 0..len(classes)-1 in the
order given; `train_per_class` keeps that many train examples of each: the first ones of the
train split's fixed (shuffled) order, so the same examples every run. The eval split keeps all
of its examples of the kept classes (35 to 37 of each digit).
"""

from __future__ import annotations

import functools

import ml_collections
import numpy as np

import framework

NUM_TEST = 360
NUM_CLASSES = 10


def default_config() -> ml_collections.ConfigDict:
    return framework.fields(
        image_size=(8, "Resize (bilinear) to image_size x image_size, e.g. 28 as MNIST."),
        classes=((), "The digits to keep, e.g. (5, 6, 7, 8, 9), in both splits; their labels "
                     "become 0..len(classes)-1 in this order. Empty: all 10."),
        train_per_class=(0, "Train examples kept per class: the first ones in the train "
                            "split's fixed order (the same every run). 0: all."),
    )


@functools.lru_cache(maxsize=1)
def _split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train_x, test_x, train_y, test_y) at 8x8, in the split's fixed order."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[..., None]
    labels = digits.target.astype(np.int32)
    return tuple(train_test_split(images, labels, test_size=NUM_TEST, stratify=labels,
                                  random_state=0))


def _classes(config: ml_collections.ConfigDict) -> tuple[int, ...]:
    return tuple(config.classes) or tuple(range(NUM_CLASSES))


def validate(config: ml_collections.ConfigDict) -> None:
    framework.check(config.image_size >= 8, "image_size",
                    f"must be >= 8 (the native size), got {config.image_size}.")
    classes = tuple(config.classes)
    framework.check(all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c < NUM_CLASSES
                        for c in classes), "classes",
                    f"must be digits in 0..9, got {classes}.")
    framework.check(len(set(classes)) == len(classes), "classes",
                    f"must not repeat a digit, got {classes}.")
    per_class = config.train_per_class
    framework.check(per_class >= 0, "train_per_class",
                    f"must be >= 0 (0: all), got {per_class}.")
    if per_class:
        train_y = _split()[2]
        available = {c: int(np.sum(train_y == c)) for c in _classes(config)}
        fewest = min(available, key=available.get)
        framework.check(per_class <= available[fewest], "train_per_class",
                        f"is {per_class} but the train split has only {available[fewest]} "
                        f"examples of digit {fewest}.")


def _select(x: np.ndarray, y: np.ndarray, classes: tuple[int, ...],
            per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """The examples of `classes` (each class's first `per_class`, 0: all), in their order, with
    labels renumbered by their place in `classes`."""
    keep = np.zeros(len(y), bool)
    for digit in classes:
        where = np.flatnonzero(y == digit)
        keep[where[:per_class] if per_class else where] = True
    remap = np.full(NUM_CLASSES, -1, np.int32)
    remap[list(classes)] = np.arange(len(classes), dtype=np.int32)
    return x[keep], remap[y[keep]]


def _resize(images: np.ndarray, size: int) -> np.ndarray:
    if size == images.shape[1]:
        return images
    from scipy.ndimage import zoom

    factor = size / images.shape[1]
    return zoom(images, (1, factor, factor, 1), order=1).astype(np.float32)


def build(config: ml_collections.ConfigDict,
          context: framework.DataContext) -> framework.ArraySource:
    train_x, test_x, train_y, test_y = _split()
    classes = _classes(config)
    train_x, train_y = _select(train_x, train_y, classes, config.train_per_class)
    test_x, test_y = _select(test_x, test_y, classes, 0)
    train_x = _resize(train_x, config.image_size)
    test_x = _resize(test_x, config.image_size)
    metadata = framework.DatasetMetadata(
        input_shape=train_x.shape[1:], num_classes=len(classes), num_train=len(train_x),
        num_eval=len(test_x))
    return framework.ArraySource({"inputs": train_x, "label": train_y},
                                 {"inputs": test_x, "label": test_y}, metadata, config, context)


plugin = framework.Plugin(build=build, default_config=default_config, validate=validate,
                          api_version=1, description=__doc__.splitlines()[0])
