"""scikit-learn's bundled handwritten digits: 1,797 images of 8x8 pixels, 10 classes.

It ships inside scikit-learn, so it works on any machine with no download: jaxforge's default
data. The split is fixed: 360 test images (20%), stratified by class, chosen with
`sklearn.model_selection.train_test_split(..., test_size=360, stratify=y, random_state=0)`;
the other 1,437 are the train split. Pixels are scaled from 0..16 to [0, 1].
"""

from __future__ import annotations

import ml_collections
import numpy as np

import framework

NUM_TEST = 360


def default_config() -> ml_collections.ConfigDict:
    return framework.fields(
        image_size=(8, "Resize (bilinear) to image_size x image_size, e.g. 28 as MNIST."),
    )


def validate(config: ml_collections.ConfigDict) -> None:
    framework.check(config.image_size >= 8, "image_size",
                    f"must be >= 8 (the native size), got {config.image_size}.")


def _resize(images: np.ndarray, size: int) -> np.ndarray:
    if size == images.shape[1]:
        return images
    from scipy.ndimage import zoom

    factor = size / images.shape[1]
    return zoom(images, (1, factor, factor, 1), order=1).astype(np.float32)


def build(config: ml_collections.ConfigDict,
          context: framework.DataContext) -> framework.ArraySource:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = _resize((digits.images / 16.0).astype(np.float32)[..., None], config.image_size)
    labels = digits.target.astype(np.int32)
    train_x, test_x, train_y, test_y = train_test_split(
        images, labels, test_size=NUM_TEST, stratify=labels, random_state=0)
    metadata = framework.DatasetMetadata(
        input_shape=train_x.shape[1:], num_classes=10, num_train=len(train_x),
        num_eval=len(test_x))
    return framework.ArraySource({"inputs": train_x, "label": train_y},
                                 {"inputs": test_x, "label": test_y}, metadata, config, context)


plugin = framework.Plugin(build=build, default_config=default_config, validate=validate,
                          api_version=1, description=__doc__.splitlines()[0])
