"""The `digits` class subset and few-examples-per-class fields, and the fine-tuning experiments."""

import numpy as np
import pytest

from framework import config as config_lib
from framework.errors import ConfigError
from framework.plugin import DataContext
from framework.testing import tiny_config
from plugins.datasets import digits


def resolved(overrides=(), **dataset):
    user = tiny_config(model={"name": "mlp", "hidden_sizes": (8,)},
                       dataset={"name": "digits", "batch_size": 16, **dataset})
    return config_lib.resolve_config(user, list(overrides))


def build(**dataset):
    source = digits.build(resolved(**dataset).dataset, DataContext(seed=0))
    return source, source._train, source._eval


def test_default_is_all_ten_digits():
    source, train, _ = build()
    assert source.metadata.num_classes == 10
    assert (source.metadata.num_train, source.metadata.num_eval) == (1437, 360)
    assert np.bincount(train["label"]).tolist() == [142, 146, 142, 146, 145, 145, 145, 143, 139,
                                                     144]


def test_classes_keep_those_digits_in_both_splits_renumbered_in_the_given_order():
    _, all_train, all_eval = build()
    source, train, evaluation = build(classes=(7, 2, 9))
    assert source.metadata.num_classes == 3
    for split, full in ((train, all_train), (evaluation, all_eval)):
        kept = np.isin(full["label"], (7, 2, 9))
        np.testing.assert_array_equal(split["inputs"], full["inputs"][kept])  # Same order.
        digit_of_label = np.array([7, 2, 9])
        np.testing.assert_array_equal(digit_of_label[split["label"]], full["label"][kept])
    assert (source.metadata.num_train, source.metadata.num_eval) == (
        len(train["label"]), len(evaluation["label"])) == (143 + 142 + 144, 36 + 35 + 36)


def test_train_per_class_takes_the_first_of_each_class_and_all_of_eval():
    _, all_train, all_eval = build(classes=(5, 6, 7, 8, 9))
    source, train, evaluation = build(classes=(5, 6, 7, 8, 9), train_per_class=10)
    assert np.bincount(train["label"]).tolist() == [10] * 5
    assert source.metadata.num_train == 50 and source.metadata.num_classes == 5
    for label in range(5):
        first = all_train["inputs"][all_train["label"] == label][:10]
        np.testing.assert_array_equal(train["inputs"][train["label"] == label], first)
    np.testing.assert_array_equal(evaluation["label"], all_eval["label"])  # Eval untouched.
    assert source.metadata.num_eval == 180
    again = build(classes=(5, 6, 7, 8, 9), train_per_class=10)[1]  # Deterministic.
    np.testing.assert_array_equal(again["inputs"], train["inputs"])
    np.testing.assert_array_equal(again["label"], train["label"])


def test_fields_from_the_command_line():
    config = resolved(["--config.dataset.classes=(3,1)", "--config.dataset.train_per_class=4"])
    assert tuple(config.dataset.classes) == (3, 1) and config.dataset.train_per_class == 4
    source = digits.build(config.dataset, DataContext(seed=0))
    assert source.metadata.num_train == 8 and source.metadata.num_classes == 2


@pytest.mark.parametrize("dataset, key, words", [
    ({"classes": (1, 10)}, "classes", "digits in 0..9"),
    ({"classes": (-1,)}, "classes", "digits in 0..9"),
    ({"classes": (2, 3, 2)}, "classes", "repeat"),
    ({"train_per_class": -1}, "train_per_class", ">= 0"),
    ({"train_per_class": 140}, "train_per_class", "only 139 examples of digit 8"),
    ({"classes": (0, 1), "train_per_class": 143}, "train_per_class",
     "only 142 examples of digit 0"),
])
def test_a_bad_value_is_a_config_error_naming_the_key(dataset, key, words):
    with pytest.raises(ConfigError) as error:
        resolved(**dataset)
    assert error.value.key == f"dataset.{key}"
    assert words in str(error.value)


def test_train_per_class_up_to_what_there_is():
    assert build(classes=(0, 1), train_per_class=142)[0].metadata.num_train == 284


@pytest.mark.slow
def test_init_from_a_relative_workdir(tmp_path, monkeypatch):
    """`init_from.path=runs/x` as the docs write it (Orbax reads a relative path's metadata as
    None: init_from gives it absolute paths)."""
    import json

    import framework

    monkeypatch.chdir(tmp_path)
    framework.train(config_lib.resolve_config(tiny_config(train={"num_steps": 4})), "source")
    framework.train(config_lib.resolve_config(
        tiny_config(train={"num_steps": 2}, init_from={"path": "source"})), "target")
    report = json.loads((tmp_path / "target" / "init_from.json").read_text())
    assert report["step"] == 4 and "params/Dense_0/kernel" in report["loaded"]


def test_the_experiments_resolve():
    pretrain = config_lib.load_config("experiments/digits_pretrain.py")
    finetune = config_lib.load_config("experiments/digits_finetune.py")
    assert tuple(pretrain.dataset.classes) == (0, 1, 2, 3, 4)
    assert tuple(finetune.dataset.classes) == (5, 6, 7, 8, 9)
    assert finetune.init_from.path == "runs/digits_pretrain"
    assert tuple(finetune.init_from.exclude) == ("Dense_1",)
    scratch = config_lib.load_config("experiments/digits_finetune.py",
                                     ["--config.init_from.path="])
    assert scratch.init_from.path == ""

