"""The compiled train and eval steps, and the on-device metric accumulators they update.

Metrics never leave the device inside a step: each step adds its metrics to running sums that
the loop fetches only at log time. `steps_per_dispatch` steps run in one call as a `lax.scan`.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from framework.model import Model
from framework.state import TrainState

Batch = dict[str, jax.Array]
Penalty = Callable[[Any, Batch, Any], jax.Array]
Augmentation = Callable[[jax.Array, Batch], Batch]
Accumulator = dict[str, jax.Array]  # {"count": n, "<metric>": sum over n}


def empty_accumulator() -> Accumulator:
    """Only the count. A step given it adds the metric keys the model produces; the loop takes
    that full structure from `jax.eval_shape` of a step, so the compiled step sees one shape."""
    return {"count": jnp.zeros((), jnp.float32)}


def accumulated_means(accumulator: dict[str, Any], prefix: str) -> dict[str, float]:
    """Host-side means of fetched sums, named `<prefix>/<metric>`."""
    count = float(accumulator["count"])
    return {f"{prefix}/{k}": float(v) / max(count, 1.0) for k, v in accumulator.items()
            if k != "count"}


def make_train_step(model: Model, tx: optax.GradientTransformation,
                    penalties: dict[str, tuple[float, Penalty]],
                    augmentations: list[Augmentation]
                    ) -> Callable[[TrainState, Accumulator, Batch], tuple[TrainState, Accumulator]]:
    """`(state, accumulator, stacked_batches) -> (state, accumulator)` over K stacked steps."""

    def one_step(state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
        step_rng = jax.random.fold_in(state.rng, state.step)
        augment_rng, dropout_rng = jax.random.split(step_rng)
        for i, augment in enumerate(augmentations):
            batch = augment(jax.random.fold_in(augment_rng, i), batch)

        def loss_fn(params: Any) -> tuple[jax.Array, tuple[dict[str, jax.Array], Any]]:
            variables = {"params": params, **state.model_state}
            outputs, updates = model.apply(variables, batch["inputs"], train=True,
                                           rngs={"dropout": dropout_rng})
            per_example_loss, per_example_metrics = model.loss(outputs, batch)
            loss = jnp.mean(per_example_loss)
            metrics = {"loss": loss, **{k: jnp.mean(v) for k, v in per_example_metrics.items()}}
            total = loss
            for name, (weight, penalty) in penalties.items():
                value = weight * penalty(params, batch, outputs)
                metrics[f"penalty/{name}"] = value
                total = total + value
            if penalties:
                metrics["total_loss"] = total
            return total, (metrics, updates)

        grads, (metrics, updates) = jax.grad(loss_fn, has_aux=True)(state.params)
        param_updates, opt_state = tx.update(grads, state.opt_state, state.params)
        new_state = state.replace(
            step=state.step + 1, params=optax.apply_updates(state.params, param_updates),
            opt_state=opt_state, model_state={**state.model_state, **updates})
        return new_state, metrics

    def add(accumulator: Accumulator, metrics: dict[str, jax.Array]) -> Accumulator:
        summed = {k: accumulator.get(k, 0.0) + v.astype(jnp.float32) for k, v in metrics.items()}
        return {**summed, "count": accumulator["count"] + 1.0}

    def train_step(state: TrainState, accumulator: Accumulator, batches: Batch
                   ) -> tuple[TrainState, Accumulator]:
        steps = jax.tree.leaves(batches)[0].shape[0]
        if set(accumulator) == {"count"}:  # An empty accumulator: the model names the metrics.
            first = jax.tree.map(lambda x: x[0], batches)
            names = jax.eval_shape(one_step, state, first)[1]
            accumulator = {**{k: jnp.zeros((), jnp.float32) for k in names}, **accumulator}
        if steps == 1:  # No loop at all: one step costs what a hand-written step costs.
            state, metrics = one_step(state, jax.tree.map(lambda x: x[0], batches))
            return state, add(accumulator, metrics)

        def body(carry, batch):
            state, accumulator = carry
            state, metrics = one_step(state, batch)
            return (state, add(accumulator, metrics)), None

        (state, accumulator), _ = jax.lax.scan(body, (state, accumulator), batches)
        return state, accumulator

    return train_step


def make_eval_step(model: Model) -> Callable[[TrainState, Accumulator, Batch], Accumulator]:
    """`(state, accumulator, batch) -> accumulator`; padded examples (mask 0) count for nothing."""

    def eval_step(state: TrainState, accumulator: Accumulator, batch: Batch) -> Accumulator:
        variables = {"params": state.params, **state.model_state}
        outputs, _ = model.apply(variables, batch["inputs"], train=False)
        per_example_loss, per_example_metrics = model.loss(outputs, batch)
        mask = batch["mask"].astype(jnp.float32)
        per_example = {"loss": per_example_loss, **per_example_metrics}
        summed = {k: accumulator.get(k, 0.0) + jnp.sum(v.astype(jnp.float32) * mask)
                  for k, v in per_example.items()}
        return {**summed, "count": accumulator["count"] + jnp.sum(mask)}

    return eval_step
