"""z-loss (PaLM, Chowdhery et al. 2022): weight * mean(logsumexp(logits)**2) keeps logits small.

A penalty regularizer sees the parameters, the batch and the model's outputs; the trainer adds
`weight` times its value to the loss and logs it as `train/penalty/<name>`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

import framework


def default_config() -> ml_collections.ConfigDict:
    return framework.fields(weight=(1e-4, "The z-loss's factor in the loss."))


def validate(config: ml_collections.ConfigDict) -> None:
    framework.check(config.weight >= 0, "weight", f"must be >= 0, got {config.weight}.")


def build(config: ml_collections.ConfigDict) -> Callable[[Any, Any, jax.Array], jax.Array]:
    def penalty(params: Any, batch: dict[str, jax.Array], logits: jax.Array) -> jax.Array:
        log_normalizer = jax.nn.logsumexp(logits.astype(jnp.float32), axis=-1)
        return jnp.mean(jnp.square(log_normalizer))

    return penalty


z_loss = framework.Plugin(build=build, default_config=default_config, validate=validate,
                          api_version=1, description=__doc__.splitlines()[0])
