"""Learning curves of one or several runs from their metrics.jsonl: `jaxforge plot`.

One panel per metric name (`loss`, `accuracy`, ...) holding its train and eval curves, so the
generalisation gap is visible: train solid, eval dashed, one colour per run in every panel, one
legend naming the runs (by their workdir's name) and the two line styles. All panels share one
x range (step); the figure has exactly as many panels as metrics. A run with fewer than
`MIN_POINTS` logged points is named in a warning (stderr), with the flag that gives more.
Drawn on a matplotlib `Figure` without pyplot, so it needs no display and touches no global
backend state. Reads only metrics.jsonl; does not import JAX.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Sequence
from typing import Any

from etils import epath
from matplotlib.backend_bases import FigureCanvasBase
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from framework.errors import JaxforgeError
from framework.metrics import read_metrics

ROWS = ("train", "eval")


@dataclasses.dataclass
class Run:
    name: str
    records: list[dict[str, Any]]


def load_runs(workdirs: Sequence[str | epath.Path]) -> list[Run]:
    """Each workdir's metrics, named by the workdir's last component (its path if not unique)."""
    paths = [epath.Path(w) for w in workdirs]
    if not paths:
        raise JaxforgeError("No workdir given: pass one or more run directories to plot.")
    for path in paths:
        if not (path / "metrics.jsonl").is_file():
            raise JaxforgeError(f"{path} has no metrics.jsonl: pass the workdir of a jaxforge "
                                "run (the --workdir it was trained with).")
    names = [path.resolve().name for path in paths]
    if len(set(names)) < len(names):
        names = [str(path) for path in paths]
    return [Run(name, read_metrics(path / "metrics.jsonl")) for name, path in zip(names, paths)]


def _row_of(tag: str) -> str:
    """`eval/x` is an evaluation metric; everything else (`train/x`, `steps_per_sec`) training."""
    return "eval" if tag.startswith("eval/") else "train"


def _column_of(tag: str) -> str:
    return tag.split("/", 1)[1] if "/" in tag else tag


def select_metrics(runs: Sequence[Run], metrics: Sequence[str] = ()) -> list[str]:
    """The tags to plot. Default: every `train/` and `eval/` metric.

    A requested name is a full tag (`eval/accuracy`, `steps_per_sec`) or a metric name that
    selects both its train and eval tags (`loss` -> `train/loss`, `eval/loss`).
    """
    available: list[str] = []
    for run in runs:
        for record in run.records:
            available += [key for key in record if key != "step" and key not in available]
    if not metrics:
        chosen = [tag for tag in available if tag.startswith(("train/", "eval/"))]
        if not chosen:
            raise JaxforgeError("The runs have logged no train/ or eval/ metrics yet.")
        return chosen
    chosen = []
    for name in metrics:
        matches = [name] if name in available else [
            tag for tag in (f"train/{name}", f"eval/{name}") if tag in available]
        if not matches:
            raise JaxforgeError(
                f"No metric {name!r} in the runs' metrics.jsonl. Available: "
                f"{', '.join(available) or 'none'} (a bare name such as 'loss' selects "
                "train/loss and eval/loss).")
        chosen += [tag for tag in matches if tag not in chosen]
    return chosen


MIN_POINTS = 3
STYLES = {"train": "-", "eval": "--"}
MARKER_FACES = {"train": None, "eval": "white"}  # Single points: filled train, hollow eval.
FIRST = ("loss", "accuracy")  # Panels shown first, then the others in the order logged.


def _panels(tags: Sequence[str]) -> dict[str, list[str]]:
    """Metric name -> its tags, train before eval: `loss` -> [`train/loss`, `eval/loss`]."""
    panels: dict[str, list[str]] = {}
    for tag in tags:
        panels.setdefault(_column_of(tag), []).append(tag)
    order = sorted(panels, key=lambda name: FIRST.index(name) if name in FIRST else len(FIRST))
    return {name: sorted(panels[name], key=lambda t: ROWS.index(_row_of(t))) for name in order}


def _points(run: Run, tag: str) -> list[tuple[float, float]]:
    return [(r["step"], r[tag]) for r in run.records if tag in r]


def short_runs(runs: Sequence[Run], tags: Sequence[str]) -> list[str]:
    """One warning for each run whose curves have fewer than `MIN_POINTS` points: a run logs
    every `train.log_every_steps` steps and at its last step, evaluates every
    `train.eval_every_steps` steps and at its last step."""
    warnings = []
    train_tags = [tag for tag in tags if _row_of(tag) == "train"]
    watched, flag = ((train_tags, "train.log_every_steps") if train_tags
                     else (list(tags), "train.eval_every_steps"))
    for run in runs:
        steps = max((sorted({step for step, _ in _points(run, tag)}) for tag in watched),
                    key=len)
        if len(steps) >= MIN_POINTS:
            continue
        where = f" (step {', '.join(map(str, steps))})" if steps else ""
        suggestion = max(1, int(max(steps, default=10)) // 10)
        warnings.append(
            f"{run.name} logged {len(steps)} point{'' if len(steps) == 1 else 's'}{where}, "
            f"too few for a curve: train it with a smaller --config.{flag} "
            f"(e.g. --config.{flag}={suggestion}).")
    return warnings


def _warn(text: str) -> None:
    print(f"jaxforge: warning: {text}", file=sys.stderr)


def _grid(count: int) -> tuple[int, int]:
    """Rows and columns for `count` panels: one row up to 3, then 2 or 3 columns."""
    columns = count if count <= 3 else 2 if count == 4 else 3
    return -(-count // columns), columns


def plot_runs(runs: Sequence[Run], metrics: Sequence[str] = (),
              warn: Callable[[str], None] = _warn) -> Figure:
    """A figure with one panel per selected metric name; in each, one solid train line and one
    dashed eval line per run. Warns (through `warn`) about runs with too few points."""
    tags = select_metrics(runs, metrics)
    for warning in short_runs(runs, tags):
        warn(warning)
    panels = _panels(tags)
    rows, columns = _grid(len(panels))
    width = 4.5 * columns
    kinds = [kind for kind in ROWS if any(_row_of(tag) == kind for tag in tags)]
    # Legend columns that fit the figure's width: about 0.085 inch per character at 10 pt,
    # plus the line sample; long run names (sweeps) get fewer columns and more legend rows.
    longest = max(len(run.name) for run in runs)
    entries = len(runs) + (len(kinds) if len(kinds) > 1 else 0)
    legend_columns = max(1, min(entries, int(width / (0.085 * longest + 0.8))))
    legend_rows = -(-entries // legend_columns)
    figure = Figure(figsize=(width, 3.2 * rows + 0.3 + 0.25 * legend_rows),
                    layout="constrained")
    first = None
    steps: list[float] = []
    for index, (name, group) in enumerate(panels.items()):
        ax = figure.add_subplot(rows, columns, index + 1, sharex=first)
        first = first or ax
        for tag in group:
            for run_index, run in enumerate(runs):
                points = _points(run, tag)
                if not points:
                    continue
                xs, values = zip(*points)
                steps += xs
                kind = _row_of(tag)
                ax.plot(xs, values, color=f"C{run_index % 10}", linestyle=STYLES[kind],
                        marker="o" if len(points) <= 20 else None, markersize=4,
                        markerfacecolor=MARKER_FACES[kind], label=f"{run.name}: {tag}")
        ax.set_title(name if len(group) > 1 else group[0])
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 2.5, 5, 10]))
        ax.grid(alpha=0.3)
    low, high = min(steps), max(steps)
    margin = 0.03 * (high - low) if high > low else 1
    first.set_xlim(low - margin, high + margin)  # Shared: every panel has this x range.
    handles = [Line2D([], [], color=f"C{i % 10}", label=run.name) for i, run in enumerate(runs)]
    if len(kinds) > 1:
        handles += [Line2D([], [], color="0.3", linestyle=STYLES[kind], marker="o",
                           markersize=4, markerfacecolor=MARKER_FACES[kind], label=kind)
                    for kind in kinds]
    figure.legend(handles=handles, loc="outside lower center", ncols=legend_columns)
    return figure


def check_output(output: str | epath.Path) -> epath.Path:
    """`output`, when its extension names a format matplotlib writes."""
    output = epath.Path(output)
    formats = FigureCanvasBase.get_supported_filetypes()
    if output.suffix.lstrip(".").lower() not in formats:
        raise JaxforgeError(f"Cannot write {output}: give a file name ending in one of "
                            f"{', '.join('.' + f for f in sorted(formats))} (e.g. curves.png).")
    return output


def save(figure: Figure, output: str | epath.Path) -> epath.Path:
    """Write the figure; the format follows the file's extension (PNG for `.png`)."""
    output = check_output(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with output.open("wb") as file:  # A local file or a gs:// object alike.
        figure.savefig(file, dpi=120, format=output.suffix.lstrip(".").lower())
    return output


def plot_workdirs(workdirs: Sequence[str | epath.Path], output: str | epath.Path,
                  metrics: Sequence[str] = ()) -> Figure:
    """`jaxforge plot`: the learning curves of `workdirs`, written to `output`."""
    check_output(output)  # Before plotting, which may warn.
    figure = plot_runs(load_runs(workdirs), metrics)
    save(figure, output)
    return figure
