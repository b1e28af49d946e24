"""The update rule of a run: clipping, the optimizer, regularizer transforms, accumulation.

    optax.MultiSteps(chain(clip_by_global_norm, optimizer, *regularizer transforms), k)

Clipping comes first so it bounds the gradient the optimizer sees (with accumulation: the
averaged gradient of the k micro-batches); regularizer transforms (decoupled weight decay,
pruning masks) come after the optimizer, so they act on its update and on the parameters.
"""

from __future__ import annotations

import ml_collections
import optax


def update_rule(optimizer: optax.GradientTransformation,
                       regularizers: list[optax.GradientTransformation],
                       train: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """The run's GradientTransformation from the optimizer plugin and `config.train` switches."""
    parts = [optax.clip_by_global_norm(train.grad_clip_norm)] if train.grad_clip_norm else []
    tx = optax.chain(*parts, optimizer, *regularizers) if parts or regularizers else optimizer
    if train.accumulation_steps > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=train.accumulation_steps)
    return tx
