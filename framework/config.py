"""Experiment configs: load a config file, merge plugin defaults, apply overrides, validate, lock.

The resolved config is the experiment's values laid over the framework's defaults and each named
plugin's `default_config()`, then the command-line overrides (parsed by ml-collections'
config_flags, typed by the field they override). Every key the user wrote must exist in that
merged schema; every error names the key and, when there is one, the closest valid key.
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import ml_collections
from etils import epath
from ml_collections.config_dict import FieldReference, placeholder

from framework.errors import ConfigError, JaxforgeError
from framework.kinds import DATASETS, KINDS
from framework.plugin import DataContext
from framework.registry import close_matches, registry

PRECISIONS = ("float32", "bfloat16", "float16")
NONFINITE_MODES = ("stop", "skip")


_FIELD_DOCS = "_jaxforge_field_docs"  # The instance attribute `fields` keeps the meanings in.


def fields(*sections: ml_collections.ConfigDict, **entries: tuple[Any, str]
           ) -> ml_collections.ConfigDict:
    """A ConfigDict of fields, each written with its meaning: `fields(width=(64, "Units."))`.

    The result is an ordinary `ml_collections.ConfigDict` holding the defaults, equal to
    `ConfigDict({"width": 64})`; the meanings ride along on it, for `field_docs`,
    `jaxforge plugins show` and the generated reference. A default may be `placeholder(int)` or
    a section made by `fields` (whose meanings are kept). `sections` come first: their fields,
    with their meanings (if they have any), in their order, as `dict(section, **entries)`; an
    entry of the same name replaces a section's field in place.
    """
    values: dict[str, Any] = {}
    docs: dict[str, str] = {}
    for section in sections:
        if not isinstance(section, ml_collections.ConfigDict):
            raise TypeError(f"fields() takes ConfigDicts before its name=(default, meaning) "
                            f"entries, got {type(section).__name__} {section!r}.")
        values.update(section._fields)
        docs.update(vars(section).get(_FIELD_DOCS, {}))
    for name, entry in entries.items():
        if not (isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[1], str)):
            raise TypeError(f"fields({name}=...) takes (default, meaning), the meaning a str; "
                            f"got {entry!r}.")
        values[name], docs[name] = entry
    config = ml_collections.ConfigDict(values)
    object.__setattr__(config, _FIELD_DOCS, docs)  # Not a field: invisible to ml_collections.
    return config


def field_docs(config: ml_collections.ConfigDict) -> dict[str, str]:
    """The meaning of each field of `config` that has one, by dotted path (`train.num_steps`),
    in the order the fields were written; sections' own meanings are included by their path.
    A ConfigDict not made by `fields` (or a copy of one: copies keep values, not meanings) has
    none: {}."""
    docs = vars(config).get(_FIELD_DOCS, {})
    found = {}
    for name, value in config._fields.items():
        if name in docs:
            found[name] = docs[name]
        if isinstance(value, FieldReference):
            value = value.get()
        if isinstance(value, ml_collections.ConfigDict):
            found.update({f"{name}.{path}": text for path, text in field_docs(value).items()})
    return found


def base_config() -> ml_collections.ConfigDict:
    """The framework's own fields with their defaults; plugins add theirs to their sections."""
    plugins = "Plugin name -> that plugin's fields, e.g. {}; {}."
    return fields(
        seed=(0, "Seeds the parameters, dropout, augmentations and the order of the train "
                 "examples."),
        model=(fields(
            name=("cnn", "The model plugin: a name, or a distribution:name id."),
        ), "The model: `name` and that plugin's fields."),
        dataset=(fields(
            name=("digits", "The dataset plugin: a name, or a distribution:name id."),
            batch_size=(64, "The global batch, over all processes and devices."),
            eval_batch_size=(placeholder(int), "The global evaluation batch; None: batch_size."),
        ), "The dataset: `name`, the batch sizes and that plugin's fields."),
        loss=(fields(
            name=("cross_entropy", "The loss plugin (used unless the model plugin has its own "
                                   "`loss`): a name, or a distribution:name id."),
        ), "The objective: `name` and that plugin's fields; cross_entropy for classes and "
           "tokens, mse for float targets."),
        optimizer=(fields(
            name=("adam", "The optimizer plugin: a name, or a distribution:name id."),
        ), "The optimizer: `name` and that plugin's fields (learning rate and its schedule)."),
        regularizers=(fields(), plugins.format(
            "regularizers.l2.weight=1e-4", "penalties are added to the loss, transformations "
                                          "chained after the optimizer")),
        augmentations=(fields(), plugins.format(
            "augmentations.flip.probability=0.5", "applied on device in the order written")),
        callbacks=(fields(), plugins.format(
            "callbacks.early_stopping.patience=3", "called at log, eval and checkpoint steps")),
        train=(fields(
            num_steps=(placeholder(int), "Total optimizer steps; or give num_epochs."),
            num_epochs=(placeholder(float), "Converted to steps from the train split size."),
            log_every_steps=(100, "Steps between metric logs (metrics.jsonl, TensorBoard)."),
            eval_every_steps=(500, "Steps between evaluations; 0: evaluate only at the end."),
            steps_per_dispatch=(1, "Steps run by one compiled call (a lax.scan)."),
            precision=("float32", "Compute dtype: float32 | bfloat16 | float16 (with dynamic "
                                  "loss scaling); params and optimizer state stay float32."),
            grad_clip_norm=(0.0, "Clip gradients to this global norm; 0: no clipping."),
            accumulation_steps=(1, "Micro-batches per optimizer step: dataset.batch_size is split "
                                   "into this many, their gradients averaged (optax.MultiSteps); "
                                   "num_steps still counts optimizer steps."),
            ema_decay=(0.0, "EMA of the params, used for evaluation; 0: off. E.g. 0.999."),
            on_nonfinite=("stop", "A step with a non-finite loss, metric or gradient: stop (the "
                                  "run ends, naming the step and metric; the last checkpoint is "
                                  "kept) or skip (drop the update, count it)."),
            best_metric=("eval/accuracy", "What summary.json's `best` selects on."),
            best_mode=("max", "max | min: whether a larger or a smaller best_metric is better."),
            profile_steps=((), "(start, end): a jax.profiler trace of the steps after `start` up "
                               "to `end`, written to WORKDIR/profile; empty: no trace."),
        ), "The training loop: run length, logging, evaluation, precision, gradient handling."),
        mesh=(fields(
            data=(-1, "Mesh axis `data` (batches are split over it); -1: all remaining "
                      "devices."),
            fsdp=(1, "Mesh axis `fsdp` (batches and large parameters are split over it); -1: all "
                     "remaining devices."),
            model=(1, "Mesh axis `model` (for rules and logical axes); -1: all remaining "
                      "devices."),
            rules=((), "((regex on a parameter path, partition spec), ...): the first match "
                       "places a parameter and its optimizer state, e.g. "
                       "((\"Dense_.*/kernel\", (None, \"model\")),)."),
            logical_axis_rules=((), "((logical axis name, mesh axis or None), ...) for models "
                                    "that annotate parameters with nn.with_logical_partitioning, "
                                    "e.g. ((\"mlp\", \"model\"),)."),
            fsdp_min_size=(2 ** 14, "Unmatched parameters with at least this many elements are "
                                    "split over `fsdp`."),
        ), "The device mesh and where parameters go on it."),
        checkpoint=(fields(
            every_steps=(500, "Steps between checkpoints; 0: only the final checkpoint."),
            max_to_keep=(3, "Checkpoints kept; older ones are deleted."),
            async_save=(True, "Write checkpoints in the background while training goes on."),
        ), "Orbax checkpoints in WORKDIR/checkpoints; a run on the same workdir resumes."),
        init_from=(fields(
            path=("", "A workdir (its latest checkpoint, or `step`), a checkpoint directory "
                      "(WORKDIR/checkpoints/N) or a .safetensors weights file to start from; "
                      "empty: start from the seed."),
            step=(placeholder(int), "The source workdir's checkpoint step; None: its latest."),
            use_ema=(False, "Take the source's EMA parameters (an error if it has none)."),
            optimizer_state=(False, "Also take the source checkpoint's optimizer state (the "
                                    "same optimizer's structure, else an error); false: a "
                                    "fresh one."),
            include=((), "Regexes (re.search) on parameter paths as parameters.txt prints them "
                         "(Dense_0/kernel): only matching arrays are taken; empty: all."),
            exclude=((), "Regexes on parameter paths: matching arrays are not taken (they keep "
                         "their fresh initialisation)."),
            rename=((), "((regex, replacement), ...): re.sub on each taken path, every pair in "
                        "turn, giving its path in this model, e.g. ((\"^backbone/\", \"\"),)."),
            on_mismatch=("error", "A parameter missing on either side or of another shape: "
                                  "error (stop before training, naming each) | reinit (it "
                                  "keeps its fresh initialisation)."),
            convert=(False, "Pass a weights file's tensors through the model plugin's "
                            "convert_weights (names and layouts of another framework)."),
        ), "Start a new run from another run's parameters and batch statistics (ignored when "
           "the run resumes from its own checkpoint); see docs/after-training.md."),
    )


