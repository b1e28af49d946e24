"""The `jaxforge` command: exit codes, one-line errors, train / resume / eval / config show."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from framework.cli import main

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


@pytest.fixture
def experiment(tmp_path):
    path = tmp_path / "tiny.py"
    path.write_text(EXPERIMENT)
    return str(path)


def jaxforge(*args):
    return subprocess.run([sys.executable, "-m", "framework.cli", *args], capture_output=True,
                          text=True, env={**os.environ, "XLA_FLAGS": ""}, timeout=300)


@pytest.mark.slow
def test_train_resume_and_eval_from_the_command_line(tmp_path, experiment):
    workdir = tmp_path / "run"
    first = jaxforge("train", "--config", experiment, "--workdir", str(workdir))
    assert first.returncode == 0, first.stderr
    assert "step 16/16" in first.stdout and "Done: 16 steps" in first.stdout
    summary = json.loads((workdir / "summary.json").read_text())
    again = jaxforge("train", "--config", experiment, "--workdir", str(workdir),
                     "--config.train.num_steps=24", "--allow_config_change")
    assert again.returncode == 0, again.stderr
    assert "Resuming from the step-16 checkpoint" in again.stdout
    steps = [json.loads(line)["step"] for line in (workdir / "metrics.jsonl").open()]
    assert steps == [8, 16, 24]  # The same metrics file continues.
    evaluated = jaxforge("eval", "--workdir", str(workdir), "--step", "16")
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads(evaluated.stdout)["eval/accuracy"] == pytest.approx(
        summary["final"]["eval/accuracy"])


@pytest.mark.parametrize("args, message", [
    (["--config.train.num_steps=abc"], "config.train.num_steps must be an int, got 'abc'"),
    (["--config.optimizer.lerning_rate=1"], "Did you mean config.optimizer.learning_rate?"),
    (["--config.model.name=resnt"], "Did you mean 'resnet'?"),
    (["--config.dataset.batch_size=0"], "config.dataset.batch_size must be a positive int"),
    (["--nonsense"], "Unexpected argument '--nonsense'"),
])
def test_bad_configs_exit_2_with_one_line_and_train_nothing(tmp_path, experiment, capsys, args,
                                                            message):
    workdir = tmp_path / "run"
    assert main(["train", "--config", experiment, "--workdir", str(workdir), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("jaxforge: error: ") and message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not workdir.exists()


def test_missing_config_file_and_unknown_workdir(tmp_path, capsys):
    assert main(["train", "--config", str(tmp_path / "nope.py"), "--workdir", "x"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["eval", "--workdir", str(tmp_path)]) == 2
    assert "not a jaxforge workdir" in capsys.readouterr().err


def test_argparse_errors_exit_2():
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--workdir", "x"])  # --config missing.
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit) as exit_info:
        main(["plugins", "list", "--bogus"])
    assert exit_info.value.code == 2


def test_plugins_list_show_and_config_show(experiment, capsys):
    assert main(["plugins", "list", "--kind", "model"]) == 0
    listing = capsys.readouterr().out
    assert "jaxforge:cnn" in listing and "jaxforge:digits" not in listing
    assert main(["plugins", "show", "cnn"]) == 0
    shown = capsys.readouterr().out
    assert "entry point:  plugins.models.cnn:plugin" in shown and "conv_features = (32,)" in shown
    assert main(["plugins", "show", "nosuch"]) == 2
    assert "No plugin named 'nosuch'" in capsys.readouterr().err
    assert main(["plugins", "show", "cnnn"]) == 2
    assert "No plugin named 'cnnn'. Did you mean 'cnn' (model) or " in capsys.readouterr().err
    assert main(["config", "show", "--config", experiment, "--config.seed=3"]) == 0
    resolved = capsys.readouterr().out
    assert "seed = 3" in resolved and "model.hidden_sizes = (16,)" in resolved
    assert "optimizer.learning_rate = 0.001" in resolved  # A plugin default, merged in.


@pytest.mark.parametrize("args, message", [
    (["plugins", "show", "cnnn"],
     "No plugin named 'cnnn'. Did you mean 'cnn' (model) or 'cnn_nnx' (model)?"),
    (["plugins", "check", "cnnn"],
     "No plugin named 'cnnn'. Did you mean 'cnn' (model) or 'cnn_nnx' (model)?"),
    (["plugins", "show", "cnnn", "--kind", "model"],
     "Unknown model plugin 'cnnn'. Did you mean 'cnn' or 'cnn_nnx'?"),
    (["plugins", "check", "cnnn", "--kind", "model"],
     "Unknown model plugin 'cnnn'. Did you mean 'cnn' or 'cnn_nnx'?"),
    (["plugins", "check", "jaxforg:*"], "No installed plugin matches 'jaxforg:*'. Did you mean "
                                        "'jaxforge:*'?"),
    (["plugins", "show", "init_from"], "No plugin named 'init_from'. `jaxforge plugins list`"),
])
def test_plugins_show_and_check_suggest_as_configs_do(capsys, args, message):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("jaxforge: error: ") and message in err
    assert len(err.strip().splitlines()) == 1


def test_a_config_names_plugins_with_the_same_suggestions(experiment, capsys):
    assert main(["config", "show", "--config", experiment, "--config.model.name=cnnn"]) == 2
    assert "Unknown model plugin 'cnnn'. Did you mean 'cnn' or 'cnn_nnx'?" in (
        capsys.readouterr().err)


@pytest.mark.parametrize("override, message", [
    ("--config.train.nope=1", "Unknown config key config.train.nope."),
    ("--config.train.num_steps=abc", "config.train.num_steps must be an int"),
    ("--config.model.name=cnnn", "Unknown model plugin 'cnnn'"),
    ("--config.regularizers.l3.weight=1", "Unknown regularizer plugin 'l3'"),
])
def test_a_config_error_comes_before_jax_and_the_plugins_are_imported(tmp_path, override,
                                                                       message):
    """What makes the error fast (docs/performance.md): nothing heavy is imported for it."""
    code = ("import sys; from framework.cli import main\n"
            f"status = main(['train', '--config', 'experiments/digits_cnn.py', '--workdir', "
            f"{str(tmp_path / 'run')!r}, {override!r}])\n"
            "heavy = ('jax', 'flax', 'optax', 'orbax', 'tensorflow_datasets', 'plugins')\n"
            "print(status, sorted({m.split('.')[0] for m in sys.modules} & set(heavy)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300)
    assert result.stdout.strip() == "2 []", result.stdout + result.stderr
    assert message in result.stderr


def test_config_show_resolves_epochs_to_steps(experiment, capsys):
    assert main(["config", "show", "--config", "experiments/digits_cnn.py"]) == 0
    shown = capsys.readouterr().out.splitlines()
    assert ("train.num_steps = 1348  # from train.num_epochs=60.0 x 1437 train examples / "
            "batch 64, rounded up") in shown  # ceil(60 * 1437 / 64), as the run counts them.
    assert "train.num_epochs = 60.0" in shown
    assert main(["config", "show", "--config", experiment, "--config.train.num_epochs=2"]) == 0
    shown = capsys.readouterr().out.splitlines()
    assert "train.num_steps = 16  # from train.num_epochs=2.0 x 128 train examples / batch 16" \
        in shown
    assert main(["config", "show", "--config", experiment]) == 0  # Given in steps: as written.
    assert "train.num_steps = 16" in capsys.readouterr().out.splitlines()


def test_config_show_says_why_steps_are_unknown_when_the_dataset_cannot_be_built(
        experiment, capsys):
    import framework

    def build(config, context):
        raise OSError("no data here\nsecond line")

    broken = framework.Plugin(build=build, api_version=framework.PLUGIN_API_VERSION,
                              default_config=lambda: framework.registry.load(
                                  "datasets", "synthetic").default_config())
    with framework.registry.registered("datasets", "offline", broken):
        status = main(["config", "show", "--config", experiment, "--config.dataset.name=offline",
                       "--config.train.num_epochs=2"])
    assert status == 0
    assert ("train.num_steps = None  # train.num_epochs=2.0 x the train examples / batch 16; "
            "the dataset could not be built to count them (OSError: no data here)"
            in capsys.readouterr().out.splitlines())


def snapshot(workdir: Path) -> dict[str, tuple[bytes | None, int]]:
    """Every file's bytes and every path's mtime, but the lock's (it names the last user)."""
    return {str(p.relative_to(workdir)): (p.read_bytes() if p.is_file() else None,
                                          p.stat().st_mtime_ns)
            for p in sorted(workdir.rglob("*")) if p.name != ".lock"}


