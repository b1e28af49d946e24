"""The run's `metrics.jsonl` and `summary.json`, written by process 0 only."""

from __future__ import annotations

import json
import math
from typing import Any

from etils import epath

from framework.workdir import forget_listings, is_url


class MetricsLog:
    """Appends one JSON object per logged step; on resume, drops lines past the restored step.

    Lines logged after the last checkpoint of an interrupted run describe steps that will be run
    again, so they are removed; the file then reads as one uninterrupted run.

    An object store (a `gs://` workdir) cannot append, and rewriting the file at each log step
    costs its whole size every time. There each log step writes its line as one small object
    in `metrics.jsonl.parts/` (nothing is lost at a crash), `read_metrics` reads them after the
    file, and `close` (or the next run's start) folds them into metrics.jsonl.
    """

    def __init__(self, path: epath.Path, resume_step: int, enabled: bool) -> None:
        self.path = epath.Path(path)
        self.enabled = enabled
        self._appends = not is_url(self.path)
        if enabled:
            kept = [r for r in read_metrics(self.path) if r["step"] <= resume_step]
            self.path.write_text(_lines(kept))
            _remove_parts(self.path)

    def write(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        line = _lines([{"step": step, **metrics}])
        if self._appends:
            with self.path.open("a") as file:
                file.write(line)
        else:
            (_parts(self.path) / f"{step:012d}.jsonl").write_text(line)

    def close(self) -> None:
        """Fold the parts (an object store's) into metrics.jsonl: one file to read again."""
        if self.enabled and not self._appends:
            self.path.write_text(_lines(read_metrics(self.path)))
            _remove_parts(self.path)


def _lines(records: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def _parts(path: epath.Path) -> epath.Path:
    return path.parent / f"{path.name}.parts"


def _remove_parts(path: epath.Path) -> None:
    if is_url(path) and _parts(path).exists():
        _parts(path).rmtree()


def read_metrics(path: epath.Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl, then of its parts on an object store, in step order
    (empty when absent); a torn last line is ignored."""
    path = epath.Path(path)
    if not is_url(path):
        return _parse(path.read_text()) if path.exists() else []
    forget_listings(_parts(path))  # Parts written since this process last looked.
    try:
        return _read_with_parts(path)
    except FileNotFoundError:  # A part folded into the file while it was read: read again.
        forget_listings(_parts(path))
        return _read_with_parts(path)


def _read_with_parts(path: epath.Path) -> list[dict[str, Any]]:
    records = _parse(path.read_text()) if path.exists() else []
    if _parts(path).exists():
        folded_up_to = records[-1]["step"] if records else -1  # Parts a cut-short fold left.
        for part in sorted(_parts(path).iterdir()):
            records += [r for r in _parse(part.read_text()) if r["step"] > folded_up_to]
    return records


def _parse(text: str) -> list[dict[str, Any]]:
    records = []
    for line in text.splitlines():
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


def read_summary(workdir: epath.Path) -> dict[str, Any] | None:
    """A workdir's summary.json, or None when it has none (or an unreadable one)."""
    try:
        return json.loads((epath.Path(workdir) / "summary.json").read_text())
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


def write_json(path: epath.Path, data: Any) -> None:
    """Write via a temporary file, so a reader never sees half a file (an object store's
    writes are whole already)."""
    path, text = epath.Path(path), json.dumps(data, indent=2) + "\n"
    if is_url(path):
        path.write_text(text)
        return
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)
