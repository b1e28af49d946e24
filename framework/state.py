"""The train state: one pytree holding everything a run needs to continue exactly."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from framework.model import Model


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # Optimizer steps taken.
    params: Any
    opt_state: Any
    model_state: dict[str, Any]  # Mutable collections, e.g. {"batch_stats": ...}.
    rng: jax.Array  # Base key; step k uses fold_in(rng, k), so resuming replays the same noise.


def create_train_state(model: Model, tx: optax.GradientTransformation, rng: jax.Array,
                       example_inputs: jax.Array) -> TrainState:
    """Initialise parameters and optimizer state (call under jit with output shardings)."""
    init_rng, train_rng = jax.random.split(rng)
    variables = model.init(init_rng, example_inputs)
    params = variables.pop("params")
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      model_state=variables, rng=train_rng)
