"""A `jax.profiler` trace of a window of training steps (`config.train.profile_steps`).

The window `(start, end)` traces the optimizer steps after step `start` up to step `end`: the
trace starts before the dispatch that leaves step `start` and stops once step `end` has finished
on the devices (or training ends). Both bounds are multiples of `train.steps_per_dispatch`
(checked in the config), so they fall on dispatch boundaries. A run resumed past `start` does not
trace.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax


class ProfileWindow:
    """Starts and stops one trace around the steps of `window` (empty: never)."""

    def __init__(self, window: Sequence[int], trace_dir: Path, num_steps: int) -> None:
        start, end = tuple(window) if window else (-1, -1)
        self._start, self._end = start, min(end, num_steps)
        self.trace_dir = Path(trace_dir)
        self._tracing = False

    def before_dispatch(self, step: int) -> None:
        """Call with the step count before each dispatch."""
        if step == self._start:
            self.trace_dir.mkdir(parents=True, exist_ok=True)
            # Also write perfetto_trace.json.gz, which ui.perfetto.dev opens without TensorBoard.
            jax.profiler.start_trace(str(self.trace_dir), create_perfetto_trace=True)
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
