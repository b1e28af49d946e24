"""Orbax checkpoints of a run: the train state, the data position and the run's provenance.

Saves are asynchronous (arrays are copied to the host, then written in the background while
training goes on). Restores take the target shardings, so a checkpoint lands directly on the
current mesh.
"""

from __future__ import annotations

import time
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath

from framework.errors import JaxforgeError
from framework.workdir import absolute, is_url

_ASIDE_NOTE = ("Checkpoints later than the step a run was resumed from (--restore_step), kept "
               "rather than deleted.\n")


class Checkpointer:
    """The workdir's `checkpoints/`: periodic, final and restored states.

    Orbax writes each step into a temporary directory and renames it when complete, so a save
    cut short (kill -9, power loss) is never taken for a checkpoint; its leftovers are removed.
    """

    def __init__(self, directory: epath.Path, max_to_keep: int, async_save: bool) -> None:
        self.directory = absolute(directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                               enable_async_checkpointing=async_save,
                                               cleanup_tmp_directories=True)
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: Any, data_state: dict[str, Any],
             pending_metrics: dict[str, float], provenance: dict[str, Any]) -> None:
        """Start saving `step` (a no-op when that step is already saved).

        `pending_metrics` are the train-metric sums since the last log: a run stopped between
        two logs resumes them, so its next log line equals an uninterrupted run's.
        """
        if step in self._manager.all_steps():
            return
        self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=ocp.args.JsonSave(data_state),
            metrics=ocp.args.JsonSave(pending_metrics),
            provenance=ocp.args.JsonSave(provenance)), force=True)

    def restore(self, step: int, abstract_state: Any
                ) -> tuple[Any, dict[str, Any], dict[str, float]]:
        """The state at `step` (with `abstract_state`'s shardings), data position, metric sums."""
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state),
                data=ocp.args.JsonRestore(), metrics=ocp.args.JsonRestore()))
        except Exception as error:
            others = [s for s in self.all_steps() if s != step]
            hint = (f"Pass --restore_step with one of the other saved steps: {others}." if others
                    else "No other checkpoint is saved; start in a new --workdir.")
            raise JaxforgeError(f"The step-{step} checkpoint in {self.directory} cannot be "
                                f"restored ({type(error).__name__}: {error}). {hint}") from error
        return restored.state, restored.data, restored.metrics

    def set_aside_after(self, step: int) -> list[int]:
        """Move checkpoints later than `step` to `abandoned_checkpoints/` (kept, not deleted),
        so that the run continued from `step` can save those steps again."""
        later = [s for s in self.all_steps() if s > step]
        if later:
            self._manager.wait_until_finished()
            aside = self.directory.parent / "abandoned_checkpoints"
            aside.mkdir(exist_ok=True)
            if is_url(aside):  # An object store has no empty folders to move into.
                (aside / "README.txt").write_text(_ASIDE_NOTE)
            for s in later:
                (self.directory / str(s)).rename(aside / f"{s}.{time.strftime('%Y%m%d-%H%M%S')}")
            self._manager.reload()
        return later

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()


def saved_steps(directory: epath.Path) -> list[int]:
    """The steps of the complete checkpoints in `directory`, from the folder names alone: Orbax
    renames a checkpoint to its step once it is written. Opening no checkpoint manager, it
    neither creates the folder nor tidies it."""
    directory = epath.Path(directory)
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir()
                  if p.name.isdigit() and (p / "state").is_dir())


def abstract_like(state: Any, shardings: Any) -> Any:
    """Shape/dtype/sharding stand-ins for restoring into `state`'s structure."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        state, shardings)
