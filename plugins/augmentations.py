"""Image augmentations applied on device inside the compiled train step (never at evaluation).

Each is a pure JAX function `(rng, batch) -> batch` over a batch of NHWC images, random per
example, deterministic for a given rng, and the identity at zero strength. Geometric transforms
(rotate, scale, translate) resample with bilinear interpolation around the image centre and fill
uncovered pixels with `fill`. mixup and cutmix mix each example with another one of the batch and
record the partner's label (`label_b`) and the weight of the own label (`label_weight`), which the
default classification loss uses.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
from jax.scipy.ndimage import map_coordinates

import framework

Batch = dict[str, jax.Array]


def affine_transform(images: jax.Array, matrices: jax.Array, offsets: jax.Array,
                     fill: float = 0.0) -> jax.Array:
    """Resample each image: output pixel p (relative to the centre) reads input M @ p + offset."""
    _, height, width, channels = images.shape
    center = jnp.array([(height - 1) / 2.0, (width - 1) / 2.0])
    rows, cols = jnp.meshgrid(jnp.arange(height), jnp.arange(width), indexing="ij")
    grid = jnp.stack([rows.ravel(), cols.ravel()]).astype(jnp.float32) - center[:, None]

    def one(image: jax.Array, matrix: jax.Array, offset: jax.Array) -> jax.Array:
        source = matrix @ grid + (offset + center)[:, None]
        per_channel = jax.vmap(
            lambda plane: map_coordinates(plane, [source[0], source[1]], order=1,
                                          mode="constant", cval=fill),
            in_axes=-1, out_axes=-1)
        return per_channel(image.astype(jnp.float32)).reshape(height, width, channels)

    return jax.vmap(one)(images, matrices, offsets).astype(images.dtype)


def rotate_images(images: jax.Array, degrees: jax.Array, fill: float = 0.0) -> jax.Array:
    """Rotate each image counter-clockwise by its angle (90 degrees equals `jnp.rot90`)."""
    theta = jnp.deg2rad(degrees)
    cos, sin = jnp.cos(theta), jnp.sin(theta)
    matrices = jnp.stack([jnp.stack([cos, sin], -1), jnp.stack([-sin, cos], -1)], -2)
    return affine_transform(images, matrices, jnp.zeros((len(images), 2)), fill)


def _uniform(rng: jax.Array, batch: Batch, low: float, high: float, shape=()) -> jax.Array:
    return jax.random.uniform(rng, (len(batch["inputs"]), *shape), minval=low, maxval=high)


# random_crop -----------------------------------------------------------------------------------


def _random_crop(config: ml_collections.ConfigDict) -> Callable[[jax.Array, Batch], Batch]:
    def augment(rng: jax.Array, batch: Batch) -> Batch:
        images, pad = batch["inputs"], config.padding
        if pad == 0:
            return batch
        _, height, width, channels = images.shape
        padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode=config.pad_mode)
        offsets = jax.random.randint(rng, (len(images), 2), 0, 2 * pad + 1)
        crop = jax.vmap(lambda image, offset: jax.lax.dynamic_slice(
            image, (offset[0], offset[1], 0), (height, width, channels)))
        return {**batch, "inputs": crop(padded, offsets)}

    return augment


def _validate_crop(config: ml_collections.ConfigDict) -> None:
    framework.check(config.padding >= 0, "padding", f"must be >= 0, got {config.padding}.")
    framework.check(config.pad_mode in ("constant", "edge", "reflect"), "pad_mode",
                    f"must be constant, edge or reflect, got {config.pad_mode!r}.")


random_crop = framework.Plugin(
    build=_random_crop, validate=_validate_crop, api_version=1,
    default_config=lambda: framework.fields(
        padding=(4, "Pixels added on each side before cropping back; 0: off."),
        pad_mode=("constant", "How the border is filled: constant (zeros) | edge | reflect."),
    ),
    description="Pad by `padding` pixels, then crop back to the original size at a random offset.")


# flip ------------------------------------------------------------------------------------------


def _flip(config: ml_collections.ConfigDict) -> Callable[[jax.Array, Batch], Batch]:
    def augment(rng: jax.Array, batch: Batch) -> Batch:
        images = batch["inputs"]
        flip = jax.random.bernoulli(rng, config.probability, (len(images), 1, 1, 1))
        return {**batch, "inputs": jnp.where(flip, images[:, :, ::-1], images)}

    return augment


def _validate_probability(config: ml_collections.ConfigDict) -> None:
    framework.check(0.0 <= config.probability <= 1.0, "probability",
                    f"must be in [0, 1], got {config.probability}.")


flip = framework.Plugin(
    build=_flip, validate=_validate_probability, api_version=1,
    default_config=lambda: framework.fields(
        probability=(0.5, "The chance that an image is mirrored."),
    ),
    description="Mirror images left-right with the given probability.")


# rotate, scale, translate ----------------------------------------------------------------------


def _rotate(config: ml_collections.ConfigDict) -> Callable[[jax.Array, Batch], Batch]:
    def augment(rng: jax.Array, batch: Batch) -> Batch:
        if config.degrees == 0:
            return batch
        angles = _uniform(rng, batch, -config.degrees, config.degrees)
        return {**batch, "inputs": rotate_images(batch["inputs"], angles, config.fill)}

    return augment


def _validate_rotate(config: ml_collections.ConfigDict) -> None:
    framework.check(0 <= config.degrees <= 180, "degrees",
                    f"must be in [0, 180] (angles are drawn from [-degrees, degrees]), "
                    f"got {config.degrees}.")


rotate = framework.Plugin(
    build=_rotate, validate=_validate_rotate, api_version=1,
    default_config=lambda: framework.fields(
        degrees=(10.0, "Angles are drawn uniformly from [-degrees, degrees]; 0: off."),
        fill=(0.0, "The value of pixels the rotated image does not cover."),
    ),
    description="Rotate by a random angle in [-degrees, degrees] (Keras RandomRotation).")


def _scale(config: ml_collections.ConfigDict) -> Callable[[jax.Array, Batch], Batch]:
    def augment(rng: jax.Array, batch: Batch) -> Batch:
        if config.min_scale == config.max_scale == 1.0:
            return batch
        zoom = _uniform(rng, batch, config.min_scale, config.max_scale)
        matrices = jnp.eye(2)[None] / zoom[:, None, None]  # Zoom > 1 reads a smaller area.
        offsets = jnp.zeros((len(zoom), 2))
        return {**batch, "inputs": affine_transform(batch["inputs"], matrices, offsets,
                                                    config.fill)}

    return augment


def _validate_scale(config: ml_collections.ConfigDict) -> None:
    framework.check(0 < config.min_scale <= config.max_scale, "min_scale",
                    f"must satisfy 0 < min_scale <= max_scale, got {config.min_scale} and "
                    f"{config.max_scale}.")


scale = framework.Plugin(
    build=_scale, validate=_validate_scale, api_version=1,
    default_config=lambda: framework.fields(
        min_scale=(0.9, "The smallest zoom factor; below 1 zooms out."),
        max_scale=(1.1, "The largest zoom factor; above 1 zooms in."),
        fill=(0.0, "The value of pixels the zoomed image does not cover."),
    ),
    description="Zoom by a random factor in [min_scale, max_scale] (Keras RandomZoom).")


def _translate(config: ml_collections.ConfigDict) -> Callable[[jax.Array, Batch], Batch]:
    def augment(rng: jax.Array, batch: Batch) -> Batch:
        if config.max_fraction == 0:
            return batch
        size = jnp.array(batch["inputs"].shape[1:3], jnp.float32)
        shift = _uniform(rng, batch, -config.max_fraction, config.max_fraction, (2,)) * size
        matrices = jnp.broadcast_to(jnp.eye(2), (len(shift), 2, 2))
        return {**batch, "inputs": affine_transform(batch["inputs"], matrices, -shift,
                                                    config.fill)}

    return augment


def _validate_translate(config: ml_collections.ConfigDict) -> None:
    framework.check(0 <= config.max_fraction < 1, "max_fraction",
                    f"must be in [0, 1), got {config.max_fraction}.")


translate = framework.Plugin(
    build=_translate, validate=_validate_translate, api_version=1,
    default_config=lambda: framework.fields(
        max_fraction=(0.1, "The largest shift, as a fraction of the height and width; 0: off."),
        fill=(0.0, "The value of pixels the shifted image does not cover."),
    ),
    description="Shift by a random fraction of the size in [-max_fraction, max_fraction].")


# mixup, cutmix ---------------------------------------------------------------------------------


def _partners(rng: jax.Array, batch: Batch) -> jax.Array:
    return jax.random.permutation(rng, len(batch["inputs"]))


def _mixed(batch: Batch, inputs: jax.Array, partner: jax.Array, weight: jax.Array) -> Batch:
    if "label_b" in batch:
        raise framework.ConfigError("config.augmentations: mixup and cutmix cannot both mix one "
                                    "batch; keep one of them.")
    return {**batch, "inputs": inputs, "label_b": batch["label"][partner],
            "label_weight": jnp.broadcast_to(weight, batch["label"].shape).astype(jnp.float32)}


def _mixup(config: ml_collections.ConfigDict) -> Callable[[jax.Array, Batch], Batch]:
    def augment(rng: jax.Array, batch: Batch) -> Batch:
        if config.alpha == 0:
            return batch
        weight_rng, partner_rng = jax.random.split(rng)
        weight = jax.random.beta(weight_rng, config.alpha, config.alpha)
        partner = _partners(partner_rng, batch)
        images = batch["inputs"]
        mixed = (weight * images + (1 - weight) * images[partner]).astype(images.dtype)
        return _mixed(batch, mixed, partner, weight)

    return augment


def _cutmix(config: ml_collections.ConfigDict) -> Callable[[jax.Array, Batch], Batch]:
    def augment(rng: jax.Array, batch: Batch) -> Batch:
        if config.alpha == 0:
            return batch
        weight_rng, box_rng, partner_rng = jax.random.split(rng, 3)
        images = batch["inputs"]
        height, width = images.shape[1:3]
        cut = jnp.sqrt(1.0 - jax.random.beta(weight_rng, config.alpha, config.alpha))
        center = jax.random.uniform(box_rng, (2,)) * jnp.array([height, width])
        half = cut * jnp.array([height, width]) / 2
        low = jnp.clip(jnp.round(center - half), 0, jnp.array([height, width]))
        high = jnp.clip(jnp.round(center + half), 0, jnp.array([height, width]))
        rows, cols = jnp.arange(height)[:, None], jnp.arange(width)[None, :]
        box = (rows >= low[0]) & (rows < high[0]) & (cols >= low[1]) & (cols < high[1])
        partner = _partners(partner_rng, batch)
        mixed = jnp.where(box[None, :, :, None], images[partner], images)
        weight = 1.0 - jnp.mean(box.astype(jnp.float32))  # The share of the own image kept.
        return _mixed(batch, mixed, partner, weight)

    return augment


def _validate_alpha(config: ml_collections.ConfigDict) -> None:
    framework.check(config.alpha >= 0, "alpha", f"must be >= 0 (0 = off), got {config.alpha}.")


mixup = framework.Plugin(
    build=_mixup, validate=_validate_alpha, api_version=1,
    default_config=lambda: framework.fields(
        alpha=(0.2, "The mixing weight is drawn from Beta(alpha, alpha); 0: off."),
    ),
    description="mixup (Zhang et al. 2018): blend pairs of examples and their labels.")

cutmix = framework.Plugin(
    build=_cutmix, validate=_validate_alpha, api_version=1,
    default_config=lambda: framework.fields(
        alpha=(1.0, "The share of its own image an example keeps is drawn from "
                    "Beta(alpha, alpha); 0: off."),
    ),
    description="CutMix (Yun et al. 2019): paste a box from another example, mix the labels.")

