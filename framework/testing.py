"""Conformance checks: does a plugin keep the contract the trainer relies on?

    from framework.testing import check_plugin, parametrize_with_checks

    check_plugin("models", "my_package:my_net")  # Raises ConformanceError naming each failure.

    @parametrize_with_checks(["my_package:my_net", "my_package:my_data"])
    def test_conformance(check):  # One pytest test per plugin and check.
        check()

Every check builds the plugin as the trainer does, inside a small experiment: `tiny_config()`, or
the experiment you pass (for instance one with the dataset a model is meant for). A failing check
says what happened and what the contract wants. `jaxforge plugins check ID` runs the same checks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import subprocess
import sys
import sysconfig
import time
import traceback
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from framework import config as config_lib
from framework.data import DataSource, batch_problem, declares_targets
from framework.kinds import (
    AUGMENTATIONS,
    CALLBACKS,
    DATASETS,
    LOSSES,
    MODELS,
    OPTIMIZERS,
    REGULARIZERS,
)
from framework.loss import build_loss, is_weighted
from framework.model import Model, build_model
from framework.normalization import model_metadata, normalize_batch
from framework.plugin import Callback, DataContext, DatasetMetadata
from framework.registry import (
    KINDS,
    LOCAL_DISTRIBUTION,
    PLUGIN_API_VERSION,
    PluginAPIVersionWarning,
    PluginError,
    PluginInfo,
    check_contract,
    kind_of,
    registry,
)
from framework.state import create_train_state

PluginSpec = str | tuple[str, Any] | tuple[str, Any, ml_collections.ConfigDict | None]
"""What `parametrize_with_checks` takes per plugin: an id (its kind is looked up), or
`(kind, id_or_plugin)`, or `(kind, id_or_plugin, experiment_config)`."""

IN_PROCESS_NAME = "plugin_under_check"  # The local name a plugin object is checked under.
IMPORT_TIMEOUT_S = 300


def tiny_config(**sections: dict[str, Any]) -> ml_collections.ConfigDict:
    """A seconds-long experiment (an MLP on `synthetic` data) to build and train plugins in.

    Each keyword replaces fields of a section; a section given a `name` is another plugin, so it
    keeps only the fields given: `tiny_config(model={"name": "cnn"}, train={"num_steps": 10})`.
    """
    config = ml_collections.ConfigDict({
        "seed": 0,
        "model": {"name": "mlp", "hidden_sizes": (32,)},
        "dataset": {"name": "synthetic", "shape": (4, 4, 1), "num_classes": 4,
                    "num_train": 256, "num_eval": 100, "batch_size": 32, "eval_batch_size": 32},
        "optimizer": {"name": "adam", "learning_rate": 1e-2},
        "train": {"num_steps": 40, "log_every_steps": 10, "eval_every_steps": 20},
        "checkpoint": {"every_steps": 20},
    })
    for name, values in sections.items():
        values = dict(values)
        if name == "dataset" and "name" in values:
            values.setdefault("batch_size", 32)
        if name not in config or "name" in values:  # Another plugin: its own fields only.
            config[name] = ml_collections.ConfigDict()
        for key, value in values.items():
            config[name][key] = value
    return config


class ContractViolation(Exception):
    """Raised inside a check: what the plugin did that the contract does not allow."""


class CheckSkipped(Exception):
    """Raised inside a check that does not apply to this plugin, with the reason."""


class ConformanceError(AssertionError):
    """A plugin failed conformance checks; the message names each failure and what is wanted."""


@dataclasses.dataclass(frozen=True)
class Check:
    """One rule of a plugin kind's contract."""

    name: str
    kinds: tuple[str, ...]
    wants: str  # What the contract wants, shown with every failure.
    run: Callable[[Subject], None]


@dataclasses.dataclass(frozen=True)
class CheckResult:
    plugin: str
    kind: str
    check: str
    status: str  # pass | fail | skip
    message: str
    seconds: float
    traceback: str = ""  # A failure's whole traceback (`jaxforge plugins check --verbose`).

    @property
    def passed(self) -> bool:
        return self.status != "fail"


_CHECKS: list[Check] = []


def _check(name: str, kinds: Iterable[Any], wants: str
           ) -> Callable[[Callable[[Subject], None]], Callable[[Subject], None]]:
    """Declare a check of the plugins of `kinds` (names or `framework.kinds.Kind`s)."""
    def register(run: Callable[[Subject], None]) -> Callable[[Subject], None]:
        _CHECKS.append(Check(name, tuple(kind_of(k).name for k in kinds), wants, run))
        return run

    return register


def checks_for(kind: str) -> list[Check]:
    """The checks a plugin of `kind` must pass, in the order they run."""
    kind = kind_of(kind).name
    return [check for check in _CHECKS if kind in check.kinds]


# The plugin under check -----------------------------------------------------------------------


