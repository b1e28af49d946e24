"""The plugin contracts: what each kind of plugin builds, and the decorators for in-process plugins.

Every plugin is an object with `default_config()` (a ConfigDict of its fields) and `build(...)`;
`Plugin` is the convenient way to make one. What `build` receives and returns depends on the kind;
the kinds and their `build` signatures are declared in `framework.kinds`, and
`framework.kinds.build_table()` renders them as a table (`python -c "from framework import kinds;
print(kinds.build_table())"`).

Any plugin may define `validate(config)`, raising `framework.ConfigError` for a bad value; it
runs when the config is resolved, before anything is built. A model plugin may also define
`loss(outputs, batch)`, returning what a `losses` plugin's loss returns (see `framework.loss`);
without it, the loss plugin `config.loss.name` names is used (default `cross_entropy`).

A model plugin may define `convert_weights(tensors) -> tensors`: from a dict of numpy arrays
named and laid out as another framework writes them (a torchvision checkpoint saved as
safetensors, say) to a dict keyed by this plugin's names, `COLLECTION/PATH` as in a jaxforge
weights file (`params/Dense_0/kernel`, `batch_stats/BatchNorm_0/mean`: the collection, then the
path parameters.txt prints), with this model's shapes (transpose kernels, rename, drop what this
model lacks). `config.init_from.convert=true` applies it to the `.safetensors` file
`init_from.path` names, before include/exclude/rename. A plugin with `convert_weights` also
gives `convert_weights_example(config, metadata) -> tensors`: what the other framework would
write for the model this plugin builds from `config` (its resolved section) and `metadata`,
in the foreign layout; the conformance check `model_convert_weights` converts it, and every
converted name must be one of the model's parameter or collection arrays, of the same shape.

A model plugin whose module annotates its parameters with logical axis names
(`nn.with_logical_partitioning`) may ship `logical_axis_rules`, `((logical name, mesh axis or
None), ...)`: the trainer maps the names with them when `config.mesh.logical_axis_rules` is
empty (a non-empty config value replaces them whole). `transformer_lm`'s give Megatron-style
tensor parallelism: `(("embed", "fsdp"), ("heads", "model"), ("mlp", "model"), ...)`.

A Linen model can generate text (`jaxforge generate`, `framework.generate`) when its
`__call__(tokens, *, train, decode=False, start=0)` with `decode=True` keeps a `cache`
collection whose length is that of the tokens it was initialised with, and returns the logits
of `tokens` placed at positions `start, start+1, ...` given what the cache holds before them.

A dataset plugin whose examples are tokens may define `tokenizer(config) -> Tokenizer`
(`config`: its resolved `dataset` section; a Tokenizer has `vocab_size`, `encode(text) ->
list[int]` and `decode(ids) -> str`, as in `framework.tokenizers`), so that text can be turned
into the model's ids and back without building the dataset (`jaxforge generate`).

`dtype` is the compute dtype (`train.precision`); parameters stay float32. A model `build` that
takes `rngs` builds an NNX module: the trainer calls it inside its jitted initialisation with
`nnx.Rngs` from the run's seed (streams `params`, `dropout`, and a default one), so the run's seed
decides the initial weights; RNG streams the module keeps (an `nnx.Dropout`'s) are reseeded from
the trainer's rng at every training step. `framework.testing` checks each kind's contract.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import ml_collections

from framework import kinds as kinds_lib
from framework.registry import PLUGIN_API_VERSION, registry


@dataclasses.dataclass(frozen=True, kw_only=True)
class Plugin:
    """A plugin of any kind. Write `api_version` as a literal: the version you wrote it for."""

    build: Callable[..., Any]
    api_version: int
    default_config: Callable[[], ml_collections.ConfigDict] = ml_collections.ConfigDict
    validate: Callable[[ml_collections.ConfigDict], None] | None = None  # Raise ConfigError.
    loss: Callable[..., Any] | None = None  # Models only: a custom loss and metrics.
    # Models only: another framework's weights (name -> numpy array) -> this model's
    # (`params/Dense_0/kernel` -> array), for `config.init_from.convert`; with an example input.
    convert_weights: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    convert_weights_example: Callable[[Any, Any], dict[str, Any]] | None = None
    # Models only: ((logical axis name, mesh axis or None), ...) for the names the module
    # annotates, used when config.mesh.logical_axis_rules is empty.
    logical_axis_rules: tuple[tuple[str, str | None], ...] = ()
    # Datasets only: `tokenizer(config) -> framework.tokenizers.Tokenizer` for token data.
    tokenizer: Callable[[ml_collections.ConfigDict], Any] | None = None
    description: str = ""


@dataclasses.dataclass(frozen=True)
class InputNormalization:
    """Inputs stored as integers (uint8 pixels) and normalised on the device, inside the compiled
    train and eval steps (before augmentations): `(inputs / scale - mean) / std` in float32, `mean`
    and `std` per channel (the last axis) or one value. Four times fewer bytes cross to the device
    than float32 pixels, and no Python runs per example on the host."""

    scale: float = 255.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)


@dataclasses.dataclass(frozen=True)
class DatasetMetadata:
    """What a dataset promises about its examples; models are built from it."""

    input_shape: tuple[int, ...]  # One example, e.g. (28, 28, 1); (T,) for T tokens.
    # The classes of integer targets, or for token data the vocabulary size (inputs and
    # targets both index it); 0 for float (regression) targets.
    num_classes: int
    num_train: int
    num_eval: int
    input_dtype: str = "float32"
    target_shape: tuple[int, ...] = ()  # One example's `label`: () a class, (T,) T tokens.
    target_dtype: str = "int32"  # An integer dtype for classes and tokens, a float for values.
    # Batches hold `inputs` of input_dtype (e.g. uint8) that the trainer normalises on the device;
    # the model then sees float32 inputs (see `framework.normalization`). None: as they are.
    normalize: InputNormalization | None = None


@dataclasses.dataclass(frozen=True)
class DataContext:
    """Where a dataset runs: its seed and this process's place among all processes."""

    seed: int
    process_index: int = 0
    process_count: int = 1