@pytest.mark.slow
def test_a_finished_run_is_left_as_it_is_and_trains_longer_when_asked(tmp_path, experiment,
                                                                       capsys):
    import framework

    workdir = tmp_path / "run"
    train = ["train", "--config", experiment, "--workdir", str(workdir)]
    assert main(train) == 0
    capsys.readouterr()
    before = snapshot(workdir)
    assert {"config.json", "plugins.json", "metrics.jsonl", "summary.json", "parameters.txt",
            "checkpoints/16"} <= set(before)
    assert any(name.startswith("events.out.tfevents") for name in before)
    summary = json.loads((workdir / "summary.json").read_text())

    assert main(train) == 0
    out = capsys.readouterr().out
    assert f"{workdir} holds a finished run: 16 of 16 steps. Nothing to train" in out
    assert "--config.train.num_steps=N (N > 16) and --allow_config_change." in out
    assert "Resuming" not in out
    assert snapshot(workdir) == before
    assert framework.train(framework.load_config(experiment), workdir) == summary
    assert snapshot(workdir) == before

    # What the message says to do: more steps are refused without --allow_config_change ...
    assert main([*train, "--config.train.num_steps=24"]) == 2
    assert "--allow_config_change" in capsys.readouterr().err
    assert snapshot(workdir) == before
    # ... and resume the run with them.
    assert main([*train, "--config.train.num_steps=24", "--allow_config_change"]) == 0
    assert "Resuming from the step-16 checkpoint" in capsys.readouterr().out
    resumed = json.loads((workdir / "summary.json").read_text())
    assert resumed["steps"] == 24 and resumed["resumed_from_step"] == 16
