"""The non-finite guard: find the first step whose metrics or gradients are not finite.

Each step checks its metrics (loss, model metrics, penalties, gradient norm) on device. A step
that is not finite never changes the parameters; the accumulator remembers the first such step
and metric, and the loop reads them at its next log or checkpoint boundary, before it saves.
With `train.on_nonfinite=stop` the run then ends with a message naming both, and the last
checkpoint saved (all of whose steps were finite) is kept as the run's latest; with `skip` the
update is dropped, counted in `TrainState.skipped_steps`, and training goes on.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

FIRST_STEP, FIRST_METRIC = "nonfinite_step", "nonfinite_metric"


def guarded_names(metric_names: list[str], loss_scaling: bool) -> list[str]:
    """The metrics the guard checks, in the order it reports them: the loss first.

    Under float16 loss scaling an overflowing gradient is expected (the scale then backs off),
    so the gradient norm is left to the loss scaler.
    """
    names = [n for n in metric_names if not (loss_scaling and n == "grad_norm")]
    return sorted(names, key=lambda name: (name != "loss", name))


def nonfinite_flags(metrics: dict[str, jax.Array], names: list[str]) -> jax.Array:
    """One bool per guarded metric: True where it is not finite."""
    return jnp.stack([~jnp.isfinite(metrics[name]) for name in names])


def record_first(accumulator: dict[str, jax.Array], flags: jax.Array, step: jax.Array
                 ) -> dict[str, jax.Array]:
    """Remember the first step (1-based, as logged) with a non-finite metric, and which one."""
    new = (accumulator[FIRST_STEP] == 0) & jnp.any(flags)
    return {**accumulator,
            FIRST_STEP: jnp.where(new, step, accumulator[FIRST_STEP]),
            FIRST_METRIC: jnp.where(new, jnp.argmax(flags).astype(jnp.int32),
                                    accumulator[FIRST_METRIC])}


def empty_record() -> dict[str, jax.Array]:
    return {FIRST_STEP: jnp.zeros((), jnp.int32), FIRST_METRIC: jnp.zeros((), jnp.int32)}


def stop_message(accumulator: dict[str, Any], names: list[str]) -> str:
    """Empty when every step was finite; else why the run stops (read on the host)."""
    step = int(accumulator[FIRST_STEP])
    if not step:
        return ""
    metric = names[int(accumulator[FIRST_METRIC])]
    return (f"non-finite train/{metric} at step {step} (train.on_nonfinite=stop); the update "
            "was not applied and the last checkpoint is the last good state. Lower the learning "
            "rate, clip gradients (train.grad_clip_norm) or set train.on_nonfinite=skip.")
