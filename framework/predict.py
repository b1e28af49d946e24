"""A trained run as a function: `load(workdir)` restores a checkpoint for prediction.

`load` rebuilds the run's plugins from its config.json through `loop.restore` (the same set-up
as training and `jaxforge eval`, so the dataset is built too: its metadata shapes the model) and
keeps what prediction needs: the parameters (the EMA parameters when the run kept them), the
model's other collections (batch statistics) and the mesh they live on. `LoadedModel.predict`
runs the eval-mode forward pass, jitted once per batch shape, over batches sharded on the mesh's
batch axes; the last partial batch is padded to the same shape, so it does not compile again.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
from etils import epath

from framework import mesh as mesh_lib
from framework.data import DataSource
from framework.errors import JaxforgeError
from framework.model import Model
from framework.normalization import normalize
from framework.plugin import DatasetMetadata, InputNormalization


def forward_fn(model: Model, normalization: InputNormalization | None = None
               ) -> Callable[[Any, dict[str, Any], jax.Array], Any]:
    """`(params, model_state, inputs) -> outputs`: the model in eval mode, as the eval step
    calls it (inputs as the dataset yields them, normalised first where it declares that)."""

    def forward(params: Any, model_state: dict[str, Any], inputs: jax.Array) -> Any:
        outputs, _ = model.apply({"params": params, **model_state},
                                 normalize(inputs, normalization), train=False)
        return outputs

    return forward


@dataclasses.dataclass
class LoadedModel:
    """A run's checkpoint ready to predict: see `load`."""

    workdir: epath.Path
    step: int  # The checkpoint's step.
    config: ml_collections.ConfigDict  # The run's resolved config (config.json).
    metadata: DatasetMetadata  # What inputs look like: input_shape, input_dtype, num_classes.
    params: Any  # The EMA parameters when the run kept them (train.ema_decay > 0), else params.
    model_state: dict[str, Any]  # The model's other collections, e.g. batch statistics.
    model: Model
    mesh: jax.sharding.Mesh
    data: DataSource
    uses_ema: bool
    _forward: Any = dataclasses.field(default=None, repr=False)

    def __post_init__(self) -> None:
        self._forward = jax.jit(forward_fn(self.model, self.metadata.normalize))

    @property
    def batch_shards(self) -> int:
        """The number of pieces a batch is split into (the mesh's data x fsdp)."""
        return math.prod(self.mesh.shape[axis] for axis in mesh_lib.BATCH_AXES)

    def check_inputs(self, inputs: Any) -> np.ndarray:
        """`inputs` as a numpy array, or a JaxforgeError naming the shape and dtype expected."""
        inputs = np.asarray(inputs)
        shape, dtype = tuple(self.metadata.input_shape), np.dtype(self.metadata.input_dtype)
        if inputs.ndim != len(shape) + 1 or inputs.shape[1:] != shape or inputs.dtype != dtype:
            raise JaxforgeError(
                f"The inputs are {inputs.dtype} of shape {inputs.shape}; this model takes "
                f"{dtype} of shape (N, {', '.join(map(str, shape))}) (the dataset's "
                "input_shape and input_dtype, one example per row).")
        return inputs

    def predict(self, inputs: Any, batch_size: int | None = None) -> Any:
        """The model's outputs (logits, as float32 numpy) for exactly these examples, in eval
        mode.

        `inputs` are examples as the dataset yields them: `(N, *metadata.input_shape)` of
        `metadata.input_dtype` (stored pixels, uint8, for a dataset that normalises on the
        device: they are normalised here as in training). They run in batches of `batch_size`
        (default: the run's eval batch size, rounded up to a multiple of the mesh's batch
        shards), the last one padded.
        """
        inputs = self.check_inputs(inputs)
        count = len(inputs)
        if count == 0:
            raise JaxforgeError("No inputs to predict.")
        shards = self.batch_shards
        size = (batch_size if batch_size is not None
                else self.config.dataset.eval_batch_size or self.config.dataset.batch_size)
        if size < 1:
            raise JaxforgeError(f"batch_size={size}: give a positive batch size.")
        # A multiple of the shards, and no larger than the (rounded) number of inputs.
        size = min(_round_up(size, shards), _round_up(count, shards))
        sharding = mesh_lib.batch_sharding(self.mesh)
        outputs = []
        for start in range(0, count, size):
            batch = inputs[start:start + size]
            real = len(batch)
            if real < size:  # Same shape as the others: no second compile.
                padding = np.zeros((size - real, *batch.shape[1:]), batch.dtype)
                batch = np.concatenate([batch, padding])
            result = self._forward(self.params, self.model_state, jax.device_put(batch, sharding))
            outputs.append(jax.tree.map(lambda x, n=real: np.asarray(x[:n], np.float32),
                                        jax.device_get(result)))
        return jax.tree.map(lambda *parts: np.concatenate(parts), *outputs)

    def eval_split(self) -> tuple[np.ndarray, np.ndarray]:
        """The dataset's eval split as `(inputs, labels)`, padding removed."""
        inputs, labels = [], []
        for batch in self.data.eval_batches():
            mask = np.asarray(batch["mask"], bool)
            inputs.append(np.asarray(batch["inputs"])[mask])
            labels.append(np.asarray(batch["label"])[mask])
        if not inputs:
            raise JaxforgeError(f"Dataset {self.config.dataset.name!r} has no eval examples.")
        return np.concatenate(inputs), np.concatenate(labels)


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def load(workdir: str | epath.Path, step: int | None = None) -> LoadedModel:
    """A run's latest (or `step`) checkpoint, ready to predict, in this process.

    Raises a JaxforgeError when `workdir` is not a jaxforge workdir or holds no checkpoint.
    """
    from framework import loop

    if jax.process_count() > 1:
        raise JaxforgeError("framework.load runs in one process; this is one of "
                            f"{jax.process_count()}.")
    setup, state, step = loop.restore(workdir, step)
    uses_ema = state.ema_params is not None
    return LoadedModel(epath.Path(workdir), int(step), setup.config, setup.data.metadata,
                       state.ema_params if uses_ema else state.params, dict(state.model_state),
                       setup.model, setup.mesh, setup.data, uses_ema)
