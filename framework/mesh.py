"""The device mesh from `config.mesh`, and the shardings of batches over it."""

from __future__ import annotations

import math

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from framework.errors import ConfigError

AXES = ("data", "fsdp", "model")
BATCH_AXES = ("data", "fsdp")  # A batch is split over both; `model` holds replicas of it.


def mesh_shape(sizes: dict[str, int], num_devices: int) -> tuple[int, ...]:
    """Resolve `-1` to the remaining devices; explain any size that does not fit."""
    unknown = [axis for axis in AXES if sizes[axis] == -1]
    known = math.prod(sizes[axis] for axis in AXES if sizes[axis] != -1)
    if unknown:
        if num_devices % known:
            raise ConfigError(
                f"config.mesh={sizes} cannot fill {num_devices} devices: the fixed axes use "
                f"{known}, which does not divide {num_devices}. Pick sizes whose product divides "
                f"{num_devices}.")
        return tuple(num_devices // known if sizes[a] == -1 else sizes[a] for a in AXES)
    if known > num_devices:
        raise ConfigError(
            f"config.mesh={sizes} needs {known} devices but only {num_devices} are available; "
            "set one axis to -1 to use all devices.")
    return tuple(sizes[a] for a in AXES)


def make_mesh(sizes: dict[str, int]) -> Mesh:
    """A mesh over all devices, or over the first N when the sizes ask for fewer (single host)."""
    devices = jax.devices()
    try:
        shape = mesh_shape(dict(sizes), len(devices))
    except ConfigError as error:
        if jax.process_count() == 1:
            raise
        raise ConfigError(f"{error} (The {len(devices)} devices are {jax.process_count()} "
                          f"processes x {jax.local_device_count()} local devices.)") from None
    count = math.prod(shape)
    if count < len(devices):
        if jax.process_count() > 1:
            raise ConfigError(f"config.mesh={dict(sizes)} uses {count} of {len(devices)} devices;"
                              " a multi-process run must use them all (set one axis to -1).")
        return Mesh(np.asarray(devices[:count]).reshape(shape), AXES)
    return Mesh(mesh_utils.create_device_mesh(shape, devices), AXES)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh, stacked: bool = False) -> NamedSharding:
    """Batches split on their example axis; `stacked` batches have a leading steps axis."""
    spec = PartitionSpec(None, BATCH_AXES) if stacked else PartitionSpec(BATCH_AXES)
    return NamedSharding(mesh, spec)


def check_batch_fits(batch_size: int, mesh: Mesh, key: str) -> None:
    shards = math.prod(mesh.shape[a] for a in BATCH_AXES)
    if batch_size % shards:
        raise ConfigError(
            f"config.{key}={batch_size} does not split over the mesh's {shards} batch shards "
            f"(data x fsdp = {mesh.shape['data']} x {mesh.shape['fsdp']}); use a multiple of "
            f"{shards}.")
