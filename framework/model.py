"""One functional interface over a model plugin's module: `init` and `apply`.

A model plugin builds a Flax Linen module or a Flax NNX module. The trainer never calls the module
directly: it sees `init(rng, inputs) -> variables` and
`apply(variables, inputs, train, rngs) -> (outputs, updated_collections)`, with variables as plain
nested dicts (`{"params": ..., <mutable collections>}`), so batch statistics, dropout rngs,
checkpoints, regularizers and the model's own loss work the same way whatever the plugin returns.

An NNX module creates its parameters when it is constructed, so an NNX model plugin's `build` takes
the `rngs` to construct it with: `build(config, metadata, dtype, rngs)`. The trainer calls it inside
its jitted initialisation with `nnx.Rngs` drawn from the run's seed (and once under
`nnx.eval_shape`, to learn the module's structure without allocating it), then works on the
split state: `nnx.merge` before each call, `nnx.split` after it.
"""

from __future__ import annotations

import abc
import inspect
import zlib
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from framework.registry import PluginError

Variables = dict[str, Any]
# (outputs, batch) -> (per_example_loss, metrics) or a framework.WeightedLoss (framework.loss).
LossFn = Callable[[Any, dict[str, jax.Array]], tuple[Any, ...]]

NNX_STATE = "state"
"""The collection holding an NNX module's variables other than parameters and RNG streams
(batch statistics, counters): the NNX counterpart of Linen's `batch_stats`."""


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


class Model(abc.ABC):
    """A model as the trainer sees it: pure functions of plain-dict variables."""

    loss: LossFn

    @abc.abstractmethod
    def init(self, rng: jax.Array, inputs: jax.Array) -> Variables:
        """Fresh variables: `params` plus any mutable collections."""

    @abc.abstractmethod
    def apply(self, variables: Variables, inputs: jax.Array, train: bool,
              rngs: dict[str, jax.Array] | None = None) -> tuple[Any, Variables]:
        """Outputs, and the updated mutable collections (e.g. batch statistics) when training."""

    @abc.abstractmethod
    def annotated_variables(self, inputs: jax.Array) -> Variables:
        """Shapes of the variables, parameters the module annotated with logical axis names
        boxed as `nn.LogicallyPartitioned`, for deriving shardings; computes nothing."""


class LinenModel(Model):
    """A Linen module called as `module(inputs, train=...)`."""

    def __init__(self, module: nn.Module, loss: LossFn | None = None) -> None:
        self.module = module
        self.loss = loss or classification_loss

    def init(self, rng: jax.Array, inputs: jax.Array) -> Variables:
        params_rng, dropout_rng = jax.random.split(rng)
        variables = self.module.init({"params": params_rng, "dropout": dropout_rng}, inputs,
                                     train=False)
        return dict(nn.unbox(variables))  # Plain arrays; shardings come from the trainer.

    def annotated_variables(self, inputs: jax.Array) -> Variables:
        """The module's own boxes: the logical axis names of `nn.with_logical_partitioning`."""
        rng = jax.random.PRNGKey(0)
        return dict(jax.eval_shape(lambda: self.module.init({"params": rng, "dropout": rng},
                                                             inputs, train=False)))

    def apply(self, variables: Variables, inputs: jax.Array, train: bool,
              rngs: dict[str, jax.Array] | None = None) -> tuple[Any, Variables]:
        mutable = [name for name in variables if name != "params"] if train else []
        if mutable:
            outputs, updates = self.module.apply(variables, inputs, train=train, rngs=rngs,
                                                 mutable=mutable)
            return outputs, dict(updates)
        return self.module.apply(variables, inputs, train=train, rngs=rngs), {}


def _construction_rngs(rng: jax.Array) -> nnx.Rngs:
    """`params` and `dropout` streams, and a default stream for any other name a module asks."""
    default, params, dropout = jax.random.split(rng, 3)
    return nnx.Rngs(default, params=params, dropout=dropout)


def _placeholder(value: jax.ShapeDtypeStruct) -> jax.Array:
    if jnp.issubdtype(value.dtype, jax.dtypes.prng_key):
        return jnp.broadcast_to(jax.random.key(0), value.shape)
    return jnp.zeros(value.shape, value.dtype)


