"""Nothing lost: preemption, crashes mid-save, bad checkpoints, workdir clashes, hostile input."""

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import framework
from framework import loop
from framework.cli import main
from framework.workdir import WorkdirLock

EXPERIMENT = textwrap.dedent("""
    import ml_collections

    def get_config():
        return ml_collections.ConfigDict({
            "model": {"name": "cnn", "conv_features": (16,), "dense_features": (32,)},
            "dataset": {"name": "synthetic", "shape": (16, 16, 1), "num_classes": 4,
                        "num_train": 512, "num_eval": 64, "batch_size": 32},
            "train": {"num_steps": 240, "log_every_steps": 10, "eval_every_steps": 120},
            "checkpoint": {"every_steps": 40, "max_to_keep": 2},
        })
""")


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    path = tmp_path_factory.mktemp("experiment") / "small.py"
    path.write_text(EXPERIMENT)
    return str(path)


def start(experiment, workdir, *args):
    return subprocess.Popen(
        [sys.executable, "-m", "framework.cli", "train", "--config", experiment, "--workdir",
         str(workdir), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "XLA_FLAGS": ""})


def finish(experiment, workdir, *args):
    process = start(experiment, workdir, *args)
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err
    return out


def wait_for_metrics(workdir, lines=1, timeout=300):
    path, deadline = workdir / "metrics.jsonl", time.time() + timeout
    while time.time() < deadline:
        if path.exists() and len(path.read_text().splitlines()) >= lines:
            return
        time.sleep(0.05)
    raise TimeoutError(f"{path} never reached {lines} lines")


def final_state(workdir):
    _, state, step = loop.restore(workdir)
    return step, jax.device_get(state.params)


def metrics_without_timing(workdir):
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "steps_per_sec"} for r in records]


