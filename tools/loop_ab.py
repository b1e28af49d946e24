"""Paired in-process timing of whole training loops: jaxforge's against the hand-written one.

`tools/bench.py` times each side in its own process (long run minus short run), which resolves
10-15% on a machine whose speed drifts. `tools/step_ab.py` resolves a few percent but times the
compiled step alone, on one batch already on the device. This script times the whole loop, feed
included, to a few percent: `framework.train` runs the case with a callback that, at every log
(every `--block` steps), runs a block of the bench's hand-written loop (fresh batches from the
same data plugin, one jitted step each, donated buffers) in the same process. The jaxforge block
is the time from the end of one hand-written block to the next log: its dispatches, its feed,
and its log step (one host sync), as in a real run that logs every `--block` steps. The median
over rounds of the per-round ratio (jaxforge steps/s over hand-written) is reported.

    python tools/loop_ab.py [--case cnn@64] [--rounds 20] [--block 100] [--k 1] \
        [--config.SECTION.KEY=VALUE ...]   # Overrides for the jaxforge side, as `jaxforge train`.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import io
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import bench
import jax

import framework


def handwritten_block(case: bench.Case, config: Any, steps: int) -> Callable[[], float]:
    """A function that runs `steps` more of the bench's hand-written loop; returns seconds."""
    source, state, step = bench.handwritten_training(case, config)
    iterator = source.train_iterator()
    state = list(state)

    def run() -> float:
        start = time.perf_counter()
        for _ in range(steps):
            batch = next(iterator)
            *state[:], loss = step(*state, batch["inputs"], batch["label"])
        jax.block_until_ready(loss)
        return time.perf_counter() - start

    return run


def thread_cpu_seconds() -> collections.Counter[str]:
    """CPU seconds so far of each thread of this process, summed by thread kind: Python's own
    threads by name, XLA's compute pool (`tf_XLAEigen`), and the other native threads (the
    runtime's: dispatch, transfers)."""
    python_names = {t.native_id: t.name for t in threading.enumerate()}
    ticks = os.sysconf("SC_CLK_TCK")
    totals: collections.Counter[str] = collections.Counter()
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        with contextlib.suppress(OSError):  # A thread that ended meanwhile.
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            comm = (task / "comm").read_text().strip()
            kind = python_names.get(int(task.name)) or (
                comm if comm.startswith("tf_") else "other native")
            totals[kind] += (int(fields[11]) + int(fields[12])) / ticks
    return totals


class Interleave(framework.Callback):
    """At every log: close the jaxforge block that just ended, run a hand-written block."""

    def __init__(self, hand_block: Callable[[], float]) -> None:
        self.hand_block = hand_block
        self.seconds: dict[str, list[float]] = {"hand": [], "jaxforge": []}
        self.cpu = {"hand": collections.Counter(), "jaxforge": collections.Counter()}
        self._resumed: tuple[float, collections.Counter[str]] | None = None

    def on_log(self, step: int, metrics: dict[str, float], state: Any) -> None:
        if self._resumed is None:
            self.hand_block()  # Compiles the hand-written step; the jaxforge block compiled too.
        else:
            self._record("jaxforge", *self._resumed)
            start = (time.perf_counter(), thread_cpu_seconds())
            self.hand_block()
            self._record("hand", *start)
        self._resumed = (time.perf_counter(), thread_cpu_seconds())

    def _record(self, side: str, started: float, cpu: collections.Counter[str]) -> None:
        self.seconds[side].append(time.perf_counter() - started)
        self.cpu[side].update(thread_cpu_seconds() - cpu)


def measure(case_name: str, rounds: int, block: int, steps_per_dispatch: int,
            overrides: Sequence[str] = ()) -> Interleave:
    """`rounds` paired blocks of each side: seconds, and CPU seconds by thread kind.
    `overrides` (`--config.KEY=VALUE`) change the jaxforge side, parsed and validated as
    `jaxforge train` does."""
    case = bench.ALL_CASES[case_name]
    config = bench._jax_config(case, block * (rounds + 1), steps_per_dispatch)
    config = framework.resolve_config(
        config, [f"--config.train.log_every_steps={block}", *overrides])
    interleave = Interleave(handwritten_block(case, bench._jax_config(case, 1, 1), block))
    with tempfile.TemporaryDirectory() as workdir, contextlib.redirect_stdout(io.StringIO()):
        framework.train(config, workdir, callbacks=[interleave])
    return interleave


def paired_summary(hand_seconds: list[float], jaxforge_seconds: list[float]) -> dict[str, Any]:
    """The median of the per-round ratios of steps/s (jaxforge over hand-written), their
    quartiles, and each side's median ms per step, from seconds per step of each round."""
    ratios = [h / j for h, j in zip(hand_seconds, jaxforge_seconds)]
    quartiles = statistics.quantiles(ratios, n=4)
    return {"ratio": statistics.median(ratios), "quartiles": [quartiles[0], quartiles[2]],
            "handwritten_ms": 1e3 * statistics.median(hand_seconds),
            "jaxforge_ms": 1e3 * statistics.median(jaxforge_seconds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", default="cnn@64", choices=list(bench.ALL_CASES))
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--block", type=int, default=100)
    parser.add_argument("--k", type=int, default=1, help="jaxforge's train.steps_per_dispatch")
    args, overrides = parser.parse_known_args()
    block = -(-args.block // args.k) * args.k
    measured = measure(args.case, args.rounds, block, args.k, overrides)
    seconds = {side: [s / block for s in values] for side, values in measured.seconds.items()}
    summary = paired_summary(seconds["hand"], seconds["jaxforge"])
    print(f"{args.case}, k={args.k}: {len(seconds['hand'])} rounds of {block}-step blocks, "
          "alternating in one process")
    for name, values in seconds.items():
        print(f"{name:9s} {statistics.median(values) * 1e3:8.3f} ms/step  "
              f"(blocks {min(values) * 1e3:.3f} to {max(values) * 1e3:.3f})")
    print(f"jaxforge / hand-written steps/s: median {summary['ratio']:.3f}x "
          f"(quartiles {summary['quartiles'][0]:.3f} to {summary['quartiles'][1]:.3f})")
    print("CPU ms per step by thread (all rounds)")
    steps = block * len(seconds["hand"])
    for side, cpu in measured.cpu.items():
        print(f"{side:9s} " + ", ".join(f"{kind} {seconds / steps * 1e3:.2f}"
                                        for kind, seconds in cpu.most_common() if seconds))


if __name__ == "__main__":
    main()
