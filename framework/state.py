"""The train state: one pytree holding everything a run needs to continue exactly."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax.training.dynamic_scale import DynamicScale

from framework.model import Model


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # Optimizer steps taken (skipped steps included: they consumed a batch).
    params: Any
    opt_state: Any  # Also holds regularizer state, e.g. magnitude-pruning masks.
    model_state: dict[str, Any]  # Mutable collections, e.g. {"batch_stats": ...}.
    rng: jax.Array  # Base key; step k uses fold_in(rng, k), so resuming replays the same noise.
    skipped_steps: jax.Array  # Steps whose update was dropped (non-finite or fp16 overflow).
    ema_params: Any = None  # Exponential moving average of params (train.ema_decay > 0).
    loss_scale: DynamicScale | None = None  # Dynamic loss scaling (train.precision=float16).


def create_train_state(model: Model, tx: optax.GradientTransformation, rng: jax.Array,
                       example_inputs: jax.Array, *, ema: bool = False,
                       loss_scaling: bool = False) -> TrainState:
    """Initialise parameters and optimizer state (call under jit with output shardings)."""
    init_rng, train_rng = jax.random.split(rng)
    variables = model.init(init_rng, example_inputs)
    params = variables.pop("params")
    loss_scale = (DynamicScale(fin_steps=jnp.zeros((), jnp.int32),
                               scale=jnp.asarray(2.0 ** 15, jnp.float32))
                  if loss_scaling else None)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      model_state=variables, rng=train_rng,
                      skipped_steps=jnp.zeros((), jnp.int32),
                      ema_params=jax.tree.map(jnp.copy, params) if ema else None,
                      loss_scale=loss_scale)
