"""Training techniques switched on from a config: each one trains for real and is checked."""

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import framework
from framework import loop
from framework import mesh as mesh_lib
from framework.step import StepOptions, empty_accumulator, make_train_step
from plugins.callbacks import EarlyStopping
from plugins.datasets import synthetic

pytestmark = pytest.mark.slow


def run(config, workdir, **options):
    return framework.train(framework.resolve_config(config), workdir, **options)


def state_of(workdir, step=None):
    return jax.device_get(loop.restore(workdir, step)[1])


def records(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def initial_state(config):
    experiment = loop.set_up(framework.resolve_config(config))
    return experiment, experiment.init_state(jax.random.PRNGKey(config.seed))


def assert_trees_close(a, b, rtol=1e-5, atol=1e-6):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol, atol=atol), a, b)


def test_accumulating_micro_batches_equals_one_big_batch(tmp_path, tiny):
    run(tiny(train={"num_steps": 20}), tmp_path / "one")
    run(tiny(train={"num_steps": 20, "accumulation_steps": 4, "steps_per_dispatch": 2}),
        tmp_path / "four")
    assert [r["step"] for r in records(tmp_path / "four")] == [10, 20]  # Optimizer steps.
    assert_trees_close(state_of(tmp_path / "one").params, state_of(tmp_path / "four").params)


def test_gradient_clipping_bounds_each_update(tmp_path, tiny):
    config = tiny(optimizer={"name": "sgd", "learning_rate": 1.0, "momentum": 0.0},
                  train={"num_steps": 2, "grad_clip_norm": 0.01, "log_every_steps": 1})
    _, start = initial_state(config)
    run(config, tmp_path)
    assert all(r["train/grad_norm"] > 0.01 for r in records(tmp_path))  # So clipping acts.
    moved = jax.tree.map(lambda a, b: a - b, state_of(tmp_path).params,
                         jax.device_get(start.params))
    norm = float(jnp.sqrt(sum(jnp.sum(d ** 2) for d in jax.tree.leaves(moved))))
    assert 0.01 < norm <= 0.02 + 1e-6  # Two steps of lr * 0.01 at most.


def test_ema_follows_the_params_and_is_what_eval_uses(tmp_path, tiny):
    config = tiny(train={"num_steps": 2, "ema_decay": 0.5, "log_every_steps": 1,
                         "eval_every_steps": 0}, checkpoint={"every_steps": 1})
    experiment, start = initial_state(config)
    summary = run(config, tmp_path)
    p0, p1 = jax.device_get(start.params), state_of(tmp_path, 1).params
    final = state_of(tmp_path)
    expected = jax.tree.map(lambda a, b, c: 0.25 * a + 0.25 * b + 0.5 * c, p0, p1, final.params)
    assert_trees_close(final.ema_params, expected)

    def evaluate_with(params):
        state = jax.device_put(final.replace(params=params, ema_params=None),
                               mesh_lib.replicated(experiment.mesh))
        return loop._evaluate(experiment, loop._jit_eval_step(experiment), state)["eval/loss"]

    assert summary["final"]["eval/loss"] == pytest.approx(evaluate_with(final.ema_params),
                                                          rel=1e-6)
    assert summary["final"]["eval/loss"] != pytest.approx(evaluate_with(final.params), rel=1e-6)


def poisoned_synthetic(config, context):
    """The synthetic dataset with train example `poison_index` made NaN: each step that draws
    it has a NaN loss."""
    source = synthetic.build(config, context)
    train = dict(source._train)
    train["inputs"] = train["inputs"].copy()
    train["inputs"][config.poison_index] = np.nan
    return framework.ArraySource(train, source._eval, source.metadata, config, context)


def poisoned_defaults():
    config = synthetic.default_config()
    config.poison_index = 0
    return config


POISONED = framework.Plugin(build=poisoned_synthetic, default_config=poisoned_defaults,
                            api_version=framework.PLUGIN_API_VERSION)


def poisoned_steps(config):
    """Read the train iterator as the run will, to know which steps draw the NaN example."""
    resolved = framework.resolve_config(config)
    iterator = poisoned_synthetic(resolved.dataset, framework.DataContext(seed=0)).train_iterator()
    return [s for s in range(1, resolved.train.num_steps + 1)
            if np.isnan(next(iterator)["inputs"]).any()]


def index_drawn_first_at(config, step):
    """The train example that the run first draws at `step` (first row of that batch)."""
    resolved = framework.resolve_config(config)
    source = synthetic.build(resolved.dataset, framework.DataContext(seed=0))
    iterator = source.train_iterator()
    for _ in range(step):
        row = next(iterator)["inputs"][0]
    return int(np.flatnonzero((source._train["inputs"] == row).all(axis=(1, 2, 3)))[0])


