"""tools/tpu_vm.py: in dry-run, the exact gcloud commands and nothing executed; `run` against a
fake `gcloud` on PATH that preempts the TPU VM in the middle of training."""

import importlib.util
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location(
    "tpu_vm", Path(__file__).resolve().parent.parent / "tools" / "tpu_vm.py")
tpu_vm = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tpu_vm)

TARGET = ["--name=pod", "--zone=us-west4-a", "--project=my-project"]


@pytest.fixture
def nothing_runs(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"--dry-run ran {args}")
    monkeypatch.setattr(subprocess, "run", refuse)


def dry_run(capsys, *args):
    """The printed commands; the caller uses the `nothing_runs` fixture."""
    assert tpu_vm.main([*args, *TARGET, "--dry-run"]) == 0
    return capsys.readouterr().out.splitlines()


@pytest.mark.usefixtures("nothing_runs")
def test_create_a_pod_slice_and_delete_it(capsys):
    assert dry_run(capsys, "create", "--accelerator_type=v5litepod-32") == [
        "gcloud compute tpus tpu-vm create pod --zone=us-west4-a --project=my-project "
        "--accelerator-type=v5litepod-32 --version=v2-alpha-tpuv5-lite"]
    assert dry_run(capsys, "delete") == [
        "gcloud compute tpus tpu-vm delete pod --zone=us-west4-a --project=my-project --quiet"]
    assert dry_run(capsys, "create", "--spot")[0].endswith(" --spot")


@pytest.mark.usefixtures("nothing_runs")
def test_install_copies_this_checkout_to_every_worker(capsys):
    assert dry_run(capsys, "install") == [
        "git archive --format=tar.gz --prefix=jaxforge/ --output=jaxforge.tar.gz HEAD",
        "gcloud compute tpus tpu-vm scp jaxforge.tar.gz pod:jaxforge.tar.gz --zone=us-west4-a "
        "--project=my-project --worker=all",
        "gcloud compute tpus tpu-vm ssh pod --zone=us-west4-a --project=my-project --worker=all "
        "--command 'rm -rf jaxforge && tar xzf jaxforge.tar.gz && "
        "python3 -m pip install -e \"./jaxforge[tpu,gcs]\"'"]


@pytest.mark.usefixtures("nothing_runs")
def test_train_runs_on_all_workers_with_overrides(capsys):
    assert dry_run(capsys, "train", "--config=experiments/digits_cnn.py", "--workdir=/mnt/runs/a",
                   "--config.train.num_steps=1000") == [
        "gcloud compute tpus tpu-vm ssh pod --zone=us-west4-a --project=my-project --worker=all "
        "--command 'cd jaxforge && python3 -m framework.cli train "
        "--config=experiments/digits_cnn.py --workdir=/mnt/runs/a "
        "--config.train.num_steps=1000'"]


@pytest.mark.usefixtures("nothing_runs")
def test_train_without_a_config_or_with_stray_flags_is_refused(capsys):
    with pytest.raises(SystemExit):
        tpu_vm.main(["train", *TARGET, "--workdir=w", "--dry-run"])
    assert "train needs --config and --workdir" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        tpu_vm.main(["create", *TARGET, "--config.train.num_steps=3", "--dry-run"])
    assert "unrecognized arguments: --config.train.num_steps=3" in capsys.readouterr().err


@pytest.mark.usefixtures("nothing_runs")
def test_run_needs_a_workdir_on_cloud_storage(capsys):
    with pytest.raises(SystemExit):
        tpu_vm.main(["run", *TARGET, "--config=experiments/digits_cnn.py", "--workdir=runs/a"])
    assert "run needs a --workdir gs://BUCKET/RUN" in capsys.readouterr().err
    printed = dry_run(capsys, "run", "--spot", "--config=experiments/digits_cnn.py",
                      "--workdir=gs://b/run")
    assert printed[0].startswith("gcloud compute tpus tpu-vm create pod ")
    assert printed[0].endswith(" --spot") and "--workdir=gs://b/run" in printed[-1]


# A stand-in for `gcloud` (and `git`): logs its arguments, keeps the TPU VM's state in a file and
# the bucket in a directory. Its train commands, one per line of `trains`: an exit status, and
# PREEMPTED to preempt the VM (after writing the summary of a run stopped by SIGTERM), or
# FINISHED to write the summary of a finished run.
FAKE = """#!{python}
import json, pathlib, sys
here = pathlib.Path({here!r})
args = sys.argv[1:]
with open(here / "log", "a") as log:
    log.write(json.dumps([pathlib.Path(sys.argv[0]).name, *args]) + "\\n")
state = here / "state"
if args[:1] == ["storage"]:  # storage cat gs://bucket/run/summary.json
    obj = here / "bucket" / args[2].removeprefix("gs://")
    sys.exit(print(obj.read_text()) if obj.exists() else "ERROR: NOT_FOUND")
verb = args[3] if args[:3] == ["compute", "tpus", "tpu-vm"] else None
if verb == "describe":
    sys.exit(print(state.read_text()) if state.exists() else "ERROR: NOT_FOUND")
if verb == "create":
    state.write_text("READY")
if verb == "delete":
    state.unlink()
if verb == "ssh" and "framework.cli train" in args[-1]:
    trains = (here / "trains").read_text().splitlines()
    (here / "trains").write_text("\\n".join(trains[1:]))
    status, what = trains[0].split()
    summary = here / "bucket" / "bucket" / "run" / "summary.json"
    summary.parent.mkdir(parents=True, exist_ok=True)
    if what == "PREEMPTED":
        summary.write_text(json.dumps(dict(steps=40, num_steps=100, stopped_early=False,
                                           preempted_by="SIGTERM")))
        state.write_text("PREEMPTED")
    if what == "FINISHED":
        summary.write_text(json.dumps(dict(steps=100, num_steps=100, stopped_early=False,
                                           preempted_by="")))
    sys.exit(int(status))
"""

