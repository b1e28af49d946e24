"""The Keras MNIST tutorial CNN with the tutorial's augmentations: rotation, zoom and cropping.

    jaxforge train --config experiments/mnist_cnn_augmented.py --workdir runs/mnist_aug

TFDS `mnist` (needs network access the first time, or --config.dataset.data_dir=DIR prepared
with `tfds build mnist --file_format=array_record`). The augmentations run on device inside the
compiled step, in the order written: rotate by up to 10 degrees, zoom by 0.9-1.1, then a random
28x28 crop of the image padded by 2 pixels. Expected: about 0.99 eval/accuracy after 10 epochs
(augmentation trades a slower start for less overfitting). Not measured here: this machine has
no network; the tests run the same pipeline on TFDS mock data.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.model = ml_collections.ConfigDict({"name": "cnn"})
    config.dataset = ml_collections.ConfigDict({"name": "tfds", "tfds_name": "mnist",
                                                "batch_size": 64, "eval_batch_size": 1000})
    config.optimizer = ml_collections.ConfigDict({"name": "adam", "learning_rate": 1e-3,
                                                  "eps": 1e-7,  # Keras' Adam (optax: 1e-8).
                                                  "schedule": "cosine"})
    config.augmentations = ml_collections.ConfigDict()  # Applied in the order written.
    config.augmentations.rotate = ml_collections.ConfigDict({"degrees": 10.0})
    config.augmentations.scale = ml_collections.ConfigDict({"min_scale": 0.9, "max_scale": 1.1})
    config.augmentations.random_crop = ml_collections.ConfigDict({"padding": 2})
    config.train = ml_collections.ConfigDict({
        "num_epochs": 10.0,
        "log_every_steps": 200,
        "eval_every_steps": 938,
    })
    config.checkpoint = ml_collections.ConfigDict({"every_steps": 938})
    return config
