"""One functional interface over a model plugin's module: `init` and `apply`.

The trainer never calls the module directly, so batch norm collections, dropout rngs and the
model's own loss are handled in one place whatever the plugin returns.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

Variables = dict[str, Any]
LossFn = Callable[[Any, dict[str, jax.Array]], tuple[jax.Array, dict[str, jax.Array]]]


def classification_loss(logits: jax.Array, batch: dict[str, jax.Array]
                        ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Per-example softmax cross-entropy and accuracy, computed in float32.

    A batch mixed by mixup/cutmix carries `label_b` and `label_weight`: the loss and accuracy are
    then the weighted sums over both labels.
    """
    logits = logits.astype(jnp.float32)

    def loss_and_accuracy(labels: jax.Array) -> tuple[jax.Array, jax.Array]:
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        return loss, (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)

    loss, accuracy = loss_and_accuracy(batch["label"])
    if "label_b" in batch:
        weight = batch["label_weight"]
        loss_b, accuracy_b = loss_and_accuracy(batch["label_b"])
        loss = weight * loss + (1 - weight) * loss_b
        accuracy = weight * accuracy + (1 - weight) * accuracy_b
    return loss, {"accuracy": accuracy}


class Model:
    """A Linen module seen as `init(rng, inputs)` and `apply(variables, inputs, train, rngs)`."""

    def __init__(self, module: nn.Module, loss: LossFn | None = None) -> None:
        if not isinstance(module, nn.Module):
            raise TypeError(f"A model plugin must build a flax.linen.Module, got "
                            f"{type(module).__name__}.")
        self.module = module
        self.loss = loss or classification_loss

    def init(self, rng: jax.Array, inputs: jax.Array) -> Variables:
        params_rng, dropout_rng = jax.random.split(rng)
        variables = self.module.init({"params": params_rng, "dropout": dropout_rng}, inputs,
                                     train=False)
        return dict(nn.unbox(variables))  # Plain arrays; shardings come from the trainer.

    def annotated_variables(self, inputs: jax.Array) -> Variables:
        """Shapes of the variables with the module's metadata boxes kept (logical axis names of
        `nn.with_logical_partitioning`), for deriving shardings; computes nothing."""
        rng = jax.random.PRNGKey(0)
        return dict(jax.eval_shape(lambda: self.module.init({"params": rng, "dropout": rng},
                                                             inputs, train=False)))

    def apply(self, variables: Variables, inputs: jax.Array, train: bool,
              rngs: dict[str, jax.Array] | None = None) -> tuple[Any, Variables]:
        """Outputs, and the updated mutable collections (e.g. batch_stats) when training."""
        mutable = [name for name in variables if name != "params"] if train else []
        if mutable:
            outputs, updates = self.module.apply(variables, inputs, train=train, rngs=rngs,
                                                 mutable=mutable)
            return outputs, dict(updates)
        return self.module.apply(variables, inputs, train=train, rngs=rngs), {}
