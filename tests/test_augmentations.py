"""Augmentation plugins: shapes and dtypes kept, deterministic per rng, identity at zero strength,
exact geometry, label mixing, applied in the written order, and never at evaluation."""

import json
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import framework
from framework import config as config_lib
from plugins.augmentations import affine_transform, rotate_images

NAMES = ["random_crop", "flip", "rotate", "scale", "translate", "mixup", "cutmix"]
ZERO_STRENGTH = {"random_crop": {"padding": 0}, "flip": {"probability": 0.0},
                 "rotate": {"degrees": 0.0}, "scale": {"min_scale": 1.0, "max_scale": 1.0},
                 "translate": {"max_fraction": 0.0}, "mixup": {"alpha": 0.0},
                 "cutmix": {"alpha": 0.0}}


def batch(size=8, height=12, width=10, channels=3):
    rng = np.random.default_rng(0)
    return {"inputs": jnp.asarray(rng.random((size, height, width, channels), np.float32)),
            "label": jnp.arange(size, dtype=jnp.int32) % 4}


def augmentation(name, **fields):
    plugin = framework.registry.load("augmentations", name)
    config = plugin.default_config()
    config.update(fields)
    plugin.validate(config)
    return jax.jit(plugin.build(config))


@pytest.mark.parametrize("name", NAMES)
def test_shapes_dtypes_and_determinism(name):
    augment, data = augmentation(name), batch()
    first = augment(jax.random.PRNGKey(1), data)
    again = augment(jax.random.PRNGKey(1), data)
    other = augment(jax.random.PRNGKey(2), data)
    assert first["inputs"].shape == data["inputs"].shape
    assert first["inputs"].dtype == data["inputs"].dtype
    assert first["label"].dtype == jnp.int32
    np.testing.assert_array_equal(first["inputs"], again["inputs"])
    assert not np.array_equal(first["inputs"], other["inputs"])
    assert not np.array_equal(first["inputs"], data["inputs"])


@pytest.mark.parametrize("name", NAMES)
def test_identity_at_zero_strength(name):
    data = batch()
    out = augmentation(name, **ZERO_STRENGTH[name])(jax.random.PRNGKey(0), data)
    assert set(out) == set(data)
    np.testing.assert_array_equal(out["inputs"], data["inputs"])


def test_rotation_by_90_degrees_equals_rot90():
    images = batch(height=9, width=9)["inputs"]
    rotated = rotate_images(images, jnp.full((len(images),), 90.0))
    np.testing.assert_allclose(rotated, jnp.rot90(images, k=1, axes=(1, 2)), atol=1e-5)


def test_whole_pixel_translation_shifts_and_fills():
    images = batch(size=2, height=6, width=5)["inputs"]
    shifted = affine_transform(images, jnp.broadcast_to(jnp.eye(2), (2, 2, 2)),
                               jnp.array([[-1.0, 2.0], [0.0, 0.0]]), fill=0.0)
    expected = np.zeros_like(np.asarray(images))
    expected[0, 1:, :3] = np.asarray(images)[0, :5, 2:]  # Down by 1 row, left by 2 columns.
    expected[1] = np.asarray(images)[1]
    np.testing.assert_allclose(shifted, expected, atol=1e-6)


def test_random_crop_is_a_shifted_window_of_the_padded_image():
    data = batch(size=4)
    out = augmentation("random_crop", padding=2)(jax.random.PRNGKey(0), data)["inputs"]
    padded = np.pad(np.asarray(data["inputs"]), ((0, 0), (2, 2), (2, 2), (0, 0)))
    for image, crop in zip(padded, np.asarray(out)):
        windows = [image[r:r + 12, c:c + 10] for r in range(5) for c in range(5)]
        assert any(np.array_equal(crop, window) for window in windows)


def test_mixup_blends_pairs_and_records_both_labels():
    data = batch()
    out = augmentation("mixup", alpha=0.4)(jax.random.PRNGKey(0), data)
    weight = float(out["label_weight"][0])
    assert 0.0 <= weight <= 1.0 and np.allclose(out["label_weight"], weight)
    blended = np.asarray(out["inputs"])
    originals = np.asarray(data["inputs"])
    for i in range(len(blended)):
        residual = (blended[i] - weight * originals[i]) / (1 - weight)
        assert any(np.allclose(residual, originals[j], atol=1e-4) for j in range(len(originals)))


def test_cutmix_weight_is_the_share_of_the_own_image_kept():
    data = batch()
    out = augmentation("cutmix", alpha=1.0)(jax.random.PRNGKey(5), data)
    kept = np.mean(np.all(np.asarray(out["inputs"]) == np.asarray(data["inputs"]), axis=-1),
                   axis=(1, 2))
    weight = float(out["label_weight"][0])
    assert 0.0 < weight < 1.0
    assert np.all(kept >= weight - 1e-6)  # Pasted pixels may equal the original only by chance.


def test_mixed_labels_enter_the_default_loss():
    from framework.model import classification_loss

    logits = jnp.array([[5.0, 0.0], [0.0, 5.0]])
    mixed = {"label": jnp.array([0, 1]), "label_b": jnp.array([1, 0]),
             "label_weight": jnp.array([0.75, 0.75])}
    loss, metrics = classification_loss(logits, mixed)
    plain_a, _ = classification_loss(logits, {"label": mixed["label"]})
    plain_b, _ = classification_loss(logits, {"label": mixed["label_b"]})
    np.testing.assert_allclose(loss, 0.75 * plain_a + 0.25 * plain_b, rtol=1e-6)
    np.testing.assert_allclose(metrics["accuracy"], [0.75, 0.75])


def test_augmentations_keep_the_order_they_are_written_in(tmp_path):
    user = ml_collections.ConfigDict({"train": {"num_steps": 5}})
    user.augmentations = ml_collections.ConfigDict()
    for name in ("rotate", "scale", "random_crop", "flip"):
        user.augmentations[name] = ml_collections.ConfigDict()
    config = config_lib.resolve_config(user, ["--config.augmentations.cutmix.alpha=0.5"])
    order = ["rotate", "scale", "random_crop", "flip", "cutmix"]
    assert list(config.augmentations.keys()) == order
    path = tmp_path / "config.json"
    path.write_text(config_lib.to_json(config))
    assert list(config_lib.from_json_file(path).augmentations.keys()) == order


def test_mixup_and_cutmix_together_are_refused(tmp_path, tiny):
    config = framework.resolve_config(tiny(augmentations={"mixup": {}, "cutmix": {}}))
    with pytest.raises(framework.ConfigError, match="mixup and cutmix cannot both"):
        framework.train(config, tmp_path)


@pytest.mark.slow
def test_evaluation_is_never_augmented(tmp_path, tiny):
    blackout = framework.Plugin(
        build=lambda config: lambda rng, batch: {**batch, "inputs": 0 * batch["inputs"]},
        api_version=framework.PLUGIN_API_VERSION)
    with framework.registry.registered("augmentations", "blackout", blackout):
        summary = framework.train(framework.resolve_config(tiny(
            augmentations={"blackout": {}}, model={"name": "mlp", "hidden_sizes": ()},
            optimizer={"name": "sgd", "learning_rate": 1e-12},
            train={"num_steps": 10, "eval_every_steps": 0, "log_every_steps": 10})), tmp_path)
    record = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["train/loss"] == pytest.approx(math.log(4), rel=1e-5)  # Zeros in: uniform logits.
    assert summary["final"]["eval/loss"] != pytest.approx(math.log(4), rel=1e-3)
