"""What a person sees while training: a progress bar on a terminal, plain log lines elsewhere."""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total_steps: int, start_step: int, enabled: bool) -> None:
        self.total, self.enabled = total_steps, enabled
        self._start_time, self._start_step = time.perf_counter(), start_step
        self._bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total_steps, initial=start_step, unit="step",
                             dynamic_ncols=True)
            self._step = start_step

    def update(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(step - self._step)
            self._step = step
            self._bar.set_postfix({k.split("/")[-1]: f"{v:.4g}" for k, v in metrics.items()
                                   if k in ("train/loss", "eval/accuracy", "steps_per_sec")})
            return
        elapsed = time.perf_counter() - self._start_time
        rate = (step - self._start_step) / elapsed if elapsed > 0 else 0.0
        eta = (self.total - step) / rate if rate > 0 else float("nan")
        shown = " | ".join(f"{k} {v:.4g}" for k, v in metrics.items())
        print(f"step {step}/{self.total} | {shown} | eta {eta:.0f}s", flush=True)

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
