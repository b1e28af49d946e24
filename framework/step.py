"""The compiled train and eval steps, and the on-device metric accumulators they update.

Metrics never leave the device inside a step: each step adds its metrics to running sums that
the loop fetches only at log time. `steps_per_dispatch` steps run in one call as a `lax.scan`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Mapping
from types import MappingProxyType
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from framework import nonfinite
from framework.errors import JaxforgeError
from framework.loss import DerivedMetric, batch_means, eval_sums
from framework.model import Model
from framework.state import TrainState

Batch = dict[str, jax.Array]
Penalty = Callable[[Any, Batch, Any], jax.Array]
Augmentation = Callable[[jax.Array, Batch], Batch]
Accumulator = dict[str, jax.Array]  # {"count": n, "<metric>": sum over n, guard records}

SKIPPED = "skipped_steps"
_NOT_MEANS = ("count", SKIPPED, nonfinite.FIRST_STEP, nonfinite.FIRST_METRIC)


class LoggedState(NamedTuple):
    """Metrics an optax transformation reports about its own state; the trainer logs them.

    For a regularizer or optimizer plugin that returns an `optax.GradientTransformation`: put
    one `LoggedState` anywhere in the state your `init` and `update` return, usually as a field
    of your state NamedTuple, with the same names each time (jax needs one state structure)::

        class CounterState(NamedTuple):
            count: jax.Array
            logged: framework.LoggedState  # framework.LoggedState({"updates": count})

    The trainer finds every `LoggedState` in the optimizer state (inside `optax.chain`,
    `optax.MultiSteps` for accumulation, ...) and, for each `name: value` (a scalar):

    - logs `train/<name>` at each log step with the value after the last applied step: it
      describes the state, so it is not averaged over the steps since the last log (NaN when
      none was applied, as every train metric). It goes to metrics.jsonl, TensorBoard and the
      callbacks' `on_log`;
    - writes `<name>` into summary.json: the final state's value;
    - leaves it out of the non-finite guard (`train.on_nonfinite`): it is not a step result.

    Names are unique across the optimizer state and differ from the step's own metrics (`loss`,
    `grad_norm`, the model's metrics, ...) and from summary.json's keys; a clash is an error.
    The values are part of the state, so they are in every checkpoint.
    """

    metrics: dict[str, jax.Array]


def logged_metrics(opt_state: Any) -> dict[str, jax.Array]:
    """The metrics of every `LoggedState` in `opt_state`, by name (see `LoggedState`)."""
    found: dict[str, jax.Array] = {}
    nodes = jax.tree.leaves(opt_state, is_leaf=lambda node: isinstance(node, LoggedState))
    for node in nodes:
        if not isinstance(node, LoggedState):
            continue
        for name, value in node.metrics.items():
            if name in found:
                raise JaxforgeError(f"Two LoggedState nodes in the optimizer state report "
                                    f"{name!r}; give each transformation's metrics their own "
                                    "names.")
            found[name] = value
    return found


@dataclasses.dataclass(frozen=True)
class StepOptions:
    """The training-technique switches the compiled step needs (from `config.train`)."""

    accumulation_steps: int = 1  # Micro-batches per optimizer update (tx is an optax.MultiSteps).
    ema_decay: float = 0.0  # 0: no EMA of the params.
    on_nonfinite: str = "stop"  # stop | skip (see framework.nonfinite).
    # Unroll the loops over the steps of a dispatch and over micro-batches, instead of compiling
    # a while loop: XLA:CPU runs convolutions inside a loop body several times slower
    # (jax-ml/jax#12868), while on accelerators a loop compiles faster and runs as fast.
    unroll: bool = False


def default_unroll() -> bool:
    """Unroll on the CPU backend only (see `StepOptions.unroll`)."""
    return jax.default_backend() == "cpu"


def empty_accumulator() -> Accumulator:
    """No metric keys yet. A step given it adds the metric keys the model produces; the loop
    takes that full structure from `jax.eval_shape` of a step, so the compiled step sees one
    shape."""
    return {"count": jnp.zeros((), jnp.float32), SKIPPED: jnp.zeros((), jnp.float32),
            **nonfinite.empty_record()}


def zero_metrics(step: Callable[..., Any], state: TrainState, batch: Batch) -> Accumulator:
    """Zeros shaped like the accumulator `step(state, empty_accumulator(), batch)` returns.

    A train step returns `(state, accumulator)`, an eval step the accumulator. Only shapes are
    traced (`jax.eval_shape`): nothing runs, and `state` and `batch` may be abstract."""
    shapes = jax.eval_shape(step, state, empty_accumulator(), batch)
    if isinstance(shapes, tuple):
        shapes = shapes[1]
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def metric_names(accumulator: dict[str, Any]) -> list[str]:
    return [k for k in accumulator if k not in _NOT_MEANS]


def guarded_names(names: list[str], loss_scaling: bool, described: Collection[str] = ()
                  ) -> list[str]:
    """The metrics the non-finite guard flags, in flag order; the `described` ones (from a
    `LoggedState`) are not step results and are left out. The step and the loop's stop message
    both use this."""
    return nonfinite.guarded_names([n for n in names if n not in described], loss_scaling)


def accumulated_means(accumulator: dict[str, Any], prefix: str,
                      described: Collection[str] = (),
                      derived: Mapping[str, DerivedMetric] = MappingProxyType({})
                      ) -> dict[str, float]:
    """Host-side means of fetched sums, named `<prefix>/<metric>`; skipped steps as a count.

    Metrics average over the steps whose update was applied (NaN when there was none); the
    `described` ones (from a `LoggedState`) hold the last applied step's value instead. The
    `derived` ones (a loss's `derived_metrics`, such as perplexity) are computed from the
    means."""
    count = float(accumulator["count"])
    means = {k: float(accumulator[k]) / (1.0 if k in described else count)
             if count else float("nan") for k in metric_names(accumulator)}
    means.update({name: derive(means) for name, derive in derived.items()})
    means = {f"{prefix}/{k}": v for k, v in means.items()}
    if float(accumulator.get(SKIPPED, 0.0)):
        means[f"{prefix}/{SKIPPED}"] = float(accumulator[SKIPPED])
    return means


def _split_micro_batches(batch: Batch, count: int) -> Batch:
    """[B, ...] -> [count, B/count, ...]; micro-batch i holds examples i, i + count, ...

    Strided, so each device's shard of the batch feeds every micro-batch equally and no
    example moves between devices."""
    return jax.tree.map(lambda x: jnp.swapaxes(
        x.reshape((x.shape[0] // count, count, *x.shape[1:])), 0, 1), batch)


def make_train_step(model: Model, tx: optax.GradientTransformation,
                    penalties: dict[str, tuple[float, Penalty]],
                    augmentations: list[Augmentation], options: StepOptions = StepOptions()
                    ) -> Callable[[TrainState, Accumulator, Batch], tuple[TrainState, Accumulator]]:
    """`(state, accumulator, stacked_batches) -> (state, accumulator)` over K stacked steps.

    One step is one optimizer update: its batch is split into `accumulation_steps`
    micro-batches whose gradients `tx` (an optax.MultiSteps then) averages before updating.
    """
    step_and_add = _TrainStep(model, tx, penalties, augmentations, options).step_and_add

    def train_step(state: TrainState, accumulator: Accumulator, batches: Batch
                   ) -> tuple[TrainState, Accumulator]:
        steps = jax.tree.leaves(batches)[0].shape[0]
        if not metric_names(accumulator):  # An empty accumulator: the model names the metrics.
            first = jax.tree.map(lambda x: x[0], batches)
            accumulator = {**zero_metrics(step_and_add, state, first), **accumulator}
        if steps == 1:  # No loop at all: one step costs what a hand-written step costs.
            return step_and_add(state, accumulator, jax.tree.map(lambda x: x[0], batches))

        def body(carry: tuple[TrainState, Accumulator], batch: Batch
                 ) -> tuple[tuple[TrainState, Accumulator], None]:
            return step_and_add(*carry, batch), None

        (state, accumulator), _ = jax.lax.scan(body, (state, accumulator), batches,
                                               unroll=options.unroll)
        return state, accumulator

    return train_step


@dataclasses.dataclass(frozen=True)
class _TrainStep:
    """The parts of one train step, traced inside `make_train_step`'s compiled function."""

    model: Model
    tx: optax.GradientTransformation
    penalties: dict[str, tuple[float, Penalty]]
    augmentations: list[Augmentation]
    options: StepOptions

    def gradients(self, params: Any, model_state: Any, loss_scale: Any, batch: Batch,
                  dropout_rng: jax.Array) -> tuple[Any, dict[str, jax.Array], Any, Any]:
        """The gradients, the step's metrics (loss, the model's, penalties, grad_norm), the
        model-state updates, and the float16 loss scale after this step."""
        def loss_fn(params: Any) -> tuple[jax.Array, tuple[dict[str, jax.Array], Any]]:
            variables = {"params": params, **model_state}
            outputs, updates = self.model.apply(variables, batch["inputs"], train=True,
                                                rngs={"dropout": dropout_rng})
            loss, means = batch_means(self.model.loss(outputs, batch))
            metrics = {"loss": loss, **means}
            total = loss
            for name, (weight, penalty) in self.penalties.items():
                value = weight * penalty(params, batch, outputs)
                metrics[f"penalty/{name}"] = value
                total = total + value
            if self.penalties:
                metrics["total_loss"] = total
            return total, (metrics, updates)

        if loss_scale is None:
            grads, (metrics, updates) = jax.grad(loss_fn, has_aux=True)(params)
        else:  # float16: scale the loss up, the gradients down; back off on overflow.
            loss_scale, _, (_, (metrics, updates)), grads = loss_scale.value_and_grad(
                loss_fn, has_aux=True)(params)
        return grads, {**metrics, "grad_norm": optax.tree.norm(grads)}, updates, loss_scale

    def micro_step(self, carry: tuple[Any, ...], inputs: tuple[jax.Array, Batch]
                   ) -> tuple[tuple[Any, ...], dict[str, jax.Array]]:
        """One micro-batch of gradient accumulation (`tx` is an optax.MultiSteps)."""
        params, opt_state, model_state, loss_scale = carry
        dropout_rng, batch = inputs
        grads, metrics, updates, loss_scale = self.gradients(params, model_state, loss_scale,
                                                             batch, dropout_rng)
        param_updates, opt_state = self.tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, param_updates)
        return (params, opt_state, {**model_state, **updates}, loss_scale), metrics

    def with_ema(self, state: TrainState, params: Any) -> TrainState:
        if not self.options.ema_decay:
            return state
        decay = self.options.ema_decay
        return state.replace(ema_params=jax.tree.map(
            lambda e, p: decay * e + (1.0 - decay) * p, state.ema_params, params))

    def guard(self, metrics: dict[str, jax.Array], loss_scale: Any, halted: jax.Array
              ) -> tuple[jax.Array, jax.Array]:
        """Whether to apply the step, and the guard's flags (see framework.nonfinite).

        A step applies only when every metric is finite; under float16 loss scaling an
        overflowing gradient skips the step without raising a flag (the scale backs off)."""
        flags = nonfinite.nonfinite_flags(
            metrics, guarded_names(list(metrics), loss_scale is not None))
        finite = jnp.all(jnp.isfinite(jnp.stack(jax.tree.leaves(metrics))))
        return finite & ~halted, flags

    def update_in_place(self, state: TrainState, batch: Batch, dropout_rng: jax.Array,
                        halted: jax.Array) -> tuple[TrainState, dict[str, jax.Array], Any,
                                                    jax.Array, jax.Array]:
        """One update from one batch. The guard is known before the update, so the update runs
        under a `lax.cond` and the buffers are updated in place: selecting between the old and
        the updated state afterwards would copy the optimizer state every step (a third of an
        MLP's step)."""
        grads, metrics, updates, loss_scale = self.gradients(
            state.params, state.model_state, state.loss_scale, batch, dropout_rng)
        applied, flags = self.guard(metrics, loss_scale, halted)

        def update(state: TrainState) -> TrainState:
            param_updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
            params = optax.apply_updates(state.params, param_updates)
            return self.with_ema(state, params).replace(
                params=params, opt_state=opt_state, model_state={**state.model_state, **updates})

        state = jax.lax.cond(applied, update, lambda state: state, state)
        return state, metrics, loss_scale, applied, flags

    def accumulate(self, state: TrainState, batch: Batch, dropout_rng: jax.Array,
                   halted: jax.Array) -> tuple[TrainState, dict[str, jax.Array], Any,
                                               jax.Array, jax.Array]:
        """One update from `accumulation_steps` micro-batches. Every micro-batch updates the
        optimizer state (MultiSteps), so the guard selects between the old and the new state."""
        count = self.options.accumulation_steps
        (params, opt_state, model_state, loss_scale), metrics = jax.lax.scan(
            self.micro_step, (state.params, state.opt_state, state.model_state,
                              state.loss_scale),
            (jax.random.split(dropout_rng, count), _split_micro_batches(batch, count)),
            unroll=self.options.unroll)
        metrics = jax.tree.map(lambda m: jnp.mean(m, axis=0), metrics)
        applied, flags = self.guard(metrics, loss_scale, halted)
        updated = self.with_ema(state, params).replace(params=params, opt_state=opt_state,
                                                       model_state=model_state)
        state = jax.tree.map(lambda new, old: jnp.where(applied, new, old), updated, state)
        return state, metrics, loss_scale, applied, flags

    def one_step(self, state: TrainState, batch: Batch, halted: jax.Array
                 ) -> tuple[TrainState, dict[str, jax.Array], jax.Array, jax.Array]:
        """The updated state, the step's metrics, whether it was applied, its guard flags."""
        step_rng = jax.random.fold_in(state.rng, state.step)
        augment_rng, dropout_rng = jax.random.split(step_rng)
        for i, augment in enumerate(self.augmentations):
            batch = augment(jax.random.fold_in(augment_rng, i), batch)
        update = self.update_in_place if self.options.accumulation_steps == 1 else self.accumulate
        state, metrics, loss_scale, applied, flags = update(state, batch, dropout_rng, halted)
        described = logged_metrics(state.opt_state)
        if described.keys() & metrics.keys():
            raise JaxforgeError(f"A LoggedState in the optimizer state reports "
                                f"{sorted(described.keys() & metrics.keys())}, which the step "
                                "already logs; give it other names.")
        metrics.update(described)
        state = state.replace(step=state.step + 1, loss_scale=loss_scale,
                              skipped_steps=state.skipped_steps + (~applied).astype(jnp.int32))
        return state, metrics, applied, flags

    def add(self, accumulator: Accumulator, state: TrainState, metrics: dict[str, jax.Array],
            applied: jax.Array, flags: jax.Array) -> Accumulator:
        """Sum the step's metrics where it was applied; a state's description is replaced."""
        weight = applied.astype(jnp.float32)
        described = logged_metrics(state.opt_state)
        summed = {name: jnp.where(applied, value.astype(jnp.float32), accumulator.get(name, 0.0))
                  if name in described else accumulator.get(name, 0.0) + weight * jnp.nan_to_num(
                      value.astype(jnp.float32)) for name, value in metrics.items()}
        accumulator = nonfinite.record_first(accumulator, flags, state.step)
        return {**accumulator, **summed, "count": accumulator["count"] + weight,
                SKIPPED: accumulator[SKIPPED] + 1.0 - weight}

    def halted(self, accumulator: Accumulator) -> jax.Array:
        """Under `stop`, nothing is applied after the first non-finite step."""
        return (accumulator[nonfinite.FIRST_STEP] > 0) & (self.options.on_nonfinite == "stop")

    def step_and_add(self, state: TrainState, accumulator: Accumulator, batch: Batch
                     ) -> tuple[TrainState, Accumulator]:
        state, *outputs = self.one_step(state, batch, self.halted(accumulator))
        return state, self.add(accumulator, state, *outputs)


def make_eval_step(model: Model) -> Callable[[TrainState, Accumulator, Batch], Accumulator]:
    """`(state, accumulator, batch) -> accumulator`; padded examples (mask 0) count for nothing.

    `count` counts the real examples, or, for a loss of the per-target form
    (`framework.WeightedLoss`), the real targets, so the means are per target.

    With an EMA of the params (train.ema_decay > 0), evaluation uses the EMA params."""

    def eval_step(state: TrainState, accumulator: Accumulator, batch: Batch) -> Accumulator:
        params = state.params if state.ema_params is None else state.ema_params
        outputs, _ = model.apply({"params": params, **state.model_state}, batch["inputs"],
                                 train=False)
        sums, count = eval_sums(model.loss(outputs, batch), batch["mask"].astype(jnp.float32))
        summed = {k: accumulator.get(k, 0.0) + v for k, v in sums.items()}
        return {**summed, "count": accumulator["count"] + count}

    return eval_step
