"""Real multi-process runs on localhost: 2 processes x 4 CPU devices on JAX's distributed runtime
(gloo collectives) train exactly what 1 process x 8 devices trains, stop together on a preemption
notice, and checkpoints move between topologies (2x4 -> 1x8, 8 devices -> 4)."""

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

import framework
from framework import loop

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
TIMEOUT_S = 420


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


def write_experiment(path: Path, config) -> Path:
    """An experiment file whose get_config() returns `config` (for the `jaxforge` command)."""
    path.write_text("import ml_collections\n\n\ndef get_config():\n"
                    f"    return ml_collections.ConfigDict({config.to_dict()!r})\n")
    return path


def device_env(devices: int) -> dict[str, str]:
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def start(args: list[str], devices: list[int]) -> list[subprocess.Popen]:
    """Start `jaxforge ARGS` as one process per entry of `devices` (its local device count) on
    localhost."""
    port = free_port()
    procs = []
    for process_id, count in enumerate(devices):
        flags = [] if len(devices) == 1 else [
            f"--coordinator_address=localhost:{port}", f"--num_processes={len(devices)}",
            f"--process_id={process_id}"]
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "framework.cli", *args, *flags], cwd=REPO,
            env=device_env(count), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    return procs


def finish(procs: list[subprocess.Popen]) -> list[tuple[int, str]]:
    """Each started process's exit status and output, in process order."""
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=TIMEOUT_S)[0])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    return [(proc.returncode, output) for proc, output in zip(procs, outputs)]


def launch(args: list[str], devices: list[int]) -> list[tuple[int, str]]:
    """Run `jaxforge ARGS` as one process per entry of `devices`, to the end."""
    return finish(start(args, devices))


def jaxforge(args: list[str], num_processes: int = 1, devices: int = 4) -> list[str]:
    """`launch` with `devices` on each process, expecting every process to succeed."""
    results = launch(args, [devices] * num_processes)
    for returncode, output in results:
        assert returncode == 0, output[-4000:]
    return [output for _, output in results]


def params_of(workdir):
    return jax.device_get(loop.restore(workdir)[1].params)


def records(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_two_processes_train_and_resume_like_one_process_with_eight_devices(tmp_path, tiny):
    config = tiny(mesh={"data": 2, "fsdp": -1, "fsdp_min_size": 256})
    experiment = write_experiment(tmp_path / "experiment.py", config)
    framework.train(framework.resolve_config(config), tmp_path / "single")

    multi = tmp_path / "multi"
    train = ["train", f"--config={experiment}", f"--workdir={multi}"]
    jaxforge([*train, "--config.train.num_steps=20"], num_processes=2)
    assert sorted(p.name for p in (multi / "checkpoints").iterdir() if p.name.isdigit()) == ["20"]
    outputs = jaxforge([*train, "--config.train.num_steps=40", "--allow_config_change"],
                       num_processes=2)
    assert "Resuming from the step-20 checkpoint" in outputs[0]
    assert "Resuming" not in outputs[1]  # Only process 0 prints and writes.
    assert json.loads((multi / "summary.json").read_text())["resumed_from_step"] == 20

    single_records, multi_records = records(tmp_path / "single"), records(multi)
    assert [r["step"] for r in multi_records] == [r["step"] for r in single_records]
    for a, b in zip(multi_records, single_records):
        for key in {"train/loss", "eval/loss", "eval/accuracy"} & a.keys():
            assert a[key] == pytest.approx(b[key], rel=1e-4), key
    # The 2 x 4 checkpoint restores here, on one process with 8 devices.
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                 params_of(multi), params_of(tmp_path / "single"))


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_preemption_notice_to_one_process_stops_all_at_one_step_and_resumes(tmp_path, tiny,
                                                                               signum):
    """SIGTERM (a preemption notice) or Ctrl-C to process 1 only: both processes stop after the
    same dispatch, checkpoint it and exit 0 (with 2 steps per dispatch, so step numbers are not
    what JAX's sync point counts)."""
    config = tiny(train={"num_steps": 100_000, "steps_per_dispatch": 2, "eval_every_steps": 0},
                  checkpoint={"every_steps": 0})
    experiment = write_experiment(tmp_path / "experiment.py", config)
    train = ["train", f"--config={experiment}", f"--workdir={tmp_path / 'run'}"]
    procs = start(train, [4, 4])
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.monotonic() + TIMEOUT_S
    while not (metrics.exists() and metrics.read_text()) and time.monotonic() < deadline:
        assert all(proc.poll() is None for proc in procs), finish(procs)
        time.sleep(0.5)
    procs[1].send_signal(signum)
    results = finish(procs)
    for returncode, output in results:
        assert returncode == 0, output[-4000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    stopped_at = summary["steps"]
    assert summary["preempted_by"] == "a preemption notice" and 0 < stopped_at < 100_000
    assert f"Stopped at step {stopped_at} by a preemption notice" in results[0][1]
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.isdigit()] == [
        str(stopped_at)]

    outputs = jaxforge([*train, f"--config.train.num_steps={stopped_at + 10}",
                        "--allow_config_change"], num_processes=2)
    assert f"Resuming from the step-{stopped_at} checkpoint" in outputs[0]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["steps"] == stopped_at + 10


