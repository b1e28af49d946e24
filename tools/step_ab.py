"""Paired in-process timing of one compiled train step: hand-written, + gradient norm, jaxforge's.

`tools/bench.py` compares whole runs in separate processes; on a machine whose speed drifts by
tens of percent within seconds, that resolves 15% at best. This script resolves a few percent:
the variants alternate in blocks of `--block` steps inside one process, on one fixed batch, and
the median over rounds of each variant's time relative to the hand-written step is reported.

    hand            the bench's minimal hand-written step (Flax module, optax.adam, donation)
    hand+grad_norm  the same, also summing `optax.tree.norm(grads)` into a metric: the extra
                    pass over the gradients that jaxforge's metrics and non-finite guard need
    jaxforge        `framework.step.make_train_step` as the loop compiles it (k=1)

    python tools/step_ab.py [--case mlp@64] [--rounds 40] [--block 50]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import optax

import bench
import framework
from framework import loop
from framework import mesh as mesh_lib
from framework.input import to_global_array
from framework.step import StepOptions, default_unroll, empty_accumulator, make_train_step


def hand_variant(experiment: Any, case: bench.Case, grad_norm: bool
                 ) -> Callable[[int], Iterator[float]]:
    module = framework.registry.load("models", case.model["name"]).build(
        experiment.config.model, experiment.data.metadata, jnp.float32)
    tx = optax.adam(1e-3, eps=1e-7)

    def step(params: Any, opt_state: Any, metric: jax.Array, inputs: jax.Array,
             labels: jax.Array) -> tuple[Any, Any, jax.Array]:
        def loss_fn(params: Any) -> jax.Array:
            logits = module.apply({"params": params}, inputs, train=True)
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        metric = metric + loss + (optax.tree.norm(grads) if grad_norm else 0.0)
        return optax.apply_updates(params, updates), opt_state, metric

    step = jax.jit(step, donate_argnums=(0, 1))

    def blocks(block: int) -> Iterator[float]:
        params = module.init(jax.random.PRNGKey(0), jnp.zeros((1, *case.shape)),
                             train=False)["params"]
        opt_state, metric = tx.init(params), jnp.zeros(())
        batch = next(experiment.data.train_iterator())
        inputs, labels = jnp.asarray(batch["inputs"]), jnp.asarray(batch["label"])
        while True:
            start = time.perf_counter()
            for _ in range(block):
                params, opt_state, metric = step(params, opt_state, metric, inputs, labels)
            metric.block_until_ready()
            yield time.perf_counter() - start

    return blocks


def jaxforge_variant(experiment: Any) -> Callable[[int], Iterator[float]]:
    replicated = mesh_lib.replicated(experiment.mesh)
    step = jax.jit(make_train_step(experiment.model, experiment.tx, experiment.penalties,
                                   experiment.augmentations, StepOptions(unroll=default_unroll())),
                   donate_argnums=(0,), out_shardings=(experiment.state_sharding, replicated))

    def blocks(block: int) -> Iterator[float]:
        state = experiment.init_state(jax.random.PRNGKey(0))
        batch = next(experiment.data.train_iterator())
        batches = to_global_array({k: v[None] for k, v in batch.items()},
                                  mesh_lib.batch_sharding(experiment.mesh, stacked=True))
        shapes = jax.eval_shape(step, state, empty_accumulator(), batches)[1]
        accumulator = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
        while True:
            start = time.perf_counter()
            for _ in range(block):
                previous = accumulator
                state, accumulator = step(state, accumulator, batches)
                previous["count"].block_until_ready()  # As the loop does.
            accumulator["count"].block_until_ready()
            yield time.perf_counter() - start

    return blocks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", default="mlp@64", choices=list(bench.CASES))
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--block", type=int, default=50)
    args = parser.parse_args()
    case = bench.CASES[args.case]
    experiment = loop.build_experiment(bench._jax_config(case, 100, 1))
    variants = {"hand": hand_variant(experiment, case, grad_norm=False)(args.block),
                "hand+grad_norm": hand_variant(experiment, case, grad_norm=True)(args.block),
                "jaxforge": jaxforge_variant(experiment)(args.block)}
    for blocks in variants.values():  # Compile and warm up.
        next(blocks)
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, blocks in variants.items():
            seconds[name].append(next(blocks) / args.block)
    print(f"{args.case}: {args.rounds} rounds of {args.block}-step blocks, alternating")
    for name, values in seconds.items():
        ratio = statistics.median(h / v for h, v in zip(seconds["hand"], values))
        print(f"{name:16s} {statistics.median(values) * 1e3:8.3f} ms/step   "
              f"{ratio:.3f}x of hand (median of per-round ratios)")


if __name__ == "__main__":
    main()
