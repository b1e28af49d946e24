"""`framework.LoggedState`: an optax transformation plugin reports metrics about its own state,
and the trainer logs them and writes the final value into summary.json."""

import json
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax
import pytest

import framework

pytestmark = pytest.mark.slow


class CounterState(NamedTuple):
    count: jax.Array
    logged: framework.LoggedState


def counter(config):
    """Leaves the updates alone and counts them; reports the count as `config.name`."""

    def init(params):
        zero = jnp.zeros((), jnp.int32)
        return CounterState(zero, framework.LoggedState({config.name: zero}))

    def update(updates, state, params=None):
        count = state.count + 1
        return updates, CounterState(count, framework.LoggedState({config.name: count}))

    return optax.GradientTransformation(init, update)


COUNTER = framework.Plugin(build=counter, api_version=framework.PLUGIN_API_VERSION,
                           default_config=lambda: ml_collections.ConfigDict({"name": "updates"}))


def run(config, workdir):
    with framework.registry.registered("regularizers", "counter", COUNTER):
        return framework.train(framework.resolve_config(config), workdir)


def records(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("train", [{"steps_per_dispatch": 5}, {"accumulation_steps": 2}])
def test_a_transformations_logged_state_is_logged_as_last_seen_and_summarized(
        tmp_path, tiny, train):
    config = tiny(regularizers={"counter": {}},
                  train={"num_steps": 20, "log_every_steps": 5, "eval_every_steps": 0, **train})
    summary = run(config, tmp_path)
    # The count after each logged step, not its mean over the steps since the last log; under
    # accumulation optax.MultiSteps updates the counter once per optimizer step.
    assert [r["train/updates"] for r in records(tmp_path)] == [5.0, 10.0, 15.0, 20.0]
    assert summary["updates"] == 20.0
    assert json.loads((tmp_path / "summary.json").read_text())["updates"] == 20.0


@pytest.mark.parametrize("name, message", [
    ("loss", r"reports \['loss'\], which the step already logs"),
    ("steps", r"reports \['steps'\], keys that summary.json already has"),
])
def test_a_logged_name_that_clashes_is_a_clear_error(tmp_path, tiny, name, message):
    config = tiny(regularizers={"counter": {"name": name}}, train={"num_steps": 2})
    with pytest.raises(framework.JaxforgeError, match=message):
        run(config, tmp_path)