# Loading -------------------------------------------------------------------------------------


def load_experiment(spec: str) -> ml_collections.ConfigDict:
    """Run `get_config()` of a config file; `path.py:arg` passes `arg` to it (as big_vision)."""
    path, _, arg = spec.partition(".py:")
    path = path + ".py" if arg or spec.endswith(".py:") else spec
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"Config file {path!r} does not exist. Pass the path of an experiment "
                          "file that defines get_config(), e.g. experiments/digits_cnn.py.")
    module_name = "jaxforge_experiment_" + re.sub(r"\W", "_", file.stem)
    try:
        spec_ = importlib.util.spec_from_file_location(module_name, file)
        module = importlib.util.module_from_spec(spec_)
        spec_.loader.exec_module(module)
        get_config = getattr(module, "get_config", None)
        if not callable(get_config):
            raise ConfigError(f"Config file {path!r} has no get_config() function.")
        config = get_config(arg) if arg else get_config()
    except JaxforgeError:
        raise
    except Exception as error:
        where = _innermost_line_in(error, file)
        raise ConfigError(f"Config file {path!r} raised {type(error).__name__}{where}: {error}"
                          ) from error
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"get_config() in {path!r} returned a {type(config).__name__}; "
                          "it must return an ml_collections.ConfigDict.")
    return config