class Subject:
    """One plugin in its experiment; builds what the checks need once, on first use."""

    def __init__(self, kind: str, target: Any, config: ml_collections.ConfigDict | None = None,
                 overrides: Sequence[str] | dict[str, str] = ()) -> None:
        self.kind_spec = kind_of(kind)
        self.kind = self.kind_spec.name
        self.target = target
        self.info: PluginInfo | None = None
        if isinstance(target, str):
            self.info = registry.resolve(self.kind, target)
            self.label, self.name = self.info.id, self.info.id
        else:
            build = getattr(target, "build", None)
            where = getattr(build, "__qualname__", type(target).__name__)
            self.label, self.name = f"{LOCAL_DISTRIBUTION}:<{where}>", IN_PROCESS_NAME
        self.aliases = {self.name} | ({self.info.name} if self.info else set())
        self._experiment = config
        self._overrides = overrides

    @functools.cached_property
    def plugin(self) -> Any:
        with warnings.catch_warnings():  # The api_version check reports a mismatch.
            warnings.simplefilter("ignore", PluginAPIVersionWarning)
            if self.info is not None:
                return registry.load(self.kind, self.target)
            check_contract(PluginInfo(self.kind, self.name, LOCAL_DISTRIBUTION, "",
                                      "<in-process object>"), self.target)
            return self.target

    def registered(self) -> Any:
        """Make a plugin object resolvable by name (configs name plugins) for a `with` block."""
        if self.info is not None:
            return contextlib.nullcontext()
        return registry.registered(self.kind, self.name, self.plugin)

    @functools.cached_property
    def config(self) -> ml_collections.ConfigDict:
        """The resolved experiment, with this plugin in its section."""
        experiment = ml_collections.ConfigDict(
            (tiny_config() if self._experiment is None else self._experiment).to_dict())
        section = self.kind_spec.section
        if not self.kind_spec.mapping:
            written = experiment.get(section) or ml_collections.ConfigDict()
            if written.get("name") not in self.aliases:  # Another plugin's fields do not apply.
                framework_fields = config_lib.base_config()[section].keys()
                written = ml_collections.ConfigDict(
                    {k: v for k, v in written.items() if k in framework_fields})
            written.name = self.name
            experiment[section] = written
        else:
            written = experiment.get(section) or ml_collections.ConfigDict()
            fields = next((written[k] for k in sorted(self.aliases) if k in written),
                          ml_collections.ConfigDict())
            experiment[section] = ml_collections.ConfigDict({self.name: fields})
        with self.registered(), warnings.catch_warnings():
            warnings.simplefilter("ignore", PluginAPIVersionWarning)
            resolved = config_lib.resolve_config(experiment, self._overrides)
        if not self.kind_spec.mapping and resolved[section].name != self.name:
            raise config_lib.ConfigError(
                f"config.{section}.name is the plugin under check, {self.name!r}; "
                "do not override it.")
        return resolved

    @property
    def section(self) -> ml_collections.ConfigDict:
        """This plugin's resolved config: what its `build` receives."""
        section = self.config[self.kind_spec.section]
        return section[self.name] if self.kind_spec.mapping else section

    @property
    def section_path(self) -> str:
        """Where this plugin's fields are in the config: `model`, `regularizers.<name>`."""
        section = self.kind_spec.section
        return f"{section}.{self.name}" if self.kind_spec.mapping else section

    def build_dataset(self, seed: int | None = None, process_index: int = 0,
                      process_count: int = 1,
                      dataset_config: ml_collections.ConfigDict | None = None) -> DataSource:
        """A fresh source of the experiment's dataset (this plugin, when it is a dataset)."""
        seed = self.config.seed if seed is None else seed
        plugin = (self.plugin if self.kind_spec is DATASETS
                  else registry.load(DATASETS, self.config.dataset.name))
        return plugin.build(dataset_config or self.config.dataset,
                            DataContext(seed, process_index, process_count))

    @functools.cached_property
    def metadata(self) -> DatasetMetadata:
        return self.build_dataset().metadata

    @functools.cached_property
    def batch(self) -> dict[str, np.ndarray]:
        """The experiment's first local train batch, as the model sees it (inputs normalised
        where the dataset declares `normalize`)."""
        batch = next(self.build_dataset().train_iterator())
        return jax.tree.map(np.asarray, normalize_batch(batch, self.metadata.normalize))

    @property
    def model_plugin(self) -> Any:
        return (self.plugin if self.kind_spec is MODELS
                else registry.load(MODELS, self.config.model.name))

    @functools.cached_property
    def loss(self) -> Any:
        """The experiment's loss as the trainer builds it (None: the model plugin's own)."""
        loss_plugin = self.plugin if self.kind_spec is LOSSES else None
        with self.registered():
            return build_loss(self.model_plugin, self.config, model_metadata(self.metadata),
                              loss_plugin)

    def build_model(self, dtype: Any = jnp.float32) -> Model:
        return build_model(self.model_plugin, self.config.model, model_metadata(self.metadata),
                           jnp.dtype(dtype),
                           self.label if self.kind_spec is MODELS else self.config.model.name,
                           self.loss)

    @functools.cached_property
    def model(self) -> Model:
        return self.build_model()

    @functools.cached_property
    def apply(self) -> Callable[..., Any]:
        """The model's `apply` under jit, `train` static."""
        return jax.jit(self.model.apply, static_argnums=2)

    @functools.cached_property
    def variables(self) -> dict[str, Any]:
        """The experiment's model, initialised as the trainer does (from a batch of one)."""
        inputs = jnp.asarray(self.batch["inputs"][:1])
        return jax.jit(self.model.init)(jax.random.PRNGKey(0), inputs)

    @functools.cached_property
    def outputs(self) -> Any:
        return self.apply(self.variables, jnp.asarray(self.batch["inputs"]), False)[0]


# Helpers ------------------------------------------------------------------------------------


def _describe(tree: Any) -> str:
    shapes = jax.tree.map(lambda x: f"{getattr(x, 'dtype', type(x).__name__)}"
                          f"{list(getattr(x, 'shape', ()))}", tree)
    text = str(shapes)
    return text if len(text) < 300 else text[:297] + "..."


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ContractViolation(message)


def _all_finite(tree: Any) -> bool:
    return all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(tree)
               if jnp.issubdtype(jnp.asarray(leaf).dtype, jnp.inexact))


def _spec(x: Any) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of an array, a Python number or a jax.ShapeDtypeStruct."""
    if not hasattr(x, "shape"):
        x = jnp.asarray(x)
    return tuple(x.shape), np.dtype(x.dtype)


def _same_structure(a: Any, b: Any, what: str, expected: str) -> None:
    _require(jax.tree.structure(a) == jax.tree.structure(b),
             f"{what} has the structure {jax.tree.structure(a)}, not that of {expected} "
             f"({jax.tree.structure(b)}).")
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        _require(_spec(x) == _spec(y), f"{what} has a leaf {_spec(x)[1]}{list(_spec(x)[0])} "
                 f"where {expected} has {_spec(y)[1]}{list(_spec(y)[0])}.")


def _equal_trees(a: Any, b: Any) -> bool:
    return (jax.tree.structure(a) == jax.tree.structure(b)
            and all(np.array_equal(np.asarray(x), np.asarray(y))
                    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))))


def _rows(batch: dict[str, np.ndarray], mask: np.ndarray | None = None) -> list[tuple[bytes, ...]]:
    """Each example of a batch as bytes, to compare batches as multisets of examples."""
    keys = sorted(k for k in batch if k != "mask")
    count = len(batch[keys[0]])
    chosen = range(count) if mask is None else np.flatnonzero(mask)
    return [tuple(np.ascontiguousarray(batch[k][i]).tobytes() for k in keys) for i in chosen]


def _take(iterator: Any, count: int) -> list[dict[str, np.ndarray]]:
    return [next(iterator) for _ in range(count)]


def _unlocked(config: ml_collections.ConfigDict, **changes: Any) -> ml_collections.ConfigDict:
    copy = ml_collections.ConfigDict(config.to_dict())
    copy.update(changes)
    return copy


# Checks for every kind ------------------------------------------------------------------------


@_check("loads", KINDS, "the entry point resolves and imports, and gives an object with callable "
        "build() and default_config() (for instance a framework.Plugin).")
def _loads(subject: Subject) -> None:
    try:
        subject.plugin  # noqa: B018 (loading is the check)
    except (PluginError, TypeError) as error:
        raise ContractViolation(str(error)) from error


_IMPORT_PROBE = """
import importlib.metadata, json, sys
entry_point = importlib.metadata.EntryPoint(name=sys.argv[1], value=sys.argv[2], group=sys.argv[3])
try:
    entry_point.load()
