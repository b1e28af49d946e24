"""The parameter overview: one row per array, shardings, and totals that match the model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

import framework
from framework.parameters import count_parameters, parameter_table


def test_table_rows_shardings_and_totals():
    mesh = Mesh(np.asarray(jax.devices()[:8]).reshape(8), ("data",))
    params = {
        "Dense_0": {"kernel": jax.device_put(jnp.zeros((16, 8)),
                                             NamedSharding(mesh, PartitionSpec(None, "data"))),
                    "bias": jax.device_put(jnp.zeros((8,)), NamedSharding(mesh, PartitionSpec()))},
        "embed": jnp.zeros((1000, 4), jnp.bfloat16),
    }
    lines = parameter_table(params).splitlines()
    assert lines[0].split() == ["PARAMETER", "SHAPE", "DTYPE", "COUNT", "SHARDING"]
    assert lines[1].split() == ["Dense_0/bias", "(8,)", "float32", "8", "replicated"]
    assert lines[2].split() == ["Dense_0/kernel", "(16,", "8)", "float32", "128", "(None,",
                                "'data')"]
    assert lines[3].split()[:4] == ["embed", "(1000,", "4)", "bfloat16"]
    assert lines[3].split()[4] == "4,000"
    # 136 float32 (544 B) + 4,000 bfloat16 (8,000 B) = 8,544 B.
    assert lines[-1] == "Total: 4,136 parameters in 3 arrays, 8.3 KiB."
    assert count_parameters(params) == 4136


@pytest.mark.slow
def test_a_run_writes_the_overview_with_the_models_total(tmp_path, tiny):
    framework.train(framework.resolve_config(tiny()), tmp_path)
    table = (tmp_path / "parameters.txt").read_text().splitlines()
    # mlp on 4x4x1 inputs, hidden (32,), 4 classes: 16*32 + 32 + 32*4 + 4 weights and biases.
    assert table[-1].startswith(f"Total: {16 * 32 + 32 + 32 * 4 + 4:,} parameters in 4 arrays")
    assert [line.split()[0] for line in table[1:-1]] == [
        "Dense_0/bias", "Dense_0/kernel", "Dense_1/bias", "Dense_1/kernel"]
    assert all(line.split()[-1] == "replicated" for line in table[1:-1])


def test_rows_name_parameters_as_the_sharding_rules_match_them():
    params = {"blocks": [{"kernel": jnp.zeros((2, 2))}], "head": {"bias": jnp.zeros((2,))}}
    paths = [framework.path_text(path)
             for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    assert paths == ["blocks/0/kernel", "head/bias"]
    rows = parameter_table(params).splitlines()[1:-1]
    assert [row.split()[0] for row in rows] == paths
