"""Joining the distributed runtime: flag checks and cluster detection (real multi-process runs
are in test_multiprocess.py)."""

import pytest

from framework import cli
from framework.distributed import cluster_environment


@pytest.mark.parametrize("flags, message", [
    (["--num_processes=2", "--process_id=0"], "go together: got coordinator_address=None"),
    (["--coordinator_address=localhost:1234", "--num_processes=2", "--process_id=2"],
     "--process_id=2 must be in 0..1"),
    (["--coordinator_address=localhost", "--num_processes=2", "--process_id=0"],
     "needs a port: HOST:PORT of process 0"),
])
def test_incomplete_or_wrong_distributed_flags_are_clear_errors(capsys, flags, message):
    assert cli.main(["train", "--config", "experiments/digits_cnn.py", "--workdir", "unused",
                     *flags]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("environ, expected", [
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4"}, "SLURM"),
    ({"OMPI_COMM_WORLD_SIZE": "2"}, "Open MPI"),
])
def test_cluster_launches_are_detected(environ, expected):
    assert cluster_environment(environ) == expected


def test_a_single_task_slurm_job_is_not_a_cluster(monkeypatch):
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)  # No libtpu either.
    assert cluster_environment({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}) is None
