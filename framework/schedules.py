"""Learning-rate schedules from config fields, built with optax's own schedules."""

from __future__ import annotations

import ml_collections
import optax

from framework.config import check, fields

SCHEDULES = ("constant", "cosine", "warmup_cosine", "piecewise")


def schedule_fields() -> ml_collections.ConfigDict:
    """The learning-rate fields every built-in optimizer has; third-party ones may reuse them."""
    return fields(
        learning_rate=(1e-3, "Peak learning rate."),
        schedule=("constant", "How the rate changes over the run: constant | cosine | "
                              "warmup_cosine | piecewise."),
        warmup_steps=(0, "warmup_cosine: linear warmup from 0 over this many steps."),
        end_learning_rate=(0.0, "cosine, warmup_cosine: the final value."),
        boundaries=((), "piecewise: steps at which the rate is multiplied by `scales`."),
        scales=((), "piecewise: the factors, one per boundary."),
    )


def validate_schedule(config: ml_collections.ConfigDict) -> None:
    check(config.learning_rate > 0, "learning_rate",
          f"must be > 0, got {config.learning_rate}.")
    check(config.schedule in SCHEDULES, "schedule",
          f"must be one of {', '.join(SCHEDULES)}, got {config.schedule!r}.")
    check(config.warmup_steps >= 0, "warmup_steps",
          f"must be >= 0, got {config.warmup_steps}.")
    check(len(config.boundaries) == len(config.scales), "scales",
          f"must have one factor per boundary: {len(config.boundaries)} boundaries, "
          f"{len(config.scales)} scales.")


def make_schedule(config: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule:
    """The optax schedule that `config.schedule` names, over `num_steps` optimizer steps."""
    lr = config.learning_rate
    if config.schedule == "cosine":
        return optax.cosine_decay_schedule(lr, num_steps, alpha=config.end_learning_rate / lr)
    if config.schedule == "warmup_cosine":
        return optax.warmup_cosine_decay_schedule(
            0.0, lr, config.warmup_steps, max(num_steps, config.warmup_steps + 1),
            end_value=config.end_learning_rate)
    if config.schedule == "piecewise":
        return optax.piecewise_constant_schedule(
            lr, {int(b): float(s) for b, s in zip(config.boundaries, config.scales)})
    return optax.constant_schedule(lr)