except BaseException as error:
    print(json.dumps({"error": f"{type(error).__name__}: {error}"}))
    raise SystemExit(0)
initialised = False
if "jax" in sys.modules:
    from jax._src import xla_bridge  # No public API says whether a backend exists yet.
    probe = getattr(xla_bridge, "backends_are_initialized", None)
    initialised = probe() if probe else bool(getattr(xla_bridge, "_backends", {}))
print(json.dumps({"initialised": initialised}))
"""


@functools.cache
def _probe_import(name: str, value: str, group: str, path: tuple[str, ...]) -> dict[str, Any]:
    """Import an entry point in a fresh interpreter; report whether a JAX backend started."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    try:
        result = subprocess.run([sys.executable, "-c", _IMPORT_PROBE, name, value, group],
                                capture_output=True, text=True, env=env,
                                timeout=IMPORT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {"error": f"importing it took more than {IMPORT_TIMEOUT_S} s"}
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        return {"error": f"the import probe exited with status {result.returncode}: "
                         f"{result.stderr.strip()[-500:]}"}
    return json.loads(lines[-1])


@_check("import_leaves_jax_uninitialised", KINDS,
        "importing the plugin's module starts no JAX backend: no jax.devices(), arrays, "
        "random keys or jit calls at import time, so that the trainer can still choose the "
        "platform and call jax.distributed.initialize() first. Do that work in build().")
def _import_leaves_jax_uninitialised(subject: Subject) -> None:
    info = subject.info or next((i for i in registry.infos(subject.kind)
                                 if i.obj is subject.target and ":" in i.entry_point), None)
    if info is None or info.distribution == LOCAL_DISTRIBUTION:
        raise CheckSkipped("registered in-process, not installed with an entry point: there is "
                           "no import to check.")
    module = info.entry_point.split(":")[0]
    report = _probe_import(info.name, info.entry_point, kind_of(info.kind).group,
                           tuple(p for p in sys.path if p))
    if "error" in report:
        raise ContractViolation(f"Importing {info.entry_point} in a fresh interpreter failed: "
                                f"{report['error']}.")
    _require(not report["initialised"],
             f"Importing {module} initialised a JAX backend.")


@_check("api_version", KINDS, f"api_version is the plugin API version the plugin was written "
        f"for, and this jaxforge implements version {PLUGIN_API_VERSION}.")
def _api_version(subject: Subject) -> None:
    version = getattr(subject.plugin, "api_version", None)
    _require(version == PLUGIN_API_VERSION,
             f"The plugin declares api_version={version!r}; this jaxforge implements "
             f"{PLUGIN_API_VERSION}. Check the contract of version {PLUGIN_API_VERSION} "
             "(docs/plugins.md), update the plugin, then set api_version to it.")


@_check("default_config", KINDS,
        "default_config() returns a new ml_collections.ConfigDict on every call, without the "
        "reserved field `name`; the defaults pass validate(); and in an experiment, an unknown "
        "key in the plugin's section is rejected with an error naming it.")
def _default_config(subject: Subject) -> None:
    first, second = subject.plugin.default_config(), subject.plugin.default_config()
    _require(isinstance(first, ml_collections.ConfigDict),
             f"default_config() returned a {type(first).__name__}.")
    _require(first is not second, "default_config() returned the same object twice: an "
             "experiment that changes it would change every later experiment.")
    _require("name" not in first, "default_config() has a field `name`, which is reserved for "
             "the plugin's name in its config section.")
    try:
        subject.config  # noqa: B018 (resolving the experiment validates the defaults)
    except config_lib.ConfigError as error:
        raise ContractViolation(f"The experiment with the plugin's defaults does not resolve: "
                                f"{error}") from error
    section = subject.section_path
    typo = "no_such_field_" + (next(iter(first.keys()), "x"))
    experiment = ml_collections.ConfigDict(subject.config.to_dict())
    with subject.registered():
        try:
            config_lib.resolve_config(experiment, {f"{section}.{typo}": "1"})
        except config_lib.ConfigError as error:
            _require(typo in str(error), f"An unknown key config.{section}.{typo} was rejected, "
                     f"but the error does not name it: {error}")
            return
    raise ContractViolation(f"config.{section}.{typo}=1 was accepted; the plugin's section "
                            "must reject keys that are not in default_config().")


# Models ---------------------------------------------------------------------------------------


def _check_loss_result(result: Any, size: int, what: str) -> None:
    """A loss's result has one of the two forms (framework.loss), of per-example arrays."""
    _require(isinstance(result, tuple) and len(result) in (2, 3),
             f"{what} returned {_describe(result)}; a loss returns (per_example_loss, "
             "{name: per_example_metric}) or a framework.WeightedLoss(loss, metrics, weight).")
    loss, metrics, *weight = result
    sums = " (each example's sum over its counted targets)" if weight else ""
    _require(jnp.shape(loss) == (size,), f"{what} returned a loss of shape {jnp.shape(loss)}; "
             f"it must be per example{sums}: ({size},).")
    _require(isinstance(metrics, dict), f"{what} returned metrics {_describe(metrics)}; they "
             "are a dict of name -> per-example array.")
    for name, value in metrics.items():
        _require(jnp.shape(value) == (size,), f"{what} returned metric {name!r} of shape "
                 f"{jnp.shape(value)}; metrics are per example{sums}: ({size},).")
    if weight:
        _require(jnp.shape(weight[0]) == (size,), f"{what} returned a weight of shape "
                 f"{jnp.shape(weight[0])}; it is each example's count of targets: ({size},).")
    _require(_all_finite(result), f"{what} returned values that are not all finite.")


def _per_example_outputs(subject: Subject, outputs: Any, batch: dict[str, jax.Array],
                         mode: str) -> None:
    size = len(batch["inputs"])
    loss = getattr(subject.plugin, "loss", None)
    if loss is None and not declares_targets(subject.metadata):  # One class per example.
        expected = (size, subject.metadata.num_classes)
        _require(isinstance(outputs, jax.Array) and outputs.shape == expected
                 and jnp.issubdtype(outputs.dtype, jnp.floating),
                 f"In {mode} mode the model returned {_describe(outputs)}; without its own "
                 f"`loss` a model returns float logits of shape (batch, num_classes) = "
                 f"{expected}.")
    else:
        owner = "the plugin's loss" if loss is not None else (
            f"the loss {subject.config.loss.name!r}")
        _check_loss_result(jax.jit(subject.model.loss)(outputs, batch), size,
                           f"In {mode} mode {owner}")
    _require(_all_finite(outputs), f"In {mode} mode the model's outputs are not all finite.")


@_check("model_builds", [MODELS],
        "build(config, metadata, dtype) returns a flax.linen.Module; or, when build() also "
        "takes `rngs`, it returns a flax.nnx.Module constructed with them.")
def _model_builds(subject: Subject) -> None:
    try:
        subject.model  # noqa: B018 (building is the check)
    except PluginError as error:
        raise ContractViolation(str(error)) from error


@_check("model_init_and_apply", [MODELS],
        "under jax.jit, init(rng, a batch of one) and apply(variables, a batch of "
        "metadata.input_shape, train) run in train and eval mode, and give float logits of "
        "shape (batch, num_classes), or, for a dataset declaring target_shape/target_dtype or "
        "with the plugin's own loss, outputs the loss takes, giving a per-example loss and "
        "metrics (or a framework.WeightedLoss); train mode updates only existing mutable "
        "collections.")
def _model_init_and_apply(subject: Subject) -> None:
    variables = subject.variables
    _require("params" in variables and jax.tree.leaves(variables["params"]),
             f"init() gave no parameters: {_describe(variables)}.")
    example = jnp.asarray(subject.batch["inputs"][:1])
    annotated = nn.unbox(subject.model.annotated_variables(example))
    _same_structure(annotated["params"], variables["params"],
                    "The parameters the trainer derives shardings from", "init()'s parameters")
    batch = jax.tree.map(jnp.asarray, subject.batch)
    outputs, updates = subject.apply(variables, batch["inputs"], True,
                                     {"dropout": jax.random.PRNGKey(1)})
    _per_example_outputs(subject, outputs, batch, "train")
    mutable = {k: v for k, v in variables.items() if k != "params"}
    _require(set(updates) <= set(mutable), f"Train mode returned updated collections "
             f"{sorted(set(updates) - set(mutable))} that init() did not create.")
    for name, collection in updates.items():
        _same_structure(collection, mutable[name], f"The updated collection {name!r}",
                        "the initial one")
    outputs, updates = subject.apply(variables, batch["inputs"], False, None)
    _per_example_outputs(subject, outputs, batch, "eval")
    _require(updates == {}, f"Eval mode changed collections {sorted(updates)}.")


@_check("model_convert_weights", [MODELS],
        "a model plugin with convert_weights also has convert_weights_example(config, "
        "metadata); the example for the model under check "
        "converts to a dict of numpy arrays whose names (params/PATH, batch_stats/PATH) are "
        "arrays of the model, each of the model's shape. Skipped without convert_weights.")
def _model_convert_weights(subject: Subject) -> None:
    convert = getattr(subject.plugin, "convert_weights", None)
    if convert is None:
        raise CheckSkipped("The plugin has no convert_weights.")
    example = getattr(subject.plugin, "convert_weights_example", None)
    _require(callable(example), "The plugin has convert_weights but no "
             "convert_weights_example(config, metadata) giving tensors to convert.")
    converted = convert(dict(example(subject.config.model, model_metadata(subject.metadata))))
    _require(isinstance(converted, dict) and converted,
             f"convert_weights returned {type(converted).__name__} "
             f"{'(empty)' if converted == {} else ''}; it returns a dict of name -> array.")
    from framework.weights import flat_collections

    variables = dict(subject.variables)
    expected = {name: tuple(leaf.shape) for name, leaf in flat_collections(
        variables.pop("params"), variables).items()}
    unknown = sorted(set(converted) - set(expected))
    _require(not unknown, f"convert_weights gave names the model does not have: {unknown[:5]}; "
             f"the model's are {sorted(expected)[:5]}...")
    wrong = [f"{name}: {tuple(np.shape(value))}, the model's is {expected[name]}"
             for name, value in converted.items() if tuple(np.shape(value)) != expected[name]]
    _require(not wrong, "convert_weights gave arrays of other shapes: " + "; ".join(wrong[:5]))


@_check("model_deterministic", [MODELS],
        "building and initialising the model twice with the same rng gives the same "
        "parameters, and the same variables, inputs and rngs give the same outputs, in train "
        "and in eval mode (eval mode needs no rng).")
def _model_deterministic(subject: Subject) -> None:
    again = subject.build_model()  # A second build and trace: Python-side randomness shows.
    inputs = jnp.asarray(subject.batch["inputs"])
    _require(_equal_trees(jax.jit(again.init)(jax.random.PRNGKey(0), inputs[:1]),
                          subject.variables),
             "A second build initialised with the same rng gave different variables.")
    apply_again = jax.jit(again.apply, static_argnums=2)
    rngs = {"dropout": jax.random.PRNGKey(3)}
    _require(_equal_trees(apply_again(subject.variables, inputs, True, rngs),
                          subject.apply(subject.variables, inputs, True, rngs)),
             "Train mode with the same variables, inputs and rngs gave different results.")
    _require(_equal_trees(apply_again(subject.variables, inputs, False, None),
                          subject.apply(subject.variables, inputs, False, None)),
             "Eval mode with the same variables and inputs gave different results.")


@_check("model_mixed_precision", [MODELS],
        "built with the compute dtype bfloat16 (train.precision), the model keeps its "
        "parameters in float32 and gives finite outputs.")
def _model_mixed_precision(subject: Subject) -> None:
    model = subject.build_model(jnp.bfloat16)
    inputs = jnp.asarray(subject.batch["inputs"])
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), inputs[:1])
    dtypes = {str(leaf.dtype) for leaf in jax.tree.leaves(shapes["params"])}
    _require(dtypes == {"float32"}, f"With dtype=bfloat16 the parameters are {sorted(dtypes)}; "
             "keep them float32 (pass dtype to the layers' computation, not param_dtype).")
    _same_structure(shapes, subject.variables, "The bfloat16 model's variables",
                    "the float32 model's")
    outputs, _ = jax.jit(model.apply, static_argnums=2)(subject.variables, inputs, False)
    _require(_all_finite(outputs), "With dtype=bfloat16 the outputs are not all finite.")


