"""TensorBoard event files: every logged metric as a scalar, the config as hparams, resumes."""

import json
import os
import subprocess
import sys

import ml_collections
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

import framework
from framework.tensorboard_log import TensorBoardLog, hparams_of


def read_events(logdir):
    events = EventAccumulator(str(logdir))
    events.Reload()
    return events


def scalars(events, tag):
    return [(event.step, pytest.approx(event.value)) for event in events.Scalars(tag)]


def session_hparams(events):
    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    data = plugin_data_pb2.HParamsPluginData.FromString(content)
    return {key: getattr(value, value.WhichOneof("kind"))
            for key, value in data.session_start_info.hparams.items()}


def test_scalars_and_hparams_read_back(tmp_path):
    log = TensorBoardLog(tmp_path, resume_step=0, enabled=True)
    log.write_hparams(ml_collections.ConfigDict({
        "seed": 3, "model": {"name": "mlp", "hidden_sizes": (32, 16), "bias": True},
        "optimizer": {"learning_rate": 3e-4}, "dataset": {"eval_batch_size": None}}))
    log.write(10, {"train/loss": 1.5, "steps_per_sec": 20.0})
    log.write(20, {"train/loss": 0.75, "eval/accuracy": 0.5})
    log.close()
    events = read_events(tmp_path)
    assert set(events.Tags()["scalars"]) == {"train/loss", "steps_per_sec", "eval/accuracy"}
    assert scalars(events, "train/loss") == [(10, 1.5), (20, 0.75)]
    assert scalars(events, "eval/accuracy") == [(20, 0.5)]
    assert session_hparams(events) == {
        "seed": 3, "model.name": "mlp", "model.hidden_sizes": "(32, 16)", "model.bias": True,
        "optimizer.learning_rate": pytest.approx(3e-4)}  # None (unset) is left out.


def test_resumed_log_hides_the_points_the_interrupted_run_logged_past_its_checkpoint(tmp_path):
    first = TensorBoardLog(tmp_path, resume_step=0, enabled=True)
    for step, loss in ((10, 3.0), (20, 2.0), (30, 1.0)):
        first.write(step, {"train/loss": loss})
    first.close()
    resumed = TensorBoardLog(tmp_path, resume_step=20, enabled=True)  # Checkpoint at 20.
    for step, loss in ((30, 1.5), (40, 0.5)):
        resumed.write(step, {"train/loss": loss})
    resumed.close()
    assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 2
    assert scalars(read_events(tmp_path), "train/loss") == [(10, 3.0), (20, 2.0), (30, 1.5),
                                                            (40, 0.5)]


def test_other_processes_write_nothing(tmp_path):
    log = TensorBoardLog(tmp_path / "run", resume_step=0, enabled=False)
    log.write_hparams(ml_collections.ConfigDict({"seed": 0}))
    log.write(10, {"train/loss": 1.0})
    log.close()
    assert not (tmp_path / "run").exists()


def test_hparams_flatten_the_resolved_config(tiny):
    flat = hparams_of(framework.resolve_config(tiny()))
    assert flat["optimizer.learning_rate"] == 1e-2 and flat["train.num_steps"] == 40
    assert flat["dataset.shape"] == "(4, 4, 1)" and flat["model.name"] == "mlp"
    assert "dataset.eval_batch_size" in flat and "train.num_epochs" not in flat
    assert all(isinstance(v, (bool, int, float, str)) for v in flat.values())


@pytest.mark.slow
def test_a_run_writes_every_logged_metric_to_tensorboard(tmp_path, tiny):
    framework.train(framework.resolve_config(tiny()), tmp_path)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    events = read_events(tmp_path)
    tags = {key for record in records for key in record if key != "step"}
    assert set(events.Tags()["scalars"]) == tags
    assert {"train/loss", "train/accuracy", "eval/loss", "eval/accuracy", "steps_per_sec"} <= tags
    for tag in tags:
        expected = [(r["step"], pytest.approx(r[tag], rel=1e-6)) for r in records if tag in r]
        assert scalars(events, tag) == expected, tag
    assert session_hparams(events)["optimizer.learning_rate"] == pytest.approx(1e-2)


def test_logging_does_not_import_pytorch(tmp_path):
    """tensorboardX imports torch when it can: with a torch installed, that is seconds and
    hundreds of MiB per run for nothing. A stand-in torch package on the path records imports."""
    fake = tmp_path / "site" / "torch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("import os\nopen(os.environ['IMPORTED'], 'w').close()\n"
                                      "Tensor = object\n")
    script = (
        "import sys, os, pathlib\n"
        "from framework.tensorboard_log import TensorBoardLog\n"
        "log = TensorBoardLog(pathlib.Path(sys.argv[1]), resume_step=0, enabled=True)\n"
        "log.write(1, {'train/loss': 1.0})\n"
        "log.close()\n"
        "assert not os.path.exists(os.environ['IMPORTED']), 'logging imported torch'\n"
        "import torch\n"  # The user's own `import torch` still works afterwards.
        "assert os.path.exists(os.environ['IMPORTED'])\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), *sys.path]),
           "IMPORTED": str(tmp_path / "imported")}
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path / "logs")], env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert read_events(tmp_path / "logs").Scalars("train/loss")[0].value == 1.0
