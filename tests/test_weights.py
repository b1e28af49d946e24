"""Weights files: `jaxforge weights export`, `init_from.path=FILE.safetensors`, convert_weights."""

import dataclasses

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from framework import config as config_lib
from framework import init_from, loop, testing
from framework.cli import main
from framework.errors import JaxforgeError
from framework.registry import registry
from framework.weights import load_weights

CNN = {"name": "cnn", "conv_features": (8,), "dense_features": (16,), "batch_norm": True}


def _config(**sections):
    sections.setdefault("model", CNN)
    sections.setdefault("train", {"num_steps": 20, "log_every_steps": 10,
                                  "eval_every_steps": 20, "ema_decay": 0.9})
    return config_lib.resolve_config(testing.tiny_config(**sections))


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("source")
    loop.train(_config(checkpoint={"every_steps": 10}), workdir)
    return workdir


def _flat(state, ema=False):
    from framework.weights import flat_collections

    flat = flat_collections(state.ema_params if ema else state.params, state.model_state)
    return {name: np.asarray(value) for name, value in flat.items()}


def test_export_writes_named_arrays_and_metadata(source, tmp_path, capsys):
    out = tmp_path / "model.safetensors"
    assert main(["weights", "export", "--workdir", str(source), "-o", str(out)]) == 0
    assert "Wrote" in capsys.readouterr().out
    tensors, metadata = load_weights(out)
    _, saved, _ = loop.restore(source)
    expected = _flat(saved)
    assert set(tensors) == set(expected)
    assert "params/Dense_0/kernel" in tensors and "batch_stats/BatchNorm_0/mean" in tensors
    assert all(np.array_equal(tensors[k], expected[k]) for k in expected)
    assert metadata["format"] == "jaxforge-weights" and metadata["model"] == "cnn"
    assert metadata["step"] == "20" and metadata["ema"] == "false"
    assert "jaxforge_version" in metadata

    ema = tmp_path / "ema.safetensors"
    assert main(["weights", "export", "--workdir", str(source), "-o", str(ema), "--step", "10",
                 "--ema"]) == 0
    _, saved10, _ = loop.restore(source, 10)
    tensors = load_file(str(ema))
    assert np.array_equal(tensors["params/Dense_0/kernel"],
                          np.asarray(saved10.ema_params["Dense_0"]["kernel"]))
    assert main(["weights", "export", "--workdir", str(source), "-o", str(ema),
                 "--step", "15"]) == 2
    assert "saved steps: [10, 20]" in capsys.readouterr().err


def test_a_run_starts_from_a_weights_file(source, tmp_path):
    out = tmp_path / "model.safetensors"
    assert main(["weights", "export", "--workdir", str(source), "-o", str(out)]) == 0
    _, saved, _ = loop.restore(source)
    config = _config(mesh={"data": 2, "fsdp": 4, "fsdp_min_size": 1},
                     init_from={"path": str(out), "exclude": ("Dense_1",)})
    setup = loop.set_up(config)
    state = init_from.initial_state(setup, tmp_path / "run")
    fresh = setup.init_state(jax.random.PRNGKey(0))
    got, want = _flat(state), _flat(saved)
    for name in want:
        expected = np.asarray(_flat(fresh)[name]) if "Dense_1" in name else want[name]
        assert np.array_equal(got[name], expected), name
    assert "fsdp" in tuple(state.params["Dense_0"]["kernel"].sharding.spec)
    assert (tmp_path / "run" / "init_from.json").exists()


def test_corrupted_and_truncated_files_are_one_error(source, tmp_path):
    out = tmp_path / "model.safetensors"
    assert main(["weights", "export", "--workdir", str(source), "-o", str(out)]) == 0
    data = out.read_bytes()
    truncated, corrupted = tmp_path / "truncated.safetensors", tmp_path / "bad.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    corrupted.write_bytes(b"\xff" * 64 + data[64:])
    for path in (truncated, corrupted):
        workdir = tmp_path / f"run_{path.stem}"
        with pytest.raises(JaxforgeError, match="corrupted or truncated") as error:
            loop.train(_config(init_from={"path": str(path)}), workdir)
        assert len(str(error.value).splitlines()) == 1
        assert not (workdir / "config.json").exists()
        assert not (workdir / "checkpoints").exists()
    assert out.read_bytes() == data  # The source is untouched.


# A model plugin that reads another framework's weights -------------------------------------


def _torch_like(tensors):
    """`fc0.weight` (out, in) and `fc0.bias` -> `params/Dense_0/kernel` (in, out) and bias."""
    converted = {}
    for name, value in tensors.items():
        layer, _, kind = name.partition(".")
        index = layer.removeprefix("fc")
        if kind == "weight":
            converted[f"params/Dense_{index}/kernel"] = np.ascontiguousarray(value.T)
        else:
            converted[f"params/Dense_{index}/bias"] = value
    return converted


def _example(config, metadata):
    return {"fc0.weight": np.ones((32, 16), np.float32), "fc0.bias": np.ones(32, np.float32),
            "fc1.weight": np.ones((4, 32), np.float32), "fc1.bias": np.ones(4, np.float32)}


def _with_converter(convert):
    return dataclasses.replace(registry.load("models", "mlp"), convert_weights=convert,
                               convert_weights_example=_example)


def test_convert_weights_and_its_conformance_check(tmp_path):
    plugin = _with_converter(_torch_like)
    rng = np.random.default_rng(0)
    foreign = {"fc0.weight": rng.normal(size=(32, 16)).astype(np.float32),
               "fc0.bias": rng.normal(size=32).astype(np.float32),
               "fc1.weight": rng.normal(size=(4, 32)).astype(np.float32),
               "fc1.bias": rng.normal(size=4).astype(np.float32)}
    path = tmp_path / "torch.safetensors"
    save_file(foreign, str(path))
    with registry.registered("models", "mlp_torch", plugin):
        config = config_lib.resolve_config(testing.tiny_config(
            model={"name": "mlp_torch", "hidden_sizes": (32,)},
            init_from={"path": str(path), "convert": True}))
        state = init_from.initial_state(loop.set_up(config))
    assert np.array_equal(np.asarray(state.params["Dense_0"]["kernel"]), foreign["fc0.weight"].T)
    assert np.array_equal(np.asarray(state.params["Dense_1"]["bias"]), foreign["fc1.bias"])

    # The example is for a hidden layer of 32: the experiment the plugin is checked in says so.
    experiment = testing.tiny_config(model={"name": testing.IN_PROCESS_NAME,
                                            "hidden_sizes": (32,)})
    results = {r.check: r for r in testing.run_checks("models", plugin, experiment)}
    assert results["model_convert_weights"].status == "pass"
    results = {r.check: r for r in testing.run_checks("models", "mlp")}
    assert results["model_convert_weights"].status == "skip"
    wrong = _with_converter(lambda t: {"params/Dense_0/kernel": t["fc0.weight"]})  # Not transposed.
    results = {r.check: r for r in testing.run_checks("models", wrong, experiment)}
    assert results["model_convert_weights"].status == "fail"
    assert "other shapes" in results["model_convert_weights"].message
