"""End-to-end training: it learns, writes its workdir, shards, resumes exactly, evaluates fully."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import framework
from framework import loop
from framework.errors import ConfigError

pytestmark = pytest.mark.slow


def run(config, workdir, **options):
    return framework.train(framework.resolve_config(config), workdir, **options)


def params_of(workdir, step=None):
    _, state, _ = loop.restore(workdir, step)
    return jax.device_get(state.params)


def records(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_digits_cnn_learns_and_writes_the_workdir(tmp_path):
    config = framework.load_config("experiments/digits_cnn.py", [
        "--config.train.num_steps=150", "--config.train.eval_every_steps=150",
        "--config.train.log_every_steps=50",
        "--config.checkpoint.every_steps=100"])
    summary = framework.train(config, tmp_path)
    assert summary["final"]["eval/accuracy"] > 0.93
    assert summary["steps"] == 150 and summary["final"]["step"] == 150
    for name in ("config.json", "plugins.json", "metrics.jsonl", "summary.json"):
        assert (tmp_path / name).is_file(), name
    assert json.loads((tmp_path / "summary.json").read_text())["final"] == summary["final"]
    lines = records(tmp_path)
    assert [r["step"] for r in lines] == [50, 100, 150]
    assert {"train/loss", "train/accuracy", "steps_per_sec"} <= set(lines[0])
    assert {"eval/loss", "eval/accuracy"} <= set(lines[-1])
    assert lines[-1]["train/loss"] < lines[0]["train/loss"]
    plugins = {p["id"] for p in json.loads((tmp_path / "plugins.json").read_text())}
    assert {"jaxforge:cnn", "jaxforge:digits", "jaxforge:adam"} <= plugins
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == [
        "100", "150"]
    assert framework.evaluate(tmp_path)["eval/accuracy"] == pytest.approx(
        summary["final"]["eval/accuracy"])


def test_sharded_and_single_device_runs_agree(tmp_path, tiny):
    run(tiny(mesh={"data": 8}), tmp_path / "eight")
    run(tiny(mesh={"data": 1}), tmp_path / "one")
    for a, b in zip(records(tmp_path / "eight"), records(tmp_path / "one")):
        assert a["train/loss"] == pytest.approx(b["train/loss"], rel=1e-4)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
                 params_of(tmp_path / "eight"), params_of(tmp_path / "one"))


class Interrupt(framework.Callback):
    """Simulates a crash after a given step was logged (after its checkpoint was started)."""

    def __init__(self, at_step):
        self.at_step = at_step

    def on_log(self, step, metrics, state):
        if step == self.at_step:
            raise KeyboardInterrupt


def test_interrupted_run_resumes_to_identical_parameters(tmp_path, tiny):
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    run(tiny(), straight)
    crash = framework.Plugin(
        build=lambda config: Interrupt(config.at_step), api_version=framework.PLUGIN_API_VERSION,
        default_config=lambda: ml_collections.ConfigDict({"at_step": 30}))
    with (framework.registry.registered("callbacks", "crash", crash),
          pytest.raises(KeyboardInterrupt)):
        run(tiny(callbacks={"crash": {"at_step": 40}}), interrupted)
    assert max(r["step"] for r in records(interrupted)) == 30  # Logged past the checkpoint (20).
    # The same config without the crash resumes from step 20.
    summary = run(tiny(), interrupted, allow_config_change=True)
    assert summary["resumed_from_step"] == 20 and summary["steps"] == 40
    assert records(interrupted) == [
        {**r, "steps_per_sec": r2["steps_per_sec"]}
        for r, r2 in zip(records(straight), records(interrupted))]
    jax.tree.map(np.testing.assert_array_equal, params_of(straight), params_of(interrupted))


def test_stop_then_continue_to_twice_the_steps_equals_straight(tmp_path, tiny):
    run(tiny(train={"num_steps": 40}), tmp_path / "straight")
    run(tiny(train={"num_steps": 20}), tmp_path / "resumed")
    summary = run(tiny(train={"num_steps": 40}), tmp_path / "resumed", allow_config_change=True)
    assert summary["resumed_from_step"] == 20
    jax.tree.map(np.testing.assert_array_equal, params_of(tmp_path / "straight"),
                 params_of(tmp_path / "resumed"))


def test_several_steps_per_dispatch_match_one(tmp_path, tiny):
    run(tiny(), tmp_path / "one")
    run(tiny(train={"steps_per_dispatch": 5}), tmp_path / "five")
    assert [r["step"] for r in records(tmp_path / "five")] == [10, 20, 30, 40]
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 params_of(tmp_path / "one"), params_of(tmp_path / "five"))


class Linear(nn.Module):
    num_classes: int

    @nn.compact
    def __call__(self, x, *, train):
        return nn.Dense(self.num_classes)(x.reshape((x.shape[0], -1)))


def label_loss(logits, batch):
    """A model's own loss and metrics: here it also reports each example's label."""
    loss = -jnp.take_along_axis(jax.nn.log_softmax(logits), batch["label"][:, None], 1)[:, 0]
    return loss, {"label": batch["label"].astype(jnp.float32)}


def test_eval_counts_every_example_once_with_a_models_own_metrics(tmp_path, tiny):
    model = framework.Plugin(build=lambda config, metadata, dtype: Linear(metadata.num_classes),
                             loss=label_loss, api_version=framework.PLUGIN_API_VERSION)
    with framework.registry.registered("models", "linear", model):
        summary = run(tiny(model={"name": "linear"}, dataset={"num_eval": 100}), tmp_path)
    assert "train/label" in records(tmp_path)[0] and "train/accuracy" not in records(tmp_path)[0]
    source = framework.registry.load("datasets", "synthetic").build(
        framework.resolve_config(tiny()).dataset, framework.DataContext(seed=0))
    labels = np.concatenate([b["label"][b["mask"]] for b in source.eval_batches()])
    assert len(labels) == 100  # 4 batches of 32, the last one padded with 28 masked rows.
    assert summary["final"]["eval/label"] == pytest.approx(labels.mean(), rel=1e-6)


@pytest.mark.parametrize("model", [
    {"name": "cnn", "batch_norm": True, "dropout_rate": 0.3, "conv_features": (8,),
     "dense_features": (16,)},
    {"name": "resnet", "stage_sizes": (1, 1), "width": 4},
])
def test_batch_norm_and_dropout_models_train(tmp_path, tiny, model):
    config = tiny(model=model, dataset={"shape": (8, 8, 3)},
                  train={"num_steps": 20, "eval_every_steps": 0})
    summary = run(config, tmp_path)
    assert np.isfinite(summary["final"]["eval/loss"])
    _, state, _ = loop.restore(tmp_path)
    stats = jax.tree.leaves(state.model_state["batch_stats"])
    assert stats and any(np.abs(np.asarray(s)).sum() > 0 for s in stats)


@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
def test_low_precision_compute_keeps_float32_params(tmp_path, tiny, precision):
    summary = run(tiny(train={"precision": precision, "num_steps": 20}), tmp_path)
    assert np.isfinite(summary["final"]["eval/loss"])
    _, state, _ = loop.restore(tmp_path)  # The loss scale, if any, is checkpointed too.
    assert {p.dtype for p in jax.tree.leaves(state.params)} == {np.dtype("float32")}
    assert (state.loss_scale is not None) == (precision == "float16")


def test_penalty_regularizer_is_added_to_the_loss(tmp_path, tiny):
    run(tiny(regularizers={"l2": {"weight": 0.1}}, train={"num_steps": 10}), tmp_path)
    first = records(tmp_path)[0]
    assert first["train/penalty/l2"] > 0
    assert first["train/total_loss"] == pytest.approx(
        first["train/loss"] + first["train/penalty/l2"], rel=1e-5)


def test_num_epochs_is_converted_to_steps(tmp_path, tiny):
    summary = run(tiny(train={"num_steps": None, "num_epochs": 2.5, "eval_every_steps": 0}),
                  tmp_path)
    assert summary["steps"] == 20  # ceil(2.5 * 256 / 32)


@pytest.mark.parametrize("mesh, batch, message", [
    ({"data": 16}, 32, "needs 16 devices but only 8"),
    ({"data": 3}, 32, "config.dataset.batch_size=32 does not split over the mesh's 3"),
    ({"data": -1, "fsdp": 3}, 32, "cannot fill 8 devices"),
])
def test_mesh_errors_are_clear(tmp_path, tiny, mesh, batch, message):
    with pytest.raises(ConfigError, match=message):
        run(tiny(mesh=mesh, dataset={"batch_size": batch}), tmp_path)
    assert not (tmp_path / "metrics.jsonl").exists()
