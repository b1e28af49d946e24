"""Stop cleanly on SIGTERM/SIGINT: finish the current step, checkpoint, exit 0; resume later.

Cloud TPU VMs and spot GPUs announce preemption with SIGTERM. A first SIGTERM or SIGINT asks the
loop to stop at the next dispatch boundary; a second SIGINT aborts at once (KeyboardInterrupt).
In a multi-process run every process must stop at the same step, so the decision comes from
JAX's preemption sync point (the coordination service sees the signal on any process).
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

import jax


class StopSignal:
    """A context manager that turns the first SIGTERM/SIGINT into a stop request."""

    def __init__(self) -> None:
        self.signal_name = ""
        self._previous: dict[int, Any] = {}
        self._checks = 0  # Calls of should_stop: the sync point's counter, the same everywhere.

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal_name and signum == signal.SIGINT:
            raise KeyboardInterrupt  # The second Ctrl-C: abort now.
        self.signal_name = signal.Signals(signum).name
        if jax.process_count() > 1:  # Tell JAX's preemption notifier, which owns SIGTERM.
            os.kill(os.getpid(), signal.SIGTERM)

    def __enter__(self) -> StopSignal:
        if threading.current_thread() is threading.main_thread():
            # Multi-process runs leave SIGTERM to JAX's preemption notifier (see should_stop)
            # and pass a first Ctrl-C on to it.
            signals = (signal.SIGTERM, signal.SIGINT) if jax.process_count() == 1 else (
                signal.SIGINT,)
            for signum in signals:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def should_stop(self) -> bool:
        """Whether all processes stop now; each process calls it once after every dispatch.

        In a multi-process run JAX sets the sync point to the furthest process's last counter
        + 1, and stops only where a counter equals it: so the counter is this call count, which
        grows by one, not the step, which grows by `steps_per_dispatch`."""
        self._checks += 1
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            return bool(multihost_utils.reached_preemption_sync_point(self._checks))
        return bool(self.signal_name)