@_check("model_gradients", [MODELS],
        "the loss (the plugin's own, or cross-entropy) is differentiable under jax.jit with "
        "respect to every parameter, with finite gradients of the parameters' structure.")
def _model_gradients(subject: Subject) -> None:
    model = subject.model
    batch = jax.tree.map(jnp.asarray, subject.batch)
    variables = subject.variables

    def loss(params: Any) -> jax.Array:
        outputs, _ = model.apply({**variables, "params": params}, batch["inputs"], True,
                                 {"dropout": jax.random.PRNGKey(1)})
        return jnp.mean(model.loss(outputs, batch)[0])

    grads = jax.jit(jax.grad(loss))(variables["params"])
    _same_structure(grads, variables["params"], "The gradient", "the parameters")
    _require(_all_finite(grads), "Some gradients are not finite.")


# Datasets -------------------------------------------------------------------------------------


@_check("dataset_builds", [DATASETS],
        "build(config, context) returns a DataSource: `metadata` (a framework.DatasetMetadata), "
        "train_iterator() and eval_batches().")
def _dataset_builds(subject: Subject) -> None:
    source = subject.build_dataset()
    metadata = getattr(source, "metadata", None)
    _require(isinstance(metadata, DatasetMetadata), f"build() returned a "
             f"{type(source).__name__} whose `metadata` is a {type(metadata).__name__}.")
    for method in ("train_iterator", "eval_batches"):
        _require(callable(getattr(source, method, None)),
                 f"build() returned a {type(source).__name__} without a {method}() method.")


