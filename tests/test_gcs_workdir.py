"""A workdir on `gs://` (the local GCS emulator, `jaxforge_gcs_bucket`): a run writes all its
files there, resumes after SIGTERM or kill -9 to what an uninterrupted run trains, `eval` and
`plot` read it, a second run is refused by the lease, and 2 processes that share no local
directory train into it what 1 process x 8 devices trains."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from etils import epath

import framework
from framework import lease as lease_lib
from framework import loop
from framework.errors import JaxforgeError
from framework.lease import Lease
from framework.metrics import read_metrics

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent


def write_experiment(path, config):
    path.write_text("import ml_collections\n\n\ndef get_config():\n"
                    f"    return ml_collections.ConfigDict({config.to_dict()!r})\n")
    return str(path)


def start(args, cwd, devices=1, extra=()):
    """`jaxforge ARGS` in its own process, started in `cwd` (no shared local directory)."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen([sys.executable, "-m", "framework.cli", *args, *extra], cwd=cwd,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(process):
    out = process.communicate(timeout=300)[0]
    assert process.returncode == 0, out[-4000:]
    return out


def wait_for_metrics(workdir, lines, process):
    deadline = time.time() + 300
    while len(read_metrics(workdir / "metrics.jsonl")) < lines:
        assert process.poll() is None and time.time() < deadline, process.communicate()[0]
        time.sleep(0.1)


def params_of(workdir):
    return jax.device_get(loop.restore(workdir)[1].params)


def without_timing(workdir):
    return [{k: v for k, v in r.items() if k != "steps_per_sec"}
            for r in read_metrics(workdir / "metrics.jsonl")]


@pytest.fixture
def experiment(tiny, tmp_path):
    config = tiny(train={"num_steps": 60, "log_every_steps": 5, "eval_every_steps": 30},
                  checkpoint={"every_steps": 10})
    return write_experiment(tmp_path / "experiment.py", config)


def test_a_run_writes_its_files_on_the_bucket_and_resumes_after_sigterm(
        experiment, jaxforge_gcs_bucket, tmp_path):
    bucket = epath.Path(jaxforge_gcs_bucket)
    reference, run = bucket / "reference", bucket / "run"
    finish(start(["train", f"--config={experiment}", f"--workdir={reference}"], tmp_path))
    names = {p.name for p in reference.iterdir()}
    assert {"config.json", "plugins.json", "parameters.txt", "metrics.jsonl", "summary.json",
            "checkpoints"} <= names and any(n.startswith("events.out.tfevents") for n in names)
    assert "metrics.jsonl.parts" not in names and ".lease" not in names  # Folded; released.
    assert [r["step"] for r in read_metrics(reference / "metrics.jsonl")] == list(range(5, 61, 5))

    process = start(["train", f"--config={experiment}", f"--workdir={run}"], tmp_path)
    wait_for_metrics(run, 3, process)
    process.send_signal(signal.SIGTERM)
    assert "Run the same command again to resume" in finish(process)
    assert json.loads((run / "summary.json").read_text())["preempted_by"] == "SIGTERM"
    finish(start(["train", f"--config={experiment}", f"--workdir={run}"], tmp_path))
    jax.tree.map(np.testing.assert_array_equal, params_of(run), params_of(reference))
    assert without_timing(run) == without_timing(reference)

    evaluated = _last_json(finish(start(["eval", f"--workdir={run}"], tmp_path)))
    assert evaluated["step"] == 60 and "eval/accuracy" in evaluated
    finish(start(["plot", str(run), str(reference), "-o", str(tmp_path / "curves.png")],
                 tmp_path))
    assert (tmp_path / "curves.png").stat().st_size > 0


def _last_json(output):
    return json.loads(output[output.rindex("\n{"):])


def test_kill_9_mid_save_leaves_a_resumable_workdir(experiment, jaxforge_gcs_bucket, tmp_path):
    run = epath.Path(jaxforge_gcs_bucket) / "run"
    train = ["train", f"--config={experiment}", f"--workdir={run}",
             "--config.checkpoint.every_steps=5"]
    process = start(train, tmp_path)
    wait_for_metrics(run, 4, process)
    process.kill()
    process.communicate()
    # The killed run's lease has not expired: the next run is refused until it does.
    with pytest.raises(JaxforgeError, match="Another run is using"), Lease(run):
        pass
    (run / ".lease").unlink()  # As if its 60 s had passed.
    finish(start(train, tmp_path))
    assert json.loads((run / "summary.json").read_text())["steps"] == 60


def test_an_expired_lease_is_taken_over_and_a_live_one_refused(jaxforge_gcs_bucket):
    run = epath.Path(jaxforge_gcs_bucket) / "run"
    with Lease(run, ttl_s=0.3):
        with pytest.raises(JaxforgeError, match=f"Another run is using {run}"), Lease(run):
            pass
        time.sleep(0.5)  # Renewed every 0.1 s: still held.
        with pytest.raises(JaxforgeError, match="Another run is using"), Lease(run):
            pass
    assert not (run / ".lease").exists()  # Released at the end.
    stale = Lease(run, ttl_s=0.2)
    stale._write(lease_lib._blob(stale.url), 0)  # A dead run's lease.
    time.sleep(0.3)
    with Lease(run) as lease:
        assert json.loads((run / ".lease").read_text())["holder"] == lease.holder