def test_early_stopping_restores_the_best_state_across_processes(tmp_path, tiny):
    """The best state of a run whose parameters are sharded over both processes' devices: no
    process holds all of it, and the run still ends with it, as one process with 8 devices."""
    config = tiny(mesh={"data": 1, "fsdp": -1, "fsdp_min_size": 16},
                  optimizer={"learning_rate": 0.5},  # Too high: eval/loss rises after a while.
                  train={"num_steps": 200, "eval_every_steps": 10},
                  callbacks={"early_stopping": {"patience": 2}})
    experiment = write_experiment(tmp_path / "experiment.py", config)
    single = framework.train(framework.resolve_config(config), tmp_path / "single")
    assert single["stopped_early"] and single["early_stopping"]["restored_best"]
    jaxforge(["train", f"--config={experiment}", f"--workdir={tmp_path / 'multi'}"],
             num_processes=2)
    multi = json.loads((tmp_path / "multi" / "summary.json").read_text())
    assert multi["early_stopping"] == {**single["early_stopping"],
                                       "best": pytest.approx(single["early_stopping"]["best"])}
    assert multi["stop_step"] == single["stop_step"] and multi["steps"] == single["steps"]
    assert int(loop.restore(tmp_path / "multi")[1].step) == single["early_stopping"]["best_step"]
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                 params_of(tmp_path / "multi"), params_of(tmp_path / "single"))


def test_a_checkpoint_from_eight_devices_evaluates_on_four(tmp_path, tiny):
    summary = framework.train(framework.resolve_config(tiny(train={"num_steps": 20})), tmp_path)
    output = jaxforge(["eval", f"--workdir={tmp_path}"], devices=4)[0]
    metrics = json.loads(output[output.index("{"):])
    assert metrics["step"] == 20
    assert metrics["eval/loss"] == pytest.approx(summary["final"]["eval/loss"], rel=1e-5)


def test_doctor_reports_two_agreeing_processes_and_the_mesh(tmp_path, tiny):
    experiment = write_experiment(tmp_path / "experiment.py", tiny(mesh={"data": 2, "fsdp": -1}))
    first, second = jaxforge(["doctor", f"--config={experiment}"], num_processes=2)
    assert "processes: 2 (this is process 0)" in first
    assert "devices: 4 local, 8 global" in first
    assert "agreement: all 2 process(es) have the same versions and devices" in first
    assert "{'data': 2, 'fsdp': 4, 'model': 1} over 8 devices" in first
    assert "16 per process" in first
    assert "processes:" not in second and "agreement:" not in second  # Only process 0 prints.


def test_doctor_fails_clearly_when_processes_see_different_device_counts():
    results = launch(["doctor"], devices=[4, 3])
    for returncode, output in results:
        assert returncode == 2, output[-4000:]
        assert ("jaxforge: error: the 2 processes disagree: process 1 has 3 devices, process 0 "
                "has 4.") in output


def test_a_mesh_too_large_for_all_processes_names_them(tmp_path, tiny):
    experiment = write_experiment(tmp_path / "experiment.py", tiny())
    for returncode, output in launch(["doctor", f"--config={experiment}",
                                      "--config.mesh.data=16"], devices=[4, 4]):
        assert returncode == 2, output[-4000:]
        assert ("needs 16 devices but only 8 are available; set one axis to -1 to use all "
                "devices. (The 8 devices are 2 processes x 4 local devices.)") in output
