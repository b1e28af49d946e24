"""`jaxforge doctor`: what this machine (and every process of a run) sees, and whether they agree.

A multi-process run only works when every process runs the same library versions on the same
number and kind of devices; a mismatch otherwise shows up later as a hang or an obscure XLA error.
The doctor compares them up front and names the processes that differ.
"""

from __future__ import annotations

import collections
import importlib.metadata
import json
import platform
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from framework.errors import JaxforgeError

PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "jaxforge")
_INFO_BYTES = 4096  # Room for one process's JSON description in the all-gather.


def local_info() -> dict[str, Any]:
    """This process's versions, backend and local devices."""
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "not installed"
    devices = jax.local_devices()
    return {"python": platform.python_version(), **versions, "backend": jax.default_backend(),
            "local_devices": len(devices),
            "device_kind": ", ".join(sorted({d.device_kind for d in devices}))}


def device_count_disagreements() -> list[str]:
    """Processes whose number of devices differs from process 0's, read from the global device
    list every process already has after jax.distributed.initialize()."""
    counts = collections.Counter(d.process_index for d in jax.devices())
    expected = counts[0]
    return [f"process {p} has {n} devices, process 0 has {expected}"
            for p, n in sorted(counts.items()) if n != expected]


def gather_infos(info: dict[str, Any]) -> list[dict[str, Any]]:
    """Every process's `info`, in process order (an all-gather over the devices)."""
    if jax.process_count() == 1:
        return [info]
    from jax.experimental import multihost_utils

    encoded = json.dumps(info, sort_keys=True).encode()
    if len(encoded) > _INFO_BYTES:
        raise JaxforgeError(f"doctor: this process's description is {len(encoded)} bytes, over "
                            f"the {_INFO_BYTES} it can exchange.")
    buffer = np.zeros(_INFO_BYTES, np.uint8)
    buffer[:len(encoded)] = np.frombuffer(encoded, np.uint8)
    gathered = np.asarray(multihost_utils.process_allgather(buffer))
    return [json.loads(row.tobytes().rstrip(b"\0")) for row in gathered]


def disagreements(infos: Sequence[dict[str, Any]]) -> list[str]:
    """One line per field where some process differs from process 0."""
    lines = []
    for key, reference in infos[0].items():
        differing = [(p, info.get(key)) for p, info in enumerate(infos)
                     if info.get(key) != reference]
        if differing:
            others = ", ".join(f"process {p} has {value!r}" for p, value in differing)
            lines.append(f"{key}: process 0 has {reference!r}, {others}")
    return lines


def _mesh_line(config_path: str, overrides: Sequence[str]) -> str:
    from framework import config as config_lib
    from framework import mesh as mesh_lib

    config = config_lib.load_config(config_path, overrides)
    mesh = mesh_lib.make_mesh(config_lib.mesh_sizes(config))
    mesh_lib.check_batch_fits(config.dataset.batch_size, mesh, "dataset.batch_size")
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    return (f"mesh ({config_path}): {dict(mesh.shape)} over {mesh.devices.size} devices; global "
            f"batch {config.dataset.batch_size} = {config.dataset.batch_size // shards} per batch "
            f"shard x {shards} shards, {config.dataset.batch_size // jax.process_count()} per "
            "process")


def report(config_path: str | None = None, overrides: Sequence[str] = ()) -> str:
    """The doctor's text; raises JaxforgeError naming every disagreement between processes."""
    count_problems = device_count_disagreements()
    if count_problems:
        raise JaxforgeError(
            f"the {jax.process_count()} processes disagree: " + "; ".join(count_problems)
            + ". Every process must see the same number of devices (check the visible devices, "
            "e.g. CUDA_VISIBLE_DEVICES or XLA_FLAGS, on each host).")
    info = local_info()
    infos = gather_infos(info)
    problems = disagreements(infos)
    if problems:
        raise JaxforgeError(
            f"the {len(infos)} processes disagree: " + "; ".join(problems)
            + ". Install the same versions on every host (pip install the same jaxforge "
            "release with the same extras).")
    lines = [f"{key}: {value}" for key, value in info.items() if key != "local_devices"]
    lines += [f"processes: {jax.process_count()} (this is process {jax.process_index()})",
              f"devices: {info['local_devices']} local, {jax.device_count()} global",
              f"agreement: all {len(infos)} process(es) have the same versions and devices"]
    if config_path is not None:
        lines.append(_mesh_line(config_path, overrides))
    return "\n".join(lines)
