"""Learning curves of one or several runs from their metrics.jsonl: `jaxforge plot`.

One panel per metric, training metrics in the top row and evaluation metrics below it, each run
one line in every panel (same colour everywhere), named in one legend by its workdir's name.
Drawn on a matplotlib `Figure` without pyplot, so it needs no display and touches no global
backend state. Reads only metrics.jsonl; does not import JAX.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from framework.errors import JaxforgeError
from framework.metrics import read_metrics

ROWS = ("train", "eval")


@dataclasses.dataclass
class Run:
    name: str
    records: list[dict[str, Any]]


def load_runs(workdirs: Sequence[str | Path]) -> list[Run]:
    """Each workdir's metrics, named by the workdir's last component (its path if not unique)."""
    paths = [Path(w) for w in workdirs]
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


def plot_runs(runs: Sequence[Run], metrics: Sequence[str] = ()) -> Figure:
    """A figure with one panel per selected metric and one line per run in each panel."""
    tags = select_metrics(runs, metrics)
    rows = [row for row in ROWS if any(_row_of(tag) == row for tag in tags)]
    columns = list(dict.fromkeys(_column_of(tag) for tag in tags))
    width = 4.5 * len(columns)
    # Legend columns that fit the figure's width: about 0.085 inch per character at 10 pt,
    # plus the line sample; long run names (sweeps) get fewer columns and more legend rows.
    longest = max(len(run.name) for run in runs)
    legend_columns = max(1, min(len(runs), int(width / (0.085 * longest + 0.8))))
    legend_rows = -(-len(runs) // legend_columns)
    figure = Figure(figsize=(width, 3.2 * len(rows) + 0.3 + 0.25 * legend_rows),
                    layout="constrained")
    axes = figure.subplots(len(rows), len(columns), squeeze=False)
    legend: dict[str, Any] = {}
    for row_index, row in enumerate(rows):
        for column_index, column in enumerate(columns):
            ax = axes[row_index][column_index]
            tag = next((t for t in tags if _row_of(t) == row and _column_of(t) == column), None)
            if tag is None:
                ax.set_visible(False)
                continue
            for run_index, run in enumerate(runs):
                points = [(r["step"], r[tag]) for r in run.records if tag in r]
                if not points:
                    continue
                steps, values = zip(*points)
                (line,) = ax.plot(steps, values, color=f"C{run_index % 10}",
                                  marker="o" if len(points) <= 20 else None, markersize=3,
                                  label=run.name)
                legend.setdefault(run.name, line)
            ax.set_title(tag)
            ax.set_xlabel("step")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
    figure.legend(list(legend.values()), list(legend.keys()), loc="outside lower center",
                  ncols=legend_columns)
    return figure


def save(figure: Figure, output: str | Path) -> Path:
    """Write the figure; the format follows the file's extension (PNG for `.png`)."""
    output = Path(output)
    formats = figure.canvas.get_supported_filetypes()
    extension = output.suffix.lstrip(".").lower()
    if extension not in formats:
        raise JaxforgeError(f"Cannot write {output}: give a file name ending in one of "
                            f"{', '.join('.' + f for f in sorted(formats))} (e.g. curves.png).")
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=120)
    return output


def plot_workdirs(workdirs: Sequence[str | Path], output: str | Path,
                  metrics: Sequence[str] = ()) -> Figure:
    """`jaxforge plot`: the learning curves of `workdirs`, written to `output`."""
    figure = plot_runs(load_runs(workdirs), metrics)
    save(figure, output)
    return figure
