"""`config.init_from`: a new run starts from another run's parameters (and batch statistics)."""

import json
import textwrap

import jax
import ml_collections
import numpy as np
import pytest

from framework import config as config_lib
from framework import init_from, loop
from framework.cli import main
from framework.errors import ConfigError
from framework.testing import tiny_config

CNN = {"name": "cnn", "conv_features": (8,), "dense_features": (16,), "batch_norm": True}


def _config(**sections):
    sections.setdefault("model", CNN)
    sections.setdefault("train", {"num_steps": 20, "log_every_steps": 10,
                                  "eval_every_steps": 20})
    return config_lib.resolve_config(tiny_config(**sections))


def _host(tree):
    return jax.tree.map(np.asarray, tree)


def _equal(a, b):
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(_host(a)),
                                                    jax.tree.leaves(_host(b)), strict=True))


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A finished run on one device with EMA, checkpoints at steps 10 and 20."""
    workdir = tmp_path_factory.mktemp("source")
    loop.train(_config(mesh={"data": 1}, train={"num_steps": 20, "log_every_steps": 10,
                                                "eval_every_steps": 20, "ema_decay": 0.9},
                       checkpoint={"every_steps": 10}), workdir)
    return workdir


def _start(tmp_path, train=None, **init):
    """The initial state a run with these init_from fields starts from (sharded over FSDP)."""
    extra = {"train": train} if train else {}
    config = _config(mesh={"data": 2, "fsdp": 4, "fsdp_min_size": 1}, init_from=init, **extra)
    setup = loop.set_up(config)
    return setup, init_from.initial_state(setup, tmp_path)


def test_a_sharded_run_starts_from_a_one_device_checkpoint(source, tmp_path):
    _, saved, _ = loop.restore(source)
    _, state = _start(tmp_path, path=str(source))
    assert _equal(state.params, saved.params)
    assert _equal(state.model_state, saved.model_state)  # batch_stats too.
    kernel = state.params["Dense_0"]["kernel"]
    assert "fsdp" in tuple(kernel.sharding.spec)  # Restored onto this run's shardings.
    assert len(kernel.sharding.device_set) == 8
    assert int(state.step) == 0
    report = json.loads((tmp_path / "init_from.json").read_text())
    assert report["step"] == 20 and report["kind"] == "checkpoint"
    assert "params/Dense_0/kernel" in report["loaded"]
    assert any(k.startswith("batch_stats/") for k in report["loaded"])
    assert report["reinitialised"] == {} and report["ignored"] == {}


def test_a_one_device_run_starts_from_a_sharded_checkpoint(tmp_path):
    """The reverse: parameters written FSDP-sharded over 8 devices start a 1-device run."""
    sharded = _config(mesh={"data": 2, "fsdp": 4, "fsdp_min_size": 1})
    loop.train(sharded, tmp_path / "sharded")
    _, saved, _ = loop.restore(tmp_path / "sharded")
    assert "fsdp" in tuple(saved.params["Dense_0"]["kernel"].sharding.spec)
    setup = loop.set_up(_config(mesh={"data": 1}, init_from={"path": str(tmp_path / "sharded")}))
    state = init_from.initial_state(setup, tmp_path / "one")
    assert _equal(state.params, saved.params)
    assert _equal(state.model_state, saved.model_state)
    assert len(state.params["Dense_0"]["kernel"].sharding.device_set) == 1


def test_step_checkpoint_directory_and_ema(source, tmp_path):
    _, saved10, _ = loop.restore(source, 10)
    _, state = _start(tmp_path, path=str(source), step=10)
    assert _equal(state.params, saved10.params)
    _, state = _start(tmp_path, path=str(source / "checkpoints" / "10"))
    assert _equal(state.params, saved10.params)
    _, state = _start(tmp_path, path=str(source / "checkpoints"), step=10)
    assert _equal(state.params, saved10.params)
    _, saved20, _ = loop.restore(source)
    _, state = _start(tmp_path, path=str(source), use_ema=True,
                      train={"num_steps": 20, "ema_decay": 0.99})
    assert _equal(state.params, saved20.ema_params)
    assert _equal(state.ema_params, state.params)  # This run's EMA starts at the loaded params.
    assert not _equal(state.params, saved20.params)


def test_optimizer_state_is_taken_only_when_it_matches(source, tmp_path):
    _, saved, _ = loop.restore(source)
    _, state = _start(tmp_path, path=str(source), optimizer_state=True)
    assert _equal(state.opt_state, saved.opt_state)
    _, fresh = _start(tmp_path, path=str(source))
    assert not _equal(fresh.opt_state, saved.opt_state)
    config = _config(optimizer={"name": "sgd", "learning_rate": 0.1},
                     init_from={"path": str(source), "optimizer_state": True})
    with pytest.raises(ConfigError, match="optimizer state does not have this run's structure"):
        init_from.prepare(loop.set_up(config))


def test_new_head_mismatch_is_an_error_or_reinitialised(source, tmp_path):
    _, saved, _ = loop.restore(source)
    six_classes = {"name": "synthetic", "shape": (4, 4, 1), "num_classes": 6, "num_train": 256,
                   "num_eval": 100, "batch_size": 32, "eval_batch_size": 32}
    config = _config(dataset=six_classes, init_from={"path": str(source)})
    with pytest.raises(ConfigError) as error:
        init_from.prepare(loop.set_up(config))
    lines = str(error.value).splitlines()
    assert any(line.strip().startswith("params/Dense_1/kernel: shape (16, 4)") for line in lines)
    assert any(line.strip().startswith("params/Dense_1/bias: shape (4,)") for line in lines)
    assert not any("Dense_0" in line for line in lines)

    for init in ({"on_mismatch": "reinit"}, {"exclude": ("Dense_1",)}):
        config = _config(dataset=six_classes, init_from={"path": str(source), **init})
        setup = loop.set_up(config)
        state = init_from.initial_state(setup, tmp_path)
        fresh = setup.init_state(jax.random.PRNGKey(config.seed))
        assert _equal(state.params["Dense_0"], saved.params["Dense_0"])
        assert _equal(state.params["Dense_1"], fresh.params["Dense_1"])
        report = json.loads((tmp_path / "init_from.json").read_text())
        assert set(report["reinitialised"]) == {"params/Dense_1/kernel", "params/Dense_1/bias"}


def test_include_exclude_rename_in_that_order():
    cfg = ml_collections.ConfigDict({"include": ("backbone/",), "exclude": ("bias",),
                                     "rename": (("^backbone/", ""),), "on_mismatch": "reinit"})
    source = {"params/backbone/Dense_0/kernel": (2, 3), "params/backbone/Dense_0/bias": (3,),
              "params/head/kernel": (3, 4), "batch_stats/backbone/BatchNorm_0/mean": (3,)}
    target = {"params/Dense_0/kernel": (2, 3), "params/Dense_0/bias": (3,),
              "params/Dense_1/kernel": (3, 5), "batch_stats/BatchNorm_0/mean": (3,)}
    plan = init_from.make_plan(source, target, cfg)
    assert plan.loaded == {"params/Dense_0/kernel": "params/backbone/Dense_0/kernel",
                           "batch_stats/BatchNorm_0/mean": "batch_stats/backbone/BatchNorm_0/mean"}
    assert plan.renamed["params/backbone/Dense_0/kernel"] == "params/Dense_0/kernel"
    assert plan.ignored == {"params/backbone/Dense_0/bias": "excluded",
                            "params/head/kernel": "not included"}
    assert set(plan.reinitialised) == {"params/Dense_0/bias", "params/Dense_1/kernel"}
    cfg.on_mismatch = "error"
    with pytest.raises(ConfigError, match="params/Dense_1/kernel: in this model, not in"):
        init_from.make_plan(source, target, cfg)
    cfg.include = ("nothing_like_this",)
    with pytest.raises(ConfigError, match="'nothing_like_this' matches no parameter"):
        init_from.make_plan(source, target, cfg)


def test_bad_input_is_one_error_before_anything_is_written(source, tmp_path):
    cases = [({"path": str(tmp_path / "absent")}, "does not exist"),
             ({"path": str(tmp_path)}, "holds no checkpoint"),
             ({"path": str(source), "step": 15}, r"saved steps: \[10, 20\]"),
             ({"path": str(source), "include": ("nope",)}, "matches no parameter")]
    for init, message in cases:
        workdir = tmp_path / "run"
        with pytest.raises(ConfigError, match=message):
            loop.train(_config(init_from=init), workdir)
        assert not (workdir / "checkpoints").exists()
        assert not (workdir / "metrics.jsonl").exists()
        assert not (workdir / "config.json").exists()
    with pytest.raises(ConfigError, match="config.init_from.on_mismatch"):
        _config(init_from={"path": str(source), "on_mismatch": "ignore"})
    with pytest.raises(ConfigError, match="config.init_from.include"):
        _config(init_from={"path": str(source), "include": ("(",)})
    with pytest.raises(ConfigError, match="config.init_from.use_ema"):
        _config(init_from={"path": "w.safetensors", "use_ema": True})


def test_ema_asked_but_absent(tmp_path):
    workdir = tmp_path / "no_ema"
    loop.train(_config(train={"num_steps": 10, "log_every_steps": 10, "eval_every_steps": 10}),
               workdir)
    with pytest.raises(ConfigError, match="has none .its run had train.ema_decay=0"):
        _start(tmp_path, path=str(workdir), use_ema=True)


EXPERIMENT = textwrap.dedent("""
    from framework.testing import tiny_config

    def get_config():
        return tiny_config(model={CNN!r}, train={{"num_steps": 10, "log_every_steps": 5,
                                                  "eval_every_steps": 10}})
""")


def test_train_starts_from_a_run_and_resume_ignores_init_from(source, tmp_path, capsys):
    experiment = tmp_path / "tiny.py"
    experiment.write_text(EXPERIMENT.format(CNN=CNN))
    workdir = tmp_path / "run"
    args = ["train", "--config", str(experiment), "--workdir", str(workdir)]
    assert main([*args, f"--config.init_from.path={source}"]) == 0
    out = capsys.readouterr().out
    assert "Initialised from the step-20 checkpoint" in out
    assert json.loads((workdir / "init_from.json").read_text())["step"] == 20
    # Resuming (more steps) from its own checkpoint: init_from is ignored, even a bad one.
    assert main([*args, "--config.train.num_steps=20", "--allow_config_change",
                 f"--config.init_from.path={tmp_path / 'absent'}"]) == 0
    assert "Resuming from the step-10 checkpoint" in capsys.readouterr().out
    # A bad source through the command line: exit status 2, one line, nothing trained.
    other = tmp_path / "other"
    assert main(["train", "--config", str(experiment), "--workdir", str(other),
                 f"--config.init_from.path={source}", "--config.init_from.step=3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "saved steps: [10, 20]" in err[0]
    assert not (other / "checkpoints").exists()
