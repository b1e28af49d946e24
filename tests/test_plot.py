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
    """Title -> [(label, steps, values, linestyle)] for each visible panel."""
    return {ax.get_title(): [(line.get_label(), list(line.get_xdata()), list(line.get_ydata()),
                              line.get_linestyle()) for line in ax.get_lines()]
            for ax in figure.axes if ax.get_visible()}


def test_train_and_eval_of_a_metric_share_a_panel_and_all_panels_one_x_range(
        tmp_path, two_runs, capsys):
    output = tmp_path / "curves.png"
    figure = plot_workdirs(two_runs, output)
    assert [ax.get_title() for ax in figure.axes] == ["loss", "accuracy"]  # No empty panel.
    assert all(ax.get_visible() for ax in figure.axes)
    panels = lines_by_panel(figure)
    assert [(label, len(steps), style) for label, steps, _, style in panels["loss"]] == [
        ("lr_high: train/loss", 4, "-"), ("lr_low: train/loss", 6, "-"),
        ("lr_high: eval/loss", 2, "--"), ("lr_low: eval/loss", 3, "--")]
    assert panels["loss"][0][1:3] == ([10, 20, 30, 40], [2.0, 1.5, 1.2, 1.0])
    faces = [line.get_markerfacecolor() for line in figure.axes[0].get_lines()]
    assert faces[:2] == ["C0", "C1"] and faces[2:] == ["white", "white"]  # Eval dots hollow.
    assert panels["loss"][3][1:3] == ([20, 40, 60], pytest.approx([1.9, 1.6, 1.4]))
    colours = {ax.get_title(): [line.get_color() for line in ax.get_lines()]
               for ax in figure.axes}
    assert colours["loss"] == colours["accuracy"] == ["C0", "C1", "C0", "C1"]  # One per run.
    low, high = figure.axes[0].get_xlim()
    assert low < 10 < 60 < high and all(ax.get_xlim() == (low, high) for ax in figure.axes)
    legend = figure.legends[0]
    assert [text.get_text() for text in legend.get_texts()] == [
        "lr_high", "lr_low", "train", "eval"]
    assert [line.get_linestyle() for line in legend.get_lines()] == ["-", "-", "-", "--"]
    assert capsys.readouterr().err == ""  # 4 and 6 points: no warning.
    assert output.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width, _ = matplotlib.image.imread(output).shape
    assert width > height > 300


def test_five_metrics_fill_five_panels_of_a_two_by_three_grid(tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    with (workdir / "metrics.jsonl").open("w") as file:
        for step in (5, 10, 15):
            file.write(json.dumps({"step": step, **{f"train/m{i}": 1.0 for i in range(5)},
                                   "eval/m0": 2.0}) + "\n")
    figure = plot_runs(load_runs([workdir]))
    assert [ax.get_title() for ax in figure.axes] == [
        "m0", "train/m1", "train/m2", "train/m3", "train/m4"]
    assert [ax.get_subplotspec().get_geometry()[:2] for ax in figure.axes] == [(2, 3)] * 5
    assert [text.get_text() for text in figure.legends[0].get_texts()] == [
        "run", "train", "eval"]


def test_loss_and_accuracy_come_first_whatever_order_they_were_logged_in(tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    record = {"train/accuracy": 0.5, "train/grad_norm": 1.0, "train/loss": 1.0,
              "eval/accuracy": 0.4, "eval/loss": 1.2}  # As training writes them: sorted.
    (workdir / "metrics.jsonl").write_text("".join(
        json.dumps({"step": step, **record}) + "\n" for step in (1, 2, 3)))
    figure = plot_runs(load_runs([workdir]))
    assert [ax.get_title() for ax in figure.axes] == ["loss", "accuracy", "train/grad_norm"]


@pytest.mark.parametrize("metrics, panels", [
    (["loss"], {"loss": ["-", "-", "--", "--"]}),
    (["eval/accuracy"], {"eval/accuracy": ["--", "--"]}),
    (["steps_per_sec", "eval/loss"], {"steps_per_sec": ["-", "-"], "eval/loss": ["--", "--"]}),
])
def test_metric_selection(two_runs, metrics, panels):
    figure = plot_runs(load_runs(two_runs), metrics)
    assert {title: [line[3] for line in lines]
            for title, lines in lines_by_panel(figure).items()} == panels
    assert len(figure.axes) == len(panels)


def test_a_run_with_fewer_than_three_points_is_named_in_a_warning(tmp_path, two_runs, capsys):
    short = write_run(tmp_path / "short", [1.0])
    figure = plot_runs(load_runs([*two_runs, short]))
    assert capsys.readouterr().err == (
        "jaxforge: warning: short logged 1 point (step 10), too few for a curve: train it with "
        "a smaller --config.train.log_every_steps (e.g. --config.train.log_every_steps=1).\n")
    assert [(label, len(steps)) for label, steps, _, _ in lines_by_panel(figure)["loss"]
            if label.startswith("short")] == [("short: train/loss", 1)]
    plot_runs(load_runs(two_runs), ["eval/accuracy"])  # lr_high has 2 eval points.
    assert capsys.readouterr().err.splitlines() == [
        "jaxforge: warning: lr_high logged 2 points (step 20, 40), too few for a curve: train it"
        " with a smaller --config.train.eval_every_steps (e.g. "
        "--config.train.eval_every_steps=4)."]


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
    assert f"Wrote {output}: 1 panel(s), 2 run(s)." in result.stdout  # loss: train + eval
    assert output.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
