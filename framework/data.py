"""The dataset contract and `ArraySource`, the reference implementation for in-memory data.

A data source gives this process's share of every global batch as numpy arrays. Its train iterator
is an endless, deterministic stream (a fresh permutation per epoch, derived from the seed and the
epoch number) whose position is one integer, so a run resumes exactly where it stopped. Eval
batches cover the eval split exactly once: the last batch is padded and a `mask` marks the
real examples.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, Protocol

import numpy as np

from framework.errors import ConfigError, JaxforgeError
from framework.plugin import DataContext, DatasetMetadata

Batch = dict[str, np.ndarray]


class TrainIterator(Protocol):
    """An endless iterator of local batches whose position can be saved and restored."""

    def __next__(self) -> Batch: ...

    def get_state(self) -> dict[str, Any]: ...  # JSON-serialisable.

    def set_state(self, state: dict[str, Any]) -> None: ...


class DataSource(Protocol):
    """What a dataset plugin's `build` returns."""

    metadata: DatasetMetadata

    def train_iterator(self) -> TrainIterator: ...

    def eval_batches(self) -> Iterator[Batch]: ...  # Local share, padded, with a `mask` key.


def batch_problem(batch: Any, metadata: DatasetMetadata, size: int | None = None,
                  what: str = "train batch") -> str | None:
    """What is wrong with a batch a dataset yielded, by the dataset contract; None if nothing.

    The rules: a dict of numpy arrays with `inputs` and `label`, all of one leading dimension
    (`size`, this process's batch size, when given), `inputs` of the metadata's input_shape and
    input_dtype; `label` of its target_shape and of target_dtype's kind (integer or float)
    where the metadata declares them (`declares_targets`); integer targets in
    [0, num_classes) when num_classes > 0; an optional float `label_mask` of the label's shape
    (targets it marks 0 are padding: their values are not checked). The training loop
    (`check_batch`) and the conformance checks (`framework.testing`) apply the same rules.
    """
    if not isinstance(batch, dict):
        return f"A {what} is a {type(batch).__name__}, not a dict."
    if not {"inputs", "label"} <= set(batch):
        return f"A {what} has the keys {sorted(batch)}; it needs `inputs` and `label`."
    size = len(batch["inputs"]) if size is None else size
    for key, value in batch.items():
        if not isinstance(value, np.ndarray):
            return (f"{what}[{key!r}] is a {type(value).__name__}; batches are numpy arrays (the "
                    "trainer places them on the devices).")
        if value.shape[:1] != (size,):
            return (f"{what}[{key!r}] has shape {value.shape}; its leading dimension must be "
                    f"this process's batch size {size}.")
    inputs = batch["inputs"]
    if inputs.shape[1:] != tuple(metadata.input_shape):
        return (f"{what}['inputs'] has examples of shape {inputs.shape[1:]}, but the metadata "
                f"promises input_shape={tuple(metadata.input_shape)}.")
    if inputs.dtype != np.dtype(metadata.input_dtype):
        return (f"{what}['inputs'] is {inputs.dtype}, but the metadata promises "
                f"input_dtype={metadata.input_dtype!r}.")
    return _target_problem(batch, metadata, what)


def declares_targets(metadata: DatasetMetadata) -> bool:
    """Whether the metadata describes its targets (target_shape or target_dtype set). Metadata
    with the defaults (one integer class per example) is also what datasets written before
    these fields give, whose labels a model's own loss may read however it likes: their shape
    and dtype are not checked, as before."""
    return tuple(metadata.target_shape) != () or metadata.target_dtype != "int32"


def _target_problem(batch: Batch, metadata: DatasetMetadata, what: str) -> str | None:
    """`batch_problem`'s rules for `label` and `label_mask`."""
    label, mask = batch["label"], batch.get("label_mask")
    integer = np.issubdtype(np.dtype(metadata.target_dtype), np.integer)
    if declares_targets(metadata):
        if label.shape[1:] != tuple(metadata.target_shape):
            return (f"{what}['label'] has examples of shape {label.shape[1:]}, but the metadata "
                    f"promises target_shape={tuple(metadata.target_shape)}.")
        if not np.issubdtype(label.dtype, np.integer if integer else np.floating):
            return (f"{what}['label'] is {label.dtype}, but the metadata promises "
                    f"target_dtype={metadata.target_dtype!r}.")
    if mask is not None and (mask.shape != label.shape
                             or not np.issubdtype(mask.dtype, np.floating)):
        return (f"{what}['label_mask'] is {mask.dtype}{list(mask.shape)}; it must be float "
                f"(1 counts, 0 is padding) of the label's shape {list(label.shape)}.")
    if integer and metadata.num_classes > 0:
        outside = (label < 0) | (label >= metadata.num_classes)
        if mask is not None:
            outside &= mask > 0
        if np.any(outside):
            return (f"{what}['label'] has values outside [0, num_classes="
                    f"{metadata.num_classes}): {np.unique(label[outside])[:5]}.")
    return None


def check_batch(batch: Batch, metadata: DatasetMetadata, dataset: str,
                what: str = "batch") -> None:
    """Catch a dataset that breaks its contract or its own metadata before it reaches the model:
    a JaxforgeError naming the dataset and the broken rule (`batch_problem`)."""
    problem = batch_problem(batch, metadata, what=what)
    if problem is not None:
        raise JaxforgeError(f"Dataset plugin {dataset!r} yielded a {what} that breaks the "
                            f"dataset contract: {problem}")


