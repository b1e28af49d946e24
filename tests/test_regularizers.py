"""Regularizers against hand-computed values: penalties, decoupled decay, smoothing, pruning."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

import framework
from framework.errors import ConfigError

PARAMS = {"Dense_0": {"kernel": jnp.array([[1.0, -2.0], [3.0, -4.0]]),
                      "bias": jnp.array([10.0, -10.0])},
          "Dense_1": {"kernel": jnp.array([[0.5], [-0.25]])}}


def build(name, **fields):
    plugin = framework.registry.load("regularizers", name)
    config = plugin.default_config()
    config.update(fields)
    if plugin.validate:
        plugin.validate(config)
    return plugin.build(config)


def test_l1_and_l2_match_hand_computed_values_without_biases():
    assert float(build("l1")(PARAMS, None, None)) == pytest.approx(1 + 2 + 3 + 4 + 0.5 + 0.25)
    assert float(build("l2")(PARAMS, None, None)) == pytest.approx(1 + 4 + 9 + 16 + 0.25 + 0.0625)
    assert float(build("l2", include="Dense_1")(PARAMS, None, None)) == pytest.approx(0.3125)
    assert float(build("l1", exclude_biases_and_norms=False)(PARAMS, None, None)) == (
        pytest.approx(10.75 + 20))


def test_weight_decay_shrinks_selected_weights_after_the_optimizer():
    tx = optax.chain(optax.sgd(0.1), build("weight_decay", rate=0.01))
    grads = jax.tree.map(jnp.ones_like, PARAMS)
    updates, _ = tx.update(grads, tx.init(PARAMS), PARAMS)
    new = optax.apply_updates(PARAMS, updates)
    np.testing.assert_allclose(new["Dense_0"]["kernel"],
                               PARAMS["Dense_0"]["kernel"] * 0.99 - 0.1, rtol=1e-6)
    np.testing.assert_allclose(new["Dense_0"]["bias"], PARAMS["Dense_0"]["bias"] - 0.1)


def test_label_smoothing_equals_cross_entropy_with_smoothed_labels():
    logits = jnp.array([[2.0, -1.0, 0.5], [0.1, 0.2, 3.0]])
    labels = jnp.array([0, 1])
    alpha = 0.2
    penalty = build("label_smoothing", weight=alpha)(None, {"label": labels}, logits)
    plain = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    smoothed = optax.softmax_cross_entropy(
        logits, optax.smooth_labels(jax.nn.one_hot(labels, 3), alpha)).mean()
    assert float(plain + alpha * penalty) == pytest.approx(float(smoothed), rel=1e-6)


def test_pruning_schedule_is_cubic_from_begin_to_end():
    from plugins.regularizers import target_sparsity

    config = ml_collections.ConfigDict({"target_sparsity": 0.8, "initial_sparsity": 0.0,
                                        "begin_step": 10, "end_step": 50})
    values = [float(target_sparsity(t, config)) for t in (0, 10, 30, 50, 90)]
    assert values == pytest.approx([0.0, 0.0, 0.8 * (1 - 0.5 ** 3), 0.8, 0.8])


def test_pruning_masks_reach_the_target_exactly_and_stay_zero():
    params = {"w": jnp.arange(1.0, 101.0).reshape(10, 10), "b": jnp.ones(10)}
    tx = optax.chain(optax.sgd(0.01), build("magnitude_pruning", target_sparsity=0.8,
                                            begin_step=2, end_step=6, frequency=2))
    state = tx.init(params)
    sparsities = []
    for _ in range(8):
        grads = jax.tree.map(lambda p: -jnp.ones_like(p), params)  # Pushes pruned weights up.
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        sparsities.append(float(optax.tree_utils.tree_get(state, "sparsity")))
    # Pruned at updates 2, 4, 6 to the cubic schedule's 0, 0.8 * (1 - 0.5**3) = 0.7, 0.8.
    assert sparsities == pytest.approx([0, 0, 0, 0.7, 0.7, 0.8, 0.8, 0.8])
    assert int(jnp.sum(params["w"] == 0)) == 80 and bool(jnp.all(params["b"] != 0))
    assert bool(jnp.all(params["w"].ravel()[:80] == 0))  # The smallest magnitudes went first.


@pytest.mark.parametrize("name, fields, message", [
    ("weight_decay", {"rate": 1.5}, "regularizers.weight_decay.rate must be in"),
    ("magnitude_pruning", {"frequency": 7}, "must divide end_step - begin_step"),
    ("magnitude_pruning", {"end_step": 0}, "end_step must be > begin_step"),
    ("label_smoothing", {"weight": 1.0}, "label_smoothing.weight must be in"),
])
def test_bad_regularizer_fields_are_clear_errors(tiny, name, fields, message):
    with pytest.raises(ConfigError, match=message):
        framework.resolve_config(tiny(regularizers={name: fields}))


def freeze_plugin():
    return framework.registry.load("regularizers", "freeze")


def test_freeze_zeroes_the_matched_updates_after_the_optimizer():
    plugin = freeze_plugin()
    config = plugin.default_config()
    config.update({"include": ("Dense_0",), "exclude": ("bias",)})
    plugin.validate(config)
    tx = optax.chain(optax.adam(0.1), plugin.build(config))
    grads = jax.tree.map(jnp.ones_like, PARAMS)
    updates, _ = tx.update(grads, tx.init(PARAMS), PARAMS)
    assert bool(jnp.all(updates["Dense_0"]["kernel"] == 0))
    assert bool(jnp.all(updates["Dense_0"]["bias"] != 0))  # Excluded.
    assert bool(jnp.all(updates["Dense_1"]["kernel"] != 0))


def test_freeze_keeps_the_frozen_parameters_bit_identical_in_training(tmp_path, tiny):
    train = {"num_steps": 10, "log_every_steps": 5, "eval_every_steps": 0}
    model = {"name": "cnn"}
    framework.train(framework.resolve_config(
        tiny(model=model, train=train, checkpoint={"every_steps": 10})), tmp_path / "start")
    config = tiny(model=model, train=train, checkpoint={"every_steps": 10},
                  init_from={"path": str(tmp_path / "start")},
                  regularizers={"freeze": {"include": ("Conv_0",)}})
    framework.train(framework.resolve_config(config), tmp_path / "frozen")
    after = framework.load(tmp_path / "frozen").params
    before = framework.load(tmp_path / "start").params
    for name in ("kernel", "bias"):
        np.testing.assert_array_equal(np.asarray(after["Conv_0"][name]),
                                      np.asarray(before["Conv_0"][name]))
    moved = [name for name in before if name != "Conv_0"
             and not np.array_equal(np.asarray(before[name]["kernel"]),
                                    np.asarray(after[name]["kernel"]))]
    assert moved == [name for name in before if name != "Conv_0"] and moved


def test_freeze_passes_the_conformance_checks():
    assert all(r.status in ("pass", "skip")
               for r in framework.testing.check_plugin("regularizers", "jaxforge:freeze"))


@pytest.mark.parametrize("fields, message", [
    ({"include": ("Conv_(",)}, "regularizers.freeze.include has an invalid regex"),
    ({"exclude": "bias"}, "regularizers.freeze.exclude must be a tuple"),
])
def test_bad_freeze_fields_are_clear_errors(tiny, fields, message):
    with pytest.raises(ConfigError, match=message):
        framework.resolve_config(tiny(regularizers={"freeze": fields}))


def test_a_freeze_regex_that_matches_nothing_is_an_error(tmp_path, tiny):
    config = tiny(train={"num_steps": 2}, regularizers={"freeze": {"include": ("Conv_0",)}})
    with pytest.raises(ConfigError, match=r"\['Conv_0'\] match no parameter"):
        framework.train(framework.resolve_config(config), tmp_path)
