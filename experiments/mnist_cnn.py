"""The Keras MNIST tutorial, exactly: TFDS `mnist`, the small CNN, Adam, batch 64, 5 epochs.

    jaxforge train --config experiments/mnist_cnn.py --workdir runs/mnist_cnn

Needs network access the first time (TFDS downloads MNIST and prepares it as array_record, read
by Grain without TensorFlow), or a data_dir prepared elsewhere: --config.dataset.data_dir=DIR.
Expected, as in the tutorial: about 0.98-0.99 eval/accuracy on the 10,000 test images after
5 epochs (4,688 steps). Not measured here: this machine has no network; the same command runs in
the tests against TFDS mock data. Adam has Keras' eps=1e-7 (the adam plugin's default is optax's
1e-8).
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.model = ml_collections.ConfigDict({"name": "cnn"})  # conv 32 3x3, pool, dense 128.
    config.dataset = ml_collections.ConfigDict({"name": "tfds", "tfds_name": "mnist",
                                                "batch_size": 64, "eval_batch_size": 1000})
    config.optimizer = ml_collections.ConfigDict({"name": "adam", "learning_rate": 1e-3,
                                                  "eps": 1e-7})  # Keras' Adam (optax: 1e-8).
    config.train = ml_collections.ConfigDict({
        "num_epochs": 5.0,
        "log_every_steps": 200,
        "eval_every_steps": 938,  # About once per epoch.
    })
    config.checkpoint = ml_collections.ConfigDict({"every_steps": 938})
    return config