RUN = ["run", "--name=pod", "--zone=us-west4-a", "--spot", "--config=experiments/digits_cnn.py",
       "--workdir=gs://bucket/run", "--config.train.num_steps=100"]


def fake_gcloud(tmp_path, monkeypatch, trains):
    """Puts the fake `gcloud` and `git` first on PATH; returns a reader of their log."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("gcloud", "git"):
        (bin_dir / name).write_text(FAKE.format(python=sys.executable, here=str(tmp_path)))
        (bin_dir / name).chmod(0o755)
    (tmp_path / "trains").write_text("\n".join(trains))
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return lambda: [json.loads(line) for line in (tmp_path / "log").read_text().splitlines()]


def step(call):
    """A logged call, named by what it does."""
    if call[0] == "git" or call[4:5] == ["scp"] or "pip install" in call[-1]:
        return "install"
    if call[1:3] == ["storage", "cat"]:
        return "read summary"
    if call[4] == "ssh":
        return "train"
    return f"{call[4]} --spot" if "--spot" in call else call[4]


def test_a_preempted_spot_run_is_recreated_and_resumed_with_the_same_command(
        tmp_path, monkeypatch):
    log = fake_gcloud(tmp_path, monkeypatch, ["255 PREEMPTED", "0 FINISHED"])
    assert tpu_vm.main(RUN) == 0
    calls = log()
    install = ["install"] * 3
    assert [step(c) for c in calls] == [
        "describe", "create --spot", *install, "train", "read summary", "describe",
        "delete", "create --spot", *install, "train", "read summary"]
    first, second = [c for c in calls if step(c) == "train"]
    assert first == second  # The same workdir and overrides: the run resumes, not restarts.
    assert shlex.split(first[-1])[-2:] == ["--workdir=gs://bucket/run",
                                           "--config.train.num_steps=100"]
    assert calls[-1][-1] == "gs://bucket/run/summary.json"


def test_a_vm_that_is_gone_after_a_preemption_is_created_again(tmp_path, monkeypatch):
    log = fake_gcloud(tmp_path, monkeypatch, ["255 PREEMPTED", "0 FINISHED"])
    (tmp_path / "state").write_text("READY")  # Left over, usable: no create.
    real_run = subprocess.run

    def gone_once_preempted(command, **kwargs):
        if "describe" in command and (tmp_path / "state").read_text() == "PREEMPTED":
            (tmp_path / "state").unlink()  # Cloud TPU deleted the preempted spot VM.
        return real_run(command, **kwargs)

    monkeypatch.setattr(subprocess, "run", gone_once_preempted)
    assert tpu_vm.main(RUN) == 0
    assert [step(c) for c in log() if step(c) not in ("install", "read summary")] == [
        "describe", "train", "describe", "create --spot", "train"]


def test_a_failure_that_is_not_a_preemption_stops_with_its_exit_status(tmp_path, monkeypatch):
    log = fake_gcloud(tmp_path, monkeypatch, ["3 -", "0 FINISHED"])
    assert tpu_vm.main(RUN) == 3
    assert [step(c) for c in log()].count("train") == 1
    assert "delete" not in [step(c) for c in log()]


def test_preempted_every_time_it_gives_up_after_max_attempts(tmp_path, monkeypatch, capsys):
    log = fake_gcloud(tmp_path, monkeypatch, ["255 PREEMPTED"] * 3)
    assert tpu_vm.main([*RUN, "--max_attempts=2"]) == 1
    assert [step(c) for c in log()].count("train") == 2
    assert "did not finish in 2 attempts" in capsys.readouterr().err


@pytest.mark.parametrize("summary, finished", [
    ({"steps": 40, "num_steps": 100, "stopped_early": False, "preempted_by": "SIGTERM"}, False),
    ({"steps": 40, "num_steps": 100, "stopped_early": True}, True),
    ({"steps": 100, "num_steps": 100, "stopped_early": False}, True),
    (None, False),
])
def test_the_run_is_finished_when_its_summary_says_so(tmp_path, monkeypatch, summary, finished):
    fake_gcloud(tmp_path, monkeypatch, [])
    if summary is not None:
        (tmp_path / "bucket" / "b").mkdir(parents=True)
        (tmp_path / "bucket" / "b" / "summary.json").write_text(json.dumps(summary))
    assert tpu_vm.run_finished("gs://b/") is finished