class CheckedIterator:
    """A train iterator whose every batch is checked against the dataset's metadata."""

    def __init__(self, iterator: TrainIterator, metadata: DatasetMetadata, dataset: str) -> None:
        self._iterator, self._metadata, self._dataset = iterator, metadata, dataset

    def __iter__(self) -> CheckedIterator:
        return self

    def __next__(self) -> Batch:
        batch = next(self._iterator)
        check_batch(batch, self._metadata, self._dataset, "train batch")
        return batch

    def get_state(self) -> dict[str, Any]:
        return self._iterator.get_state()

    def set_state(self, state: dict[str, Any]) -> None:
        self._iterator.set_state(state)


def local_batch_size(global_batch_size: int, context: DataContext, key: str) -> int:
    """This process's share of a global batch; the global batch must split evenly."""
    if global_batch_size % context.process_count:
        raise ConfigError(
            f"config.{key}={global_batch_size} does not split over {context.process_count} "
            f"processes; use a multiple of {context.process_count}.")
    return global_batch_size // context.process_count


def eval_positions(indices: np.ndarray, global_batch: int, local_batch: int,
                   process_index: int, num_examples: int) -> tuple[np.ndarray, np.ndarray]:
    """Where this process's eval rows come from, and which are real.

    Eval batch k of the global eval batch size holds positions [k*global, (k+1)*global) of the
    eval split; process p's share is the p-th run of `local_batch` of them. `indices` count this
    process's rows (row r of its batch k is index k*local_batch + r). Returns the positions in the
    split (0 where the last batch is padded past the end) and the mask of the real rows.
    """
    batch, row = np.divmod(np.asarray(indices), local_batch)
    positions = batch * global_batch + process_index * local_batch + row
    mask = positions < num_examples
    return np.where(mask, positions, 0), mask


class EpochOrder:
    """The endless stream of example positions: epoch e is a permutation of the split drawn from
    `[seed, e]` (or the split in order, without `shuffle`). Slices of it are vectorised numpy, so
    a batch of positions costs no Python per example. Picklable (Grain's worker processes)."""

    def __init__(self, num_examples: int, seed: int, shuffle: bool = True) -> None:
        self.num_examples, self.seed, self.shuffle = num_examples, seed, shuffle
        self._cache: tuple[int, np.ndarray] | None = None

    def permutation(self, epoch: int) -> np.ndarray:
        cache = self._cache  # One read: reader threads may replace it meanwhile.
        if cache is None or cache[0] != epoch:
            if self.shuffle:
                order = np.random.default_rng([self.seed, epoch]).permutation(self.num_examples)
            else:
                order = np.arange(self.num_examples)
            cache = self._cache = (epoch, order)
        return cache[1]

    def take(self, start: int, count: int) -> np.ndarray:
        """Positions [start, start + count) of the stream, across epoch ends."""
        chunks = []
        while count > 0:
            epoch, offset = divmod(start, self.num_examples)
            size = min(count, self.num_examples - offset)
            chunks.append(self.permutation(epoch)[offset:offset + size])
            start, count = start + size, count - size
        return np.concatenate(chunks)


class ArrayTrainIterator:
    """Global batch k holds positions [k*B, (k+1)*B) of the concatenated epoch permutations."""

    def __init__(self, arrays: Batch, global_batch_size: int, context: DataContext) -> None:
        self._arrays = arrays
        self._order = EpochOrder(len(next(iter(arrays.values()))), context.seed)
        self._global_batch_size = global_batch_size
        self._local = local_batch_size(global_batch_size, context, "dataset.batch_size")
        self._offset = context.process_index * self._local
        self._next_batch = 0

    def __iter__(self) -> ArrayTrainIterator:
        return self

    def __next__(self) -> Batch:
        start = self._next_batch * self._global_batch_size + self._offset
        indices = self._order.take(start, self._local)
        self._next_batch += 1
        return {key: value[indices] for key, value in self._arrays.items()}

    def get_state(self) -> dict[str, Any]:
        return {"next_batch": self._next_batch}

    def set_state(self, state: dict[str, Any]) -> None:
        self._next_batch = int(state["next_batch"])


class ArraySource:
    """A `DataSource` over numpy arrays held in memory (digits, synthetic, small TFDS splits)."""

    def __init__(self, train: Batch, eval: Batch, metadata: DatasetMetadata,
                 config: Any, context: DataContext) -> None:
        self.metadata = metadata
        self._train, self._eval = train, eval
        self._batch_size = config.batch_size
        self._eval_batch_size = config.eval_batch_size or config.batch_size
        self._context = context
        local_batch_size(self._eval_batch_size, context, "dataset.eval_batch_size")

    def train_iterator(self) -> ArrayTrainIterator:
        return ArrayTrainIterator(self._train, self._batch_size, self._context)

    def eval_batches(self) -> Iterator[Batch]:
        num_examples = len(next(iter(self._eval.values())))
        local = self._eval_batch_size // self._context.process_count
        for k in range(math.ceil(num_examples / self._eval_batch_size)):
            indices, mask = eval_positions(k * local + np.arange(local), self._eval_batch_size,
                                           local, self._context.process_index, num_examples)
            batch = {key: value[indices] for key, value in self._eval.items()}
            batch["mask"] = mask
            yield batch
