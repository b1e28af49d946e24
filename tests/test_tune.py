"""`jaxforge tune`: the search space, checks before the first trial, trials as runs, pruning,
results, and workers sharing one study in SQLite and in a real PostgreSQL server."""

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pytest

from framework import config as config_lib
from framework import loop
from framework.cli import main
from framework.errors import ConfigError
from framework.search_space import Param, parse_param, split_search_args

pytestmark = pytest.mark.slow
optuna = pytest.importorskip("optuna", reason="jaxforge tune needs the `tune` extra")

REPO = Path(__file__).resolve().parent.parent
TIMEOUT_S = 240
EXPERIMENT = textwrap.dedent("""
    import ml_collections

    def get_config():
        return ml_collections.ConfigDict({
            "model": {"name": "mlp", "hidden_sizes": (16,)},
            "dataset": {"name": "synthetic", "shape": (4, 4, 1), "num_classes": 3,
                        "num_train": 128, "num_eval": 96, "batch_size": 16},
            "optimizer": {"name": "adam", "learning_rate": 1e-2},
            "train": {"num_steps": 16, "log_every_steps": 8, "eval_every_steps": 8},
            "checkpoint": {"every_steps": 8, "async_save": False},
            "callbacks": CALLBACKS,
        })
""")
LEARNING_RATE = "--search.optimizer.learning_rate=loguniform:1e-4:3e-2"


def write_experiment(folder: Path, callbacks: str = "{}") -> str:
    path = folder / "tiny.py"
    path.write_text(EXPERIMENT.replace("CALLBACKS", callbacks))
    return str(path)


@pytest.fixture
def experiment(tmp_path):
    return write_experiment(tmp_path)


# The search space --------------------------------------------------------------------------


@pytest.mark.parametrize("spec, expected", [
    ("uniform:0:0.5", Param("k", "uniform", "uniform:0:0.5", 0.0, 0.5)),
    ("loguniform:1e-4:1e-2", Param("k", "loguniform", "loguniform:1e-4:1e-2", 1e-4, 1e-2,
                                   log=True)),
    ("int:32:256", Param("k", "int", "int:32:256", 32, 256)),
    ("int:32:256:log", Param("k", "int", "int:32:256:log", 32, 256, log=True)),
    ("choice:32,64,128", Param("k", "choice", "choice:32,64,128", choices=(32, 64, 128),
                               texts=("32", "64", "128"))),
    ("choice:relu,gelu", Param("k", "choice", "choice:relu,gelu", choices=("relu", "gelu"),
                               texts=("relu", "gelu"))),
    ("choice:(8,),(16,16)", Param("k", "choice", "choice:(8,),(16,16)",
                                  choices=("(8,)", "(16,16)"), texts=("(8,)", "(16,16)"))),
    ("choice:True,False", Param("k", "choice", "choice:True,False", choices=(True, False),
                                texts=("True", "False"))),
])
def test_search_space_syntax(spec, expected):
    assert parse_param("k", spec) == expected


@pytest.mark.parametrize("spec, message", [
    ("normal:0:1", "starts with one of uniform"),
    ("uniform:0", "write uniform:LOW:HIGH"),
    ("uniform:1:0", "LOW must be less than HIGH"),
    ("loguniform:0:1", "a log range needs LOW > 0"),
    ("int:1.5:4", "LOW and HIGH must be ints"),
    ("int:1:4:lin", "write int:LOW:HIGH or int:LOW:HIGH:log"),
    ("choice:", "no empty value"),
    ("choice:1,1", "listed twice"),
])
def test_malformed_ranges_name_the_flag(spec, message):
    with pytest.raises(ConfigError, match=message) as error:
        parse_param("model.dropout_rate", spec)
    assert str(error.value).startswith(f"--search.model.dropout_rate={spec}: ")


def test_search_flags_are_separated_from_overrides():
    specs, rest = split_search_args([LEARNING_RATE, "--config.seed=3",
                                     "--search.model.hidden_sizes", "choice:(8,),(16,)"])
    assert specs == {"optimizer.learning_rate": "loguniform:1e-4:3e-2",
                     "model.hidden_sizes": "choice:(8,),(16,)"}
    assert rest == ["--config.seed=3"]


