"""NNX model plugins: one functional interface with Linen, the same numbers for the same weights."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

import framework
from framework import loop
from framework.model import NNX_STATE, build_model
from framework.registry import PluginError
from framework.state import create_train_state
from framework.step import empty_accumulator, make_train_step

FIELDS = {"conv_features": (8, 4), "dense_features": (16,), "padding": "SAME", "dropout_rate": 0.0}


def digits(batch_size=32):
    config = framework.resolve_config(ml_collections.ConfigDict({
        "dataset": {"name": "digits", "batch_size": batch_size}, "train": {"num_steps": 1}}))
    return framework.registry.load("datasets", "digits").build(
        config.dataset, framework.DataContext(seed=0))


def models(batch_norm, metadata):
    """The Linen `cnn` and the NNX `cnn_nnx`, built from the same config."""
    built = []
    for name in ("cnn", "cnn_nnx"):
        plugin = framework.registry.load("models", name)
        config = plugin.default_config()
        config.update({**FIELDS, "batch_norm": batch_norm})
        built.append(build_model(plugin, config, metadata, jnp.float32, name))
    return built


def linen_to_nnx(variables):
    """Linen `cnn` variables laid out as `cnn_nnx` variables: the same weights."""
    params = variables["params"]
    dense = sorted((k for k in params if k.startswith("Dense_")), key=lambda k: int(k[6:]))
    convs = sorted(k for k in params if k.startswith("Conv_"))
    nnx_params = {
        "convs": {i: params[k] for i, k in enumerate(convs)},
        "hidden": {i: params[k] for i, k in enumerate(dense[:-1])},
        "classifier": params[dense[-1]],
    }
    norms = sorted(k for k in params if k.startswith("BatchNorm_"))
    converted = {"params": nnx_params}
    if norms:
        nnx_params["norms"] = {i: params[k] for i, k in enumerate(norms)}
        converted[NNX_STATE] = {"norms": {i: variables["batch_stats"][k]
                                          for i, k in enumerate(norms)}}
    return converted


def assert_trees_close(a, b, **tolerance):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, **tolerance), a, b)


@pytest.mark.parametrize("batch_norm", [False, True])
def test_nnx_and_linen_cnns_with_the_same_weights_give_the_same_outputs(batch_norm):
    source = digits()
    linen, nnx_model = models(batch_norm, source.metadata)
    inputs = jnp.asarray(next(source.train_iterator())["inputs"])
    linen_variables = linen.init(jax.random.PRNGKey(0), inputs[:1])
    nnx_variables = nnx_model.init(jax.random.PRNGKey(0), inputs[:1])
    converted = linen_to_nnx(linen_variables)
    # The conversion is complete: it has exactly the NNX model's own structure and shapes.
    assert jax.tree.map(jnp.shape, converted) == jax.tree.map(jnp.shape, nnx_variables)
    for train in (False, True):
        linen_out, linen_updates = jax.jit(linen.apply, static_argnums=2)(
            linen_variables, inputs, train)
        nnx_out, nnx_updates = jax.jit(nnx_model.apply, static_argnums=2)(
            converted, inputs, train)
        np.testing.assert_allclose(nnx_out, linen_out, rtol=1e-5, atol=1e-5)
        if batch_norm and train:
            assert_trees_close(nnx_updates, {NNX_STATE: linen_to_nnx(
                {"params": linen_variables["params"], **linen_updates})[NNX_STATE]},
                rtol=1e-5, atol=1e-6)
        else:
            assert nnx_updates == {} and linen_updates == {}


@pytest.mark.parametrize("batch_norm", [False, True])
def test_nnx_and_linen_cnns_with_the_same_weights_train_identically(batch_norm):
    source = digits()
    linen, nnx_model = models(batch_norm, source.metadata)
    tx = optax.adam(1e-2)
    example = jnp.zeros((1, *source.metadata.input_shape))
    linen_state = create_train_state(linen, tx, jax.random.PRNGKey(0), example)
    converted = linen_to_nnx({"params": linen_state.params, **linen_state.model_state})
    nnx_state = create_train_state(nnx_model, tx, jax.random.PRNGKey(0), example)
    nnx_state = nnx_state.replace(params=converted["params"],
                                  opt_state=tx.init(converted["params"]),
                                  model_state={k: v for k, v in converted.items() if k != "params"})
    steps = {name: jax.jit(make_train_step(model, tx, {}, []))
             for name, model in (("linen", linen), ("nnx", nnx_model))}
    iterator = source.train_iterator()
    linen_losses, nnx_losses = [], []
    for _ in range(30):
        batch = jax.tree.map(lambda x: jnp.asarray(x)[None], next(iterator))
        linen_state, linen_metrics = steps["linen"](linen_state, empty_accumulator(), batch)
        nnx_state, nnx_metrics = steps["nnx"](nnx_state, empty_accumulator(), batch)
        linen_losses.append(float(linen_metrics["loss"]))
        nnx_losses.append(float(nnx_metrics["loss"]))
    np.testing.assert_allclose(nnx_losses, linen_losses, rtol=1e-4)
    assert nnx_losses[-1] < 0.7 * nnx_losses[0]  # It did train.
    final = linen_to_nnx({"params": linen_state.params, **linen_state.model_state})
    assert_trees_close({"params": nnx_state.params, **nnx_state.model_state}, final,
                       rtol=1e-3, atol=1e-5)


def test_nnx_dropout_noise_comes_from_the_trainers_rngs():
    source = digits()
    plugin = framework.registry.load("models", "cnn_nnx")
    config = plugin.default_config()
    config.update({"conv_features": (4,), "dense_features": (32,), "dropout_rate": 0.5})
    model = build_model(plugin, config, source.metadata, jnp.float32, "cnn_nnx")
    inputs = jnp.asarray(next(source.train_iterator())["inputs"])
    variables = model.init(jax.random.PRNGKey(0), inputs)
    apply = jax.jit(model.apply, static_argnums=2)
    first = apply(variables, inputs, True, {"dropout": jax.random.PRNGKey(1)})[0]
    again = apply(variables, inputs, True, {"dropout": jax.random.PRNGKey(1)})[0]
    other = apply(variables, inputs, True, {"dropout": jax.random.PRNGKey(2)})[0]
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)
    np.testing.assert_array_equal(apply(variables, inputs, False, None)[0],
                                  apply(variables, inputs, False, None)[0])
    # Initialisation follows the trainer's rng too.
    assert not np.allclose(variables["params"]["classifier"]["kernel"],
                           model.init(jax.random.PRNGKey(1), inputs)["params"]["classifier"]
                           ["kernel"])


@pytest.mark.slow
def test_cnn_nnx_trains_checkpoints_and_evaluates_from_a_config(tmp_path):
    config = framework.load_config("experiments/digits_cnn.py", [
        "--config.model.name=cnn_nnx", "--config.train.num_steps=150",
        "--config.train.eval_every_steps=150", "--config.train.log_every_steps=50",
        "--config.checkpoint.every_steps=150"])
    summary = framework.train(config, tmp_path)
    assert summary["final"]["eval/accuracy"] > 0.9
    # Restored from the checkpoint (NNX variables as plain dicts) and evaluated again.
    assert framework.evaluate(tmp_path)["eval/accuracy"] == pytest.approx(
        summary["final"]["eval/accuracy"])


class AnnotatedNNXMLP(nnx.Module):
    """Names its kernels' axes with nnx.with_partitioning, as models for model parallelism do."""

    def __init__(self, in_features, num_classes, rngs):
        init = nnx.initializers.lecun_normal()
        self.hidden = nnx.Linear(in_features, 32, rngs=rngs,
                                 kernel_init=nnx.with_partitioning(init, ("embed", "mlp")))
        self.out = nnx.Linear(32, num_classes, rngs=rngs,
                              kernel_init=nnx.with_partitioning(init, ("mlp", "vocab")))

    def __call__(self, x, *, train):
        return self.out(nnx.relu(self.hidden(x.reshape((x.shape[0], -1)))))


