"""`jaxforge plot`: learning curves of several runs, overlaid, as an image."""

import json
import subprocess
import sys

import matplotlib.image
import pytest

from framework.cli import main
from framework.plot import load_runs, plot_runs, plot_workdirs


def write_run(workdir, losses, eval_every=2):
    """A metrics.jsonl as training writes it: train metrics each log step, eval ones less often."""
    workdir.mkdir(parents=True)
    with (workdir / "metrics.jsonl").open("w") as file:
        for index, loss in enumerate(losses, 1):
            record = {"step": 10 * index, "train/loss": loss, "train/accuracy": 1 - loss / 4,
                      "steps_per_sec": 100.0}
            if index % eval_every == 0:
                record.update({"eval/loss": loss + 0.1, "eval/accuracy": 0.9 - loss / 4})
            file.write(json.dumps(record) + "\n")
    return workdir


@pytest.fixture
def two_runs(tmp_path):
    return [write_run(tmp_path / "lr_high", [2.0, 1.5, 1.2, 1.0]),
            write_run(tmp_path / "lr_low", [2.0, 1.8, 1.6, 1.5, 1.4, 1.3])]


def lines_by_panel(figure):
    return {ax.get_title(): [(line.get_label(), list(line.get_xdata()), list(line.get_ydata()))
                             for line in ax.get_lines()]
            for ax in figure.axes if ax.get_visible()}


def test_runs_are_overlaid_in_train_and_eval_panels(tmp_path, two_runs):
    output = tmp_path / "curves.png"
    figure = plot_workdirs(two_runs, output)
    panels = lines_by_panel(figure)
    assert set(panels) == {"train/loss", "train/accuracy", "eval/loss", "eval/accuracy"}
    assert sum(len(lines) for lines in panels.values()) == 4 * 2
    assert panels["train/loss"][0] == ("lr_high", [10, 20, 30, 40], [2.0, 1.5, 1.2, 1.0])
    assert panels["eval/loss"][1] == ("lr_low", [20, 40, 60], pytest.approx([1.9, 1.6, 1.4]))
    legend = figure.legends[0]
    assert [text.get_text() for text in legend.get_texts()] == ["lr_high", "lr_low"]
    assert output.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width, _ = matplotlib.image.imread(output).shape
    assert width > height > 300


@pytest.mark.parametrize("metrics, panels", [
    (["loss"], {"train/loss", "eval/loss"}),
    (["eval/accuracy"], {"eval/accuracy"}),
    (["steps_per_sec", "eval/loss"], {"steps_per_sec", "eval/loss"}),
])
def test_metric_selection(two_runs, metrics, panels):
    figure = plot_runs(load_runs(two_runs), metrics)
    assert set(lines_by_panel(figure)) == panels
    assert sum(len(ax.get_lines()) for ax in figure.axes) == 2 * len(panels)


def test_runs_with_the_same_name_are_labelled_by_their_path(tmp_path):
    runs = load_runs([write_run(tmp_path / "a" / "seed0", [1.0, 0.5]),
                      write_run(tmp_path / "b" / "seed0", [1.0, 0.7])])
    assert [run.name for run in runs] == [str(tmp_path / "a" / "seed0"),
                                          str(tmp_path / "b" / "seed0")]


@pytest.mark.parametrize("args, message", [
    (["{missing}"], "has no metrics.jsonl"),
    (["{run}", "--metric", "lss"], "No metric 'lss' in the runs' metrics.jsonl. Available: "
                                   "train/loss, train/accuracy, steps_per_sec, eval/loss"),
    (["{run}", "-o", "curves.xyz"], "Cannot write curves.xyz: give a file name ending in one of"),
])
def test_bad_plot_arguments_exit_2_with_one_line(tmp_path, capsys, args, message):
    run = write_run(tmp_path / "run", [1.0, 0.5])
    args = [a.format(run=run, missing=tmp_path / "missing") for a in args]
    assert main(["plot", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("jaxforge: error: ") and message in err
    assert len(err.strip().splitlines()) == 1


def test_plot_command_writes_the_png_without_jax_and_listing_imports_no_matplotlib(
        tmp_path, two_runs):
    output = tmp_path / "out" / "compare.png"
    code = ("import sys; from framework.cli import main; main(['plugins', 'list']);"
            "print('after list:', [m for m in sys.modules if m.startswith('matplotlib')]);"
            f"main(['plot', {str(two_runs[0])!r}, {str(two_runs[1])!r}, '--metric', 'loss',"
            f" '-o', {str(output)!r}]);"
            "print('after plot:', [m for m in sys.modules if m.split('.')[0] == 'jax'])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert "after list: []" in result.stdout and "after plot: []" in result.stdout
    assert f"Wrote {output}: 2 panel(s), 2 run(s)." in result.stdout
    assert output.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
