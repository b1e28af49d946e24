"""tools/loop_ab.py, the paired measurement behind tools/bench.py's steps-per-dispatch sweep:
jaxforge's loop and the hand-written one alternate in blocks inside one process."""

import dataclasses
import importlib.util
import sys
import time
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parent.parent / "tools"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, TOOLS / f"{name}.py")
    module = sys.modules[name] = importlib.util.module_from_spec(spec)  # loop_ab imports bench.
    spec.loader.exec_module(module)
    return module


bench = _load("bench")
loop_ab = _load("loop_ab")


@pytest.fixture
def tiny_case(monkeypatch):
    case = dataclasses.replace(bench.ALL_CASES["mlp@64"],
                               model={"name": "mlp", "hidden_sizes": (16,)}, shape=(4, 4, 1),
                               batch=8, num_train=64, block=4)
    monkeypatch.setitem(bench.ALL_CASES, "tiny", case)
    return "tiny"


@pytest.mark.parametrize("steps_per_dispatch", [1, 2])
def test_both_loops_run_every_round_in_one_process(tiny_case, steps_per_dispatch):
    measured = loop_ab.measure(tiny_case, rounds=3, block=4,
                               steps_per_dispatch=steps_per_dispatch)
    assert [len(measured.seconds[side]) for side in ("hand", "jaxforge")] == [3, 3]
    assert all(s > 0 for side in measured.seconds.values() for s in side)


def test_a_config_override_reaches_the_jaxforge_side(tiny_case):
    with pytest.raises(Exception, match="on_nonfinite"):
        loop_ab.measure(tiny_case, rounds=1, block=4, steps_per_dispatch=1,
                        overrides=["--config.train.on_nonfinite=explode"])


def test_thread_cpu_counts_the_busy_thread_by_its_name():
    before = loop_ab.thread_cpu_seconds()
    deadline = time.process_time() + 0.3
    while time.process_time() < deadline:  # Busy in this thread only.
        pass
    busy = loop_ab.thread_cpu_seconds() - before
    assert busy["MainThread"] >= 0.2
    assert busy["MainThread"] == max(busy.values())