def test_nnx_partitioning_annotations_place_parameters_by_the_logical_axis_rules(tiny):
    plugin = framework.Plugin(api_version=framework.PLUGIN_API_VERSION,
                              build=lambda config, metadata, dtype, rngs: AnnotatedNNXMLP(
                                  int(np.prod(metadata.input_shape)), metadata.num_classes, rngs))
    with framework.registry.registered("models", "annotated_nnx", plugin):
        config = framework.resolve_config(tiny(model={"name": "annotated_nnx"}, mesh={
            "data": 4, "model": 2, "logical_axis_rules": (("mlp", "model"),)}))
        state = loop.set_up(config).init_state(jax.random.PRNGKey(0))
    assert state.params["hidden"]["kernel"].sharding.spec == P(None, "model")
    assert state.params["out"]["kernel"].sharding.spec == P("model", None)
    assert state.params["hidden"]["bias"].sharding.spec == P()  # Not annotated.


class NNXWithoutRngs(nnx.Module):
    def __init__(self):
        self.linear = nnx.Linear(4, 2, rngs=nnx.Rngs(0))


class LinenDense(nn.Module):
    @nn.compact
    def __call__(self, x, *, train):
        return nn.Dense(2)(x)


def test_wrong_module_kinds_are_named():
    metadata = framework.DatasetMetadata((4,), 2, 8, 8)
    config = ml_collections.ConfigDict()
    nnx_plugin = framework.Plugin(build=lambda config, metadata, dtype: NNXWithoutRngs(),
                                  api_version=1)
    with pytest.raises(PluginError, match=r"takes no `rngs`.*build\(config, metadata, dtype, rngs"):
        build_model(nnx_plugin, config, metadata, jnp.float32, "mine")
    linen_plugin = framework.Plugin(build=lambda config, metadata, dtype, rngs: LinenDense(),
                                    api_version=1)
    with pytest.raises(PluginError, match="must return a flax.nnx.Module.*returned a LinenDense"):
        build_model(linen_plugin, config, metadata, jnp.float32, "mine")
    junk = framework.Plugin(build=lambda config, metadata, dtype: "a string", api_version=1)
    with pytest.raises(PluginError, match="must build a flax.linen.Module.*built a str"):
        build_model(junk, config, metadata, jnp.float32, "mine")
