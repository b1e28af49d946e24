"""Weighted L1 and L2 penalties on the parameters, as Keras' `l1` and `l2` regularizers.

The loss gains `weight * sum(|w|)` (l1) or `weight * sum(w**2)` (l2) over the selected
parameters: those whose path (e.g. `Dense_0/kernel`) matches `include`, without biases and
normalisation scales (1-D parameters) unless `exclude_biases_and_norms=False`.
"""

from __future__ import annotations

import re
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections

import framework


def default_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({
        "weight": 1e-4,
        "include": ".*",  # A regex searched in each parameter's path.
        "exclude_biases_and_norms": True,
    })


def validate(config: ml_collections.ConfigDict) -> None:
    framework.check(config.weight >= 0, "weight",
                    f"must be >= 0, got {config.weight}.")
    try:
        re.compile(config.include)
    except re.error as error:
        raise framework.ConfigError.for_key(
            "include", f"is not a valid regex ({error}): {config.include!r}.") from None


def _selected(params: Any, config: ml_collections.ConfigDict) -> list[jax.Array]:
    pattern = re.compile(config.include)
    chosen = []
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        name = "/".join(str(getattr(k, "key", k)) for k in path)
        if config.exclude_biases_and_norms and leaf.ndim <= 1:
            continue
        if pattern.search(name):
            chosen.append(leaf)
    return chosen


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
