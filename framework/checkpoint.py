"""Orbax checkpoints of a run: the train state, the data position and the run's provenance.

Saves are asynchronous (arrays are copied to the host, then written in the background while
training goes on). Restores take the target shardings, so a checkpoint lands directly on the
current mesh.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpointer:
    """The workdir's `checkpoints/`: periodic, final and restored states."""

    def __init__(self, directory: Path, max_to_keep: int, async_save: bool) -> None:
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                               enable_async_checkpointing=async_save)
        self._manager = ocp.CheckpointManager(Path(directory).absolute(), options=options)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state: Any, data_state: dict[str, Any],
             provenance: dict[str, Any]) -> None:
        """Start saving `step` (a no-op when that step is already saved)."""
        if step in self._manager.all_steps():
            return
        self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=ocp.args.JsonSave(data_state),
            provenance=ocp.args.JsonSave(provenance)), force=True)

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict[str, Any]]:
        """The state at `step`, placed with `abstract_state`'s shardings, and the data position."""
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            data=ocp.args.JsonRestore()))
        return restored.state, restored.data

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()


def abstract_like(state: Any, shardings: Any) -> Any:
    """Shape/dtype/sharding stand-ins for restoring into `state`'s structure."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        state, shardings)