class NNXModel(Model):
    """An NNX module through split/merge, called as `module(inputs, train=...)`.

    Its `nnx.Param` variables are the `params` collection and every other variable except RNG
    streams is the `state` collection. RNG streams (e.g. an `nnx.Dropout`'s) are not train state:
    before a training call they are reseeded from the trainer's per-step rngs, so a step's noise
    depends only on the run's seed and the step number, as with Linen.
    """

    def __init__(self, construct: Callable[[nnx.Rngs], nnx.Module], loss: LossFn | None = None,
                 name: str = "model") -> None:
        def construct_checked(rngs: nnx.Rngs) -> nnx.Module:
            # The trainer places the parameters (config.mesh: rules, logical axis names, FSDP);
            # NNX's own eager sharding of annotated variables would need a mesh context here.
            with nnx.use_eager_sharding(False):
                module = construct(rngs)
            if not isinstance(module, nnx.Module):
                raise PluginError(
                    f"The model plugin {name!r} takes `rngs` in build(), so it must return a "
                    f"flax.nnx.Module constructed with them; it returned a "
                    f"{type(module).__name__}.")
            return module

        self._construct = construct_checked
        abstract = nnx.eval_shape(lambda: construct_checked(
            _construction_rngs(jax.random.PRNGKey(0))))
        self._graphdef, self._abstract_params, self._abstract_rng_state, self._abstract_other = (
            nnx.split(abstract, nnx.Param, nnx.RngState, ...))
        self.loss = loss or classification_loss

    def init(self, rng: jax.Array, inputs: jax.Array) -> Variables:
        """Construct the module from `rng`; `inputs` is unused (NNX modules know their shapes)."""
        module = self._construct(_construction_rngs(rng))
        _, params, _, other = nnx.split(module, nnx.Param, nnx.RngState, ...)
        variables = {"params": nnx.to_pure_dict(params)}
        if other := nnx.to_pure_dict(other):
            variables[NNX_STATE] = other
        return variables

    def apply(self, variables: Variables, inputs: jax.Array, train: bool,
              rngs: dict[str, jax.Array] | None = None) -> tuple[Any, Variables]:
        rng_state = jax.tree.map(_placeholder, self._abstract_rng_state)
        module = nnx.merge(self._graphdef, variables["params"], variables.get(NNX_STATE, {}),
                           rng_state)
        if rngs:
            nnx.reseed(module, policy="match_shape", **self._stream_keys(rngs))
        outputs = module(inputs, train=train)
        if not train or NNX_STATE not in variables:
            return outputs, {}
        _, _, _, other = nnx.split(module, nnx.Param, nnx.RngState, ...)
        return outputs, {NNX_STATE: nnx.to_pure_dict(other)}

    def annotated_variables(self, inputs: jax.Array) -> Variables:
        """Parameters created with `nnx.with_partitioning(init, names)` boxed with those names, as
        Linen's logical axis names: `config.mesh.logical_axis_rules` maps them to mesh axes."""

        def box(variable: nnx.Variable) -> Any:
            names = variable.get_metadata().get("out_sharding")
            value = variable.get_value()
            return nn.LogicallyPartitioned(value, tuple(names)) if names else value

        variables = {"params": nnx.to_pure_dict(self._abstract_params, box)}
        if other := nnx.to_pure_dict(self._abstract_other):
            variables[NNX_STATE] = other
        return variables

    def _stream_keys(self, rngs: dict[str, jax.Array]) -> dict[str, jax.Array]:
        """A key for every RNG stream the module holds: the trainer's key of that name, or one
        derived from the trainer's first key (a stream named after an unusual collection)."""
        tags = {variable.tag for variable in jax.tree.leaves(
            self._abstract_rng_state, is_leaf=lambda x: isinstance(x, nnx.Variable))}
        fallback = next(iter(rngs.values()))
        return {tag: rngs[tag] if tag in rngs else
                jax.random.fold_in(fallback, zlib.crc32(tag.encode())) for tag in tags}


def builds_nnx(plugin: Any) -> bool:
    """Whether a model plugin's `build` takes `rngs`, i.e. constructs an NNX module."""
    try:
        return "rngs" in inspect.signature(plugin.build).parameters
    except (TypeError, ValueError):  # A builtin or C callable: no signature, not NNX.
        return False


def build_model(plugin: Any, config: Any, metadata: Any, dtype: Any, name: str = "model",
                loss: LossFn | None = None) -> Model:
    """The `Model` of a model plugin, for a dataset's metadata and a compute dtype. Its loss is
    the plugin's own `loss`, else `loss` (the config's loss plugin), else classification."""
    loss = getattr(plugin, "loss", None) or loss
    if builds_nnx(plugin):
        return NNXModel(lambda rngs: plugin.build(config, metadata, dtype, rngs=rngs), loss, name)
    module = plugin.build(config, metadata, dtype)
    if isinstance(module, nnx.Module):
        raise PluginError(
            f"The model plugin {name!r} built a flax.nnx.Module, but its build() takes no `rngs`: "
            "the trainer must construct NNX modules itself to initialise them from the run's seed. "
            "Write build(config, metadata, dtype, rngs) and pass rngs to the module.")
    if not isinstance(module, nn.Module):
        raise PluginError(
            f"The model plugin {name!r} must build a flax.linen.Module (or, with build(config, "
            f"metadata, dtype, rngs), a flax.nnx.Module); it built a {type(module).__name__}.")
    return LinenModel(module, loss)
