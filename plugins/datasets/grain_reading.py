"""What every Grain-backed dataset plugin (`tfds`, `text`) reads the same way.

A source of `num_examples` random-access examples and a `read(indices) -> batch` function become
the endless train stream (a new permutation each epoch from the seed, process p taking the p-th
local batch of every global batch, and an iterator whose `get_state` is its exact position) and
the eval batches (the split once, the last batch padded and masked). Grain's elements are whole
batches: `read` gets a batch's indices at once and does batch-level (vectorised) work.
"""

from __future__ import annotations

import math
import signal
import sys
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


class TrainBatch:
    """Local batch k of this process -> its batch: the positions of global batch k's p-th part
    in the endless epoch order (one numpy slice), then `read` (picklable for workers)."""

    def __init__(self, read: Read, order: framework.EpochOrder, global_batch: int,
                 local_batch: int, process_index: int) -> None:
        self.read, self.order = read, order
        self.global_batch, self.local_batch = global_batch, local_batch
        self.offset = process_index * local_batch

    def __call__(self, k: int) -> dict[str, np.ndarray]:
        start = int(k) * self.global_batch + self.offset
        return self.read(self.order.take(start, self.local_batch))


def train_iterator(num_examples: int, read: Read, batch_size: int,
                   context: framework.DataContext, *, shuffle: bool, num_threads: int,
                   num_workers: int = 0) -> framework.TrainIterator:
    """This process's share of every global train batch, endlessly, resumable exactly.

    The order is `framework.ArraySource`'s (epoch e a permutation drawn from `[seed, e]`), so
    the same examples give the same batches in memory and from files; a batch of positions is
    one numpy slice, and its examples are read by one call of `read`."""
    import grain

    local = framework.local_batch_size(batch_size, context, "dataset.batch_size")
    order = framework.EpochOrder(num_examples, context.seed, shuffle)
    to_batch = TrainBatch(read, order, batch_size, local, context.process_index)
    # Grain's position in this endless range is the iterator's state: local batches read.
    batches = grain.MapDataset.range(sys.maxsize).map(to_batch)
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
    rows = RowRange(local)
    batches = grain.MapDataset.range(num_batches).map(rows).map(to_batch)
    return iter(batches.to_iter_dataset(read_options(num_threads)))


class RowRange:
    """Batch k -> its row numbers k*size .. (k+1)*size - 1, as one numpy range."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, k: int) -> np.ndarray:
        return np.arange(int(k) * self.size, (int(k) + 1) * self.size)


def _ignore_interrupts(worker_index: int, worker_count: int) -> None:
    """Ctrl-C reaches the whole process group. The loop stops at a step boundary and closes the
    workers; without this each of them would first die with its own KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _absl_flags_parsed() -> None:
    """Grain's worker processes read absl flags; jaxforge's CLI is argparse, so use defaults."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
