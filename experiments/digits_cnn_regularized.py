"""The digits CNN with one training technique switched on per variant, for comparison.

    jaxforge train --config experiments/digits_cnn_regularized.py:VARIANT --workdir runs/VARIANT

VARIANT is one of: baseline (no dropout, float32), l2, dropout, augment, bfloat16, pruned,
early_stopping. Everything else is experiments/digits_cnn.py: Adam (Keras' eps=1e-7) with
cosine decay, batch 64, 60 epochs (1,348 steps) on the 8x8 digits upsampled to 16x16. The
README's results table lists the measured test accuracy of each.
"""

import ml_collections

VARIANTS = ("baseline", "l2", "dropout", "augment", "bfloat16", "pruned", "early_stopping")


def get_config(variant: str = "baseline") -> ml_collections.ConfigDict:
    if variant not in VARIANTS:
        raise ValueError(f"Unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}.")
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.model = ml_collections.ConfigDict({"name": "cnn", "dropout_rate": 0.0})
    config.dataset = ml_collections.ConfigDict({"name": "digits", "batch_size": 64,
                                                "image_size": 16})
    config.optimizer = ml_collections.ConfigDict({"name": "adam", "learning_rate": 1e-3,
                                                  "eps": 1e-7,  # Keras' Adam (optax: 1e-8).
                                                  "schedule": "cosine"})
    config.train = ml_collections.ConfigDict({
        "num_epochs": 60.0,
        "log_every_steps": 100,
        "eval_every_steps": 500,
    })
    config.checkpoint = ml_collections.ConfigDict({"every_steps": 500})
    if variant == "l2":
        config.regularizers = ml_collections.ConfigDict({"l2": {"weight": 1e-4}})
    elif variant == "dropout":
        config.model.dropout_rate = 0.25
    elif variant == "augment":
        config.augmentations = ml_collections.ConfigDict({
            "rotate": {"degrees": 10.0}, "translate": {"max_fraction": 0.1}})
    elif variant == "bfloat16":
        config.train.precision = "bfloat16"
    elif variant == "pruned":  # 80% of each kernel zeroed by step 1,000, then fine-tuned.
        config.regularizers = ml_collections.ConfigDict({"magnitude_pruning": {
            "target_sparsity": 0.8, "begin_step": 200, "end_step": 1000, "frequency": 100}})
    elif variant == "early_stopping":  # Evaluate every 100 steps; end with the best state.
        config.train.eval_every_steps = 100
        config.callbacks = ml_collections.ConfigDict({"early_stopping": {
            "metric": "eval/loss", "mode": "min", "patience": 3, "restore_best": True}})
    return config
