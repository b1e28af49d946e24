"""The train state: one pytree holding everything a run needs to continue exactly."""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
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


class HostCopy:
    """A pytree of arrays copied to host memory shard by shard, to put back with the same
    shardings: for a callback that keeps a state the train step will donate (early stopping's
    best). `jax.device_get` needs the whole array in this process, which a multi-process run whose
    parameters are sharded across processes does not have; here each process keeps the distinct
    shards of its own devices (a replicated array once)."""

    def __init__(self, tree: Any) -> None:
        leaves, self._treedef = jax.tree.flatten(tree)
        self._leaves = [_copy_to_host(leaf) for leaf in leaves]

    def to_devices(self) -> Any:
        """The tree again, as arrays on the devices and with the shardings it was copied from."""
        return jax.tree.unflatten(self._treedef, [_copy_to_devices(leaf) for leaf in self._leaves])


@dataclasses.dataclass(frozen=True)
class _HostArray:
    shape: tuple[int, ...]
    sharding: jax.sharding.Sharding
    blocks: dict[str, np.ndarray]  # One per distinct shard, by its index in the global array.
    placement: list[tuple[jax.Device, str]]  # Each addressable device and the block it holds.
    key_impl: Any = None  # For a typed PRNG key array (the blocks then hold its key data).


def _copy_to_host(leaf: Any) -> Any:
    if not isinstance(leaf, jax.Array):
        return leaf
    key_impl = None
    if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        key_impl, leaf = jax.random.key_impl(leaf), jax.random.key_data(leaf)
    blocks, placement = {}, []
    for shard in leaf.addressable_shards:
        index = str(shard.index)
        if index not in blocks:
            blocks[index] = np.asarray(shard.data)
        placement.append((shard.device, index))
    return _HostArray(leaf.shape, leaf.sharding, blocks, placement, key_impl)


def _copy_to_devices(leaf: Any) -> Any:
    if not isinstance(leaf, _HostArray):
        return leaf
    array = jax.make_array_from_single_device_arrays(
        leaf.shape, leaf.sharding,
        [jax.device_put(leaf.blocks[index], device) for device, index in leaf.placement])
    return array if leaf.key_impl is None else jax.random.wrap_key_data(array, impl=leaf.key_impl)
