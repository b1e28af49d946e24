"""What a person sees while training: a progress bar on a terminal, plain lines elsewhere.

A bar needs a terminal whose width is known: the bar's stream (stderr) is a TTY and reports more
than 0 columns. Otherwise (a file, a pipe, a notebook's captured stream, a terminal that reports
0 columns) each logged step prints one plain line, so that training is never silent.

The bar advances on dispatch, not on device completion: the loop calls `dispatched(step)` after
handing each dispatch to the devices (a counter and tqdm's own rate-limited redraw; no host
sync), and `update(step, metrics)` at each log: the bar shows the latest logged loss and accuracy
(train and eval) until a later log replaces them.
The one rate shown, on the bar and in the lines, is the logged `steps_per_sec` (training steps
per second between two logs, without evaluation and checkpoint time), as in metrics.jsonl.
Only the process whose `enabled` is true (process 0) prints.
"""

from __future__ import annotations

import os
import sys
import time
from typing import TextIO

RATE = "steps_per_sec"
# Shown on the bar, shortened; the plain lines show every metric.
_ON_BAR = {"train/loss": "loss", "train/accuracy": "accuracy", "eval/loss": "eval loss",
           "eval/accuracy": "eval accuracy"}
_BAR_FORMAT = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}{postfix}]"


def terminal_width(stream: TextIO) -> int:
    """The columns of the terminal `stream` writes to; 0 when it is not a terminal or does not
    say (no file descriptor, a width of 0)."""
    try:
        if not stream.isatty():
            return 0
        return max(0, os.get_terminal_size(stream.fileno()).columns)
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError.
        return 0


def _rate_text(rate: float) -> str:
    return f"{rate:.3g} steps/s" if rate < 1000 else f"{rate:,.0f} steps/s"


class Progress:
    """`stream`: where a bar would be drawn (default stderr); `out`: where the plain lines and
    messages go (default stdout)."""

    def __init__(self, total_steps: int, start_step: int, enabled: bool,
                 stream: TextIO | None = None, out: TextIO | None = None) -> None:
        self.total, self.enabled = total_steps, enabled
        self.step = start_step  # The steps dispatched so far (the bar's count).
        self._start_time, self._start_step = time.perf_counter(), start_step
        self._out = out if out is not None else sys.stdout
        self._last: dict[str, float] = {}  # The latest value of each metric the bar shows.
        self.bar = None
        stream = stream if stream is not None else sys.stderr
        if enabled and terminal_width(stream) > 0:
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, unit="step", file=stream,
                            dynamic_ncols=True, bar_format=_BAR_FORMAT)

    def dispatched(self, step: int) -> None:
        """The devices were handed the steps up to `step`; called after every dispatch."""
        self.step = step
        if self.bar is not None:
            self.bar.update(step - self.bar.n)

    def update(self, step: int, metrics: dict[str, float]) -> None:
        """A logged (or evaluated) step's metrics: the bar shows them; elsewhere, one line."""
        if not self.enabled:
            return
        self.step = max(self.step, step)
        if self.bar is not None:
            self._last.update({k: v for k, v in metrics.items() if k in _ON_BAR or k == RATE})
            shown = [f"{name} {self._last[tag]:.4g}" for tag, name in _ON_BAR.items()
                     if tag in self._last]
            if RATE in self._last:
                shown.append(_rate_text(self._last[RATE]))
            self.bar.set_postfix_str(", ".join(shown), refresh=False)
            self.bar.update(self.step - self.bar.n)
            self.bar.refresh()
            return
        shown = [f"{tag} {value:.4g}" for tag, value in metrics.items() if tag != RATE]
        if RATE in metrics:
            shown.append(_rate_text(metrics[RATE]))
        elapsed = time.perf_counter() - self._start_time
        done = step - self._start_step
        if done > 0 and step < self.total and elapsed > 0:
            shown.append(f"eta {(self.total - step) * elapsed / done:.0f}s")
        print(" | ".join([f"step {step}/{self.total}", *shown]), file=self._out, flush=True)

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text, file=self._out)
        else:
            print(text, file=self._out, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
