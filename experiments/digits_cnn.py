"""The default main job: the Keras-tutorial CNN on scikit-learn's bundled digits (no download).

    jaxforge train --config experiments/digits_cnn.py --workdir runs/digits_cnn

Expected (measured on 2 CPU cores): eval/accuracy >= 0.98 on the 360 held-out digits.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.model = ml_collections.ConfigDict({"name": "cnn"})  # conv 32 3x3, pool, dense 128.
    config.dataset = ml_collections.ConfigDict({"name": "digits", "batch_size": 64,
                                                "image_size": 16})
    config.optimizer = ml_collections.ConfigDict({"name": "adam", "learning_rate": 1e-3})
    config.train = ml_collections.ConfigDict({
        "num_epochs": 30.0,
        "log_every_steps": 50,
        "eval_every_steps": 100,
    })
    config.checkpoint = ml_collections.ConfigDict({"every_steps": 200})
    return config
