"""Joining JAX's multi-controller runtime before anything touches a device.

One `jaxforge train` process runs per host (or per GPU group); `jax.distributed.initialize()`
connects them through a coordinator, after which every process sees all devices and one jit
program runs over the global mesh. Flags name the coordinator explicitly; without flags, JAX's
own cluster detection is used when the environment is a cluster it knows (Cloud TPU VM, SLURM,
Open MPI); otherwise the run is single-process.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping

from framework.errors import JaxforgeError


def cluster_environment(environ: Mapping[str, str] | None = None) -> str | None:
    """The kind of multi-process launch the environment shows, or None for a plain machine."""
    environ = os.environ if environ is None else environ
    if "SLURM_JOB_ID" in environ and int(environ.get("SLURM_NTASKS", "1")) > 1:
        return "SLURM"
    if int(environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
        return "Open MPI"
    if importlib.util.find_spec("libtpu") is not None:  # jax[tpu]: a Cloud TPU VM.
        return "Cloud TPU VM"
    return None


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> bool:
    """Start the distributed runtime when asked or when a cluster is detected; True if started.

    Must run before the first JAX computation or device query: JAX refuses it afterwards.
    """
    import jax

    explicit = (coordinator_address, num_processes, process_id)
    if any(value is not None for value in explicit):
        if any(value is None for value in explicit):
            raise JaxforgeError(
                "--coordinator_address, --num_processes and --process_id go together: got "
                f"coordinator_address={coordinator_address!r}, num_processes={num_processes!r}, "
                f"process_id={process_id!r}. Give all three (process ids 0..N-1, the same "
                "address and count on every process) or none for auto-detection.")
        if num_processes < 1 or not 0 <= process_id < num_processes:
            raise JaxforgeError(
                f"--process_id={process_id} must be in 0..{num_processes - 1} "
                f"(--num_processes={num_processes}).")
        if ":" not in coordinator_address:
            raise JaxforgeError(
                f"--coordinator_address={coordinator_address!r} needs a port: HOST:PORT of "
                "process 0, e.g. 10.0.0.1:1234.")
    elif cluster_environment() is None:
        return False
    if jax.distributed.is_initialized():
        return True
    # Multi-process CPU runs (tests, laptops) need cross-process collectives: gloo over TCP.
    # Only a config flag, read when the CPU backend is created, so it is safe to set here.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(coordinator_address, num_processes, process_id)
    except (RuntimeError, ValueError) as error:
        raise JaxforgeError(f"jax.distributed.initialize() failed: {error}") from error
    return True
