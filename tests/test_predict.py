"""`framework.load` and `jaxforge predict`: a trained workdir's checkpoint as predictions."""

import shutil

import jax
import numpy as np
import pytest

import framework
from framework.cli import main
from framework.testing import tiny_config


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A tiny run trained once for the module, with EMA parameters (evaluation uses them)."""
    path = tmp_path_factory.mktemp("predict") / "run"
    config = tiny_config(train={"num_steps": 20, "log_every_steps": 10, "eval_every_steps": 20,
                                "ema_decay": 0.9})
    framework.train(framework.resolve_config(config), path)
    return path


@pytest.fixture(scope="module")
def loaded(workdir):
    return framework.load(workdir)


def test_load_gives_the_config_metadata_and_ema_parameters(loaded, workdir):
    assert loaded.step == 20 and loaded.uses_ema
    assert loaded.config.model.name == "mlp" and loaded.config.train.ema_decay == 0.9
    assert loaded.config.is_locked  # The resolved config of config.json.
    assert loaded.metadata.input_shape == (4, 4, 1)
    assert loaded.metadata.input_dtype == "float32" and loaded.metadata.num_classes == 4
    from framework import loop

    _, state, _ = loop.restore(workdir)
    for got, ema, params in zip(*map(jax.tree.leaves, (loaded.params, state.ema_params,
                                                        state.params))):
        np.testing.assert_array_equal(got, ema)
        assert not np.array_equal(got, params)


def test_predictions_of_the_eval_split_agree_with_evaluate(loaded, workdir):
    inputs, labels = loaded.eval_split()
    assert len(inputs) == len(labels) == 100
    logits = loaded.predict(inputs)
    assert logits.shape == (100, 4) and logits.dtype == np.float32
    accuracy = float(np.mean(np.argmax(logits, -1) == labels))
    assert accuracy == pytest.approx(framework.evaluate(workdir)["eval/accuracy"])


def test_a_partial_last_batch_is_padded_and_compiles_once(loaded):
    inputs, _ = loaded.eval_split()
    whole = loaded.predict(inputs[:40], batch_size=40)
    loaded._forward.clear_cache()
    batched = loaded.predict(inputs[:19], batch_size=8)  # 8 + 8 + 3 padded to 8.
    assert loaded._forward._cache_size() == 1
    assert batched.shape == (19, 4)
    np.testing.assert_allclose(batched, whole[:19], atol=1e-5)
    # A batch size the 8 devices do not divide is rounded up to a multiple of them.
    np.testing.assert_allclose(loaded.predict(inputs[:5], batch_size=3), whole[:5], atol=1e-5)


@pytest.mark.parametrize("inputs, wrong", [
    (np.zeros((3, 4, 4), np.float32), "shape (3, 4, 4)"),
    (np.zeros((3, 4, 4, 1), np.float64), "float64"),
])
def test_wrong_inputs_name_the_shape_and_dtype_expected(loaded, inputs, wrong):
    with pytest.raises(framework.JaxforgeError, match=r"takes float32 of shape \(N, 4, 4, 1\)") \
            as error:
        loaded.predict(inputs)
    assert wrong in str(error.value)


def test_a_batch_size_below_one_is_an_error(loaded):
    with pytest.raises(framework.JaxforgeError, match="batch_size=0"):
        loaded.predict(np.zeros((2, 4, 4, 1), np.float32), batch_size=0)


def test_a_workdir_without_a_checkpoint_is_one_error(workdir, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copy(workdir / "config.json", empty / "config.json")
    with pytest.raises(framework.JaxforgeError, match="holds no checkpoint; train first"):
        framework.load(empty)
    assert not (empty / "checkpoints").exists()  # Nothing is created in the workdir.
    with pytest.raises(framework.JaxforgeError, match="has no step-7 checkpoint"):
        framework.load(workdir, step=7)
    inputs = tmp_path / "x.npy"
    np.save(inputs, np.zeros((2, 4, 4, 1), np.float32))
    assert main(["predict", "--workdir", str(empty), "--inputs", str(inputs)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "holds no checkpoint" in error


def test_predict_command_writes_logits_probabilities_and_top_k(loaded, workdir, tmp_path,
                                                                capsys):
    inputs, _ = loaded.eval_split()
    np.save(tmp_path / "x.npy", inputs[:11])
    output = tmp_path / "predictions.npz"
    assert main(["predict", "--workdir", str(workdir), "--inputs", str(tmp_path / "x.npy"),
                 "-o", str(output), "--top_k", "2", "--batch_size", "8"]) == 0
    assert "Wrote" in capsys.readouterr().out
    result = np.load(output)
    assert set(result.files) == {"logits", "probabilities", "top_k", "top_k_probabilities"}
    np.testing.assert_allclose(result["logits"], loaded.predict(inputs[:11]), atol=1e-5)
    np.testing.assert_allclose(result["probabilities"].sum(-1), 1.0, atol=1e-5)
    assert result["top_k"].shape == (11, 2)
    np.testing.assert_array_equal(result["top_k"][:, 0], np.argmax(result["logits"], -1))
    assert np.all(result["top_k_probabilities"][:, 0] >= result["top_k_probabilities"][:, 1])


def test_predict_command_on_the_eval_split_writes_labels_and_accuracy(workdir, tmp_path, capsys):
    output = tmp_path / "eval.npz"
    assert main(["predict", "--workdir", str(workdir), "--split", "eval", "-o",
                 str(output)]) == 0
    accuracy = framework.evaluate(workdir)["eval/accuracy"]
    assert f"accuracy {accuracy:.4f}" in capsys.readouterr().out
    result = np.load(output)
    assert result["label"].shape == (100,) and result["top_k"].shape == (100, 4)
    assert np.mean(result["top_k"][:, 0] == result["label"]) == pytest.approx(accuracy)


@pytest.mark.parametrize("array, message", [
    (np.zeros((2, 4, 4, 1), np.int32), "takes float32 of shape (N, 4, 4, 1)"),
    (None, "Cannot read inputs"),
])
def test_predict_command_rejects_bad_inputs_with_exit_2(workdir, tmp_path, capsys, array,
                                                        message):
    path = tmp_path / "x.npy"
    if array is not None:
        np.save(path, array)
    assert main(["predict", "--workdir", str(workdir), "--inputs", str(path)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and message in error
