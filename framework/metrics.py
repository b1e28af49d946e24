"""The run's `metrics.jsonl` and `summary.json`, written by process 0 only."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


class MetricsLog:
    """Appends one JSON object per logged step; on resume, drops lines past the restored step.

    Lines logged after the last checkpoint of an interrupted run describe steps that will be run
    again, so they are removed; the file then reads as one uninterrupted run.
    """

    def __init__(self, path: Path, resume_step: int, enabled: bool) -> None:
        self.path = Path(path)
        self.enabled = enabled
        if enabled:
            kept = [r for r in read_metrics(self.path) if r["step"] <= resume_step]
            self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def write(self, step: int, metrics: dict[str, float]) -> None:
        if self.enabled:
            with self.path.open("a") as file:
                file.write(json.dumps({"step": step, **metrics}) + "\n")


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl (empty when absent); a torn last line is ignored."""
    records = []
    if Path(path).exists():
        for line in Path(path).read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def eval_record(records: list[dict[str, Any]], step: int | None) -> dict[str, Any]:
    """The eval metrics logged at `step` (with `step`), as `summarize`'s records; {} if none."""
    for record in records:
        if record.get("step") == step and any(k.startswith("eval/") for k in record):
            return {k: v for k, v in record.items() if k == "step" or k.startswith("eval/")}
    return {}


def read_summary(workdir: Path) -> dict[str, Any] | None:
    """A workdir's summary.json, or None when it has none (or an unreadable one)."""
    try:
        return json.loads((Path(workdir) / "summary.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None


def summarize(records: list[dict[str, Any]], best_metric: str, best_mode: str) -> dict[str, Any]:
    """`final`: the last eval metrics; `best`: the eval record that is best on `best_metric`."""
    evals = [{k: v for k, v in r.items() if k == "step" or k.startswith("eval/")}
             for r in records if any(k.startswith("eval/") for k in r)]
    final = evals[-1] if evals else {}
    candidates = [r for r in evals if isinstance(r.get(best_metric), (int, float))
                  and math.isfinite(r[best_metric])]
    choose = max if best_mode == "max" else min
    best = choose(candidates, key=lambda r: r[best_metric]) if candidates else {}
    return {"final": final, "best": best, "best_metric": best_metric}


def write_json(path: Path, data: Any) -> None:
    """Write via a temporary file, so a reader never sees half a file."""
    tmp = Path(path).with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)