def _innermost_line_in(error: BaseException, file: Path) -> str:
    tb, line = error.__traceback__, None
    while tb is not None:
        if Path(tb.tb_frame.f_code.co_filename).resolve() == file.resolve():
            line = tb.tb_lineno
        tb = tb.tb_next
    return f" at line {line}" if line else ""


# Overrides -----------------------------------------------------------------------------------

_OVERRIDE = re.compile(r"^--?config\.([^=\s]+)(?:=(.*))?$", re.S)


def parse_override_keys(overrides: Sequence[str]) -> dict[str, str | None]:
    """`--config.a.b=v` (or `--config.a.b v`) -> {"a.b": "v"}, in order; raises on junk."""
    keys: dict[str, str | None] = {}
    i = 0
    while i < len(overrides):
        match = _OVERRIDE.match(overrides[i])
        if not match:
            raise ConfigError(
                f"Unexpected argument {overrides[i]!r}: config overrides look like "
                "--config.optimizer.learning_rate=3e-4.")
        key, value = match.group(1), match.group(2)
        if value is None and i + 1 < len(overrides) and not overrides[i + 1].startswith("--"):
            value, i = overrides[i + 1], i + 1
        if value is None:
            raise ConfigError(f"--config.{key} has no value; write --config.{key}=VALUE.")
        keys.pop(key, None)
        keys[key] = value
        i += 1
    return keys


def _apply_overrides(config: ml_collections.ConfigDict, overrides: dict[str, str],
                     note: str = "") -> None:
    """Parse each override's text as the type of the field it replaces (config_flags)."""
    for key, text in overrides.items():
        _check_key_exists(config, key, text, note)
    for key, text in overrides.items():
        parent, name = _parent(config, key), key.rsplit(".", 1)[-1]
        if isinstance(parent[name], ml_collections.ConfigDict):
            fields = ", ".join(parent[name].keys()) or "none yet"
            raise ConfigError(f"config.{key} is a section, not a value: override one of its "
                              f"fields ({fields}), e.g. --config.{key}.FIELD=VALUE.")
        if text == "None":  # config_flags parses only real values; None unsets optional fields.
            if not isinstance(parent._fields[name], FieldReference):
                raise ConfigError(f"config.{key} cannot be None; it needs "
                                  f"{_type_name(parent.get_type(name))}.")
            parent[name] = None
            continue
        old, value = parent[name], _parse_override(config, key, text)
        if isinstance(old, tuple) and old and not all(_same_kind(v, old[0]) for v in value):
            raise ConfigError(f"--config.{key}: the items of config.{key} must be "
                              f"{_type_name(type(old[0]))}s like {old!r}, got {text!r}.")
        parent[name] = value


