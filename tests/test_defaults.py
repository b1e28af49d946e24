"""Defaults a researcher meets in the first hour: Adam's epsilon, and `config show`."""

import inspect

import optax
import pytest

import framework
from framework.config import field_docs

TUTORIAL_EXPERIMENTS = ["experiments/digits_cnn.py", "experiments/mnist_cnn.py",
                        "experiments/mnist_cnn_augmented.py",
                        "experiments/digits_cnn_regularized.py:baseline",
                        "experiments/digits_cnn_regularized.py:early_stopping"]


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_adam_defaults_are_optaxs(name):
    plugin = framework.registry.load("optimizers", name)
    defaults = plugin.default_config()
    assert defaults.eps == 1e-8 and defaults.b1 == 0.9 and defaults.b2 == 0.999
    assert "1e-8" in field_docs(defaults)["eps"] and "1e-8" in plugin.description
    optax_defaults = {key: parameter.default for key, parameter
                      in inspect.signature(getattr(optax, name)).parameters.items()}
    for key in ("b1", "b2", "eps", "weight_decay"):
        if key in defaults or key in optax_defaults:
            assert defaults[key] == optax_defaults[key], key
    resolved = framework.resolve_config(framework.testing.tiny_config(optimizer={"name": name}))
    assert resolved.optimizer.eps == 1e-8


@pytest.mark.parametrize("spec", TUTORIAL_EXPERIMENTS)
def test_keras_tutorial_experiments_keep_keras_epsilon(spec):
    config = framework.load_config(spec)
    assert config.optimizer.name == "adam" and config.optimizer.eps == 1e-7
