"""Early stopping (as Keras' `EarlyStopping`): end the run when an eval metric stops improving.

After each evaluation, the metric is compared with the best so far; an evaluation that does not
beat it by more than `min_delta` counts towards `patience`. After `patience` such evaluations
in a row the run stops (summary.json: `stopped_early`, `stop_step`, `stop_reason`). With
`restore_best`, the run ends with the state of the best evaluation: its final checkpoint holds
the best params (summary.json: `early_stopping.best_step`, and the framework's
`final_state_step`, `final_state_eval`, `final_state_restored_by`).
"""

from __future__ import annotations

import math
from typing import Any

import ml_collections

import framework


class EarlyStopping(framework.Callback):
    def __init__(self, config: ml_collections.ConfigDict) -> None:
        self.metric, self.mode = config.metric, config.mode
        self.patience, self.min_delta = config.patience, config.min_delta
        self.restore_best = config.restore_best
        self.best = math.inf if self.mode == "min" else -math.inf
        self.best_step: int | None = None
        self.final_state_step: int | None = None  # The step of the state `final_state` returns.
        # On the host: the device buffers are donated to the next step.
        self.best_state: framework.HostCopy | None = None
        self.evaluations_without_improvement = 0

    def _improved(self, value: float) -> bool:
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def on_eval(self, step: int, metrics: dict[str, float], state: Any) -> None:
        if self.metric not in metrics:
            raise framework.ConfigError(
                f"config.callbacks.early_stopping.metric={self.metric!r} is not an eval metric "
                f"of this run; it has {', '.join(sorted(metrics))}.")
        value = metrics[self.metric]
        if math.isfinite(value) and self._improved(value):
            self.best, self.best_step = value, step
            self.evaluations_without_improvement = 0
            if self.restore_best:
                self.best_state = framework.HostCopy(state)
            return
        self.evaluations_without_improvement += 1
        if self.evaluations_without_improvement >= self.patience:
            self.stop_training = True
            self.stop_reason = (
                f"{self.metric} did not improve on {self.best:.6g} (step {self.best_step}) by "
                f"more than {self.min_delta} in {self.patience} evaluation(s)")

    def final_state(self, state: Any) -> Any:
        if self.restore_best and self.best_state is not None:
            self.final_state_step = self.best_step
            return self.best_state.to_devices()
        return state

    def on_end(self, summary: dict[str, Any], state: Any) -> None:
        summary["early_stopping"] = {
            "metric": self.metric, "best": self.best if self.best_step is not None else None,
            "best_step": self.best_step,
            "restored_best": bool(self.restore_best and self.best_state is not None)}


def default_config() -> ml_collections.ConfigDict:
    return framework.fields(
        metric=("eval/loss", "The eval metric watched, e.g. eval/loss or eval/accuracy."),
        mode=("min", "min | max: whether a smaller or a larger value is better."),
        patience=(3, "Evaluations without improvement before stopping."),
        min_delta=(0.0, "The least change that counts as an improvement."),
        restore_best=(True, "End with the best evaluated state, not the last one."),
    )


def validate(config: ml_collections.ConfigDict) -> None:
    framework.check(config.metric.startswith("eval/"), "metric",
                    f"must be an eval metric such as 'eval/loss' or 'eval/accuracy', got "
                    f"{config.metric!r}.")
    framework.check(config.mode in ("min", "max"), "mode",
                    f"must be 'min' or 'max', got {config.mode!r}.")
    framework.check(config.patience >= 1, "patience", f"must be >= 1, got {config.patience}.")
    framework.check(config.min_delta >= 0, "min_delta", f"must be >= 0, got {config.min_delta}.")


early_stopping = framework.Plugin(
    build=EarlyStopping, default_config=default_config, validate=validate, api_version=1,
    description="Stop when an eval metric stops improving; optionally end with the best state.")
