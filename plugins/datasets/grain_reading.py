"""What every Grain-backed dataset plugin (`tfds`, `text`) reads the same way.

A source of `num_examples` random-access examples and a `read(indices) -> batch` function become
the endless train stream (a new permutation each epoch from the seed, process p taking the p-th
local batch of every global batch, and an iterator whose `get_state` is its exact position) and
the eval batches (the split once, the last batch padded and masked).
"""

from __future__ import annotations

import math
import signal
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

import framework

Read = Callable[[np.ndarray], dict[str, np.ndarray]]


def read_options(num_threads: int) -> Any:
    """Grain prefetches whole batches here: a few ahead are enough, and a deeper buffer
    (Grain's default is 500 elements) only takes CPU away from the training step."""
    import grain

    return grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=2 * num_threads + 2)


def train_iterator(num_examples: int, read: Read, batch_size: int,
                   context: framework.DataContext, *, shuffle: bool, num_threads: int,
                   num_workers: int = 0) -> framework.TrainIterator:
    """This process's share of every global train batch, endlessly, resumable exactly."""
    import grain

    local = framework.local_batch_size(batch_size, context, "dataset.batch_size")
    indices = grain.MapDataset.range(num_examples)
    if shuffle:
        indices = indices.shuffle(seed=context.seed)
    # Consecutive local batches of one endless stream: global batch k is local batches
    # k*P .. k*P+P-1, and process p takes the p-th of them.
    batches = indices.repeat().batch(local, drop_remainder=True)
    batches = batches[context.process_index::context.process_count].map(read)
    iterable = batches.to_iter_dataset(read_options(num_threads))
    if num_workers:
        _absl_flags_parsed()
        iterable = iterable.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers),
                                        worker_init_fn=_ignore_interrupts)
    return iter(iterable)


class EvalBatch:
    """A batch of local eval indices -> the padded, masked batch of this process."""

    def __init__(self, read: Read, global_batch: int, local_batch: int, process_index: int,
                 num_examples: int) -> None:
        self.read = read
        self.layout = (global_batch, local_batch, process_index, num_examples)

    def __call__(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        positions, mask = framework.eval_positions(np.asarray(indices), *self.layout)
        return {**self.read(positions), "mask": mask}


def eval_batches(num_examples: int, read: Read, eval_batch_size: int,
                 context: framework.DataContext, *, num_threads: int
                 ) -> Iterator[dict[str, np.ndarray]]:
    """This process's share of the eval split, once, in order; the last batch padded."""
    import grain

    local = framework.local_batch_size(eval_batch_size, context, "dataset.eval_batch_size")
    num_batches = math.ceil(num_examples / eval_batch_size)
    to_batch = EvalBatch(read, eval_batch_size, local, context.process_index, num_examples)
    batches = grain.MapDataset.range(num_batches * local).batch(local).map(to_batch)
    return iter(batches.to_iter_dataset(read_options(num_threads)))


def _ignore_interrupts(worker_index: int, worker_count: int) -> None:
    """Ctrl-C reaches the whole process group. The loop stops at a step boundary and closes the
    workers; without this each of them would first die with its own KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _absl_flags_parsed() -> None:
    """Grain's worker processes read absl flags; jaxforge's CLI is argparse, so use defaults."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
