"""Sharding rules: parameter paths -> partition specs, FSDP by default, optimizer state alike;
and runs on differently shaped meshes train the same model."""

import json
import re

import flax.linen as nn
import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import framework
from framework import loop
from framework.errors import ConfigError
from framework.sharding import fsdp_spec, parse_rules


def test_fsdp_splits_the_largest_divisible_dimension_of_large_arrays():
    assert fsdp_spec((16, 32), fsdp_size=4, min_size=100) == P(None, "fsdp")
    assert fsdp_spec((64, 30), fsdp_size=4, min_size=100) == P("fsdp", None)
    assert fsdp_spec((30, 31), fsdp_size=4, min_size=100) == P()  # Nothing divides.
    assert fsdp_spec((8,), fsdp_size=4, min_size=100) == P()  # Too small to be worth it.
    assert fsdp_spec((64, 64), fsdp_size=1, min_size=0) == P()  # No fsdp axis.


@pytest.mark.parametrize("rules, message", [
    ((("Dense", (None, "tensor")),), "'tensor' is not a mesh axis; use one of data, fsdp, model"),
    ((("Dense[", ()),), "'Dense\\[' is not a valid regex"),
    (("Dense",), "must be a pair \\(regex, spec\\)"),
])
def test_malformed_rules_are_clear_errors(rules, message):
    with pytest.raises(ConfigError, match=message):
        parse_rules(rules)


def test_rules_are_validated_with_the_config(tiny):
    with pytest.raises(ConfigError, match="config.mesh.rules\\[0\\]"):
        framework.resolve_config(tiny(mesh={"rules": (("kernel", ("modle",)),)}))


def test_rules_then_fsdp_place_params_and_adam_moments_alike(tiny):
    config = framework.resolve_config(tiny(
        mesh={"data": 2, "fsdp": 4, "model": 1, "fsdp_min_size": 256,
              "rules": (("Dense_1/kernel", ("fsdp", None)),)}))
    sharding = loop.set_up(config).state_sharding
    params = sharding.params
    assert params["Dense_0"]["kernel"].spec == P(None, "fsdp")  # (16, 32): FSDP default.
    assert params["Dense_0"]["bias"].spec == P()  # 32 elements: under fsdp_min_size.
    assert params["Dense_1"]["kernel"].spec == P("fsdp", None)  # (32, 4): the rule.
    adam = sharding.opt_state[0]
    for moments in (adam.mu, adam.nu):
        assert jax.tree.map(lambda s: s.spec, moments) == jax.tree.map(lambda s: s.spec, params)
    assert adam.count.spec == P() and sharding.step.spec == P()


def test_a_rule_that_does_not_divide_a_parameter_names_it(tiny):
    config = framework.resolve_config(tiny(
        mesh={"data": 1, "fsdp": 1, "model": 8, "rules": (("Dense_1/kernel", (None, "model")),)}))
    with pytest.raises(ConfigError, match="Dense_1/kernel \\(shape \\(32, 4\\)\\).* 8 shards"):
        loop.set_up(config)


def records(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_one_device_data_parallel_and_fsdp_meshes_train_alike(tmp_path, tiny):
    meshes = {"one": {"data": 1}, "data8": {"data": 8},
              "fsdp": {"data": 2, "fsdp": 4, "fsdp_min_size": 256}}
    for name, mesh in meshes.items():
        framework.train(framework.resolve_config(tiny(mesh=mesh, train={"num_steps": 20})),
                        tmp_path / name)
    table = (tmp_path / "fsdp" / "parameters.txt").read_text()
    assert re.search(r"Dense_0/kernel +\(16, 32\) .* \(None, 'fsdp'\)", table)
    reference = records(tmp_path / "one")
    for name in ("data8", "fsdp"):
        for a, b in zip(records(tmp_path / name), reference, strict=True):
            assert a.keys() == b.keys()
            for key in {"train/loss", "eval/loss"} & a.keys():
                assert a[key] == pytest.approx(b[key], rel=1e-4), (name, key)
    params = {name: params_of(tmp_path / name) for name in meshes}
    for name in ("data8", "fsdp"):
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
                     params[name], params["one"])


@pytest.mark.slow
@pytest.mark.parametrize("mesh", [{"data": 4}, {"data": 2, "fsdp": 2, "fsdp_min_size": 256},
                                  {"data": 1}])
def test_a_run_saved_on_eight_devices_resumes_on_another_mesh(tmp_path, tiny, mesh):
    framework.train(framework.resolve_config(tiny()), tmp_path / "straight")
    framework.train(framework.resolve_config(tiny(train={"num_steps": 20})), tmp_path / "moved")
    summary = framework.train(framework.resolve_config(tiny(mesh=mesh)), tmp_path / "moved",
                              allow_config_change=True)  # More steps, on another mesh.
    assert summary["resumed_from_step"] == 20
    experiment, state, _ = loop.restore(tmp_path / "moved")
    assert experiment.mesh.devices.size == np.prod([mesh.get(a, 1) for a in ("data", "fsdp")])
    assert {d for leaf in jax.tree.leaves(state.params) for d in leaf.sharding.device_set} == set(
        experiment.mesh.devices.flat)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                 jax.device_get(state.params), params_of(tmp_path / "straight"))


def params_of(workdir):
    return jax.device_get(loop.restore(workdir)[1].params)


class AnnotatedMLP(nn.Module):
    """A model that names its parameters' axes, as models written for model parallelism do."""

    num_classes: int

    @nn.compact
    def __call__(self, x, *, train):
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(nn.Dense(32, kernel_init=nn.with_logical_partitioning(
            nn.initializers.lecun_normal(), ("embed", "mlp")))(x))
        return nn.Dense(self.num_classes, kernel_init=nn.with_logical_partitioning(
            nn.initializers.lecun_normal(), ("mlp", "vocab")))(x)


@pytest.mark.slow
def test_flax_logical_axis_annotations_place_parameters(tmp_path, tiny):
    plugin = framework.Plugin(
        build=lambda config, metadata, dtype: AnnotatedMLP(metadata.num_classes),
        api_version=framework.PLUGIN_API_VERSION)
    with framework.registry.registered("models", "annotated", plugin):
        for name, mesh in {"one": {"data": 1},
                           "model": {"data": 4, "model": 2,
                                     "logical_axis_rules": (("mlp", "model"),)}}.items():
            framework.train(framework.resolve_config(
                tiny(model={"name": "annotated"}, mesh=mesh, train={"num_steps": 20})),
                tmp_path / name)
        _, state, _ = loop.restore(tmp_path / "model")
    assert state.params["Dense_0"]["kernel"].sharding.spec == P(None, "model")
    assert state.params["Dense_1"]["kernel"].sharding.spec == P("model", None)
    assert state.params["Dense_0"]["bias"].sharding.spec == P()  # Not annotated.
    assert state.opt_state[0].mu["Dense_0"]["kernel"].sharding.spec == P(None, "model")
    for a, b in zip(records(tmp_path / "model"), records(tmp_path / "one"), strict=True):
        assert a["train/loss"] == pytest.approx(b["train/loss"], rel=1e-4)


def test_logical_axis_rules_must_name_mesh_axes(tiny):
    with pytest.raises(ConfigError, match="logical_axis_rules\\[0\\]=.*one of data, fsdp, model"):
        framework.resolve_config(tiny(mesh={"logical_axis_rules": (("mlp", "tensor"),)}))