def test_nonfinite_guard_stops_naming_step_and_metric_and_keeps_the_last_good_checkpoint(
        tmp_path, tiny):
    with framework.registry.registered("datasets", "poisoned", POISONED):
        config = tiny(dataset={"name": "poisoned", "shape": (4, 4, 1), "num_classes": 4,
                               "num_train": 256, "num_eval": 100, "eval_batch_size": 32},
                      train={"log_every_steps": 1}, checkpoint={"every_steps": 1})
        config.dataset.poison_index = index_drawn_first_at(config, 4)
        bad = poisoned_steps(config)[0]
        assert bad == 4
        summary = run(config, tmp_path)
        last_good = state_of(tmp_path)
    assert summary["stopped_early"] and summary["stop_step"] == bad
    assert f"non-finite train/loss at step {bad}" in summary["stop_reason"]
    assert summary["checkpoint"].endswith(f"checkpoints/{bad - 1}")
    assert int(last_good.step) == bad - 1
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(last_good.params))
    assert records(tmp_path)[-1]["step"] == bad


def test_nonfinite_guard_skip_drops_and_counts_bad_updates(tmp_path, tiny):
    with framework.registry.registered("datasets", "poisoned", POISONED):
        config = tiny(dataset={"name": "poisoned", "shape": (4, 4, 1), "num_classes": 4,
                               "num_train": 256, "num_eval": 100, "eval_batch_size": 32},
                      train={"on_nonfinite": "skip", "steps_per_dispatch": 2})
        bad = poisoned_steps(config)
        summary = run(config, tmp_path)
    assert len(bad) == 5 and summary["skipped_steps"] == 5 and not summary["stopped_early"]
    assert sum(r.get("train/skipped_steps", 0) for r in records(tmp_path)) == 5
    assert all(np.isfinite(r["train/loss"]) for r in records(tmp_path))
    assert np.isfinite(summary["final"]["eval/loss"])


def test_float16_loss_scaling_recovers_from_an_injected_overflow(tiny):
    config = tiny(train={"precision": "float16", "num_steps": 40})
    experiment, state = initial_state(config)
    state = state.replace(loss_scale=state.loss_scale.replace(scale=jnp.float32(2.0 ** 40)))
    start = jax.device_get(state.params)
    step = jax.jit(make_train_step(experiment.model, experiment.tx, {}, [], StepOptions()))
    iterator = experiment.data.train_iterator()
    shapes = jax.eval_shape(step, state, empty_accumulator(),
                            jax.tree.map(lambda x: x[None], next(iterator)))[1]
    accumulator = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    scales, skipped = [], []
    for _ in range(40):
        state, accumulator = step(state, accumulator,
                                  jax.tree.map(lambda x: x[None], next(iterator)))
        scales.append(float(state.loss_scale.scale))
        skipped.append(int(state.skipped_steps))
    assert skipped[0] == 1 and scales[0] == 2.0 ** 39  # Overflowed: skipped, scale halved.
    assert 1 < skipped[-1] < 30 and skipped[-1] == skipped[-10]  # Then it trains again.
    params = jax.device_get(state.params)
    assert {p.dtype for p in jax.tree.leaves(params)} == {np.dtype("float32")}
    assert all(np.isfinite(p).all() for p in jax.tree.leaves(params))
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(start),
                                                        jax.tree.leaves(params)))
    assert float(accumulator["loss"]) / float(accumulator["count"]) < np.log(4) * 1.5


def test_early_stopping_stops_at_the_right_evaluation():
    config = ml_collections.ConfigDict({"metric": "eval/loss", "mode": "min", "patience": 2,
                                        "min_delta": 0.05, "restore_best": False})
    callback = EarlyStopping(config)
    for step, loss in zip((10, 20, 30, 40, 50), (1.0, 0.9, 0.88, 0.86, 0.5)):
        callback.on_eval(step, {"eval/loss": loss}, None)
        if callback.stop_training:
            break
    assert step == 40 and callback.best_step == 20  # 0.88 and 0.86 are not 0.05 better.
    assert "did not improve on 0.9 (step 20)" in callback.stop_reason


def test_early_stopping_restores_the_best_params(tmp_path, tiny):
    config = tiny(train={"eval_every_steps": 10}, checkpoint={"every_steps": 10},
                  callbacks={"early_stopping": {"metric": "eval/accuracy", "mode": "max",
                                                "patience": 1, "min_delta": 1.0}})
    summary = run(config, tmp_path)  # Nothing beats the first evaluation by 1.0.
    assert summary["stopped_early"] and summary["stop_step"] == 20 and summary["steps"] == 20
    assert summary["early_stopping"]["best_step"] == 10
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["stopped_early"] and "eval/accuracy did not improve" in saved["stop_reason"]
    final, best = state_of(tmp_path), state_of(tmp_path, 10)
    assert int(final.step) == 10
    jax.tree.map(np.testing.assert_array_equal, final.params, best.params)


