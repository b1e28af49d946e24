"""Config resolution: plugin defaults merged, overrides typed, every mistake one clear error."""

import ml_collections
import pytest

from framework import config as config_lib
from framework.errors import ConfigError


def resolve(user, *overrides):
    return config_lib.resolve_config(ml_collections.ConfigDict(user), list(overrides))


BASE = {"train": {"num_steps": 10}}


def test_plugin_defaults_are_merged_and_config_is_locked():
    config = resolve({"model": {"name": "cnn", "dropout_rate": 0.5}, **BASE})
    assert config.model.conv_features == (32,) and config.model.dropout_rate == 0.5
    assert config.optimizer.name == "adam" and config.optimizer.learning_rate == 1e-3
    assert config.dataset.name == "digits" and config.dataset.image_size == 8
    with pytest.raises(AttributeError):
        config.model.new_field = 1


def test_overrides_are_typed_by_the_field_they_replace():
    config = resolve(BASE, "--config.optimizer.learning_rate=3e-4", "--config.train.num_steps",
                     "7", "--config.model.conv_features=(8, 16)", "--config.model.batch_norm=true",
                     "--config.dataset.eval_batch_size=50")
    assert config.optimizer.learning_rate == 3e-4 and config.train.num_steps == 7
    assert config.model.conv_features == (8, 16) and config.model.batch_norm is True
    assert config.dataset.eval_batch_size == 50


def test_switching_plugin_by_override_brings_its_defaults():
    config = resolve(BASE, "--config.model.name=mlp", "--config.model.hidden_sizes=(7,)",
                     "--config.regularizers.l2.weight=0.01")
    assert config.model.hidden_sizes == (7,) and "conv_features" not in config.model
    assert config.regularizers.l2.weight == 0.01 and config.regularizers.l2.include == ".*"


def test_run_length_override_replaces_the_files_choice():
    config = resolve({"train": {"num_epochs": 3.0}}, "--config.train.num_steps=5")
    assert config.train.num_steps == 5 and config.train.num_epochs is None


@pytest.mark.parametrize("user, overrides, expected", [
    (BASE, ["--config.train.num_step=5"],
     "Unknown config key config.train.num_step. Did you mean config.train.num_steps?"),
    (BASE, ["--config.train.batch_size=5"],
     "Unknown config key config.train.batch_size. batch_size is in the dataset section: "
     "--config.dataset.batch_size=5."),
    ({"trian": {}, **BASE}, [], "Unknown config key config.trian. Did you mean config.train?"),
    ({"model": {"name": "cnn", "dropuot_rate": 0.1}, **BASE}, [],
     "Did you mean config.model.dropout_rate?"),
    (BASE, ["--config.train.num_steps=abc"], "config.train.num_steps must be an int, got 'abc'"),
    ({"train": {"num_steps": "ten"}}, [], "config.train.num_steps must be an int, got str 'ten'"),
    (BASE, ["--config.dataset.batch_size=-64"], "config.dataset.batch_size must be a positive"),
    (BASE, ["--config.model.name=cnnn"],
     "Unknown model plugin 'cnnn'. Did you mean 'cnn' or 'cnn_nnx'?"),
    (BASE, ["--config.regularizers.l3.weight=1"], "Unknown regularizer plugin 'l3'"),
    (BASE, ["--config.optimizer.learning_rate=-1"],
     "config.optimizer.learning_rate must be > 0, got -1.0"),
    (BASE, ["--config.regularizers.l2.weight=-1"], "config.regularizers.l2.weight must be >= 0"),
    (BASE, ["--config.train.precision=float64"], "config.train.precision must be one of"),
    ({"train": {}}, [], "give train.num_steps (optimizer steps) or train.num_epochs"),
    (BASE, ["--config.train.steps_per_dispatch=3"],
     "config.train.log_every_steps=100 is not a multiple of train.steps_per_dispatch=3; "
     "use 99 or 102"),
    (BASE, ["--config.mesh.data=0"], "config.mesh.data must be a positive int or -1"),
    (BASE, ["--config.train.grad_clip_norm=-1"], "config.train.grad_clip_norm must be >= 0"),
    (BASE, ["--config.train.accumulation_steps=0"],
     "config.train.accumulation_steps must be >= 1"),
    (BASE, ["--config.train.accumulation_steps=3"],
     "config.train.accumulation_steps must divide dataset.batch_size=64"),
    (BASE, ["--config.train.ema_decay=1.0"], "config.train.ema_decay must be in [0, 1)"),
    (BASE, ["--config.train.on_nonfinite=ignore"],
     "config.train.on_nonfinite must be one of stop, skip, got 'ignore'"),
    (BASE, ["--config.callbacks.early_stopping.mode=best"],
     "config.callbacks.early_stopping.mode must be 'min' or 'max'"),
    (BASE, ["--config.callbacks.early_stopping.metric=train/loss"],
     "config.callbacks.early_stopping.metric must be an eval metric"),
    (BASE, ["--config.seed.x=1"], "config.seed is a int, not a section"),
    (BASE, ["config.seed=1"], "Unexpected argument 'config.seed=1'"),
    (BASE, ["--config.seed"], "--config.seed has no value"),
])
def test_mistakes_give_one_clear_error(user, overrides, expected):
    with pytest.raises(ConfigError) as error:
        resolve(user, *overrides)
    assert expected in str(error.value)


