"""Tests run on the CPU with 8 simulated devices, so sharded code meets a real mesh."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8").strip()

import ml_collections  # noqa: E402
import pytest  # noqa: E402


def tiny_config(**sections) -> ml_collections.ConfigDict:
    """A fast experiment on `synthetic` data: the base for tests that train."""
    config = ml_collections.ConfigDict({
        "seed": 0,
        "model": {"name": "mlp", "hidden_sizes": (32,)},
        "dataset": {"name": "synthetic", "shape": (4, 4, 1), "num_classes": 4,
                    "num_train": 256, "num_eval": 100, "batch_size": 32, "eval_batch_size": 32},
        "optimizer": {"name": "adam", "learning_rate": 1e-2},
        "train": {"num_steps": 40, "log_every_steps": 10, "eval_every_steps": 20},
        "checkpoint": {"every_steps": 20},
    })
    for name, values in sections.items():
        values = dict(values)
        if name == "dataset" and "name" in values:
            values.setdefault("batch_size", 32)
        if name not in config or "name" in values:  # Another plugin: its own fields only.
            config[name] = ml_collections.ConfigDict()
        for key, value in values.items():
            config[name][key] = value
    return config


@pytest.fixture
def tiny():
    return tiny_config
