"""`train.profile_steps`: a jax.profiler trace of exactly that window of steps, and its checks."""

import gzip
import json

import pytest

import framework
from framework.errors import ConfigError

TRAIN_PROGRAM_RUN = "CommonPjRtLoadedExecutable::Execute (jit_train_step)"


@pytest.mark.slow
def test_profile_window_traces_its_dispatches_into_the_workdir(tmp_path, tiny):
    config = tiny(train={"profile_steps": (10, 30), "steps_per_dispatch": 5})
    framework.train(framework.resolve_config(config), tmp_path)
    (trace_dir,) = (tmp_path / "profile" / "plugins" / "profile").iterdir()
    assert list(trace_dir.glob("*.xplane.pb"))  # What TensorBoard's profile plugin reads.
    with gzip.open(trace_dir / "perfetto_trace.json.gz") as file:  # What ui.perfetto.dev opens.
        events = json.load(file)["traceEvents"]
    dispatches = [e for e in events if e.get("name") == TRAIN_PROGRAM_RUN]
    assert len(dispatches) == (30 - 10) // 5  # Steps 11..30, five per dispatch.


@pytest.mark.slow
def test_no_profile_by_default(tmp_path, tiny):
    framework.train(framework.resolve_config(tiny(train={"num_steps": 10})), tmp_path)
    assert not (tmp_path / "profile").exists()


@pytest.mark.parametrize("window, dispatch, message", [
    ((5,), 1, "must be two ints (start, end) or (), got (5,)"),
    ((10, 10), 1, "must satisfy 0 <= start < end, got (10, 10)"),
    ((-1, 10), 1, "must satisfy 0 <= start < end"),
    ((10, 15), 10, "bounds must be multiples of train.steps_per_dispatch=10"),
    ((20, 50), 1, "ends at step 50, after the last step (train.num_steps=40)"),
    ((1.5, 3), 1, "must be two ints"),
])
def test_bad_profile_windows_are_clear_errors(tiny, window, dispatch, message):
    config = tiny(train={"profile_steps": window, "steps_per_dispatch": dispatch,
                         "log_every_steps": 10, "eval_every_steps": 20})
    with pytest.raises(ConfigError, match="config.train.profile_steps") as error:
        framework.resolve_config(config)
    assert message in str(error.value)


def test_profile_window_from_the_command_line_syntax(tiny):
    config = framework.resolve_config(tiny(), ["--config.train.profile_steps=(10,20)"])
    assert config.train.profile_steps == (10, 20)
