"""`jaxforge sweep`: a cartesian product of runs, validated first, resumable, with a table."""

import csv
import json
import textwrap

import pytest

from framework import sweep
from framework.cli import main
from framework.errors import ConfigError
from framework.sweep import run_name, split_sweep_args, split_values

EXPERIMENT = textwrap.dedent("""
    import ml_collections

    def get_config():
        return ml_collections.ConfigDict({
            "model": {"name": "mlp", "hidden_sizes": (16,)},
            "dataset": {"name": "synthetic", "shape": (4, 4, 1), "num_classes": 3,
                        "num_train": 128, "num_eval": 40, "batch_size": 16},
            "train": {"num_steps": 16, "log_every_steps": 8, "eval_every_steps": 8},
            "checkpoint": {"every_steps": 8},
        })
""")

RUNS = ["optimizer.learning_rate=0.01,seed=0", "optimizer.learning_rate=0.01,seed=1",
        "optimizer.learning_rate=0.001,seed=0", "optimizer.learning_rate=0.001,seed=1"]


@pytest.fixture
def experiment(tmp_path):
    path = tmp_path / "tiny.py"
    path.write_text(EXPERIMENT)
    return str(path)


def test_values_split_on_top_level_commas_only():
    assert split_values("1e-3,3e-4") == ["1e-3", "3e-4"]
    assert split_values("(8,8),(16, 16)") == ["(8,8)", "(16, 16)"]
    assert split_values("'a,b',c") == ["'a,b'", "c"]


def test_sweep_flags_are_separated_from_config_overrides():
    axes, rest = split_sweep_args(["--sweep.seed=0,1", "--config.train.num_steps=8",
                                   "--sweep.model.hidden_sizes", "(8,),(16,)"])
    assert axes == {"seed": ["0", "1"], "model.hidden_sizes": ["(8,)", "(16,)"]}
    assert rest == ["--config.train.num_steps=8"]
    with pytest.raises(ConfigError, match="lists 1 more than once"):
        split_sweep_args(["--sweep.seed=0,1,1"])
    with pytest.raises(ConfigError, match="--sweep.seed has no values"):
        split_sweep_args(["--sweep.seed"])


def test_run_names_are_filesystem_safe():
    assert run_name({"optimizer.learning_rate": 3e-4, "seed": 2}) == (
        "optimizer.learning_rate=0.0003,seed=2")
    assert run_name({"model.hidden_sizes": (32, 64), "dataset.name": "a/b c"}) == (
        "model.hidden_sizes=32x64,dataset.name=a_b_c")