def _check_batch(batch: Any, size: int, metadata: DatasetMetadata, what: str) -> None:
    problem = batch_problem(batch, metadata, size, what)
    _require(problem is None, problem)


@_check("dataset_train_batches", [DATASETS],
        "train batches are dicts of numpy arrays of this process's batch size, with `inputs` of "
        "metadata.input_shape and input_dtype, `label` (integer classes or tokens in "
        "[0, num_classes), or float values; of metadata.target_shape and target_dtype where "
        "the metadata declares them) and optionally a float `label_mask` of the label's shape.")
def _dataset_train_batches(subject: Subject) -> None:
    size = subject.config.dataset.batch_size
    iterator = subject.build_dataset().train_iterator()
    for batch in _take(iterator, 3):
        _check_batch(batch, size, subject.metadata, "train batch")


@_check("dataset_eval_batches", [DATASETS],
        "eval batches all have one shape (this process's eval batch size), the train batches' "
        "keys plus a boolean `mask`, and their masked-in rows are metadata.num_eval examples.")
def _dataset_eval_batches(subject: Subject) -> None:
    dataset = subject.config.dataset
    size = dataset.eval_batch_size or dataset.batch_size
    keys, shapes, count = set(subject.batch) | {"mask"}, None, 0
    for batch in subject.build_dataset().eval_batches():
        _check_batch(batch, size, subject.metadata, "eval batch")
        _require(set(batch) == keys, f"An eval batch has the keys {sorted(batch)}; train "
                 f"batches have {sorted(keys - {'mask'})} and eval batches add `mask`.")
        _require(batch["mask"].dtype == np.bool_, f"eval batch['mask'] is "
                 f"{batch['mask'].dtype}; it must be bool (True for real examples).")
        batch_shapes = {k: v.shape for k, v in batch.items()}
        _require(shapes in (None, batch_shapes), f"Eval batches change shape ({shapes} then "
                 f"{batch_shapes}); pad the last one and mask the padding, so that the eval "
                 "step compiles once.")
        shapes = batch_shapes
        count += int(batch["mask"].sum())
    _require(count == subject.metadata.num_eval, f"The eval batches hold {count} masked-in "
             f"examples; the metadata promises num_eval={subject.metadata.num_eval}.")


@_check("dataset_deterministic", [DATASETS],
        "two sources built with the same seed give the same train batches and eval batches.")
def _dataset_deterministic(subject: Subject) -> None:
    first, second = subject.build_dataset(), subject.build_dataset()
    for index, (a, b) in enumerate(zip(_take(first.train_iterator(), 3),
                                       _take(second.train_iterator(), 3))):
        _require(_equal_trees(a, b), f"Train batch {index} differs between two sources built "
                 f"with seed {subject.config.seed}.")
    for index, (a, b) in enumerate(zip(first.eval_batches(), second.eval_batches())):
        _require(_equal_trees(a, b), f"Eval batch {index} differs between two sources built "
                 f"with seed {subject.config.seed}.")


@_check("dataset_shards", [DATASETS],
        "with 2 processes, each process gets half of every global batch and together they get "
        "exactly the batch one process gets: shards never overlap and never miss an example "
        "(for train batches and the masked-in eval examples).")
def _dataset_shards(subject: Subject) -> None:
    dataset = subject.config.dataset
    batch_size = dataset.batch_size + dataset.batch_size % 2
    eval_size = dataset.eval_batch_size or dataset.batch_size
    config = _unlocked(dataset, batch_size=batch_size, eval_batch_size=eval_size + eval_size % 2)
    whole = subject.build_dataset(dataset_config=config)
    shards = [subject.build_dataset(process_index=p, process_count=2, dataset_config=config)
              for p in range(2)]
    shard_batches = [_take(shard.train_iterator(), 2) for shard in shards]
    for step, batch in enumerate(_take(whole.train_iterator(), 2)):
        parts = [batches[step] for batches in shard_batches]
        for process, part in enumerate(parts):
            _require(len(part["inputs"]) == batch_size // 2, f"Process {process} of 2 got "
                     f"{len(part['inputs'])} examples of the global batch of {batch_size}; its "
                     f"share is {batch_size // 2}.")
        _require(sorted(_rows(parts[0]) + _rows(parts[1])) == sorted(_rows(batch)),
                 f"Train batch {step}: the two processes' shards together are not the batch "
                 "one process gets (they overlap, or miss examples).")
    evaluated = sorted(row for b in whole.eval_batches() for row in _rows(b, b["mask"]))
    sharded = sorted(row for shard in shards for b in shard.eval_batches()
                     for row in _rows(b, b["mask"]))
    _require(sharded == evaluated, "The two processes' masked-in eval examples together are not "
             "the eval examples one process gets (they overlap, or miss examples).")


