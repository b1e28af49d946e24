"""What a loss function returns, and how the trainer averages it.

A loss is `loss(outputs, batch)`: a `losses` plugin builds one (`config.loss.name`), or a model
plugin gives its own. It returns one of two forms:

- `(per_example_loss, {name: per_example_metric})`, arrays of shape [B]: one value per
  example. The trainer averages over the examples (the real ones, in evaluation).
- `WeightedLoss(loss, metrics, weight)`, arrays of shape [B]: each example's loss and metrics
  *summed* over its counted targets (the tokens of a sequence whose `label_mask` is 1), and
  `weight`, how many targets it counted (the sum of its `label_mask`). The trainer averages per
  target: a batch's loss is `sum(loss) / sum(weight)`, and evaluation sums both over the whole
  split, so padding (eval `mask` 0, `label_mask` 0) counts for nothing.

A metric that is not a mean, such as perplexity (exp of the mean loss), is derived on the host
from the means: a loss function may carry `derived_metrics`, a dict of name -> function of the
means ({"loss": ..., <metric>: ...}) giving a float; the trainer logs it as `train/<name>` and
`eval/<name>` beside the means.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from framework.kinds import LOSSES
from framework.registry import registry

DerivedMetric = Callable[[Mapping[str, float]], float]
LossFn = Callable[[Any, dict[str, jax.Array]], tuple[Any, ...]]


class WeightedLoss(NamedTuple):
    """A loss over several targets per example, averaged per target (see the module doc)."""

    loss: jax.Array  # [B]: each example's loss summed over its counted targets.
    metrics: dict[str, jax.Array]  # [B]: each metric summed the same way.
    weight: jax.Array  # [B]: each example's counted targets (its label_mask summed).


def is_weighted(result: tuple[Any, ...]) -> bool:
    """Whether a loss result is the per-target form (a `WeightedLoss` or a 3-tuple)."""
    return len(result) == 3


def batch_means(result: tuple[Any, ...]) -> tuple[jax.Array, dict[str, jax.Array]]:
    """A train batch's loss and metrics: means per example, or per counted target."""
    if not is_weighted(result):
        per_example_loss, per_example_metrics = result
        return jnp.mean(per_example_loss), {k: jnp.mean(v) for k, v in
                                            per_example_metrics.items()}
    loss, metrics, weight = result
    total = jnp.sum(weight.astype(jnp.float32))
    total = jnp.where(total > 0, total, 1.0)  # A batch of padding only: 0, not 0 / 0.
    return jnp.sum(loss) / total, {k: jnp.sum(v) / total for k, v in metrics.items()}


def eval_sums(result: tuple[Any, ...], mask: jax.Array
              ) -> tuple[dict[str, jax.Array], jax.Array]:
    """An eval batch's sums over its real examples (`mask`), and how many they count:
    examples, or targets for the per-target form."""
    loss, metrics, *weight = result
    per_example = {"loss": loss, **metrics}
    sums = {k: jnp.sum(v.astype(jnp.float32) * mask) for k, v in per_example.items()}
    count = jnp.sum(weight[0].astype(jnp.float32) * mask) if weight else jnp.sum(mask)
    return sums, count


def build_loss(model_plugin: Any, config: Any, metadata: Any, loss_plugin: Any = None
               ) -> LossFn | None:
    """The loss a run uses: None where the model plugin has its own `loss` (which wins; the
    loss plugin is then not built, so its requirements on the data do not apply), else what
    the loss plugin (`loss_plugin`, or the one `config.loss.name` names) builds."""
    if getattr(model_plugin, "loss", None) is not None:
        return None
    if loss_plugin is None:
        loss_plugin = registry.load(LOSSES, config.loss.name)
    return loss_plugin.build(config.loss, metadata)


def derived_metrics(loss_fn: Any) -> Mapping[str, DerivedMetric]:
    """The host-side metrics a loss function declares (`loss_fn.derived_metrics`), or none."""
    return getattr(loss_fn, "derived_metrics", None) or {}


def perplexity(means: Mapping[str, float]) -> float:
    """exp of the mean per-token loss (in nats); inf where that overflows."""
    loss = means["loss"]
    return math.inf if loss > 709 else math.exp(loss)  # NaN (no step) stays NaN.


def bits_per_token(means: Mapping[str, float]) -> float:
    """The mean per-token loss in bits; bits per byte for byte-level tokens."""
    return means["loss"] / math.log(2)