def _same_kind(value: Any, like: Any) -> bool:
    if isinstance(like, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(like, bool)
    if isinstance(like, float):
        return isinstance(value, (int, float))
    return isinstance(value, type(like))


def _parse_override(config: ml_collections.ConfigDict, key: str, text: str) -> Any:
    from absl import flags
    from ml_collections import config_flags

    argv = ["jaxforge", f"--config.{key}={text}"]
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_dict("config", config, flag_values=flag_values, lock_config=True,
                                    sys_argv=argv)
    try:
        flag_values(argv)
        return _get_path(flag_values["config"].value, key)
    except Exception:  # Whatever config_flags raised, the text does not fit the field.
        expected = _type_name(_parent(config, key).get_type(key.rsplit(".", 1)[-1]))
        raise ConfigError(f"--config.{key}: config.{key} must be {expected}, got {text!r}."
                          ) from None


def _get_path(config: Any, key: str) -> Any:
    for part in key.split("."):
        config = config[part]
    return config


def _parent(config: ml_collections.ConfigDict, key: str) -> ml_collections.ConfigDict:
    for part in key.split(".")[:-1]:
        config = config[part]
    return config


def is_section(value: Any) -> bool:
    """Whether a config value is a section (a ConfigDict, or a dict as in config.json)."""
    return isinstance(value, (dict, ml_collections.ConfigDict))


def flatten(config: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """`(section.field, value)` for every section and field of a config tree (a ConfigDict or
    nested dicts), depth first in the config's order; a section comes before its fields."""
    for key, value in config.items():
        yield prefix + key, value
        if is_section(value):
            yield from flatten(value, f"{prefix}{key}.")


def _all_paths(config: ml_collections.ConfigDict) -> list[str]:
    return [path for path, _ in flatten(config)]


def _unknown_key_error(config: ml_collections.ConfigDict, key: str, valid_here: Iterable[str],
                       override: tuple[str, str] | None = None, note: str = "") -> ConfigError:
    """Name the unknown key and where it probably belongs: a close name in its section, the
    section that has a field of that name, or a close name elsewhere (`close_matches`, the rule
    of every "did you mean"). `override`: (key, text) of the `--config.` override that set it,
    which may go deeper than `key`; None for a key written in the file."""
    *parents, last = key.split(".")
    prefix = ".".join(parents) + "." if parents else ""
    valid_here = list(valid_here)

    def spelled(path: str) -> str:
        if override is None:
            return f"config.{path}"
        full, text = override
        return f"--config.{path}{full[len(key):]}={text}"

    paths = [p for p in _all_paths(config) if p != key]
    elsewhere = [p for p in paths if p.rsplit(".", 1)[-1] == last]
    close = close_matches(last, valid_here, n=1)
    if close:
        hint = f" Did you mean config.{prefix}{close[0]}?"
    elif last in config and key != last:  # `train.mesh`: a top-level section or field.
        what = "section" if is_section(config[last]) else "field"
        example = spelled(last)
        if what == "section" and override is not None and override[0] == key and len(config[last]):
            example = f"--config.{last}.{next(iter(config[last]))}=..."
        hint = f" {last} is a top-level {what}: {example}."
    elif elsewhere:  # `train.batch_size`: the right name in another section.
        sections = [p.rsplit(".", 1)[0] for p in elsewhere]
        named = (f"the {sections[0]} section" if len(sections) == 1
                 else f"the sections {', '.join(sections)}")
        hint = f" {last} is in {named}: {spelled(elsewhere[0])}."
    else:
        lasts = {p.rsplit(".", 1)[-1]: p for p in reversed(paths)}
        close = close_matches(last, lasts, n=1)
        hint = f" Did you mean config.{lasts[close[0]]}?" if close else ""
    where = f"config.{prefix[:-1]}" if parents else "the config"
    valid = ", ".join(sorted(valid_here)) or "none"
    return ConfigError(f"Unknown config key config.{key}.{hint} Valid keys in {where}: {valid}."
                       + (f" {note}" if note and not hint else ""))


def _check_key_exists(config: ml_collections.ConfigDict, key: str, text: str,
                      note: str = "") -> None:
    node: Any = config
    parts = key.split(".")
    for i, part in enumerate(parts):
        if not isinstance(node, ml_collections.ConfigDict):
            parent = ".".join(parts[:i])
            raise ConfigError(f"config.{parent} is a {type(node).__name__}, not a section, so "
                              f"config.{key} cannot be set. Set config.{parent} itself.")
        if part not in node:
            raise _unknown_key_error(config, ".".join(parts[:i + 1]), node.keys(),
                                     override=(key, text), note=note)
        node = node[part]


# Merging -------------------------------------------------------------------------------------


def _plugin_names(user: ml_collections.ConfigDict, overrides: dict[str, str]
                  ) -> dict[str, list[str]]:
    """The plugins a config names, after overrides, per kind: [name] for a kind whose section
    names one plugin, [names] in the order written for a kind whose section maps several."""
    base = base_config()
    names = {}
    for kind in KINDS:
        section = kind.section
        written = user.get(section)
        if not kind.mapping:
            name = overrides.get(f"{section}.name")
            if name is None and isinstance(written, ml_collections.ConfigDict):
                name = written.get("name")
            names[kind.name] = [name or base[section].name]
            continue
        mapped = _insertion_order(written) if isinstance(written, ml_collections.ConfigDict) else []
        for key in overrides:
            parts = key.split(".")
            if parts[0] == section and len(parts) > 1 and parts[1] not in mapped:
                mapped.append(parts[1])
        names[kind.name] = mapped
    return names


def _insertion_order(section: ml_collections.ConfigDict) -> list[str]:
    """Keys in the order they were written. ConfigDict iterates sorted by default, but the order
    of e.g. augmentations is the order they are applied in; `_fields` is the only record of it."""
    return list(section._fields)


def _plugin_owned(key: str, base: ml_collections.ConfigDict) -> bool:
    """Whether `key` (`model.dropout_rate`, `regularizers.l2.weight`) is a plugin's field,
    known only from the plugin's module, rather than one of the framework's own."""
    section, _, rest = key.partition(".")
    kind = next((k for k in KINDS if k.section == section), None)
    return kind is not None and bool(rest) and (kind.mapping or rest.split(".")[0]
                                                not in base[section])


def _check_before_plugins(user: ml_collections.ConfigDict, overrides: dict[str, str],
                          names: dict[str, list[str]]) -> None:
    """What can be checked before any plugin's module is imported (and so, usually, before
    JAX is): the framework's own keys and their types, in the file and in the overrides, and
    each plugin name, against the installed distributions' metadata. A plugin's own fields wait
    for its `default_config()`."""
    base = base_config()
    core = ml_collections.ConfigDict()
    for key, value in user.items():
        if key in base and isinstance(value, ml_collections.ConfigDict) and any(
                k.section == key for k in KINDS):
            value = ml_collections.ConfigDict(
                {k: v for k, v in value.items() if not _plugin_owned(f"{key}.{k}", base)})
        core[key] = value
    plugins = [(kind, name, f"{kind.section}.{name}" if kind.mapping else f"{kind.section}.name")
               for kind in sorted(KINDS, key=lambda k: k.mapping) for name in names[kind.name]]
    sections = ", ".join(f"config.{path}" if kind.mapping else f"config.{kind.section} ({name})"
                         for kind, name, path in plugins)
    note = (f"A plugin's own field goes in that plugin's section ({sections}); `jaxforge "
            "plugins show NAME` lists a plugin's fields.")
    _overlay(base, core, base, note=note)
    _apply_overrides(base, {k: v for k, v in overrides.items() if not _plugin_owned(k, base)},
                     note)
    for kind, name, key in plugins:
        try:
            registry.resolve(kind.name, name)
        except JaxforgeError as error:
            raise ConfigError(f"config.{key}: {error}") from None


def _plugin_defaults(kind: str, name: str, key: str) -> ml_collections.ConfigDict:
    try:
        plugin = registry.load(kind, name)
    except JaxforgeError as error:
        raise ConfigError(f"config.{key}: {error}") from error.__cause__
    defaults = plugin.default_config()
    if not isinstance(defaults, ml_collections.ConfigDict):
        raise ConfigError(f"config.{key}: plugin {name!r} default_config() returned a "
                          f"{type(defaults).__name__}, not an ml_collections.ConfigDict.")
    return ml_collections.ConfigDict(defaults.to_dict(), type_safe=True)


def _schema(names: dict[str, list[str]]) -> ml_collections.ConfigDict:
    """The framework defaults plus every named plugin's default fields."""
    schema = base_config()
    for kind in sorted(KINDS, key=lambda k: k.mapping):  # Sections of one plugin first.
        section = kind.section
        if not kind.mapping:
            [name] = names[kind.name]
            defaults = _plugin_defaults(kind.name, name, f"{section}.name")
            for key, value in defaults.items():
                if key == "name":
                    raise ConfigError(
                        f"Plugin {name!r} declares a field 'name', which is reserved.")
                schema[section][key] = value
            schema[section].name = name
            continue
        schema[section] = ml_collections.ConfigDict(sort_keys=False)  # Applied in this order.
        for name in names[kind.name]:
            schema[section][name] = _plugin_defaults(kind.name, name, f"{section}.{name}")
    return schema


def _overlay(schema: ml_collections.ConfigDict, user: ml_collections.ConfigDict,
             root: ml_collections.ConfigDict, prefix: str = "", note: str = "") -> None:
    """Write the user's values over the schema; unknown keys and wrong types are errors."""
    for key, value in user.items():
        path = prefix + key
        if key not in schema:
            raise _unknown_key_error(root, path, schema.keys(), note=note)
        current = schema[key]
        if isinstance(current, ml_collections.ConfigDict):
            if not isinstance(value, ml_collections.ConfigDict):
                raise ConfigError(f"config.{path} must be a section (a ConfigDict with keys "
                                  f"{', '.join(current.keys()) or 'of plugin names'}), "
                                  f"not {value!r}.")
            _overlay(current, value, root, path + ".", note)
            continue
        if isinstance(value, ml_collections.ConfigDict):
            raise ConfigError(f"config.{path} is a value ({current!r}), not a section.")
        if isinstance(current, tuple) and isinstance(value, list):
            value = tuple(value)
        try:
            schema[key] = value
        except TypeError:
            expected = _type_name(schema.get_type(key))
            raise ConfigError(f"config.{path} must be {expected}, got {type(value).__name__} "
                              f"{value!r}.") from None


def _type_name(kind: type) -> str:
    return {int: "an int", float: "a float", str: "a string", bool: "a bool (true/false)",
            tuple: "a tuple"}.get(kind, kind.__name__)


# Validation ----------------------------------------------------------------------------------


def check(condition: bool, key: str, message: str) -> None:
    """Raise a ConfigError about `config.<key>` unless `condition` holds.

    In a plugin's `validate`, `key` is relative to the plugin's section (`"learning_rate"`).
    """
    if not condition:
        raise ConfigError.for_key(key, message)


def _validate_core(config: ml_collections.ConfigDict) -> None:
    """The framework's own fields, in the order a reader meets them in base_config()."""
    _validate_batches(config)
    _validate_run_length(config.train)
    _validate_boundaries(config.train, config.checkpoint)
    _validate_techniques(config)
    _validate_profile_steps(config.train)
    _validate_mesh(config)
    _validate_init_from(config.init_from)


def _validate_batches(config: ml_collections.ConfigDict) -> None:
    """The seed and the global batch sizes."""
    check(config.seed >= 0, "seed", f"must be >= 0, got {config.seed}.")
    check(config.dataset.batch_size > 0, "dataset.batch_size",
          f"must be a positive int (the global batch), got {config.dataset.batch_size}.")
    eval_batch = config.dataset.eval_batch_size
    check(eval_batch is None or eval_batch > 0, "dataset.eval_batch_size",
          f"must be a positive int or None (= batch_size), got {eval_batch}.")


def _validate_run_length(train: ml_collections.ConfigDict) -> None:
    """Exactly one of num_steps and num_epochs, positive."""
    if train.num_steps is None and train.num_epochs is None:
        raise ConfigError("config.train.num_steps is not set: give train.num_steps (optimizer "
                          "steps) or train.num_epochs.")
    if train.num_steps is not None and train.num_epochs is not None:
        raise ConfigError("config.train.num_steps and config.train.num_epochs are both set; "
                          "give only one (set the other to None).")
    if train.num_steps is not None:
        check(train.num_steps > 0, "train.num_steps", f"must be > 0, got {train.num_steps}.")
    else:
        check(train.num_epochs > 0, "train.num_epochs", f"must be > 0, got {train.num_epochs}.")


def _validate_boundaries(train: ml_collections.ConfigDict,
                         ckpt: ml_collections.ConfigDict) -> None:
    """Log, eval and checkpoint intervals: each a multiple of the steps run per dispatch."""
    per_dispatch = train.steps_per_dispatch
    check(per_dispatch >= 1, "train.steps_per_dispatch", f"must be >= 1, got {per_dispatch}.")
    check(train.log_every_steps > 0, "train.log_every_steps",
          f"must be > 0, got {train.log_every_steps}.")
    check(train.eval_every_steps >= 0, "train.eval_every_steps",
          f"must be >= 0 (0 = only at the end), got {train.eval_every_steps}.")
    check(ckpt.every_steps >= 0, "checkpoint.every_steps",
          f"must be >= 0 (0 = only at the end), got {ckpt.every_steps}.")
    for key, every in (("train.log_every_steps", train.log_every_steps),
                       ("train.eval_every_steps", train.eval_every_steps),
                       ("checkpoint.every_steps", ckpt.every_steps)):
        if every % per_dispatch:
            lower = every // per_dispatch * per_dispatch
            upper = lower + per_dispatch
            alternatives = " or ".join(str(v) for v in (lower, upper) if v > 0)
            raise ConfigError(f"config.{key}={every} is not a multiple of "
                              f"train.steps_per_dispatch={per_dispatch}; use {alternatives}.")
    check(ckpt.max_to_keep >= 1, "checkpoint.max_to_keep",
          f"must be >= 1, got {ckpt.max_to_keep}.")


def _validate_techniques(config: ml_collections.ConfigDict) -> None:
    """The training-technique switches of `config.train`."""
    train = config.train
    check(train.precision in PRECISIONS, "train.precision",
          f"must be one of {', '.join(PRECISIONS)}, got {train.precision!r}.")
    check(train.grad_clip_norm >= 0, "train.grad_clip_norm",
          f"must be >= 0 (0 = no clipping), got {train.grad_clip_norm}.")
    check(train.accumulation_steps >= 1, "train.accumulation_steps",
          f"must be >= 1 (1 = no accumulation), got {train.accumulation_steps}.")
    check(config.dataset.batch_size % train.accumulation_steps == 0, "train.accumulation_steps",
          f"must divide dataset.batch_size={config.dataset.batch_size} (each optimizer step "
          f"splits the batch into micro-batches), got {train.accumulation_steps}.")
    check(0.0 <= train.ema_decay < 1.0, "train.ema_decay",
          f"must be in [0, 1) (0 = no EMA; e.g. 0.999), got {train.ema_decay}.")
    check(train.on_nonfinite in NONFINITE_MODES, "train.on_nonfinite",
          f"must be one of {', '.join(NONFINITE_MODES)}, got {train.on_nonfinite!r}.")
    check(train.best_mode in ("min", "max"), "train.best_mode",
          f"must be 'min' or 'max', got {train.best_mode!r}.")


def _validate_mesh(config: ml_collections.ConfigDict) -> None:
    """Axis sizes, and rules that parse."""
    sizes = mesh_sizes(config)
    for axis, size in sizes.items():
        check(isinstance(size, int) and (size == -1 or size >= 1), f"mesh.{axis}",
              f"must be a positive int or -1 (all remaining devices), got {size!r}.")
    check(list(sizes.values()).count(-1) <= 1, "mesh",
          f"may have at most one axis of size -1, got {sizes}.")
    check(config.mesh.fsdp_min_size >= 0, "mesh.fsdp_min_size",
          f"must be >= 0, got {config.mesh.fsdp_min_size}.")
    from framework.sharding import parse_logical_axis_rules, parse_rules

    parse_rules(config.mesh.rules)
    parse_logical_axis_rules(config.mesh.logical_axis_rules)


def _validate_init_from(init: ml_collections.ConfigDict) -> None:
    """`config.init_from`'s fields; whether its source exists is checked when a run starts."""
    check(init.on_mismatch in ("error", "reinit"), "init_from.on_mismatch",
          f"must be 'error' or 'reinit', got {init.on_mismatch!r}.")
    check(init.step is None or init.step >= 0, "init_from.step",
          f"must be a saved step (>= 0) or None (the latest), got {init.step}.")
    for key in ("include", "exclude"):
        for index, pattern in enumerate(init[key]):
            check(isinstance(pattern, str), f"init_from.{key}",
                  f"must be a tuple of regexes, got {pattern!r} at index {index}.")
            _check_regex(pattern, f"init_from.{key}")
    for index, pair in enumerate(init.rename):
        check(isinstance(pair, (tuple, list)) and len(pair) == 2
              and all(isinstance(p, str) for p in pair), "init_from.rename",
              f"must be ((regex, replacement), ...), got {pair!r} at index {index}.")
        _check_regex(pair[0], "init_from.rename")
    weights_file = init.path.endswith(".safetensors")
    check(not init.convert or weights_file, "init_from.convert",
          "applies to a .safetensors weights file only; init_from.path "
          f"is {init.path!r}.")
    for key in ("optimizer_state", "use_ema"):
        check(not (init[key] and weights_file), f"init_from.{key}",
              "needs a checkpoint: a weights file holds parameters and batch statistics only "
              "(export it with --ema for EMA parameters).")


def _check_regex(pattern: str, key: str) -> None:
    try:
        re.compile(pattern)
    except re.error as error:
        raise ConfigError.for_key(key, f"has {pattern!r}, not a valid regex: {error}.") from None


def mesh_sizes(config: ml_collections.ConfigDict) -> dict[str, int]:
    """The mesh axis sizes of a config (`config.mesh` also holds the sharding rules)."""
    return {axis: config.mesh[axis] for axis in ("data", "fsdp", "model")}


def _validate_profile_steps(train: ml_collections.ConfigDict) -> None:
    window, per_dispatch = tuple(train.profile_steps), train.steps_per_dispatch
    if not window:
        return
    start, end = 10 * per_dispatch, 20 * per_dispatch
    example = f"e.g. ({start}, {end}) traces steps {start + 1} to {end}; () traces nothing"
    check(len(window) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in window),
          "train.profile_steps", f"must be two ints (start, end) or (), got {window!r}; {example}.")
    start, end = window
    check(0 <= start < end, "train.profile_steps",
          f"must satisfy 0 <= start < end, got {window!r}; {example}.")
    check(start % per_dispatch == 0 and end % per_dispatch == 0, "train.profile_steps",
          f"bounds must be multiples of train.steps_per_dispatch={per_dispatch} (traces start "
          f"and stop between dispatches), got {window!r}; {example}.")
    if train.num_steps is not None:
        check(end <= train.num_steps, "train.profile_steps",
              f"ends at step {end}, after the last step (train.num_steps={train.num_steps}).")


def named_plugins(config: ml_collections.ConfigDict) -> list[tuple[str, str, str]]:
    """(kind, name, section path) of every plugin a resolved config uses."""
    plugins = [(kind.name, config[kind.section].name, kind.section)
               for kind in KINDS if not kind.mapping]
    plugins += [(kind.name, name, f"{kind.section}.{name}")
                for kind in KINDS if kind.mapping for name in config[kind.section]]
    return plugins


def _validate_plugins(config: ml_collections.ConfigDict) -> None:
    for kind, name, path in named_plugins(config):
        validate = getattr(registry.load(kind, name), "validate", None)
        if validate is None:
            continue
        try:
            validate(_get_path(config, path))
        except ConfigError as error:
            if error.key is None:
                raise
            raise ConfigError.for_key(f"{path}.{error.key}", error.detail) from None


# Resolution ----------------------------------------------------------------------------------


def resolve_config(user: ml_collections.ConfigDict,
            overrides: Sequence[str] | dict[str, str] = ()) -> ml_collections.ConfigDict:
    """Merge, override, validate and lock a config. Raises ConfigError; trains nothing."""
    if not isinstance(overrides, dict):
        overrides = parse_override_keys(overrides)
    names = _plugin_names(user, overrides)
    _check_before_plugins(user, overrides, names)
    config = _schema(names)
    _overlay(config, user, config)
    for length, other in (("num_steps", "num_epochs"), ("num_epochs", "num_steps")):
        if f"train.{length}" in overrides and f"train.{other}" not in overrides:
            config.train[other] = None  # Overriding the run length replaces the file's choice.
    if overrides:
        _apply_overrides(config, overrides)
    _validate_core(config)
    _validate_plugins(config)
    config.lock()
    return config


def load_config(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """The config of `jaxforge train --config SPEC --config.x=y ...`."""
    keys = parse_override_keys(overrides)  # Malformed overrides fail before the file runs.
    return resolve_config(load_experiment(spec), keys)


def format_config(config: ml_collections.ConfigDict) -> str:
    """One `section.field = value` line per field: the names `--config.` overrides use."""
    return "\n".join(f"{path} = {{}}" if is_section(value) else f"{path} = {value!r}"
                     for path, value in flatten(config)
                     if not (is_section(value) and len(value)))


def format_resolved(config: ml_collections.ConfigDict) -> str:
    """`format_config`, with the number of steps resolved (`jaxforge config show`): for a run
    given in epochs, `train.num_steps = 1348  # from train.num_epochs=60.0 x 1437 train examples
    / batch 64, rounded up`; the train split's size comes from building the dataset plugin."""
    text = format_config(config)
    if config.train.num_steps is not None:
        return text
    try:
        num_train = train_examples(config)
    except Exception as error:  # The config is valid; only the step count is unknown here.
        message = (str(error).strip().splitlines() or [""])[0]
        message = message if len(message) <= 160 else message[:157] + "..."
        reason = type(error).__name__ + (f": {message}" if message else "")
        line = (f"train.num_steps = None  # train.num_epochs={config.train.num_epochs!r} x the "
                f"train examples / batch {config.dataset.batch_size}; the dataset could not be "
                f"built to count them ({reason})")
    else:
        line = (f"train.num_steps = {num_steps(config, num_train)}  # from "
                f"{num_steps_origin(config, num_train)}")
    return "\n".join(line if text_line == "train.num_steps = None" else text_line
                     for text_line in text.splitlines())


# Run length ----------------------------------------------------------------------------------


def num_steps(config: ml_collections.ConfigDict, num_train: int | None = None) -> int:
    """The run's optimizer steps: `train.num_steps`, or `train.num_epochs` of `num_train` train
    examples (the dataset's metadata) in batches of `dataset.batch_size`, rounded up."""
    if config.train.num_steps is not None:
        return config.train.num_steps
    if num_train is None:
        raise ValueError("train.num_epochs is set: the number of steps needs num_train.")
    return math.ceil(config.train.num_epochs * num_train / config.dataset.batch_size)


def num_steps_origin(config: ml_collections.ConfigDict, num_train: int | None = None) -> str:
    """Where `num_steps` comes from, e.g. `train.num_epochs=60.0 x 1437 train examples /
    batch 64, rounded up`."""
    if config.train.num_steps is not None:
        return f"train.num_steps={config.train.num_steps}"
    epochs = config.train.num_epochs
    exact = epochs * num_train / config.dataset.batch_size
    return (f"train.num_epochs={epochs!r} x {num_train} train examples / batch "
            f"{config.dataset.batch_size}" + ("" if exact == int(exact) else ", rounded up"))


def train_examples(config: ml_collections.ConfigDict) -> int:
    """The size of the train split, from the metadata of the dataset plugin (built here)."""
    dataset = registry.load(DATASETS, config.dataset.name).build(
        config.dataset, DataContext(seed=config.seed))
    return dataset.metadata.num_train


def to_json(config: ml_collections.ConfigDict) -> str:
    return json.dumps(config.to_dict(), indent=2, sort_keys=False)


def from_json_file(path: str | epath.Path) -> ml_collections.ConfigDict:
    """Re-resolve a workdir's config.json (written by `to_json`; local or `gs://`)."""
    try:
        data = json.loads(epath.Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ConfigError(f"Cannot read the run config {path}: {error}") from None
    return resolve_config(ml_collections.ConfigDict(data))

