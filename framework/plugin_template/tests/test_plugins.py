"""This package's plugins against jaxforge's contracts, and a short training run.

Run after installing the package (its plugins are found through its entry points):

    pip install -e . && python -m pytest
"""

from pathlib import Path

import pytest

import framework
from framework.testing import parametrize_with_checks

EXPERIMENT = Path(__file__).resolve().parent.parent / "experiments" / "spirals.py"


@parametrize_with_checks(["jaxforge_example:residual_mlp", "jaxforge_example:spirals",
                          "jaxforge_example:z_loss"])
def test_conformance(check):
    check()


def test_z_loss_is_added_to_the_loss(jaxforge_tiny_config, tmp_path):
    config = jaxforge_tiny_config(regularizers={"jaxforge_example:z_loss": {"weight": 0.1}},
                                  train={"num_steps": 10, "eval_every_steps": 10,
                                         "log_every_steps": 10},
                                  checkpoint={"every_steps": 10})
    framework.train(framework.resolve_config(config), tmp_path)
    record = (tmp_path / "metrics.jsonl").read_text().splitlines()[0]
    assert '"train/penalty/jaxforge_example:z_loss"' in record


@pytest.mark.parametrize("field, value, message", [
    ("model.width", "0", "config.model.width must be > 0"),
    ("dataset.num_arms", "1", "config.dataset.num_arms must be >= 2"),
])
def test_bad_fields_are_named(field, value, message):
    with pytest.raises(framework.ConfigError, match=message):
        framework.load_config(str(EXPERIMENT), [f"--config.{field}={value}"])


def test_the_example_experiment_learns_the_spirals(tmp_path):
    summary = framework.train(framework.load_config(str(EXPERIMENT)), tmp_path)
    assert summary["final"]["eval/accuracy"] > 0.95
