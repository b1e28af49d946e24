"""The plugin kinds: one table from which the registry, configs, decorators, checks and CLI derive.

Each kind has a plural name (the registry's key and the entry-point group `jaxforge.<plural>`), a
singular (`--kind model`, `register_model`, error messages), the config section that names its
plugins, and what its plugins' `build` takes and returns (text, for the docs and error messages).
Adding a kind is one entry here, its build call in `framework.loop`, and, when it has any, its
conformance checks in `framework.testing`.

This module imports nothing but the standard library: listing plugins must not start JAX.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Kind:
    """One kind of plugin."""

    name: str  # Plural: `models`; the registry's key.
    singular: str  # `model`: `--kind model`, `register_model`, error messages.
    section: str  # The config section its plugins are named in.
    # False: the section configures one plugin, named by its `name` field (`model.name`).
    # True: the section maps plugin names to their fields (`regularizers.l2.weight`).
    mapping: bool
    # (build's parameters, what build returns): one row per accepted form.
    builds: tuple[tuple[str, str], ...]
    # Fields of `framework.Plugin`, besides default_config, that `register_<singular>` accepts.
    decorator_fields: tuple[str, ...] = ()

    @property
    def group(self) -> str:
        """The entry-point group installed plugins of this kind are declared in."""
        return f"jaxforge.{self.name}"

    @property
    def decorator(self) -> str:
        """The name of the in-process registration decorator in `framework`."""
        return f"register_{self.singular}"


MODELS = Kind(
    "models", "model", "model", mapping=False, decorator_fields=("loss", "convert_weights",
                                                   "convert_weights_example"), builds=(
        ("(config, metadata: DatasetMetadata, dtype)",
         "a Flax Linen module, `__call__(x, *, train)`"),
        ("(config, metadata, dtype, rngs: nnx.Rngs)",
         "a Flax NNX module constructed with `rngs`, `__call__(x, *, train)`"),
    ))
DATASETS = Kind(
    "datasets", "dataset", "dataset", mapping=False, decorator_fields=("tokenizer",), builds=(
        ("(config, context: DataContext)", "a `framework.DataSource`"),
    ))
LOSSES = Kind(
    "losses", "loss", "loss", mapping=False, builds=(
        ("(config, metadata: DatasetMetadata)",
         "`loss(outputs, batch)` -> `(per_example_loss, {name: per_example_metric})` or a "
         "`framework.WeightedLoss` (per-target sums and counts); used unless the model plugin "
         "has its own `loss`"),
    ))
REGULARIZERS = Kind(
    "regularizers", "regularizer", "regularizers", mapping=True, builds=(
        ("(config)", "`penalty(params, batch, outputs) -> scalar` (scaled by `config.weight`) "
                     "or an `optax.GradientTransformation` (chained after the optimizer; its "
                     "state may hold a `framework.LoggedState` of metrics to log)"),
    ))
OPTIMIZERS = Kind(
    "optimizers", "optimizer", "optimizer", mapping=False, builds=(
        ("(config, num_steps: int)", "an `optax.GradientTransformation` (its state may hold "
                                     "a `framework.LoggedState` of metrics to log)"),
    ))
AUGMENTATIONS = Kind(
    "augmentations", "augmentation", "augmentations", mapping=True, builds=(
        ("(config)", "a pure JAX `(rng, batch) -> batch`"),
    ))
CALLBACKS = Kind(
    "callbacks", "callback", "callbacks", mapping=True, builds=(
        ("(config)", "a `framework.Callback`"),
    ))

KINDS: tuple[Kind, ...] = (MODELS, DATASETS, LOSSES, REGULARIZERS, OPTIMIZERS, AUGMENTATIONS,
                          CALLBACKS)
"""Every kind, in the order listings show them."""

NAMES: tuple[str, ...] = tuple(kind.name for kind in KINDS)
"""The plural names: `models`, `datasets`, ..."""


def lookup(name: str | Kind) -> Kind | None:
    """The kind called `name` (plural or singular, as in `--kind model`), or None."""
    if isinstance(name, Kind):
        return name
    return next((kind for kind in KINDS if name in (kind.name, kind.singular)), None)


def cli_choices() -> list[str]:
    """What `--kind` accepts: every plural, then every singular."""
    return [*NAMES, *(kind.singular for kind in KINDS)]


def build_table() -> str:
    """The Markdown table of what each kind's `build` takes and returns (for the docs)."""
    rows = [("kind", "build(...)", "returns")]
    for kind in KINDS:
        rows += [(kind.name if i == 0 else "", params, returns)
                 for i, (params, returns) in enumerate(kind.builds)]
    widths = [max(len(row[c]) for row in rows) for c in range(3)]
    lines = ["| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths)) + " |"
             for row in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)