@_check("dataset_restorable", [DATASETS],
        "train_iterator().get_state() is JSON-serialisable, and a new iterator given it with "
        "set_state() yields exactly the batches the original yields next.")
def _dataset_restorable(subject: Subject) -> None:
    iterator = subject.build_dataset().train_iterator()
    _take(iterator, 2)
    state = iterator.get_state()
    try:
        saved = json.loads(json.dumps(state))
    except (TypeError, ValueError) as error:
        raise ContractViolation(f"get_state() returned {state!r}, which is not "
                                f"JSON-serialisable ({error}); it is saved with each "
                                "checkpoint as JSON.") from error
    expected = _take(iterator, 3)
    restored = subject.build_dataset().train_iterator()
    restored.set_state(saved)
    for index, (a, b) in enumerate(zip(expected, _take(restored, 3))):
        _require(_equal_trees(a, b), f"After set_state(), batch {index} differs from the batch "
                 "the original iterator yielded at that position.")


# Losses ---------------------------------------------------------------------------------------


def _built_loss(subject: Subject) -> Any:
    """The loss under check, built for the experiment's data; skipped where it does not fit."""
    try:
        return subject.plugin.build(subject.section, model_metadata(subject.metadata))
    except config_lib.ConfigError as error:
        raise CheckSkipped(f"The loss does not apply to this experiment's data ({error}); "
                           "check it in an experiment whose dataset it fits.") from error


@_check("loss_builds", [LOSSES],
        "build(config, metadata) returns a function loss(outputs, batch); a loss that does not "
        "fit the dataset's targets raises framework.ConfigError (the check is then skipped).")
def _loss_builds(subject: Subject) -> None:
    loss = _built_loss(subject)
    _require(callable(loss), f"build() returned a {type(loss).__name__}.")
    derived = getattr(loss, "derived_metrics", None) or {}
    _require(isinstance(derived, dict) and all(callable(f) for f in derived.values()),
             f"derived_metrics is {derived!r}; it is a dict of name -> function of the means.")


@_check("loss_under_jit", [LOSSES],
        "on the experiment model's outputs and a train batch, under jax.jit, the loss returns "
        "(per_example_loss, {name: per_example_metric}) or a framework.WeightedLoss of "
        "per-example sums and counts, all finite, and is differentiable with respect to the "
        "outputs with finite gradients; derived_metrics give a float from the means.")
def _loss_under_jit(subject: Subject) -> None:
    loss = _built_loss(subject)
    batch, outputs = jax.tree.map(jnp.asarray, subject.batch), subject.outputs
    result = jax.jit(loss)(outputs, batch)
    _check_loss_result(result, len(batch["inputs"]), "The loss")
    grads = jax.jit(jax.grad(lambda o: jnp.sum(loss(o, batch)[0])))(outputs)
    _require(_all_finite(grads), "The loss's gradients with respect to the outputs are not "
             "all finite.")
    means = {"loss": float(jnp.mean(result[0])),
             **{k: float(jnp.mean(v)) for k, v in result[1].items()}}
    for name, derive in (getattr(loss, "derived_metrics", None) or {}).items():
        value = derive(means)
        _require(isinstance(value, float), f"derived_metrics[{name!r}] gave a "
                 f"{type(value).__name__}; it must give a float.")


@_check("loss_padding_counts_for_nothing", [LOSSES],
        "with a `label_mask`, the loss is a framework.WeightedLoss (per target), and a target "
        "masked 0 counts for nothing: its label does not change the result, an example of "
        "padding only has weight and loss 0, and the weights sum to label_mask's sum.")
def _loss_padding_counts_for_nothing(subject: Subject) -> None:
    loss = jax.jit(_built_loss(subject))
    batch, outputs = jax.tree.map(jnp.asarray, subject.batch), subject.outputs
    label = batch["label"]
    mask = jnp.ones(label.shape, jnp.float32).at[0].set(0.0)  # The first example is padding.
    result = loss(outputs, {**batch, "label_mask": mask})
    _require(is_weighted(result), "Given a batch with a label_mask, the loss returned the "
             "per-example form; a loss that reads label_mask returns a framework.WeightedLoss "
             "whose weight counts the targets that label_mask keeps.")
    other = jnp.zeros_like(label) if jnp.issubdtype(label.dtype, jnp.integer) else label + 1
    changed = loss(outputs, {**batch, "label": label.at[0].set(other[0]), "label_mask": mask})
    _require(_equal_trees(result, changed), "Changing the label of a target whose label_mask "
             "is 0 changed the loss: padding must count for nothing.")
    per_example_loss, _, weight = result
    _require(float(weight[0]) == 0.0 and float(per_example_loss[0]) == 0.0,
             f"An example whose label_mask is all 0 has weight {float(weight[0])} and "
             f"loss {float(per_example_loss[0])}; both must be 0.")
    _require(float(jnp.sum(weight)) == float(jnp.sum(mask)),
             f"The weights sum to {float(jnp.sum(weight))}; label_mask keeps "
             f"{float(jnp.sum(mask))} targets.")


# Regularizers, optimizers ---------------------------------------------------------------------


def _check_transformation(tx: optax.GradientTransformation, params: Any, what: str) -> Any:
    state = jax.jit(tx.init)(params)
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.01), params)
    updates, _ = jax.jit(tx.update)(grads, state, params)
    _same_structure(updates, params, f"The {what}'s update", "the parameters")
    _require(_all_finite(updates), f"The {what}'s updates are not all finite.")
    return updates


@_check("regularizer_builds", [REGULARIZERS],
        "build(config) returns either a penalty f(params, batch, outputs) -> scalar, whose "
        "default_config() then has a `weight` field, or an optax.GradientTransformation.")