def test_the_summary_names_the_state_the_final_checkpoint_holds(tmp_path, tiny, capsys):
    stopping = {"metric": "eval/accuracy", "mode": "max", "patience": 1, "min_delta": 1.0}
    config = tiny(train={"eval_every_steps": 10}, checkpoint={"every_steps": 10},
                  callbacks={"early_stopping": stopping})
    summary = run(config, tmp_path / "best")  # Stops at step 20, restoring step 10's state.
    out = capsys.readouterr().out
    evaluated = {r["step"]: {k: v for k, v in r.items() if k == "step" or k.startswith("eval/")}
                 for r in records(tmp_path / "best") if "eval/loss" in r}
    assert summary["final"] == evaluated[20]  # The last evaluation, as before.
    assert summary["final_state_step"] == 10 and int(state_of(tmp_path / "best").step) == 10
    assert summary["final_state_eval"] == evaluated[10]
    assert summary["final_state_restored_by"] == "early_stopping"
    saved = json.loads((tmp_path / "best" / "summary.json").read_text())
    assert {k: saved[k] for k in ("final_state_step", "final_state_eval",
                                  "final_state_restored_by")} == {
        "final_state_step": 10, "final_state_eval": evaluated[10],
        "final_state_restored_by": "early_stopping"}
    held = ", ".join(f"{k} {v:.4f}" for k, v in evaluated[10].items() if k != "step")
    assert (f"checkpoints/20 holds the step-10 state ({held}), restored by early_stopping"
            in out)
    assert "  last eval (step 20): eval/" in out and "  final:" not in out

    # Finished: the same run again changes nothing; --restore_step continues it as it says.
    assert run(config, tmp_path / "best") == saved
    out = capsys.readouterr().out
    assert "holds a finished run: it stopped early at step 20 (eval/accuracy did not" in out
    assert "--restore_step=20" in out
    continued = run(config, tmp_path / "best", restore_step=20)
    assert continued["resumed_from_step"] == 20 and continued["steps"] == 40
    capsys.readouterr()

    stopping["restore_best"] = False  # Ends with the last state: the checkpoint holds that.
    summary = run(tiny(train={"eval_every_steps": 10}, checkpoint={"every_steps": 10},
                       callbacks={"early_stopping": stopping}), tmp_path / "last")
    assert summary["final_state_step"] == summary["stop_step"] == 20
    assert summary["final_state_eval"] == summary["final"]
    assert summary["final_state_restored_by"] is None
    out = capsys.readouterr().out
    assert "  final: eval/" in out and "holds the" not in out


def test_pruning_reaches_its_schedule_and_masks_survive_updates_and_resume(tmp_path, tiny):
    pruning = {"magnitude_pruning": {"target_sparsity": 0.5, "begin_step": 0, "end_step": 20,
                                     "frequency": 10}}
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    summary = run(tiny(regularizers=pruning), straight)
    run(tiny(regularizers=pruning, train={"num_steps": 30}), resumed)
    run(tiny(regularizers=pruning), resumed, allow_config_change=True)  # Continue to 40.
    # Kernels 16x32 and 32x4: 0.5 * (1 - 1/2)**3 + ... = 0.4375 after step 10, 0.5 from 20 on.
    assert [r["train/sparsity"] for r in records(straight)] == [0.4375, 0.5, 0.5, 0.5]
    assert summary["sparsity"] == 0.5
    at_20, final = state_of(straight, 20), state_of(straight)
    kernels = lambda params: [p for p in jax.tree.leaves(params) if p.ndim == 2]  # noqa: E731
    for before, after in zip(kernels(at_20.params), kernels(final.params)):
        assert (after[before == 0] == 0).all() and (after == 0).mean() == 0.5
    jax.tree.map(np.testing.assert_array_equal, final.params, state_of(resumed).params)


def test_batch_norm_statistics_are_over_the_global_batch_whatever_the_mesh(tmp_path, tiny):
    model = {"name": "cnn", "batch_norm": True, "conv_features": (4,), "dense_features": (8,)}
    for devices in (8, 1):
        run(tiny(model=model, dataset={"shape": (6, 6, 1)}, mesh={"data": devices},
                 train={"num_steps": 3, "log_every_steps": 1, "eval_every_steps": 0}),
            tmp_path / str(devices))
    eight, one = state_of(tmp_path / "8"), state_of(tmp_path / "1")
    assert_trees_close(eight.model_state["batch_stats"], one.model_state["batch_stats"])
    assert_trees_close(eight.params, one.params, rtol=1e-4, atol=1e-5)


def test_bfloat16_digits_accuracy_is_within_1_5_points_of_float32(tmp_path):
    accuracies = {}
    for precision in ("float32", "bfloat16"):
        config = framework.load_config("experiments/digits_cnn.py", [
            "--config.train.num_steps=300", "--config.train.eval_every_steps=300",
            "--config.train.log_every_steps=100", "--config.checkpoint.every_steps=300",
            f"--config.train.precision={precision}"])
        accuracies[precision] = framework.train(config, tmp_path / precision)["final"][
            "eval/accuracy"]
    assert accuracies["float32"] > 0.94
    assert abs(accuracies["bfloat16"] - accuracies["float32"]) <= 0.015
