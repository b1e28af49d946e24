"""`jaxforge export`: a jax.export file of the eval forward pass that runs with JAX alone."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import framework
from framework import export
from framework.cli import main
from framework.testing import tiny_config


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A model with batch statistics and dropout: both must be in eval mode in the export."""
    path = tmp_path_factory.mktemp("export") / "run"
    config = tiny_config(model={"name": "cnn", "batch_norm": True, "dropout_rate": 0.3,
                                "conv_features": (8,), "dense_features": (16,)},
                         train={"num_steps": 20, "log_every_steps": 10, "eval_every_steps": 20})
    framework.train(framework.resolve_config(config), path)
    return path


@pytest.fixture(scope="module")
def loaded(workdir):
    return framework.load(workdir)


def test_the_exported_forward_pass_takes_any_batch_size(loaded):
    assert "batch_stats" in loaded.model_state
    exported = export.export_model(loaded)
    assert str(exported.in_avals[0].shape[0]) == "batch"
    assert exported.in_avals[0].shape[1:] == (4, 4, 1)
    inputs, _ = loaded.eval_split()
    for count in (3, 17):
        np.testing.assert_allclose(np.asarray(exported.call(inputs[:count])),
                                   loaded.predict(inputs[:count]), atol=1e-5)


# A process that knows nothing of jaxforge: it loads the file with JAX and calls it.
PLAIN_JAX = textwrap.dedent("""
    import sys
    import jax
    import numpy as np

    exported = jax.export.deserialize(bytearray(open(sys.argv[1], "rb").read()))
    inputs = np.load(sys.argv[2])
    np.savez(sys.argv[3], small=np.asarray(exported.call(inputs[:3])),
             large=np.asarray(exported.call(inputs)))
    loaded = sorted({m.split(".")[0] for m in sys.modules} & {"flax", "framework", "plugins"})
    assert not loaded, loaded
""")


def test_the_export_command_writes_a_file_plain_jax_runs(loaded, workdir, tmp_path, capsys):
    model = tmp_path / "model.jaxexport"
    assert main(["export", "--workdir", str(workdir), "-o", str(model),
                 "--platforms", "cpu,tpu"]) == 0
    assert "float32[batch,4,4,1]" in capsys.readouterr().out
    inputs, _ = loaded.eval_split()
    np.save(tmp_path / "x.npy", inputs[:21])
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    result = subprocess.run([sys.executable, "-c", PLAIN_JAX, str(model), str(tmp_path / "x.npy"),
                             str(tmp_path / "out.npz")], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    outputs = np.load(tmp_path / "out.npz")
    np.testing.assert_allclose(outputs["small"], loaded.predict(inputs[:3]), atol=1e-5)
    np.testing.assert_allclose(outputs["large"], loaded.predict(inputs[:21]), atol=1e-5)


@pytest.mark.parametrize("args, message", [
    (["--platforms", "cpu,gpu"], "Unknown platform(s) gpu"),
    (["--step", "3"], "has no step-3 checkpoint"),
])
def test_export_errors_are_one_line_with_exit_2(workdir, tmp_path, capsys, args, message):
    output = tmp_path / "model.jaxexport"
    assert main(["export", "--workdir", str(workdir), "-o", str(output), *args]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and message in error
    assert not output.exists()