def _regularizer_builds(subject: Subject) -> None:
    regularizer = subject.plugin.build(subject.section)
    if isinstance(regularizer, optax.GradientTransformation):
        return
    _require(callable(regularizer), f"build() returned a {type(regularizer).__name__}.")
    _require("weight" in subject.section, "build() returned a penalty, but default_config() "
             "has no `weight` field to scale it with.")


@_check("regularizer_under_jit", [REGULARIZERS],
        "a penalty gives a finite float scalar under jax.jit(jax.grad(...)) with finite "
        "gradients of the parameters' structure; a transformation's init and update run under "
        "jax.jit and give finite updates of the parameters' structure, shapes and dtypes.")
def _regularizer_under_jit(subject: Subject) -> None:
    regularizer = subject.plugin.build(subject.section)
    params = subject.variables["params"]
    if isinstance(regularizer, optax.GradientTransformation):
        _check_transformation(regularizer, params, "regularizer")
        return
    batch, outputs = jax.tree.map(jnp.asarray, subject.batch), subject.outputs
    penalty = lambda p: regularizer(p, batch, outputs)  # noqa: E731
    shape, dtype = _spec(jax.eval_shape(penalty, params))
    _require(shape == () and jnp.issubdtype(dtype, jnp.floating),
             f"The penalty is {dtype}{list(shape)}; it must be a float scalar.")
    value, grads = jax.jit(jax.value_and_grad(penalty))(params)
    _require(_all_finite(value), f"The penalty is {value}, not finite.")
    _same_structure(grads, params, "The penalty's gradient", "the parameters")
    _require(_all_finite(grads), "The penalty's gradients are not all finite.")


@_check("optimizer_builds", [OPTIMIZERS],
        "build(config, num_steps) returns an optax.GradientTransformation.")
def _optimizer_builds(subject: Subject) -> None:
    tx = subject.plugin.build(subject.section, 100)
    _require(isinstance(tx, optax.GradientTransformation),
             f"build() returned a {type(tx).__name__}.")


@_check("optimizer_updates", [OPTIMIZERS],
        "init and update run under jax.jit and give finite updates of the parameters' "
        "structure, shapes and dtypes; the same inputs give the same updates.")
def _optimizer_updates(subject: Subject) -> None:
    tx = subject.plugin.build(subject.section, 100)
    params = subject.variables["params"]
    first = _check_transformation(tx, params, "optimizer")
    _require(_equal_trees(first, _check_transformation(tx, params, "optimizer")),
             "The same gradients, state and parameters gave different updates.")


# Augmentations --------------------------------------------------------------------------------


@_check("augmentation_builds", [AUGMENTATIONS],
        "build(config) returns a function (rng, batch) -> batch.")
def _augmentation_builds(subject: Subject) -> None:
    augment = subject.plugin.build(subject.section)
    _require(callable(augment), f"build() returned a {type(augment).__name__}.")


@_check("augmentation_keeps_batch", [AUGMENTATIONS],
        "under jax.jit, the augmented batch keeps every key of the batch with its shape and "
        "dtype (it may add per-example keys, as mixup adds `label_b` and `label_weight`), and "
        "the same rng gives the same augmented batch.")
def _augmentation_keeps_batch(subject: Subject) -> None:
    augment = jax.jit(subject.plugin.build(subject.section))
    batch = jax.tree.map(jnp.asarray, subject.batch)
    augmented = augment(jax.random.PRNGKey(0), batch)
    _require(isinstance(augmented, dict) and set(batch) <= set(augmented),
             f"The augmentation returned {_describe(augmented)}; it must return a dict with "
             f"the batch's keys {sorted(batch)}.")
    size = len(batch["inputs"])
    for key in set(augmented) - set(batch):
        _require(jnp.shape(augmented[key])[:1] == (size,), f"The augmentation added "
                 f"batch[{key!r}] of shape {jnp.shape(augmented[key])}; added keys are per "
                 f"example, with the batch's leading dimension {size}.")
    for key in batch:
        _require(augmented[key].shape == batch[key].shape
                 and augmented[key].dtype == batch[key].dtype,
                 f"The augmentation turned batch[{key!r}] from {batch[key].dtype}"
                 f"{list(batch[key].shape)} into {augmented[key].dtype}"
                 f"{list(augmented[key].shape)}.")
    _require(_equal_trees(augmented, augment(jax.random.PRNGKey(0), batch)),
             "The same rng gave two different augmented batches.")


# Callbacks ------------------------------------------------------------------------------------


@_check("callback_builds", [CALLBACKS],
        "build(config) returns a framework.Callback: hooks on_log, on_eval, on_checkpoint, "
        "final_state and on_end, and a bool `stop_training`.")
def _callback_builds(subject: Subject) -> None:
    callback = subject.plugin.build(subject.section)
    missing = [hook for hook in ("on_log", "on_eval", "on_checkpoint", "final_state", "on_end")
               if not callable(getattr(callback, hook, None))]
    _require(not missing, f"build() returned an instance of {type(callback).__name__}, "
             f"without {', '.join(missing)}; subclass framework.Callback.")
    _require(isinstance(getattr(callback, "stop_training", None), bool),
             f"{type(callback).__name__}.stop_training is not a bool.")


@_check("callback_hooks_run", [CALLBACKS],
        "every hook accepts what the training loop passes (step, metrics, train state; the "
        "summary at the end) without raising; final_state returns a state of the train state's "
        "structure; stop_training stays a bool.")
def _callback_hooks_run(subject: Subject) -> None:
    callback = subject.plugin.build(subject.section)
    if not isinstance(callback, Callback):
        _callback_builds(subject)
    model = subject.model
    tx = registry.load(OPTIMIZERS, subject.config.optimizer.name).build(
        subject.config.optimizer, subject.config.train.num_steps or 100)
    example = jnp.asarray(subject.batch["inputs"][:1])
    state = jax.jit(lambda rng: create_train_state(model, tx, rng, example))(
        jax.random.PRNGKey(0))
    callback.on_log(10, {"train/loss": 1.0, "train/accuracy": 0.5, "steps_per_sec": 10.0},
                    state)
    callback.on_eval(10, {"eval/loss": 1.0, "eval/accuracy": 0.5}, state)
    callback.on_checkpoint(10, state)
    final = callback.final_state(state)
    _same_structure(final, state, "final_state()'s result", "the train state")
    callback.on_end({"final": {"step": 10, "eval/loss": 1.0}, "best": {}, "steps": 10,
                     "wall_time_s": 1.0}, state)
    _require(isinstance(callback.stop_training, bool),
             f"After the hooks, stop_training is a {type(callback.stop_training).__name__}.")


