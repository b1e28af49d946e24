r"""Fine-tuning from a run: digits 5 to 9 from 10 train images each, on a body pretrained on 0 to 4.

    jaxforge train --config experiments/digits_pretrain.py --workdir runs/digits_pretrain
    jaxforge train --config experiments/digits_finetune.py --workdir runs/digits_finetune

The network of experiments/digits_pretrain.py on `dataset.classes=(5, 6, 7, 8, 9)` with
`dataset.train_per_class=10` (50 train images; labels 0..4 = digits 5..9; evaluated on all 180
held-out images of 5 to 9), starting from the pretrained run's parameters
(`init_from.path=runs/digits_pretrain`) except its head.

Why `exclude` and not `on_mismatch=reinit`: both tasks have 5 classes, so the pretrained head
(`Dense_1`, dense 128 -> 5) has exactly this run's shape and nothing mismatches; `reinit` would
load it, and its rows mean digits 0..4, not 5..9. `init_from.exclude=("Dense_1",)` leaves the
head at its fresh initialisation (with 10 classes instead of 5 the shapes would differ and
`on_mismatch=reinit` would do the same). The conv layer and the dense 128 layer are loaded.

From scratch, for comparison (the same budget and data, the seed's initialisation):

    jaxforge train --config experiments/digits_finetune.py --workdir runs/digits_scratch \
        --config.init_from.path=""

Measured on 2 CPU cores, seeds 0 to 4 (`--config.seed=N`), final eval/accuracy on the 180
held-out images of 5 to 9: fine-tuned 0.844, 0.922, 0.917, 0.906, 0.906 (mean 0.899); from
scratch 0.922, 0.906, 0.917, 0.911, 0.917 (mean 0.914). Transfer from 0..4 does not help here:
50 images already train this small CNN to ~0.91 from scratch at this budget, and other budgets
did no better (docs/after-training.md, "Measured: fine-tuning on digits"). 5 to 13 s a run.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.model = ml_collections.ConfigDict({"name": "cnn", "dropout_rate": 0.25})
    config.dataset = ml_collections.ConfigDict({
        "name": "digits", "batch_size": 25, "eval_batch_size": 64, "image_size": 16,
        "classes": (5, 6, 7, 8, 9), "train_per_class": 10})
    config.optimizer = ml_collections.ConfigDict({"name": "adam", "learning_rate": 1e-3,
                                                  "eps": 1e-7, "schedule": "cosine"})
    config.train = ml_collections.ConfigDict({
        "num_steps": 100,  # 50 epochs of the 50 images.
        "log_every_steps": 50,
        "eval_every_steps": 50,
    })
    config.checkpoint = ml_collections.ConfigDict({"every_steps": 100})
    config.init_from = ml_collections.ConfigDict({"path": "runs/digits_pretrain",
                                                  "exclude": ("Dense_1",)})
    return config
