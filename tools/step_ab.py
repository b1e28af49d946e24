"""Paired in-process timing of one compiled train step: hand-written, + gradient norm, jaxforge's.

`tools/bench.py` compares whole runs in separate processes; on a machine whose speed drifts by
tens of percent within seconds, that resolves 15% at best. This script resolves a few percent:
the variants alternate in blocks of `--block` steps inside one process, on one fixed batch, and
the median over rounds of each variant's time relative to the hand-written step is reported.

    hand            the bench's minimal hand-written step (Flax module, optax.adam, donation)
    hand+grad_norm  the same, also adding `optax.tree.norm(grads)` to its metric: the extra
                    pass over the gradients that jaxforge's metrics and non-finite guard need
    jaxforge        the train step exactly as the loop compiles it (k=1)
    torch           with `--torch`: the bench's PyTorch model and step (eager, Adam), on the
                    same batch; its threads as torch sets them (`OMP_NUM_THREADS`)

Both sides get the batch already on the device, so the data feed is left out.

    python tools/step_ab.py [--case mlp@64] [--rounds 40] [--block 50] [--torch]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Iterator
from typing import Any

import bench
import jax
import jax.numpy as jnp
import numpy as np

from framework import loop
from framework import mesh as mesh_lib
from framework.prefetch import to_global_array
from framework.step import empty_accumulator


def handwritten_blocks(experiment: Any, case: bench.Case, grad_norm: bool, block: int
                       ) -> Iterator[float]:
    """Seconds per `block` steps of the bench's hand-written step on one fixed batch."""
    source, (params, opt_state, extra), step = bench.handwritten_training(
        case, experiment.config, grad_norm)
    batch = next(source.train_iterator())
    inputs, labels = jnp.asarray(batch["inputs"]), jnp.asarray(batch["label"])
    state = [params, opt_state, extra]
    while True:
        state, seconds = bench.time_on_one_batch(step, state, inputs, labels, block)
        yield seconds


def jaxforge_blocks(experiment: Any, block: int) -> Iterator[float]:
    """Seconds per `block` steps of the loop's compiled step (k=1) on one fixed batch."""
    step = loop._jit_train_step(experiment)
    state = experiment.init_state(jax.random.PRNGKey(0))
    batch = next(experiment.data.train_iterator())
    batches = to_global_array({k: np.asarray(v)[None] for k, v in batch.items()},
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


def torch_blocks(experiment: Any, case: bench.Case, block: int) -> Iterator[float]:
    """Seconds per `block` steps of the bench's PyTorch step (`bench.run_torch`'s) on one batch."""
    import torch
    batch = next(experiment.data.train_iterator())
    inputs = torch.from_numpy(np.asarray(batch["inputs"]))
    inputs = inputs.permute(0, 3, 1, 2).contiguous() if inputs.ndim == 4 else inputs.long()
    labels = torch.from_numpy(np.asarray(batch["label"])).long().flatten()
    model = bench._torch_model(case)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-7)
    while True:
        start = time.perf_counter()
        for _ in range(block):
            optimizer.zero_grad(set_to_none=True)
            logits = model(inputs)
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels)
            loss.backward()
            optimizer.step()
        loss.item()
        yield time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", default="mlp@64", choices=list(bench.ALL_CASES))
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--block", type=int, default=50)
    parser.add_argument("--torch", action="store_true", help="also the PyTorch step")
    args = parser.parse_args()
    case = bench.ALL_CASES[args.case]
    experiment = loop.set_up(bench._jax_config(case, 100, 1))
    variants = {"hand": handwritten_blocks(experiment, case, False, args.block),
                "hand+grad_norm": handwritten_blocks(experiment, case, True, args.block),
                "jaxforge": jaxforge_blocks(experiment, args.block)}
    if args.torch:
        variants["torch"] = torch_blocks(experiment, case, args.block)
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