# Running checks -------------------------------------------------------------------------------


def _internal_directories() -> tuple[str, ...]:
    """Where the framework, the libraries under it and Python's standard library live."""
    directories = [str(Path(__file__).parent)]
    for package in _INTERNAL_PACKAGES:
        module = sys.modules.get(package)
        if module is not None and getattr(module, "__file__", None):
            directories.append(str(Path(module.__file__).parent))
    return tuple(os.path.join(d, "") for d in directories)


_INTERNAL_PACKAGES = ("jax", "jaxlib", "flax", "optax", "ml_collections", "numpy")
_STANDARD_LIBRARY = os.path.join(sysconfig.get_paths()["stdlib"], "")


def _is_internal(filename: str, internal: tuple[str, ...]) -> bool:
    if filename.startswith(internal):
        return True
    return (filename.startswith(_STANDARD_LIBRARY)  # Not a package installed under it.
            and not any(part in filename for part in ("site-packages", "dist-packages")))


def plugin_frames(error: BaseException, count: int = 3) -> list[traceback.FrameSummary]:
    """The innermost `count` frames of a plugin's crash that lie outside the framework, JAX,
    Flax, Optax, NumPy and the standard library: the plugin's own code. Of a chained exception,
    the innermost cause with such frames."""
    chain, seen = [], set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        chain.append(current)
        current = current.__cause__ or (None if current.__suppress_context__
                                        else current.__context__)
    internal = _internal_directories()
    for exception in reversed(chain):
        frames = [frame for frame in traceback.extract_tb(exception.__traceback__)
                  if not _is_internal(os.path.abspath(frame.filename), internal)]
        if frames:
            return frames[-count:]
    return []


def format_plugin_frames(error: BaseException, count: int = 3) -> str:
    """`plugin_frames` as a traceback shows them: file, line, function and the source line."""
    return "".join(traceback.format_list(plugin_frames(error, count)))



def _run(check: Check, subject: Subject) -> CheckResult:
    started = time.perf_counter()
    status, message, failure = "pass", "", None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PluginAPIVersionWarning)
            check.run(subject)
    except CheckSkipped as skipped:
        status, message = "skip", str(skipped)
    except ContractViolation as violation:
        status, message, failure = "fail", f"{violation}\nThe contract: {check.wants}", violation
    except Exception as error:  # A crash inside the plugin is a failure of this check.
        where = format_plugin_frames(error)
        status, failure = "fail", error
        message = (f"It raised {type(error).__name__}: {error}\n"
                   + (f"In the plugin's code (innermost last):\n{where}" if where else "")
                   + f"The contract: {check.wants}")
    details = "".join(traceback.format_exception(type(failure), failure, failure.__traceback__)
                      ) if failure is not None else ""
    return CheckResult(subject.label, subject.kind, check.name, status, message,
                       time.perf_counter() - started, details)


def run_checks(kind: str, plugin: Any, config: ml_collections.ConfigDict | None = None,
               overrides: Sequence[str] | dict[str, str] = ()) -> list[CheckResult]:
    """Run every check of `kind` on a plugin (an id or a plugin object); never raises for a
    failing check. `config` is the experiment around it (default `tiny_config()`), `overrides`
    are `--config.a.b=v` strings applied to that experiment."""
    subject = Subject(kind, plugin, config, overrides)
    return [_run(check, subject) for check in checks_for(subject.kind)]


def check_plugin(kind: str, plugin: Any, config: ml_collections.ConfigDict | None = None
                 ) -> list[CheckResult]:
    """Run every check of `kind`; raise ConformanceError naming each failure, else the results."""
    results = run_checks(kind, plugin, config)
    failed = [r for r in results if not r.passed]
    if failed:
        details = "\n".join(f"- {r.check}: {r.message}" for r in failed)
        raise ConformanceError(f"{results[0].plugin} failed {len(failed)} of {len(results)} "
                               f"conformance checks:\n{details}")
    return results


class BoundCheck:
    """One check of one plugin, as a pytest parameter: call it in the test."""

    def __init__(self, check: Check, subject: Subject) -> None:
        self.check, self.subject = check, subject

    @property
    def name(self) -> str:
        return self.check.name

    @property
    def plugin(self) -> str:
        return self.subject.label

    def __call__(self) -> CheckResult:
        result = _run(self.check, self.subject)
        if result.status == "skip":
            import pytest

            pytest.skip(result.message)
        if result.status == "fail":
            raise ConformanceError(f"{result.plugin} fails {result.check}: {result.message}")
        return result

    def __repr__(self) -> str:
        return f"{self.plugin}-{self.name}"


def plugin_kind(plugin_id: str) -> str:
    """The kind of the one installed plugin `plugin_id` names; PluginError if none or several."""
    return registry.find(plugin_id).kind


def parametrize_with_checks(plugins: Sequence[PluginSpec]) -> Any:
    """A `pytest.mark.parametrize` over every check of every plugin, as the argument `check`.

    Each entry is an id (`"my_package:my_net"`), `(kind, id_or_plugin)` or
    `(kind, id_or_plugin, experiment_config)`. A plugin's checks share one build of its experiment.
    """
    import pytest

    params = []
    for spec in plugins:
        if isinstance(spec, str):
            spec = (plugin_kind(spec), spec)
        kind, target, *rest = spec
        subject = Subject(kind, target, rest[0] if rest else None)
        params += [pytest.param(BoundCheck(check, subject), id=f"{subject.label}-{check.name}")
                   for check in checks_for(subject.kind)]
    return pytest.mark.parametrize("check", params)


__all__ = [
    "BoundCheck",
    "Check",
    "CheckResult",
    "CheckSkipped",
    "ConformanceError",
    "ContractViolation",
    "check_plugin",
    "checks_for",
    "format_plugin_frames",
    "parametrize_with_checks",
    "plugin_frames",
    "plugin_kind",
    "run_checks",
    "tiny_config",
]
