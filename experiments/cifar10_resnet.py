"""ResNet-20 on CIFAR-10 (He et al. 2016) with the standard crop + flip augmentation.

    jaxforge train --config experiments/cifar10_resnet.py --workdir runs/cifar10_resnet

TFDS `cifar10` (needs network access the first time, or --config.dataset.data_dir=DIR prepared
with `tfds build cifar10 --file_format=array_record`). SGD with Nesterov momentum 0.9, batch 128,
learning rate 0.1 with warmup and cosine decay over 160 epochs, and an L2 penalty of 2.5e-4
(the same gradient as SGD weight decay 5e-4).
Expected from the paper's recipe: about 0.91-0.92 eval/accuracy; on a GPU this is the run to
measure (on 2 CPU cores it takes many hours). Not measured here: this machine has no network.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.model = ml_collections.ConfigDict({"name": "resnet", "stage_sizes": (3, 3, 3),
                                              "width": 16})
    config.dataset = ml_collections.ConfigDict({
        "name": "tfds", "tfds_name": "cifar10", "batch_size": 128, "eval_batch_size": 1000,
        "normalize": "mean_std", "mean": (0.4914, 0.4822, 0.4465),
        "std": (0.2470, 0.2435, 0.2616)})
    config.optimizer = ml_collections.ConfigDict({
        "name": "sgd", "learning_rate": 0.1, "momentum": 0.9, "nesterov": True,
        "schedule": "warmup_cosine", "warmup_steps": 780})
    config.regularizers = ml_collections.ConfigDict({"l2": {"weight": 2.5e-4}})
    config.augmentations = ml_collections.ConfigDict()  # Applied in the order written.
    config.augmentations.random_crop = ml_collections.ConfigDict({"padding": 4})
    config.augmentations.flip = ml_collections.ConfigDict({"probability": 0.5})
    config.train = ml_collections.ConfigDict({
        "num_epochs": 160.0,
        "log_every_steps": 390,
        "eval_every_steps": 3900,
        "steps_per_dispatch": 10,
    })
    config.checkpoint = ml_collections.ConfigDict({"every_steps": 3900})
    return config
