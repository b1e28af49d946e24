"""What `jaxforge tune` leaves in its workdir, at the end and on `--report`.

    DIR/trials.csv                   one row per trial: state, value, best step, parameters
    DIR/best_config.py               the best trial's whole config: jaxforge train --config takes it
    DIR/optimization_history.png     Optuna's plot of each trial's value and the best so far
    DIR/param_importances.png        Optuna's parameter importances (from 2 complete trials)

Every file is written whole to a temporary name and then renamed, so that two workers ending
at once, or a reader, never see half a file.
"""

from __future__ import annotations

import pprint
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from framework import config as config_lib
from framework import sweep

BEST_CONFIG = "best_config.py"
PLOTS = ("optimization_history.png", "param_importances.png")


def trial_rows(study: Any, metric: str) -> list[dict[str, Any]]:
    """One row per trial (not the surplus ones, closed unrun), in trial order."""
    rows = []
    for trial in study.get_trials(deepcopy=False):
        if trial.user_attrs.get("surplus"):
            continue
        history = trial.system_attrs.get("retry_history", [])
        rows.append({"trial": trial.number, "state": trial.state.name, metric: trial.value,
                     "best step": trial.user_attrs.get("best_step"),
                     "steps": trial.user_attrs.get("steps"), **trial.params,
                     "workdir": trial.user_attrs.get("workdir"),
                     "retry of": history[-1] if history else None})
    return rows


def _replace(path: Path, write: Callable[[Path], None]) -> None:
    temporary = path.with_name(path.name + ".tmp")
    write(temporary)
    temporary.replace(path)


def write_best_config(study: Any, workdir: Path) -> tuple[Path, Any] | None:
    """DIR/best_config.py: the best complete trial's resolved config (from its config.json)
    as a `get_config()` file; None while no trial is complete."""
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    if not complete:
        return None
    best = study.best_trial
    run = workdir / best.user_attrs["workdir"]
    metric = (study.metric_names or ["value"])[0]
    config = config_lib.from_json_file(run / "config.json")
    text = (f'"""The best trial of `jaxforge tune` in this folder: trial {best.number} '
            f'({run.name}), {metric} {best.value!r}.\n\n'
            f'    jaxforge train --config {BEST_CONFIG} --workdir DIR\n"""\n\n'
            "import ml_collections\n\n\n"
            "def get_config() -> ml_collections.ConfigDict:\n"
            f"    return ml_collections.ConfigDict(\n"
            f"{_indent(pprint.pformat(config.to_dict(), sort_dicts=False), 8)})\n")
    path = workdir / BEST_CONFIG
    _replace(path, lambda p: p.write_text(text))
    return path, best


def _indent(text: str, spaces: int) -> str:
    return "".join(" " * spaces + line + "\n" for line in text.splitlines())


def write_plots(study: Any, workdir: Path, metric: str) -> list[Path]:
    """Optuna's optimisation history and parameter importances, drawn with matplotlib (no
    display needed); the importances once 2 trials are complete."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot
    from optuna.visualization import matplotlib as optuna_plots

    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    drawings = [(PLOTS[0], optuna_plots.plot_optimization_history)]
    if len(complete) >= 2:
        drawings.append((PLOTS[1], optuna_plots.plot_param_importances))
    written = []
    for name, draw in drawings:
        with warnings.catch_warnings():  # Optuna's about few trials; the plot says as much.
            warnings.simplefilter("ignore")
            axes = draw(study, target_name=metric)
        axes.figure.set_size_inches(8, 5)
        axes.figure.tight_layout()
        _replace(workdir / name, lambda p, f=axes.figure: f.savefig(p, format="png", dpi=100))
        pyplot.close(axes.figure)
        written.append(workdir / name)
    return written


def report(study: Any, workdir: str | Path, echo: Callable[[str], None] = print
           ) -> list[dict[str, Any]]:
    """Write trials.csv, best_config.py and the plots; print the table and where they are."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    metric = (study.metric_names or ["value"])[0]
    rows = trial_rows(study, metric)
    if rows:
        _replace(workdir / "trials.csv", lambda p: sweep.write_csv(rows, p))
        echo(sweep.format_table(rows))
    best = write_best_config(study, workdir)
    plots = write_plots(study, workdir, metric) if rows else []
    written = ["trials.csv"] * bool(rows) + [BEST_CONFIG] * bool(best) + [p.name for p in plots]
    if best:
        params = ", ".join(f"{key}={value!r}" for key, value in best[1].params.items())
        echo(f"Best: trial {best[1].number}, {metric} {best[1].value:.4g} ({params}).")
    echo(f"Wrote {', '.join(written) or 'nothing yet (no trial)'} in {workdir}; compare the "
         f"trials with: tensorboard --logdir {workdir}")
    return rows
