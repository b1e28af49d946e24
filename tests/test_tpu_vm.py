"""tools/tpu_vm.py in dry-run: the exact gcloud commands, and nothing executed."""

import importlib.util
import subprocess
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location(
    "tpu_vm", Path(__file__).resolve().parent.parent / "tools" / "tpu_vm.py")
tpu_vm = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tpu_vm)

TARGET = ["--name=pod", "--zone=us-west4-a", "--project=my-project"]


@pytest.fixture(autouse=True)
def nothing_runs(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"--dry-run ran {args}")
    monkeypatch.setattr(subprocess, "run", refuse)


def dry_run(capsys, *args):
    assert tpu_vm.main([*args, *TARGET, "--dry-run"]) == 0
    return capsys.readouterr().out.splitlines()


def test_create_a_pod_slice_and_delete_it(capsys):
    assert dry_run(capsys, "create", "--accelerator_type=v5litepod-32") == [
        "gcloud compute tpus tpu-vm create pod --zone=us-west4-a --project=my-project "
        "--accelerator-type=v5litepod-32 --version=v2-alpha-tpuv5-lite"]
    assert dry_run(capsys, "delete") == [
        "gcloud compute tpus tpu-vm delete pod --zone=us-west4-a --project=my-project --quiet"]


def test_install_copies_this_checkout_to_every_worker(capsys):
    assert dry_run(capsys, "install") == [
        "git archive --format=tar.gz --prefix=jaxforge/ --output=jaxforge.tar.gz HEAD",
        "gcloud compute tpus tpu-vm scp jaxforge.tar.gz pod:jaxforge.tar.gz --zone=us-west4-a "
        "--project=my-project --worker=all",
        "gcloud compute tpus tpu-vm ssh pod --zone=us-west4-a --project=my-project --worker=all "
        "--command 'rm -rf jaxforge && tar xzf jaxforge.tar.gz && "
        "python3 -m pip install -e \"./jaxforge[tpu,gcs]\"'"]


def test_train_runs_on_all_workers_with_overrides(capsys):
    assert dry_run(capsys, "train", "--config=experiments/digits_cnn.py", "--workdir=/mnt/runs/a",
                   "--config.train.num_steps=1000") == [
        "gcloud compute tpus tpu-vm ssh pod --zone=us-west4-a --project=my-project --worker=all "
        "--command 'cd jaxforge && python3 -m framework.cli train "
        "--config=experiments/digits_cnn.py --workdir=/mnt/runs/a "
        "--config.train.num_steps=1000'"]


def test_train_without_a_config_or_with_stray_flags_is_refused(capsys):
    with pytest.raises(SystemExit):
        tpu_vm.main(["train", *TARGET, "--workdir=w", "--dry-run"])
    assert "train needs --config and --workdir" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        tpu_vm.main(["create", *TARGET, "--config.train.num_steps=3", "--dry-run"])
    assert "unrecognized arguments: --config.train.num_steps=3" in capsys.readouterr().err
