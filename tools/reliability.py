"""Reliability report: interrupt training at random points, resume, compare with a clean run.

Each trial starts `jaxforge train` on a fresh workdir, waits a random number of logged steps,
then sends SIGTERM (a preemption: the run checkpoints and exits) or SIGKILL (a crash, possibly in
the middle of a save), runs the same command again to the end, and compares the final parameters
(bit for bit) and metrics.jsonl (every value except steps_per_sec) with an uninterrupted run.

    python tools/reliability.py [--trials 20] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import jax
import numpy as np

from framework import loop

EXPERIMENT = textwrap.dedent("""
    import ml_collections

    def get_config():
        return ml_collections.ConfigDict({
            "model": {"name": "cnn", "conv_features": (16,), "dense_features": (32,)},
            "dataset": {"name": "synthetic", "shape": (16, 16, 1), "num_classes": 4,
                        "num_train": 512, "num_eval": 64, "batch_size": 32},
            "train": {"num_steps": 240, "log_every_steps": 10, "eval_every_steps": 80},
            "checkpoint": {"every_steps": 20, "max_to_keep": 2},
        })
""")
LOG_LINES = 24  # num_steps / log_every_steps.


def _train(config: Path, workdir: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "framework.cli", "train", "--config", str(config),
         "--workdir", str(workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True, env={**os.environ, "XLA_FLAGS": ""})


def _run_to_end(config: Path, workdir: Path) -> None:
    process = _train(config, workdir)
    _, err = process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"training failed in {workdir}:\n{err}")


def _logged_lines(workdir: Path) -> int:
    path = workdir / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def _result(workdir: Path) -> tuple[list, list]:
    _, state, _ = loop.restore(workdir)
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    metrics = [{k: v for k, v in r.items() if k != "steps_per_sec"} for r in records]
    return jax.tree.leaves(jax.device_get(state.params)), metrics


def _identical(a: tuple[list, list], b: tuple[list, list]) -> bool:
    return (a[1] == b[1] and len(a[0]) == len(b[0])
            and all(np.array_equal(x, y) for x, y in zip(a[0], b[0])))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "experiment.py"
        config.write_text(EXPERIMENT)
        _run_to_end(config, Path(tmp) / "reference")
        reference = _result(Path(tmp) / "reference")
        identical = 0
        for trial in range(args.trials):
            workdir = Path(tmp) / f"trial-{trial}"
            kind = signal.SIGTERM if rng.random() < 0.5 else signal.SIGKILL
            after = int(rng.integers(1, LOG_LINES - 1))
            process = _train(config, workdir)
            while _logged_lines(workdir) < after and process.poll() is None:
                time.sleep(0.01)
            process.send_signal(kind)
            process.communicate()
            interrupted_at = _logged_lines(workdir) * 10
            _run_to_end(config, workdir)
            same = _identical(_result(workdir), reference)
            identical += same
            print(f"trial {trial:2d}: {kind.name:7s} near step {interrupted_at:3d} -> "
                  f"{'identical' if same else 'DIFFERENT'}", flush=True)
    print(f"{identical}/{args.trials} interrupted-and-resumed runs identical to the "
          f"uninterrupted run (parameters bit for bit, metrics.jsonl except steps_per_sec).")


if __name__ == "__main__":
    main()
