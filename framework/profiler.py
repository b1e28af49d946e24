"""A `jax.profiler` trace of a window of training steps (`config.train.profile_steps`).

The window `(start, end)` traces the optimizer steps after step `start` up to step `end`: the
trace starts before the dispatch that leaves step `start` and stops once step `end` has finished
on the devices (or training ends). Both bounds are multiples of `train.steps_per_dispatch`
(checked in the config), so they fall on dispatch boundaries. A run resumed past `start` does not
trace.
"""

from __future__ import annotations

import pathlib
import shutil
import tempfile
from collections.abc import Sequence
from typing import Any

import jax
from etils import epath

from framework.workdir import is_url


class ProfileWindow:
    """Starts and stops one trace around the steps of `window` (empty: never)."""

    def __init__(self, window: Sequence[int], trace_dir: epath.Path, num_steps: int) -> None:
        start, end = tuple(window) if window else (-1, -1)
        self._start, self._end = start, min(end, num_steps)
        self.trace_dir = epath.Path(trace_dir)
        self._tracing = False
        self._local_dir: str | None = None  # Where the profiler writes: an object store's
        # trace is written on this host first, then copied (the profiler writes local files).

    def before_dispatch(self, step: int) -> None:
        """Call with the step count before each dispatch."""
        if step == self._start:
            self.trace_dir.mkdir(parents=True, exist_ok=True)
            self._local_dir = (tempfile.mkdtemp(prefix="jaxforge-profile-")
                               if is_url(self.trace_dir) else str(self.trace_dir))
            # Also write perfetto_trace.json.gz, which ui.perfetto.dev opens without TensorBoard.
            jax.profiler.start_trace(self._local_dir, create_perfetto_trace=True)
            self._tracing = True

    def after_dispatch(self, step: int, outputs: Any) -> None:
        """Call with the step count after each dispatch and that dispatch's outputs."""
        if self._tracing and step >= self._end:
            self.stop(outputs)

    def stop(self, outputs: Any = None) -> None:
        """End the trace (if one is running) once `outputs` are computed; writes the files."""
        if self._tracing:
            jax.block_until_ready(outputs)
            self._tracing = False
            jax.profiler.stop_trace()
            if self._local_dir != str(self.trace_dir):
                _copy_tree(pathlib.Path(self._local_dir), self.trace_dir)
                shutil.rmtree(self._local_dir)


def _copy_tree(source: pathlib.Path, target: epath.Path) -> None:
    for file in source.rglob("*"):
        if file.is_file():
            (target / file.relative_to(source).as_posix()).write_bytes(file.read_bytes())