@pytest.mark.parametrize("args, message", [
    (["--sweep.optimizer.learning_rate=1e-3,abc"],
     "--sweep.optimizer.learning_rate=abc: config.optimizer.learning_rate must be a float"),
    (["--sweep.optimizer.lerning_rate=1e-3"], "Did you mean config.optimizer.learning_rate?"),
    (["--sweep.seed=0,-1"], "--sweep.seed=-1: config.seed must be >= 0"),
    (["--sweep.seed=0,1", "--config.seed=2"], "config.seed is both swept"),
    (["--sweep.optimizer.learning_rate=1e-3,0.001"], "Two sweep values give the same config"),
    ([], "Nothing to sweep: give at least one --sweep.KEY=V1,V2"),
    (["--sweep.seed=0,1", "--config.train.num_steps=x"], "config.train.num_steps must be an int"),
])
def test_bad_sweeps_exit_2_before_any_run(tmp_path, experiment, capsys, args, message):
    workdir = tmp_path / "sweep"
    assert main(["sweep", "--config", experiment, "--workdir", str(workdir), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("jaxforge: error: ") and message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not workdir.exists()


def read_csv(path):
    with path.open() as file:
        return list(csv.DictReader(file))


def check_sweep_figure(figure):
    """sweep.png as `jaxforge plot` draws it: a panel per metric with train and eval lines."""
    assert [ax.get_title() for ax in figure.axes] == ["loss", "accuracy", "train/grad_norm"]
    xlim = figure.axes[0].get_xlim()
    assert xlim[0] < 8 and xlim[1] > 16 and all(ax.get_xlim() == xlim for ax in figure.axes)
    loss = [(line.get_label(), len(line.get_xdata()), line.get_linestyle())
            for line in figure.axes[0].get_lines()]
    assert loss == ([(f"{name}: train/loss", 2, "-") for name in RUNS]
                    + [(f"{name}: eval/loss", 1, "--") for name in RUNS])
    assert [len(ax.get_lines()) for ax in figure.axes] == [8, 8, 4]
    assert [t.get_text() for t in figure.legends[0].get_texts()] == [*RUNS, "train", "eval"]


@pytest.mark.slow
def test_two_by_two_sweep_runs_four_runs_then_skips_them(tmp_path, experiment, capsys,
                                                         monkeypatch):
    figures, draw = [], sweep.plot_sweep

    def plot_sweep(runs, output):  # Keeps the figure that sweep.png was written from.
        figures.append(draw(runs, output))
        return figures[-1]

    monkeypatch.setattr(sweep, "plot_sweep", plot_sweep)
    workdir = tmp_path / "sweep"
    args = ["sweep", "--config", experiment, "--workdir", str(workdir),
            "--sweep.optimizer.learning_rate=1e-2,1e-3", "--sweep.seed=0,1",
            "--config.train.eval_every_steps=16"]
    assert main(args) == 0
    out, err = capsys.readouterr()
    assert sorted(p.name for p in workdir.iterdir() if p.is_dir()) == sorted(RUNS)
    for name in RUNS:
        assert f"{name}: training in {workdir / name}" in out
        config = json.loads((workdir / name / "config.json").read_text())
        assert name == (f"optimizer.learning_rate={config['optimizer']['learning_rate']!r},"
                        f"seed={config['seed']}")
        assert config["train"]["eval_every_steps"] == 16  # The fixed override reaches every run.
        assert json.loads((workdir / name / "summary.json").read_text())["steps"] == 16
    rows = read_csv(workdir / "sweep.csv")
    assert [row["run"] for row in rows] == RUNS
    assert [(row["optimizer.learning_rate"], row["seed"]) for row in rows] == [
        ("0.01", "0"), ("0.01", "1"), ("0.001", "0"), ("0.001", "1")]
    for row, name in zip(rows, RUNS):
        summary = json.loads((workdir / name / "summary.json").read_text())
        assert float(row["final eval/accuracy"]) == summary["final"]["eval/accuracy"]
        assert float(row["best eval/accuracy"]) == summary["best"]["eval/accuracy"]
        assert row["steps"] == "16" and row["best step"] == "16"
    assert (workdir / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    check_sweep_figure(figures[0])
    # 16 steps logged every 8: 2 points per run, each run named in one warning.
    assert err.splitlines() == [
        f"jaxforge: warning: {name} logged 2 points (step 8, 16), too few for a curve: train it "
        "with a smaller --config.train.log_every_steps (e.g. --config.train.log_every_steps=1)."
        for name in RUNS]
    table = out[out.index("run "):]
    assert all(name in table for name in RUNS) and "final eval/loss" in table

    finished = {name: (workdir / name / "summary.json").stat().st_mtime_ns for name in RUNS}
    (workdir / RUNS[1] / "summary.json").unlink()  # As if interrupted after its last checkpoint.
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.count("finished earlier, skipped.") == 3
    assert f"{RUNS[1]}: training in" in out and "Resuming from the step-16 checkpoint" in out
    for name in RUNS[:1] + RUNS[2:]:
        assert (workdir / name / "summary.json").stat().st_mtime_ns == finished[name]
    resumed = json.loads((workdir / RUNS[1] / "summary.json").read_text())
    assert resumed["resumed_from_step"] == 16 and resumed["steps"] == 16
    assert len(read_csv(workdir / "sweep.csv")) == 4
