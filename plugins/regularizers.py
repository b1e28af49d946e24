"""Regularizers: L1 / L2 penalties (as Keras' `l1` and `l2`), decoupled weight decay, label
smoothing, gradual magnitude pruning and freezing.

The loss gains `weight * sum(|w|)` (l1) or `weight * sum(w**2)` (l2) over the selected
parameters: those whose path (e.g. `Dense_0/kernel`) matches `include`, without biases and
normalisation scales (1-D parameters) unless `exclude_biases_and_norms=False`. Weight decay
and pruning select parameters the same way and are optax transformations chained after the
optimizer; freezing (`include` / `exclude` regex tuples) zeroes the updates of the parameters it
selects, after the optimizer; label smoothing is a penalty on the logits.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

import framework

_INCLUDE = (".*", "A regex searched in each parameter's path (e.g. Dense_0/kernel); the "
                  "parameters it matches are selected.")
_EXCLUDE = (True, "Leave out biases and normalisation scales (1-D parameters) even when "
                  "`include` matches them.")


def default_config() -> ml_collections.ConfigDict:
    return framework.fields(
        weight=(1e-4, "The penalty's factor in the loss."),
        include=_INCLUDE,
        exclude_biases_and_norms=_EXCLUDE,
    )


def validate(config: ml_collections.ConfigDict) -> None:
    framework.check(config.weight >= 0, "weight",
                    f"must be >= 0, got {config.weight}.")
    _validate_include(config)


def _validate_include(config: ml_collections.ConfigDict) -> None:
    try:
        re.compile(config.include)
    except re.error as error:
        raise framework.ConfigError.for_key(
            "include", f"is not a valid regex ({error}): {config.include!r}.") from None


def _selection_mask(params: Any, config: ml_collections.ConfigDict) -> Any:
    """A Python bool per parameter: does its path match `include`, and is it not excluded?"""
    pattern = re.compile(config.include)

    def chosen(path: Any, leaf: jax.Array) -> bool:
        if config.exclude_biases_and_norms and leaf.ndim <= 1:
            return False
        return bool(pattern.search(framework.path_text(path)))

    return jax.tree_util.tree_map_with_path(chosen, params)


def _selected(params: Any, config: ml_collections.ConfigDict) -> list[jax.Array]:
    return [leaf for leaf, chosen in zip(jax.tree.leaves(params),
                                         jax.tree.leaves(_selection_mask(params, config)))
            if chosen]


def _penalty(config: ml_collections.ConfigDict,
             per_leaf: Callable[[jax.Array], jax.Array]) -> Callable[..., jax.Array]:
    def penalty(params: Any, batch: Any, outputs: Any) -> jax.Array:
        leaves = _selected(params, config)
        return sum((per_leaf(leaf) for leaf in leaves), jnp.zeros((), jnp.float32))

    return penalty


l1 = framework.Plugin(
    build=lambda config: _penalty(config, lambda w: jnp.sum(jnp.abs(w))),
    default_config=default_config, validate=validate, api_version=1,
    description="L1 penalty: weight * sum(|w|) over the selected parameters.")

l2 = framework.Plugin(
    build=lambda config: _penalty(config, lambda w: jnp.sum(jnp.square(w))),
    default_config=default_config, validate=validate, api_version=1,
    description="L2 penalty: weight * sum(w**2) over the selected parameters.")


# Decoupled weight decay ----------------------------------------------------------------------


def _weight_decay(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    # Chained after the optimizer, whose update already carries the -learning_rate sign:
    # adding -rate * w shrinks each selected weight by `rate` of itself per step, whatever the
    # gradient (Loshchilov & Hutter's decoupled decay, as torch's lr * weight_decay).
    return optax.add_decayed_weights(-config.rate,
                                     mask=lambda params: _selection_mask(params, config))


def _weight_decay_config() -> ml_collections.ConfigDict:
    return framework.fields(
        rate=(1e-4, "Each step: w <- w - rate * w, besides the optimizer's update."),
        include=_INCLUDE,
        exclude_biases_and_norms=_EXCLUDE,
    )


def _validate_weight_decay(config: ml_collections.ConfigDict) -> None:
    framework.check(0 <= config.rate < 1, "rate",
                    f"must be in [0, 1) (the fraction of each weight removed per step), got "
                    f"{config.rate}.")
    _validate_include(config)


weight_decay = framework.Plugin(
    build=_weight_decay, default_config=_weight_decay_config, validate=_validate_weight_decay,
    api_version=1,
    description="Decoupled weight decay: w <- w - rate * w each step, after the optimizer.")


# Label smoothing -----------------------------------------------------------------------------


def _label_smoothing(config: ml_collections.ConfigDict) -> Callable[..., jax.Array]:
    """Cross-entropy against smoothed labels, (1 - a) * onehot + a / K, equals
    CE + a * (uniform CE - CE); this penalty is the bracket, and `weight` is a. The `loss`
    metric stays the plain cross-entropy; `total_loss` is the smoothed one. Targets may be
    classes or token sequences; with a `label_mask`, the mean is over the counted targets."""

    def penalty(params: Any, batch: Any, logits: jax.Array) -> jax.Array:
        log_probs = jax.nn.log_softmax(logits.astype(jnp.float32))
        uniform = -jnp.mean(log_probs, axis=-1)

        def cross_entropy(labels: jax.Array) -> jax.Array:
            return -jnp.take_along_axis(log_probs, labels[..., None], axis=-1)[..., 0]

        if "label_mask" in batch:
            weights = batch["label_mask"].astype(jnp.float32)
            labels = jnp.where(weights > 0, batch["label"], 0)
            bracket = (uniform - cross_entropy(labels)) * weights
            return jnp.sum(bracket) / jnp.maximum(jnp.sum(weights), 1e-6)
        target = cross_entropy(batch["label"])
        if "label_b" in batch:  # Mixed by mixup/cutmix: both labels, weighted.
            weight = batch["label_weight"]
            target = weight * target + (1 - weight) * cross_entropy(batch["label_b"])
        return jnp.mean(uniform - target)

    return penalty


def _validate_label_smoothing(config: ml_collections.ConfigDict) -> None:
    framework.check(0 <= config.weight < 1, "weight",
                    f"must be in [0, 1) (the smoothing: label (1 - w) * onehot + w / K), got "
                    f"{config.weight}.")


label_smoothing = framework.Plugin(
    build=_label_smoothing, validate=_validate_label_smoothing, api_version=1,
    default_config=lambda: framework.fields(
        weight=(0.1, "The smoothing a: labels become (1 - a) * onehot + a / num_classes."),
    ),
    description="Label smoothing (Szegedy et al. 2016) for classifiers: weight is the smoothing.")


# Gradual magnitude pruning -------------------------------------------------------------------


class MagnitudePruningState(NamedTuple):
    """Lives in the optimizer state, so the masks are part of every checkpoint."""

    count: jax.Array  # Updates applied so far.
    masks: Any  # 1.0 keeps a weight, 0.0 prunes it; all ones for parameters not pruned.
    # {"sparsity": the fraction of the pruned parameters' weights that are zero}, logged as
    # train/sparsity and written into summary.json.
    logged: framework.LoggedState


def target_sparsity(step: jax.Array, config: ml_collections.ConfigDict) -> jax.Array:
    """Zhu & Gupta (2017): s_f + (s_i - s_f) * (1 - (t - t0) / (t1 - t0))**3 on [t0, t1]."""
    progress = jnp.clip((step - config.begin_step) / (config.end_step - config.begin_step), 0, 1)
    return (config.target_sparsity
            + (config.initial_sparsity - config.target_sparsity) * (1 - progress) ** 3)


def _magnitude_mask(weights: jax.Array, sparsity: jax.Array) -> jax.Array:
    """Zero exactly round(sparsity * n) of the smallest-magnitude weights (ties by position)."""
    flat = jnp.abs(weights).ravel()
    num_pruned = jnp.round(sparsity * flat.size).astype(jnp.int32)
    ranks = jnp.argsort(jnp.argsort(flat, stable=True), stable=True)
    return (ranks >= num_pruned).astype(weights.dtype).reshape(weights.shape)


def _magnitude_pruning(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    def init(params: Any) -> MagnitudePruningState:
        masks = jax.tree.map(jnp.ones_like, params)
        sparsity = jnp.zeros((), jnp.float32)
        return MagnitudePruningState(jnp.zeros((), jnp.int32), masks,
                                     framework.LoggedState({"sparsity": sparsity}))

    def update(updates: Any, state: MagnitudePruningState, params: Any = None
               ) -> tuple[Any, MagnitudePruningState]:
        if params is None:
            raise ValueError("magnitude_pruning needs the params in tx.update(...).")
        count = state.count + 1
        selected = _selection_mask(params, config)
        new_params = optax.apply_updates(params, updates)
        prune_now = ((count >= config.begin_step) & (count <= config.end_step)
                     & ((count - config.begin_step) % config.frequency == 0))
        sparsity = target_sparsity(count, config)
        masks = jax.tree.map(
            lambda chosen, mask, weights: jax.lax.cond(
                prune_now, _magnitude_mask, lambda _, __: mask, weights, sparsity)
            if chosen else mask,
            selected, state.masks, new_params)
        masked = jax.tree.map(lambda w, m: w * m, new_params, masks)
        updates = jax.tree.map(lambda new, old: new - old, masked, params)
        pruned = [m for m, chosen in zip(jax.tree.leaves(masks), jax.tree.leaves(selected))
                  if chosen]
        total = sum(m.size for m in pruned)
        zeros = sum((jnp.sum(1.0 - m) for m in pruned), jnp.zeros((), jnp.float32))
        return updates, MagnitudePruningState(
            count, masks, framework.LoggedState({"sparsity": zeros / max(total, 1)}))

    return optax.GradientTransformation(init, update)


def _magnitude_pruning_config() -> ml_collections.ConfigDict:
    return framework.fields(
        target_sparsity=(0.8, "Fraction of each pruned parameter's weights set to zero at the "
                              "end."),
        initial_sparsity=(0.0, "The sparsity at begin_step, from which it rises to the target "
                               "(a cubic schedule)."),
        begin_step=(0, "The first step at which masks are computed."),
        end_step=(1000, "The last step at which masks are computed; the target is reached "
                        "exactly here."),
        frequency=(100, "Steps between mask updates from begin_step to end_step; divides "
                        "end_step - begin_step."),
        include=_INCLUDE,
        exclude_biases_and_norms=_EXCLUDE,
    )


def _validate_magnitude_pruning(config: ml_collections.ConfigDict) -> None:
    for key in ("target_sparsity", "initial_sparsity"):
        framework.check(0 <= config[key] < 1, key, f"must be in [0, 1), got {config[key]}.")
    framework.check(config.begin_step >= 0, "begin_step", f"must be >= 0, got {config.begin_step}.")
    framework.check(config.end_step > config.begin_step, "end_step",
                    f"must be > begin_step={config.begin_step}, got {config.end_step}.")
    framework.check(config.frequency >= 1, "frequency", f"must be >= 1, got {config.frequency}.")
    framework.check((config.end_step - config.begin_step) % config.frequency == 0, "frequency",
                    f"must divide end_step - begin_step = {config.end_step - config.begin_step} "
                    f"so the last pruning lands on end_step, got {config.frequency}.")
    _validate_include(config)


magnitude_pruning = framework.Plugin(
    build=_magnitude_pruning, default_config=_magnitude_pruning_config,
    validate=_validate_magnitude_pruning, api_version=1,
    description="Gradual magnitude pruning (Zhu & Gupta 2017), masks kept in the train state.")


# Freezing ------------------------------------------------------------------------------------


def _frozen_mask(params: Any, config: ml_collections.ConfigDict) -> Any:
    """A Python bool per parameter: does its path match an `include` regex and no `exclude`?"""
    include = [re.compile(regex) for regex in config.include]
    exclude = [re.compile(regex) for regex in config.exclude]
    paths = [framework.path_text(path)
             for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    unmatched = [regex.pattern for regex in include
                 if not any(regex.search(path) for path in paths)]
    if unmatched:
        raise framework.ConfigError(f"config.regularizers.freeze.include: {unmatched} match no "
                                    f"parameter; the parameters are {paths}.")

    def frozen(path: Any, leaf: Any) -> bool:
        text = framework.path_text(path)
        return (any(regex.search(text) for regex in include)
                and not any(regex.search(text) for regex in exclude))

    return jax.tree_util.tree_map_with_path(frozen, params)


def _freeze(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    # Chained after the optimizer: the selected parameters' updates become exactly zero, so
    # they keep their values bit for bit (the optimizer's own state for them still runs).
    return optax.masked(optax.set_to_zero(), lambda params: _frozen_mask(params, config))


def _freeze_config() -> ml_collections.ConfigDict:
    return framework.fields(
        include=((), "Regexes searched in each parameter's path (e.g. Conv_0/kernel): the "
                     "parameters any of them matches are frozen (biases too). Empty: none. "
                     "An entry that matches no parameter is an error when the run starts."),
        exclude=((), "Regexes: parameters one of them matches are not frozen, even when "
                     "`include` matches them."),
    )


def _validate_freeze(config: ml_collections.ConfigDict) -> None:
    for key in ("include", "exclude"):
        framework.check(isinstance(config[key], (tuple, list))
                        and all(isinstance(regex, str) for regex in config[key]), key,
                        f"must be a tuple of regex strings, got {config[key]!r}.")
        for regex in config[key]:
            try:
                re.compile(regex)
            except re.error as error:
                raise framework.ConfigError.for_key(
                    key, f"has an invalid regex ({error}): {regex!r}.") from None


freeze = framework.Plugin(
    build=_freeze, default_config=_freeze_config, validate=_validate_freeze, api_version=1,
    description="Freezing: the updates of the parameters matched by `include` (and not "
                "`exclude`) are set to zero after the optimizer, so they do not move. Write "
                "it after weight_decay and magnitude_pruning in config.regularizers: "
                "transformations run in the order written, and one after it would move them.")
