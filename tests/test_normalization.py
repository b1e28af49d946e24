"""Inputs normalised on the device (`DatasetMetadata.normalize`): the same floats as on the host."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import framework
from framework.model import build_model
from framework.normalization import model_metadata, normalize, normalizing
from framework.state import create_train_state
from framework.step import make_train_step, zero_metrics

PIXELS = np.arange(256, dtype=np.uint8).reshape(4, 4, 4, 4)  # Every value, 4 channels.


def host_float_path(images, normalize_name, mean, std):
    """What the tfds plugin computed on the host before pixels travelled as uint8."""
    image = np.asarray(images, np.float32)
    if normalize_name == "unit":
        return image / 255.0
    if normalize_name == "mean_std":
        return (image / 255.0 - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return image


@pytest.mark.parametrize("name, mean, std", [
    ("unit", (0.0,), (1.0,)), ("none", (0.0,), (1.0,)),
    ("mean_std", (0.485, 0.456, 0.406, 0.5), (0.229, 0.224, 0.225, 0.25)),
    ("mean_std", (0.1307,), (0.3081,))])
def test_device_normalisation_equals_the_host_float_path(name, mean, std):
    from plugins.datasets.tfds_source import normalization

    spec = normalization(framework.fields(normalize=(name, ""), mean=(mean, ""), std=(std, "")))
    got = np.asarray(jax.jit(lambda x: normalize(x, spec))(PIXELS))
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, host_float_path(PIXELS, name, mean, std), rtol=1e-6,
                               atol=1e-6)


def test_models_are_built_for_float_inputs_of_the_same_shape():
    stored = framework.DatasetMetadata((4, 4, 4), 3, 10, 10, input_dtype="uint8",
                                       normalize=framework.InputNormalization())
    seen = model_metadata(stored)
    assert (seen.input_shape, seen.input_dtype, seen.normalize) == ((4, 4, 4), "float32", None)
    plain = framework.DatasetMetadata((4,), 3, 10, 10)
    assert model_metadata(plain) is plain


def test_augmentations_see_the_normalised_floats():
    spec = framework.InputNormalization(mean=(0.5,), std=(0.25,))
    metadata = model_metadata(framework.DatasetMetadata((4, 4, 4), 3, 8, 8, "uint8",
                                                         normalize=spec))
    seen = []

    def record(rng, batch):
        jax.debug.callback(lambda x: seen.append(np.asarray(x)), batch["inputs"])
        return batch

    model = build_model(framework.registry.load("models", "mlp"),
                        framework.registry.load("models", "mlp").default_config(), metadata,
                        jnp.float32)
    tx = optax.sgd(0.1)
    state = create_train_state(model, tx, jax.random.PRNGKey(0), jnp.zeros((1, 4, 4, 4)))
    step = jax.jit(normalizing(make_train_step(model, tx, {}, [record]), spec))
    batch = {"inputs": PIXELS[None], "label": np.zeros((1, 4), np.int32)}
    accumulator = zero_metrics(step, state, batch)
    jax.block_until_ready(step(state, accumulator, batch))
    assert seen and seen[-1].dtype == np.float32
    np.testing.assert_allclose(seen[-1], host_float_path(PIXELS, "mean_std", 0.5, 0.25),
                               rtol=1e-6, atol=1e-6)