@pytest.fixture(scope="module")
def uninterrupted(experiment, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("uninterrupted") / "run"
    finish(experiment, workdir)
    return workdir


def assert_identical(workdir, reference):
    step, params = final_state(workdir)
    reference_step, reference_params = final_state(reference)
    assert step == reference_step == 240
    jax.tree.map(np.testing.assert_array_equal, params, reference_params)
    assert metrics_without_timing(workdir) == metrics_without_timing(reference)


@pytest.mark.slow
def test_sigterm_stops_cleanly_and_resume_is_bit_exact(experiment, uninterrupted, tmp_path):
    workdir = tmp_path / "run"
    process = start(experiment, workdir)
    wait_for_metrics(workdir, lines=int(np.random.default_rng().integers(2, 12)))
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    assert "Run the same command again to resume" in out and "Traceback" not in err
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["preempted_by"] == "SIGTERM" and summary["steps"] < 240
    finish(experiment, workdir)
    assert_identical(workdir, uninterrupted)


@pytest.mark.slow
def test_kill_9_while_saving_every_step_then_resume(experiment, uninterrupted, tmp_path):
    workdir = tmp_path / "run"
    process = start(experiment, workdir, "--config.checkpoint.every_steps=10")
    wait_for_metrics(workdir, lines=int(np.random.default_rng().integers(3, 15)))
    process.kill()
    process.communicate(timeout=60)
    # The same command again (with the same config) resumes from the last complete checkpoint.
    finish(experiment, workdir, "--config.checkpoint.every_steps=10")
    step, params = final_state(workdir)
    assert step == 240
    jax.tree.map(np.testing.assert_array_equal, params, final_state(uninterrupted)[1])


def test_incomplete_checkpoint_is_ignored(tmp_path, tiny):
    config = framework.resolve_config(tiny(train={"num_steps": 20}))
    framework.train(config, tmp_path)
    # What a save cut short leaves behind: Orbax's temporary directory for a later step.
    partial = tmp_path / "checkpoints" / "40.orbax-checkpoint-tmp-1234"
    shutil.copytree(tmp_path / "checkpoints" / "20", partial)
    config = framework.resolve_config(tiny(train={"num_steps": 40}))
    summary = framework.train(config, tmp_path, allow_config_change=True)
    assert summary["resumed_from_step"] == 20 and summary["steps"] == 40
    assert not partial.exists()


def test_corrupted_checkpoint_names_the_step_and_restore_step_picks_another(tmp_path, tiny):
    config = framework.resolve_config(tiny(train={"num_steps": 40}))
    framework.train(config, tmp_path)
    for path in (tmp_path / "checkpoints" / "40" / "state").rglob("*"):
        if path.is_file():
            path.write_bytes(b"garbage")
    longer = framework.resolve_config(tiny(train={"num_steps": 60}))  # Finished: train longer.
    with pytest.raises(framework.JaxforgeError) as error:
        framework.train(longer, tmp_path, allow_config_change=True)
    message = str(error.value)
    assert "step-40 checkpoint" in message and "--restore_step" in message and "[20]" in message
    summary = framework.train(longer, tmp_path, restore_step=20)
    assert summary["resumed_from_step"] == 20 and summary["steps"] == 60
    assert [p.name.split(".")[0] for p in (tmp_path / "abandoned_checkpoints").iterdir()] == [
        "40"]  # Set aside, not deleted.


def test_changed_config_is_refused_unless_allowed(tmp_path, tiny, capsys):
    framework.train(framework.resolve_config(tiny(train={"num_steps": 20})), tmp_path)
    changed = framework.resolve_config(tiny(train={"num_steps": 20},
                                            optimizer={"learning_rate": 0.02}))
    with pytest.raises(framework.JaxforgeError) as error:
        framework.train(changed, tmp_path)
    assert "optimizer.learning_rate: 0.01 -> 0.02" in str(error.value)
    assert "--allow_config_change" in str(error.value)
    # Allowed; the run is finished, so nothing trains and config.json stays as it was.
    assert framework.train(changed, tmp_path, allow_config_change=True)["steps"] == 20
    other_mesh = framework.resolve_config(tiny(train={"num_steps": 20}, mesh={"data": 4}))
    assert framework.train(other_mesh, tmp_path)["steps"] == 20  # The machine may change.


def test_a_second_run_on_a_busy_workdir_is_refused(tmp_path, tiny):
    with WorkdirLock(tmp_path), pytest.raises(framework.JaxforgeError,
                                              match="Another run is using"):
        framework.train(framework.resolve_config(tiny()), tmp_path)
    assert not (tmp_path / "metrics.jsonl").exists()


@pytest.mark.parametrize("corrupt, message", [
    ({"inputs": lambda x: x[:, :2]}, "train batch['inputs'] has examples of shape (2, 4, 1), "
                                     "but the metadata promises input_shape=(4, 4, 1)"),
    ({"label": lambda y: y + 10}, "train batch['label'] has values outside [0, num_classes=4): "
                                  "[10 11 12 13]"),
])
def test_dataset_breaking_its_metadata_is_named(tmp_path, tiny, corrupt, message):
    synthetic = framework.registry.load("datasets", "synthetic")

    class Corrupted:
        def __init__(self, iterator):
            self.iterator = iterator

        def __next__(self):
            batch = next(self.iterator)
            return {k: corrupt.get(k, lambda v: v)(v) for k, v in batch.items()}

        def get_state(self):
            return self.iterator.get_state()

        def set_state(self, state):
            self.iterator.set_state(state)

    def build(config, context):
        source = synthetic.build(config, context)
        source.train_iterator = lambda original=source.train_iterator: Corrupted(original())
        return source

    broken = framework.Plugin(build=build, default_config=synthetic.default_config,
                              api_version=framework.PLUGIN_API_VERSION)
    with framework.registry.registered("datasets", "broken", broken):
        config = framework.resolve_config(tiny(dataset={
            "name": "broken", "shape": (4, 4, 1), "num_classes": 4, "batch_size": 32}))
        with pytest.raises(framework.JaxforgeError) as error:
            framework.train(config, tmp_path)
    assert "Dataset plugin 'broken'" in str(error.value) and message in str(error.value)


KEYS = st.sampled_from(["seed", "train.num_steps", "train.precision", "model.name",
                        "model.conv_features", "dataset.batch_size", "mesh.data",
                        "optimizer.learning_rate", "regularizers.l2.weight", "train",
                        "train.nmu_steps", "seed.x", "augmentations.rotate.degrees", "",
                        "model..name", "checkpoint.every_steps"])
VALUES = st.one_of(st.text(max_size=12), st.integers(-10**12, 10**12).map(str),
                   st.sampled_from(["None", "(", "(1,", "[1]", "1e999", "nan", "-1", "true",
                                    "{}", "'", "()", "(1, 'a')", "cnnn", "float16"]))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(overrides=st.lists(st.tuples(KEYS, VALUES), min_size=1, max_size=3))
def test_random_overrides_never_produce_a_traceback(overrides):
    argv = ["config", "show", "--config", "experiments/digits_cnn.py"]
    argv += [f"--config.{key}={value}" for key, value in overrides]
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        status = main(argv)
    assert status in (0, 2)
    if status == 2:
        assert err.getvalue().startswith("jaxforge: error: ")
        assert len(err.getvalue().strip().splitlines()) == 1


def test_malformed_argument_shapes_exit_2(capsys):
    for argv in (["train", "--config", "experiments/digits_cnn.py", "--workdir", "x", "--config"],
                 ["config", "show", "--config", "experiments/digits_cnn.py", "--config.seed",
                  "--config.model.name=cnn"],
                 ["config", "show", "--config", "experiments/no_such_experiment.py"]):
        try:
            status = main(argv)
        except SystemExit as exit_info:  # argparse's own usage errors.
            status = exit_info.code
        assert status == 2, argv
    assert "Traceback" not in capsys.readouterr().err


def test_checkpoints_and_state_files_hold_no_pickle(tmp_path, tiny):
    framework.train(framework.resolve_config(tiny(train={"num_steps": 20})), tmp_path)
    for path in tmp_path.rglob("*"):
        if path.is_file():
            head = path.read_bytes()[:2]
            assert head not in (b"\x80\x03", b"\x80\x04", b"\x80\x05"), path  # Pickle headers.
