"""`jaxforge sweep`: the cartesian product of some config values, one run after another.

    jaxforge sweep --config experiments/x.py --workdir runs/sweep \\
        --sweep.optimizer.learning_rate=1e-3,3e-4 --sweep.seed=0,1,2 [--config.a.b=v ...]

Each run trains in `DIR/<name>`, the name made of its swept values
(`optimizer.learning_rate=0.001,seed=0`). Every combination is resolved and validated before the
first run starts. Running the same command again skips finished runs and resumes an interrupted
one from its checkpoint (as `jaxforge train` does). At the end: a table of each run's final and
best metrics, printed and written to `DIR/sweep.csv`, and the runs' curves in `DIR/sweep.png`
(drawn as `jaxforge plot` draws them, which warns about runs too short for a curve).
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import itertools
import re
from collections.abc import Callable, Sequence
from typing import Any

import ml_collections
from etils import epath

from framework import config as config_lib
from framework.errors import ConfigError
from framework.metrics import read_summary

_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")


@dataclasses.dataclass
class SweepRun:
    name: str
    values: dict[str, Any]  # The swept keys' values, as the resolved config holds them.
    config: ml_collections.ConfigDict
    workdir: epath.Path


def split_values(text: str) -> list[str]:
    """`1e-3,3e-4` -> ["1e-3", "3e-4"]; commas inside brackets or quotes stay: `(8,8),(16,16)`."""
    values, current, depth, quote = [], "", 0, ""
    for char in text:
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == "," and depth == 0:
            values.append(current.strip())
            current = ""
            continue
        current += char
    values.append(current.strip())
    return values


def split_prefixed_args(args: Sequence[str], prefix: str, example: str, one_flag: str
                        ) -> tuple[dict[str, str], list[str]]:
    """Separate `--PREFIX.KEY=TEXT` (or `--PREFIX.KEY TEXT`) from the config overrides.

    `example` ends the error for a flag without text ("write --PREFIX.KEY=..."), `one_flag` the
    error for a key given twice; `sweep` and `tune` share this reading of their flags."""
    flag = re.compile(rf"^--?{prefix}\.([^=\s]+)(?:=(.*))?$", re.S)
    texts: dict[str, str] = {}
    rest: list[str] = []
    i = 0
    while i < len(args):
        match = flag.match(args[i])
        if not match:
            rest.append(args[i])
            i += 1
            continue
        key, text = match.group(1), match.group(2)
        if text is None and i + 1 < len(args) and not args[i + 1].startswith("--"):
            text, i = args[i + 1], i + 1
        if text is None or not text.strip():
            raise ConfigError(f"--{prefix}.{key} {example.format(key=key)}")
        if key in texts:
            raise ConfigError(f"--{prefix}.{key} is given twice; {one_flag}")
        texts[key] = text
        i += 1
    return texts, rest


def split_sweep_args(args: Sequence[str]) -> tuple[dict[str, list[str]], list[str]]:
    """Separate `--sweep.KEY=V1,V2` (or `--sweep.KEY V1,V2`) from the config overrides."""
    texts, rest = split_prefixed_args(args, "sweep", "has no values; write --sweep.{key}=V1,V2,...",
                                      "list all its values in one flag.")
    axes: dict[str, list[str]] = {}
    for key, text in texts.items():
        values = split_values(text)
        if "" in values:
            raise ConfigError(f"--sweep.{key}={text} has an empty value; separate values with "
                              "single commas, e.g. --sweep.seed=0,1,2.")
        repeated = sorted({v for v in values if values.count(v) > 1})
        if repeated:
            raise ConfigError(f"--sweep.{key}={text} lists {', '.join(repeated)} more than once.")
        axes[key] = values
    return axes, rest


def _value_text(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return "x".join(_value_text(v) for v in value) or "empty"
    return _UNSAFE.sub("_", repr(value) if isinstance(value, float) else str(value)).strip("_")


def run_name(values: dict[str, Any]) -> str:
    """A file-system-safe folder name from swept values: `optimizer.learning_rate=0.001,seed=0`."""
    return ",".join(f"{key}={_value_text(value)}" for key, value in values.items())


def plan(spec: str, workdir: str | epath.Path, axes: dict[str, list[str]],
         overrides: Sequence[str] = ()) -> list[SweepRun]:
    """Resolve and validate every combination; raises ConfigError before anything trains."""
    if not axes:
        raise ConfigError("Nothing to sweep: give at least one --sweep.KEY=V1,V2,... "
                          "(e.g. --sweep.optimizer.learning_rate=1e-3,3e-4).")
    fixed = config_lib.parse_override_keys(overrides)
    for key in axes:
        if key in fixed:
            raise ConfigError(f"config.{key} is both swept (--sweep.{key}) and set "
                              f"(--config.{key}); keep one.")
    user = config_lib.load_experiment(spec)
    for key, values in axes.items():  # Each value alone first, so an error names that value.
        for value in values:
            try:
                config_lib.resolve_config(user, {**fixed, key: value})
            except ConfigError as error:
                detail = (str(error).removeprefix(f"--config.{key}={value}: ")
                          .removeprefix(f"--config.{key}: "))
                raise ConfigError(f"--sweep.{key}={value}: {detail}") from None
    runs = []
    for combination in itertools.product(*axes.values()):
        texts = dict(zip(axes, combination))
        try:
            config = config_lib.resolve_config(user, {**fixed, **texts})
        except ConfigError as error:
            given = ", ".join(f"{k}={v}" for k, v in texts.items())
            raise ConfigError(f"Sweep combination {given}: {error}") from None
        values = {key: functools.reduce(lambda node, part: node[part], key.split("."), config)
                  for key in axes}
        runs.append(SweepRun(run_name(values), values, config,
                             epath.Path(workdir) / run_name(values)))
    names = [run.name for run in runs]
    for name in names:
        if names.count(name) > 1:
            raise ConfigError(f"Two sweep values give the same config (run {name}); list each "
                              "value once.")
    return runs


def is_finished(run: SweepRun) -> bool:
    """A run is done when its summary.json reached the configured steps (or it stopped early)."""
    summary = read_summary(run.workdir)
    if summary is None:
        return False
    target = run.config.train.num_steps or summary["num_steps"]
    return summary["stopped_early"] or summary["steps"] >= target


def results(runs: Sequence[SweepRun]) -> list[dict[str, Any]]:
    """One row per run: swept values, steps, final eval metrics, best metric and its step."""
    rows = []
    for run in runs:
        summary = read_summary(run.workdir) or {}
        best, best_metric = summary.get("best", {}), summary.get("best_metric", "")
        row = {"run": run.name, **run.values, "steps": summary.get("steps")}
        row.update({f"final {k}": v for k, v in summary.get("final", {}).items() if k != "step"})
        row.update({f"best {best_metric}": best.get(best_metric), "best step": best.get("step"),
                    "wall_time_s": summary.get("wall_time_s")})
        rows.append(row)
    return rows


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    cells = [columns] + [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip()
                     for line in cells)


def write_csv(rows: Sequence[dict[str, Any]], path: epath.Path) -> None:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    text = io.StringIO(newline="")  # Then one write: a gs:// object is written whole.
    writer = csv.DictWriter(text, fieldnames=columns)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    epath.Path(path).write_text(text.getvalue())


def plot_sweep(runs: Sequence[SweepRun], output: epath.Path) -> Any:
    """`sweep.png`: the runs' curves as `jaxforge plot` draws them (a matplotlib Figure),
    with its warnings about runs too short for a curve."""
    from framework import plot

    figure = plot.plot_runs(plot.load_runs([run.workdir for run in runs]))
    plot.save(figure, output)
    return figure


def run_sweep(spec: str, workdir: str | epath.Path, axes: dict[str, list[str]],
              overrides: Sequence[str] = (), echo: Callable[[str], None] = print
              ) -> list[dict[str, Any]]:
    """Plan, then train every unfinished run in order; write and return the results table."""
    runs = plan(spec, workdir, axes, overrides)
    from framework import loop

    workdir = epath.Path(workdir)
    for index, run in enumerate(runs, 1):
        if is_finished(run):
            echo(f"[{index}/{len(runs)}] {run.name}: finished earlier, skipped.")
            continue
        echo(f"[{index}/{len(runs)}] {run.name}: training in {run.workdir}")
        loop.train(run.config, run.workdir)
    rows = results(runs)
    write_csv(rows, workdir / "sweep.csv")
    plot_sweep(runs, workdir / "sweep.png")
    echo(format_table(rows))
    echo(f"Wrote {workdir / 'sweep.csv'} and {workdir / 'sweep.png'}; "
         f"compare the runs with: tensorboard --logdir {workdir}")
    return rows