# (where the key is written, the key, what the error must say, what it must not suggest).
SUGGESTIONS = [
    # Close names in the key's own section, compared by their last component.
    ("override", "train.num_step", "Did you mean config.train.num_steps?", None),
    ("override", "train.epochs", "Did you mean config.train.num_epochs?", None),
    ("override", "checkpoint.max_keep", "Did you mean config.checkpoint.max_to_keep?", None),
    ("override", "optimizer.lerning_rate", "Did you mean config.optimizer.learning_rate?", None),
    ("file", "trian", "Did you mean config.train?", None),
    # The right name in another section, or a top-level one written under a section.
    ("override", "train.batch_size",
     "batch_size is in the dataset section: --config.dataset.batch_size=5.", "Did you mean"),
    ("file", "train.batch_size",
     "batch_size is in the dataset section: config.dataset.batch_size.", "Did you mean"),
    ("override", "train.mesh.data", "mesh is a top-level section: --config.mesh.data=5.", None),
    ("override", "checkpoint.mesh", "mesh is a top-level section: --config.mesh.data=...", None),
    ("override", "train.seed", "seed is a top-level field: --config.seed=5.", None),
    ("override", "train.batchsize", "Did you mean config.dataset.batch_size?", None),
    # A plugin's field in a framework section: found before any plugin's module is imported, so
    # the plugins' sections are named instead (`plugins show` lists their fields).
    ("file", "train.dropout_rate",
     "A plugin's own field goes in that plugin's section (config.model (cnn)", "Did you mean"),
    # Nothing alike: no suggestion at all, rather than a far-fetched one.
    ("override", "train.warm_start", "Unknown config key config.train.warm_start. Valid keys",
     "Did you mean"),
    ("override", "checkpoint.warm_start", "Valid keys in config.checkpoint", "Did you mean"),
    ("override", "train.init_from", "init_from is a top-level section: --config.init_from.",
     None),
    ("override", "train.nope", "Valid keys in config.train", "Did you mean"),
    ("override", "train.lr", "Valid keys in config.train", "Did you mean"),
]


@pytest.mark.parametrize("where, key, expected, unexpected", SUGGESTIONS)
def test_suggestions_are_close_matches_or_the_right_section(where, key, expected, unexpected):
    if where == "override":
        overrides, user = [f"--config.{key}=5"], dict(BASE)
    else:
        *sections, last = key.split(".")
        user = {"train": {"num_steps": 10}}
        node = user
        for section in sections:
            node = node.setdefault(section, {})
        node[last] = 5 if sections else {}
        overrides = []
    with pytest.raises(ConfigError) as error:
        resolve(user, *overrides)
    message = str(error.value)
    assert expected in message
    assert unexpected is None or unexpected not in message, message


def test_an_unknown_framework_key_without_suggestion_names_the_plugin_sections():
    with pytest.raises(ConfigError) as error:
        resolve(BASE, "--config.train.learning_rate=0.1", "--config.regularizers.l2.weight=1")
    assert ("A plugin's own field goes in that plugin's section (config.model (cnn), "
            "config.dataset (digits), config.loss (cross_entropy), config.optimizer (adam), "
            "config.regularizers.l2); "
            "`jaxforge plugins show NAME` lists a plugin's fields.") in str(error.value)


def test_config_file_errors_name_the_file_and_line(tmp_path):
    missing = tmp_path / "missing.py"
    with pytest.raises(ConfigError, match="does not exist"):
        config_lib.load_experiment(str(missing))
    raising = tmp_path / "raising.py"
    raising.write_text("def get_config():\n    x = 1\n    return 1 / 0\n")
    with pytest.raises(ConfigError, match=r"raised ZeroDivisionError at line 3"):
        config_lib.load_experiment(str(raising))
    no_function = tmp_path / "empty.py"
    no_function.write_text("x = 1\n")
    with pytest.raises(ConfigError, match="has no get_config"):
        config_lib.load_experiment(str(no_function))
    wrong_type = tmp_path / "dict.py"
    wrong_type.write_text("def get_config():\n    return {'seed': 1}\n")
    with pytest.raises(ConfigError, match="returned a dict"):
        config_lib.load_experiment(str(wrong_type))


def test_config_file_argument_is_passed_to_get_config(tmp_path):
    file = tmp_path / "sized.py"
    file.write_text("import ml_collections\n"
                    "def get_config(arg):\n"
                    "    return ml_collections.ConfigDict({'train': {'num_steps': int(arg)}})\n")
    assert config_lib.load_config(f"{file}:12").train.num_steps == 12


def test_every_experiment_resolves():
    from pathlib import Path

    for path in sorted(Path(__file__).parent.parent.glob("experiments/*.py")):
        config = config_lib.load_config(str(path))
        assert config.is_locked, path


@pytest.mark.parametrize("variant", ["baseline", "l2", "dropout", "augment", "bfloat16",
                                     "pruned", "early_stopping"])
def test_every_regularized_digits_variant_resolves(variant):
    config = config_lib.load_config(f"experiments/digits_cnn_regularized.py:{variant}")
    assert config.is_locked


def test_resolved_config_round_trips_through_json(tmp_path):
    config = resolve({"model": {"name": "cnn", "conv_features": (8, 8)}, **BASE},
                     "--config.regularizers.l1.weight=0.5")
    path = tmp_path / "config.json"
    path.write_text(config_lib.to_json(config))
    assert config_lib.from_json_file(path).to_dict() == config.to_dict()


def test_one_flattening_serves_format_config_hparams_and_key_suggestions():
    from framework.config import flatten, format_config
    from framework.tensorboard_log import hparams_of

    config = ml_collections.ConfigDict({"a": {"b": 1, "c": (2, 3), "e": {}}, "d": None})
    assert [path for path, _ in flatten(config)] == ["a", "a.b", "a.c", "a.e", "d"]
    assert format_config(config) == "a.b = 1\na.c = (2, 3)\na.e = {}\nd = None"
    assert hparams_of(config) == {"a.b": 1, "a.c": "(2, 3)"}
