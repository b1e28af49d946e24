"""Pretraining for experiments/digits_finetune.py: the tutorial CNN on the digits 0 to 4 only.

    jaxforge train --config experiments/digits_pretrain.py --workdir runs/digits_pretrain

experiments/digits_cnn.py (conv 32 3x3, max-pool 2, dense 128, dropout 0.25, dense head; Adam,
batch 64, cosine decay; 16x16 inputs) with `dataset.classes=(0, 1, 2, 3, 4)`: 721 train images,
labels 0..4 = digits 0..4, a 5-way head; 30 epochs (338 steps).

Measured on 2 CPU cores (seed 0): final eval/accuracy 0.989 (178 of the 180 held-out images of
0 to 4); 338 steps in 5.4 s of training.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.model = ml_collections.ConfigDict({"name": "cnn", "dropout_rate": 0.25})
    config.dataset = ml_collections.ConfigDict({"name": "digits", "batch_size": 64,
                                                "image_size": 16, "classes": (0, 1, 2, 3, 4)})
    config.optimizer = ml_collections.ConfigDict({"name": "adam", "learning_rate": 1e-3,
                                                  "eps": 1e-7,  # Keras' Adam (optax: 1e-8).
                                                  "schedule": "cosine"})
    config.train = ml_collections.ConfigDict({
        "num_epochs": 30.0,
        "log_every_steps": 100,
        "eval_every_steps": 100,
    })
    config.checkpoint = ml_collections.ConfigDict({"every_steps": 500})
    return config
