"""What training shows: a bar that advances per dispatch on a terminal, plain lines elsewhere."""

import fcntl
import io
import os
import struct
import termios

import pytest

import framework
from framework import loop
from framework.progress import Progress, terminal_width

METRICS = {"train/loss": 0.5, "train/accuracy": 0.75, "steps_per_sec": 12.0}


class FakeTTY(io.StringIO):
    """Says it is a terminal but has no file descriptor, so its width is unknown."""

    def isatty(self):
        return True


@pytest.fixture
def pty():
    """A real pseudo-terminal: (master fd, the terminal as a text stream). A new pty has 0x0."""
    master, slave = os.openpty()
    terminal = os.fdopen(slave, "w")
    yield master, terminal
    terminal.close()
    os.close(master)


def set_width(terminal, columns):
    fcntl.ioctl(terminal.fileno(), termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))


def read_all(master):
    os.set_blocking(master, False)
    chunks = []
    try:
        while chunk := os.read(master, 65536):
            chunks.append(chunk)
    except BlockingIOError:
        pass
    return b"".join(chunks).decode()


def log_three_times(progress):
    for step in (10, 20, 30):
        for dispatched in range(step - 8, step + 1, 2):
            progress.dispatched(dispatched)
        progress.update(step, {**METRICS, "train/loss": step / 100})
    progress.close()


@pytest.mark.parametrize("make_stream", [io.StringIO, FakeTTY], ids=["not-a-tty", "fake-tty"])
def test_without_a_usable_terminal_each_log_step_prints_one_line_with_one_rate(make_stream):
    stream, out = make_stream(), io.StringIO()
    progress = Progress(30, 0, enabled=True, stream=stream, out=out)
    assert progress.bar is None
    log_three_times(progress)
    lines = out.getvalue().splitlines()
    assert [line.split(" | ")[0] for line in lines] == ["step 10/30", "step 20/30", "step 30/30"]
    assert lines[0] == ("step 10/30 | train/loss 0.1 | train/accuracy 0.75 | 12 steps/s"
                        " | eta " + lines[0].rsplit("eta ", 1)[1])
    assert lines[2] == "step 30/30 | train/loss 0.3 | train/accuracy 0.75 | 12 steps/s"
    for line in lines:
        assert line.count("steps/s") == 1 and "steps_per_sec" not in line
    assert stream.getvalue() == ""


def test_fast_rates_are_written_without_an_exponent():
    out = io.StringIO()
    Progress(30, 0, enabled=True, stream=io.StringIO(), out=out).update(
        30, {"train/loss": 0.5, "steps_per_sec": 5460.4})
    assert out.getvalue() == "step 30/30 | train/loss 0.5 | 5,460 steps/s\n"


def test_a_terminal_of_width_0_gets_lines_too(pty):
    master, terminal = pty
    set_width(terminal, 0)
    assert terminal.isatty() and terminal_width(terminal) == 0
    out = io.StringIO()
    progress = Progress(30, 0, enabled=True, stream=terminal, out=out)
    assert progress.bar is None
    log_three_times(progress)
    assert len(out.getvalue().splitlines()) == 3
    assert read_all(master) == ""


def test_the_bar_advances_per_dispatch_and_shows_the_last_logs_metrics_and_one_rate(pty):
    master, terminal = pty
    set_width(terminal, 120)
    out = io.StringIO()
    progress = Progress(30, 0, enabled=True, stream=terminal, out=out)
    assert progress.bar is not None
    for step in (2, 4, 6):
        progress.dispatched(step)
    assert progress.bar.n == progress.step == 6  # Between logs: no metrics, no sync.
    progress.bar.refresh()
    assert "6/30" in read_all(master)
    progress.dispatched(10)
    progress.update(10, METRICS)
    progress.dispatched(12)
    assert progress.bar.n == 12
    progress.bar.refresh()
    drawn = read_all(master).split("\r")[-1]
    assert "12/30" in drawn and "loss 0.5, accuracy 0.75, 12 steps/s" in drawn
    assert drawn.count("/s") == 1 and "steps_per_sec" not in drawn
    progress.update(20, {"train/loss": 0.25, "eval/accuracy": 0.875, "steps_per_sec": 15.0})
    progress.update(30, {"train/loss": 0.125, "steps_per_sec": 16.0})
    drawn = read_all(master).split("\r")[-1]  # Each metric's latest value stays shown.
    assert "loss 0.125, accuracy 0.75, eval accuracy 0.875, 16 steps/s]" in drawn
    progress.message("a message")
    assert out.getvalue() == "a message\n"  # Messages go to `out`, the lines' stream.
    progress.close()


def test_only_the_enabled_process_prints(pty):
    master, terminal = pty
    set_width(terminal, 120)
    out = io.StringIO()
    progress = Progress(30, 0, enabled=False, stream=terminal, out=out)
    assert progress.bar is None
    log_three_times(progress)
    progress.message("a message")
    assert out.getvalue() == "" and read_all(master) == ""


@pytest.mark.slow
def test_training_prints_a_line_per_log_step_and_counts_every_dispatch(
        tmp_path, tiny, capsys, monkeypatch):
    dispatches = []

    class Recording(Progress):
        def dispatched(self, step):
            dispatches.append(step)
            super().dispatched(step)

    monkeypatch.setattr(loop, "Progress", Recording)
    config = tiny(train={"num_steps": 12, "log_every_steps": 6, "eval_every_steps": 12,
                         "steps_per_dispatch": 2})
    framework.train(framework.resolve_config(config), tmp_path / "run")
    assert dispatches == [2, 4, 6, 8, 10, 12]
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("step ")]
    assert [line.split(" | ")[0] for line in lines] == ["step 6/12", "step 12/12"]
    assert all(line.count("steps/s") == 1 for line in lines)
    assert "eval/accuracy" in lines[1] and "eval/accuracy" not in lines[0]