def test_values_become_overrides_of_the_field():
    assert parse_param("k", "loguniform:1e-4:1e-2").override(0.003) == "0.003"
    assert parse_param("k", "int:1:9").override(4) == "4"
    assert parse_param("k", "choice:(8,),(16,)").override("(16,)") == "(16,)"
    assert parse_param("k", "int:1:3").grid() == [1, 2, 3]
    assert parse_param("k", "uniform:1:3").grid() is None


@pytest.mark.parametrize("flag, message", [
    ("--search.optimizer.learnig_rate=uniform:0:1", "Did you mean config.optimizer.learning_rate?"),
    ("--search.train.num_steps=uniform:4:8", "config.train.num_steps must be an int"),
    ("--search.train.num_steps=choice:4,x", "config.train.num_steps must be an int"),
    ("--search.model.hidden_sizes=int:4:8", "holds a tuple, which the range int:4:8 cannot set"),
    ("--search.optimizer.learning_rate=choice:0.1,-1", "learning_rate must be > 0, got -1.0"),
])
def test_a_bad_search_space_stops_before_the_first_trial(experiment, tmp_path, capsys, flag,
                                                         message):
    workdir = tmp_path / "search"
    assert main(["tune", "--config", experiment, "--workdir", str(workdir), flag]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and message in error and error.startswith("jaxforge: error:")
    assert not workdir.exists()


def test_the_metric_must_be_an_evaluation(experiment, tmp_path, capsys):
    assert main(["tune", "--config", experiment, "--workdir", str(tmp_path / "s"), LEARNING_RATE,
                 "--metric", "train/loss"]) == 2
    assert "eval/NAME" in capsys.readouterr().err


def test_without_optuna_it_says_how_to_install_it(experiment, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)
    assert main(["tune", "--config", experiment, "--workdir", str(tmp_path / "s"),
                 LEARNING_RATE]) == 2
    assert 'pip install -e ".[tune]"' in capsys.readouterr().err


# One worker in this process ----------------------------------------------------------------


def read_trials(workdir: Path) -> list[dict[str, str]]:
    with (workdir / "trials.csv").open() as file:
        return list(csv.DictReader(file))


def non_white_fraction(png: Path) -> float:
    from matplotlib import image

    pixels = image.imread(png)[..., :3]
    return float(np.mean(np.any(pixels < 0.95, axis=-1)))


def test_a_study_trains_runs_and_writes_its_results(experiment, tmp_path, capsys):
    workdir = tmp_path / "search"
    args = ["tune", "--config", experiment, "--workdir", str(workdir), "--trials", "4",
            "--sampler", "random", "--pruner", "none", LEARNING_RATE,
            "--search.model.hidden_sizes=choice:(8,),(16,)", "--config.seed=1"]
    assert main(args) == 0
    rows = read_trials(workdir)
    assert [r["trial"] for r in rows] == ["0", "1", "2", "3"]
    assert {r["state"] for r in rows} == {"COMPLETE"}
    for row in rows:  # Each trial is an ordinary, finished run with its evaluations.
        run = workdir / row["workdir"]
        summary = json.loads((run / "summary.json").read_text())
        assert summary["steps"] == 16 and (run / "checkpoints" / "16").is_dir()
        assert list(run.glob("events.out.tfevents.*"))
        config = json.loads((run / "config.json").read_text())
        assert config["seed"] == 1
        assert config["optimizer"]["learning_rate"] == float(row["optimizer.learning_rate"])
        assert float(row["eval/accuracy"]) == summary["best"]["eval/accuracy"]
        assert int(row["best step"]) == summary["best"]["step"]
    best = max(rows, key=lambda r: float(r["eval/accuracy"]))

    best_config = config_lib.load_config(str(workdir / "best_config.py"))
    assert best_config.optimizer.learning_rate == float(best["optimizer.learning_rate"])
    assert best_config.to_dict() == config_lib.from_json_file(
        workdir / best["workdir"] / "config.json").to_dict()
    retrained = loop.train(best_config, tmp_path / "retrained")
    assert retrained["best"]["eval/accuracy"] == pytest.approx(float(best["eval/accuracy"]))

    for name in ("optimization_history.png", "param_importances.png"):
        png = workdir / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
        assert non_white_fraction(png) > 0.05  # Axes, points, bars: not a blank canvas.

    (workdir / "trials.csv").unlink()
    capsys.readouterr()
    assert main(["tune", "--workdir", str(workdir), "--report"]) == 0
    assert read_trials(workdir) == rows
    assert f"Best: trial {best['trial']}" in capsys.readouterr().out
    # The same command again: the study is complete, nothing trains.
    assert main(args) == 0 and len(read_trials(workdir)) == 4


def test_the_pruner_stops_a_bad_trial_at_an_evaluation(experiment, tmp_path):
    """Grid order for this seed: the good learning rate first, then one too small to learn."""
    workdir = tmp_path / "search"
    assert main(["tune", "--config", experiment, "--workdir", str(workdir), "--trials", "2",
                 "--sampler", "grid", "--seed", "1", "--pruner_startup_trials", "1",
                 "--search.optimizer.learning_rate=choice:0.03,0.00001"]) == 0
    rows = {r["optimizer.learning_rate"]: r for r in read_trials(workdir)}
    assert rows["0.03"]["state"] == "COMPLETE" and rows["1e-05"]["state"] == "PRUNED"
    pruned = workdir / rows["1e-05"]["workdir"]
    summary = json.loads((pruned / "summary.json").read_text())
    assert summary["stopped_early"] and summary["stop_step"] == 8 and summary["steps"] == 8
    assert summary["stop_reason"].startswith("pruned by Optuna at step 8 (eval/accuracy")
    assert (pruned / "checkpoints" / "8").is_dir()


def test_a_trial_asked_past_the_budget_is_closed_unrun(experiment, tmp_path):
    """Two workers asking for the last trial at once: the later trial does not run."""
    from framework import tune, tune_report

    plan = tune.plan(experiment, tmp_path / "search", {"optimizer.learning_rate":
                                                       "loguniform:1e-4:1e-2"}, [],
                     tune.Options(trials=1))
    study = optuna.create_study()
    study.ask()  # The first worker's trial, running.
    second = study.ask()
    with pytest.raises(tune.SurplusTrial, match="1 trials already take the budget of 1"):
        tune.Objective(plan, study)(second)
    study.tell(second, state=optuna.trial.TrialState.FAIL)
    assert not second.params and not (tmp_path / "search").exists()
    assert [row["trial"] for row in tune_report.trial_rows(study, "eval/accuracy")] == [0]


# Workers as processes ----------------------------------------------------------------------


def tune_process(args: list[str], driver: Path | None = None) -> subprocess.Popen:
    env = {**os.environ, "JAX_PLATFORMS": "cpu",  # One device: the quickest start.
           "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    command = [str(driver)] if driver else ["-m", "framework.cli"]
    return subprocess.Popen([sys.executable, *command, "tune", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_all(procs: list[subprocess.Popen]) -> list[tuple[int, str]]:
    try:
        return [(proc.wait(timeout=TIMEOUT_S), proc.stdout.read()) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()


def check_shared_study(workdir: Path, storage: str, trials: int) -> None:
    """The study holds `trials` finished trials, each once, each a complete run, and the best
    value is the best of trials.csv."""
    rows = read_trials(workdir)
    numbers = [int(r["trial"]) for r in rows]
    assert len(numbers) == len(set(numbers)) == trials
    assert {r["state"] for r in rows} <= {"COMPLETE", "PRUNED"}
    for row in rows:
        summary = json.loads((workdir / row["workdir"] / "summary.json").read_text())
        assert summary["steps"] in (8, 16) and summary["checkpoint"]
    study = optuna.load_study(study_name=workdir.name, storage=storage)
    assert len([t for t in study.trials if t.state.is_finished()
                and not t.user_attrs.get("surplus")]) == trials
    complete = [float(r["eval/accuracy"]) for r in rows if r["state"] == "COMPLETE"]
    assert study.best_value == max(complete)


def run_two_workers(experiment: str, workdir: Path, storage: list[str], trials: int) -> None:
    args = ["--config", experiment, "--workdir", str(workdir), "--trials", str(trials),
            "--pruner_startup_trials", "2", LEARNING_RATE, *storage]
    results = wait_all([tune_process(args), tune_process(args)])
    for status, output in results:
        assert status == 0, output[-3000:]


def test_two_workers_share_one_sqlite_study(experiment, tmp_path):
    workdir = tmp_path / "search"
    run_two_workers(experiment, workdir, [], trials=5)
    check_shared_study(workdir, f"sqlite:///{workdir / 'study.db'}", trials=5)


DRIVER = textwrap.dedent("""
    # `jaxforge` with a callback that signals its own process at the first checkpoint, once.
    import os, signal, sys
    from pathlib import Path
    from framework import Callback, register_callback
    from framework.cli import main

    class SignalOnce(Callback):
        def on_checkpoint(self, step, state):
            marker = Path(os.environ["KILL_MARKER"])
            if not marker.exists():
                marker.write_text(str(step))
                os.kill(os.getpid(), getattr(signal, os.environ["KILL_SIGNAL"]))

    register_callback("kill_once")(lambda config: SignalOnce())
    sys.exit(main(sys.argv[1:]))
""")


@pytest.mark.parametrize("kill", ["SIGKILL", "SIGTERM"])
def test_an_interrupted_worker_is_continued_by_the_next(tmp_path, monkeypatch, kill):
    """A signal in trial 0 after its step-8 checkpoint. SIGKILL: the same command again fails
    the trial once its heartbeat is stale; SIGTERM: the worker checkpoints, fails the trial and
    exits 0. Either way the trial is retried with the same parameters, from its checkpoint."""
    experiment = write_experiment(tmp_path, '{"kill_once": {}}')
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    monkeypatch.setenv("KILL_MARKER", str(tmp_path / "killed"))
    monkeypatch.setenv("KILL_SIGNAL", kill)
    workdir = tmp_path / "search"
    args = ["--config", experiment, "--workdir", str(workdir), "--trials", "2", "--pruner",
            "none", "--heartbeat", "1", LEARNING_RATE]
    [(status, output)] = wait_all([tune_process(args, driver)])
    assert status == (-signal.SIGKILL if kill == "SIGKILL" else 0), output[-3000:]
    assert (tmp_path / "killed").read_text() == "8"
    [(status, output)] = wait_all([tune_process(args, driver)])
    assert status == 0, output[-3000:]
    rows = read_trials(workdir)
    states = {r["trial"]: r["state"] for r in rows}
    assert states["0"] == "FAIL" and sorted(states.values()) == ["COMPLETE", "COMPLETE", "FAIL"]
    [retry] = [r for r in rows if r["retry of"] == "0"]
    assert retry["optimizer.learning_rate"] == rows[0]["optimizer.learning_rate"]
    summary = json.loads((workdir / retry["workdir"] / "summary.json").read_text())
    assert summary["resumed_from_step"] >= 8 and summary["steps"] == 16
    assert summary["resumed_from_step"] == 8 or kill == "SIGTERM"  # It saves where it stops.
    assert not (workdir / "trial-0").exists()


# A real PostgreSQL server ------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def postgres_binary(name: str) -> str | None:
    """On PATH, or where Debian's postgresql package puts it (the newest version)."""
    installed = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"),
                       key=lambda path: int(path.parts[-3]) if path.parts[-3].isdigit() else 0)
    return shutil.which(name) or (str(installed[-1]) if installed else None)


@pytest.fixture
def postgres():
    """A throwaway PostgreSQL server on 127.0.0.1 (as the `postgres` user when run as root,
    which initdb refuses); its URL."""
    binaries = [postgres_binary(b) for b in ("initdb", "pg_ctl", "postgres")]
    if not all(binaries):
        pytest.skip("PostgreSQL's initdb, pg_ctl and postgres are neither on PATH nor in "
                    "/usr/lib/postgresql/*/bin (apt-get install postgresql)")
    as_root = os.geteuid() == 0
    folder = Path(tempfile.mkdtemp(prefix="jaxforge-pg-"))  # Reachable by another user.
    run_as = ["runuser", "-u", "postgres", "--"] if as_root else []
    if as_root:
        shutil.chown(folder, "postgres")
    data, port = folder / "data", free_port()
    try:
        subprocess.run([*run_as, binaries[0], "-D", str(data), "-A", "trust", "-U", "jaxforge",
                        "--no-sync"], check=True, capture_output=True)
        options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        subprocess.run([*run_as, binaries[1], "-D", str(data), "-o", options, "-l",
                        str(folder / "log"), "-w", "start"], check=True, capture_output=True)
        yield f"postgresql+psycopg2://jaxforge@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*run_as, binaries[1], "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


def test_two_workers_share_one_postgresql_study(experiment, tmp_path, postgres):
    workdir = tmp_path / "search"
    run_two_workers(experiment, workdir, ["--storage", postgres], trials=4)
    check_shared_study(workdir, postgres, trials=4)
    assert not (workdir / "study.db").exists()
    assert main(["tune", "--workdir", str(workdir), "--report", "--storage", postgres]) == 0