def test_two_processes_sharing_no_directory_train_into_one_bucket_like_one_process(
        tiny, jaxforge_gcs_bucket, tmp_path):
    config = tiny(mesh={"data": 2, "fsdp": -1, "fsdp_min_size": 256},
                  train={"num_steps": 20, "log_every_steps": 10, "eval_every_steps": 10})
    experiment = write_experiment(tmp_path / "experiment.py", config)
    single = epath.Path(jaxforge_gcs_bucket) / "single"
    framework.train(framework.resolve_config(config), single)

    multi = epath.Path(jaxforge_gcs_bucket) / "multi"
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        port = sock.getsockname()[1]
    procs = []
    for index in range(2):
        cwd = tmp_path / f"host{index}"
        cwd.mkdir()
        (cwd / "experiment.py").write_text(Path(experiment).read_text())
        procs.append(start(
            ["train", "--config=experiment.py", f"--workdir={multi}"], cwd, devices=4,
            extra=[f"--coordinator_address=localhost:{port}", "--num_processes=2",
                   f"--process_id={index}"]))
    for process in procs:
        finish(process)
    single_records, multi_records = read_metrics(single / "metrics.jsonl"), read_metrics(
        multi / "metrics.jsonl")
    assert [r["step"] for r in multi_records] == [r["step"] for r in single_records]
    for a, b in zip(multi_records, single_records):
        for key in {"train/loss", "eval/loss", "eval/accuracy"} & a.keys():
            assert a[key] == pytest.approx(b[key], rel=1e-4), key
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                 params_of(multi), params_of(single))


def test_tensorboard_events_on_the_bucket_read_back_and_resume(jaxforge_gcs_bucket, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from framework.tensorboard_log import TensorBoardLog

    logdir = epath.Path(jaxforge_gcs_bucket) / "run"
    first = TensorBoardLog(logdir, resume_step=0, enabled=True)
    first.write(10, {"train/loss": 1.0})
    first.write(20, {"train/loss": 0.5})  # Interrupted after step 10's checkpoint:
    first.close()
    resumed = TensorBoardLog(logdir, resume_step=10, enabled=True)
    resumed.write(20, {"train/loss": 0.25})
    resumed.close()
    for event_file in logdir.glob("events.out.tfevents.*"):
        (tmp_path / event_file.name).write_bytes(event_file.read_bytes())
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(10, 1.0), (20, 0.25)]


def test_metrics_on_the_bucket_are_one_object_per_log_step_until_folded(jaxforge_gcs_bucket):
    from framework.metrics import MetricsLog

    path = epath.Path(jaxforge_gcs_bucket) / "run" / "metrics.jsonl"
    log = MetricsLog(path, resume_step=0, enabled=True)
    log.write(10, {"train/loss": 1.0})
    log.write(20, {"train/loss": 0.5})
    parts = path.parent / "metrics.jsonl.parts"
    assert path.read_text() == "" and len(list(parts.iterdir())) == 2  # Nothing lost at a crash.
    assert [r["step"] for r in read_metrics(path)] == [10, 20]
    resumed = MetricsLog(path, resume_step=10, enabled=True)  # Folds; drops step 20.
    assert [r["step"] for r in read_metrics(path)] == [10] and not parts.exists()
    resumed.write(20, {"train/loss": 0.25})
    resumed.close()
    assert [json.loads(line)["train/loss"] for line in path.read_text().splitlines()] == [1.0, 0.25]



def test_a_missing_bucket_or_unreachable_store_is_one_line_within_seconds(
        tiny, jaxforge_gcs_bucket, tmp_path, monkeypatch, capsys):
    from framework.cli import main

    experiment = write_experiment(tmp_path / "experiment.py", tiny())
    train = ["train", f"--config={experiment}", "--workdir=gs://no-such-bucket/run"]
    assert main(train) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "bucket gs://no-such-bucket does not exist" in error
    assert not list(tmp_path.glob("gs*"))  # Nothing written locally in its place either.

    with socket.socket() as sock:  # A port nothing listens on.
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", closed)
    started = time.monotonic()
    assert main([*train[:2], f"--workdir={jaxforge_gcs_bucket}/run"]) == 2
    assert "Cannot reach Cloud Storage" in capsys.readouterr().err
    assert time.monotonic() - started < 30


def test_a_sweep_on_the_bucket_writes_its_table_and_plot(tiny, jaxforge_gcs_bucket, tmp_path):
    from framework.cli import main

    experiment = write_experiment(tmp_path / "experiment.py",
                                  tiny(train={"num_steps": 10, "eval_every_steps": 10}))
    workdir = epath.Path(jaxforge_gcs_bucket) / "sweep"
    assert main(["sweep", f"--config={experiment}", f"--workdir={workdir}",
                 "--sweep.seed=0,1"]) == 0
    rows = (workdir / "sweep.csv").read_text().splitlines()
    assert len(rows) == 3 and (workdir / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    assert not list(tmp_path.glob("gs*"))


def test_a_profile_window_lands_in_the_bucket(tiny, jaxforge_gcs_bucket):
    workdir = epath.Path(jaxforge_gcs_bucket) / "run"
    config = tiny(train={"num_steps": 20, "profile_steps": (10, 20)})
    framework.train(framework.resolve_config(config), workdir)
    traced = [p.name for p in (workdir / "profile").glob("plugins/profile/*/*")]
    assert "perfetto_trace.json.gz" in traced and any(n.endswith(".xplane.pb") for n in traced)
