"""A small Vision Transformer on scikit-learn's bundled digits (no download).

    jaxforge train --config experiments/vit_digits.py --workdir runs/vit_digits

`vit` (patch 4, width 64, 4 blocks, 4 heads, MLP 128, global-average pooling, dropout 0.1;
136,778 parameters) on the 8x8 digits upsampled to 16x16 (16 patches), with the CNN
experiment's batch and 60-epoch cosine schedule (1,348 steps) and AdamW.

Measured on 2 CPU cores shared with other jobs: final eval/accuracy 0.972, 0.978, 0.961 on the
360 held-out digits (seeds 0, 1, 2; train accuracy 0.996 for seed 0); 132 to 165 s of training.
Below the CNN of experiments/digits_cnn.py (0.981, 0.983, 0.981) on the same split and schedule.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.model = ml_collections.ConfigDict({
        "name": "vit", "patch_size": 4, "width": 64, "depth": 4, "mlp_dim": 128,
        "num_heads": 4, "pool": "gap", "dropout_rate": 0.1})
    config.dataset = ml_collections.ConfigDict({"name": "digits", "batch_size": 64,
                                                "image_size": 16})
    config.optimizer = ml_collections.ConfigDict({"name": "adamw", "learning_rate": 1e-3,
                                                  "weight_decay": 0.05, "schedule": "cosine",
                                                  "warmup_steps": 100})
    config.train = ml_collections.ConfigDict({
        "num_epochs": 60.0,
        "log_every_steps": 100,
        "eval_every_steps": 500,
    })
    config.checkpoint = ml_collections.ConfigDict({"every_steps": 500})
    return config
