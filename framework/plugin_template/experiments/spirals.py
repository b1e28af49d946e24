"""The example experiment: the residual MLP on three spirals, with z-loss, from this package alone.

    jaxforge train --config experiments/spirals.py --workdir runs/spirals

Plugins are named by their full ids (`distribution:name`), which stay unambiguous when another
installed package provides a plugin of the same name.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.model = ml_collections.ConfigDict({"name": "jaxforge_example:residual_mlp",
                                              "width": 64, "depth": 2, "dropout_rate": 0.0})
    config.dataset = ml_collections.ConfigDict({"name": "jaxforge_example:spirals",
                                                "batch_size": 64})
    config.regularizers = ml_collections.ConfigDict({"jaxforge_example:z_loss": {"weight": 1e-3}})
    config.optimizer = ml_collections.ConfigDict({"name": "adam", "learning_rate": 3e-3,
                                                  "schedule": "cosine"})
    config.train = ml_collections.ConfigDict({"num_steps": 600, "log_every_steps": 100,
                                              "eval_every_steps": 300})
    config.checkpoint = ml_collections.ConfigDict({"every_steps": 300})
    return config