class Callback:
    """Hooks the training loop calls on the host. Set `stop_training` to end the run early.

    Hooks run at log, eval and checkpoint steps (never every step, so they cost no host sync).
    `state` is the current train state; read it, do not modify it. Its buffers are reused by
    the next step: to keep a copy, keep `framework.HostCopy(state)` (`jax.device_get` fails
    where the state is sharded across processes).
    """

    stop_training: bool = False
    stop_reason: str = ""
    # When `final_state` returns another state: the step it was kept at, so that summary.json
    # and the end-of-run line say which state the final checkpoint holds.
    final_state_step: int | None = None

    def on_log(self, step: int, metrics: dict[str, float], state: Any) -> None:
        """After train metrics are logged."""

    def on_eval(self, step: int, metrics: dict[str, float], state: Any) -> None:
        """After an evaluation over the whole eval split."""

    def on_checkpoint(self, step: int, state: Any) -> None:
        """After a checkpoint save was started."""

    def final_state(self, state: Any) -> Any:
        """Once, before the final checkpoint: the state the run ends with. Return `state`, or
        another state of the same structure (on host or device), e.g. the best evaluated one
        for early stopping with `restore_best`; then set `final_state_step` to its step."""
        return state

    def on_end(self, summary: dict[str, Any], state: Any) -> None:
        """Once, when training ends; `summary` is what goes into summary.json (add to it)."""


def _decorator(kind: kinds_lib.Kind) -> Callable[..., Callable[[Callable[..., Any]], Any]]:
    """`register_<singular>(name, *, default_config=None, ...)` for one kind of the table."""

    def register(name: str, *, default_config: Callable[[], ml_collections.ConfigDict] | None
                 = None, validate: Callable[[ml_collections.ConfigDict], None] | None = None,
                 **fields: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        unknown = set(fields) - set(kind.decorator_fields)
        if unknown:
            raise TypeError(f"{kind.decorator}() got unexpected keyword arguments "
                            f"{', '.join(sorted(unknown))}.")

        def decorator(build: Callable[..., Any]) -> Callable[..., Any]:
            plugin = Plugin(build=build, api_version=PLUGIN_API_VERSION,
                            default_config=default_config or ml_collections.ConfigDict,
                            validate=validate, description=(build.__doc__ or "").strip(),
                            **fields)
            registry.register(kind.name, name, plugin)
            return build

        return decorator

    register.__name__ = register.__qualname__ = kind.decorator
    extra = "".join(f", {field}=None" for field in kind.decorator_fields)
    register.__doc__ = (f"Decorator: register a {kind.singular} builder in-process as "
                        f"`local:<name>` (notebooks, tests).\n\n    {kind.decorator}(name, *, "
                        f"default_config=None, validate=None{extra})")
    return register


# register_model, register_dataset, ...: one decorator per kind of the table.
for _kind in kinds_lib.KINDS:
    globals()[_kind.decorator] = _decorator(_kind)
del _kind
