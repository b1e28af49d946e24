"""Speed benchmark: jaxforge against a hand-written jit loop on the same machine, in one run.

For each case (model, batch), both sides train the same Flax module with the same optimizer on
the same synthetic MNIST-shaped data. Per-step time is the difference between a long and a short
run divided by the extra steps, so start-up, compilation and the final evaluation cancel out.
Runs are interleaved and repeated; the table shows medians and the ratio of jaxforge's
steps/s to the hand-written loop's. Start-up is measured separately.

    python tools/bench.py [--repeats 3] [--short 50] [--long 300] [--json out.json]

Keras 3 and PyTorch columns are reported only when those packages are installed.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

import framework

CASES = {  # name: (model section, input shape, batch size)
    "cnn@64": ({"name": "cnn"}, (28, 28, 1), 64),
    "cnn@512": ({"name": "cnn"}, (28, 28, 1), 512),
    "mlp@64": ({"name": "mlp"}, (28, 28, 1), 64),
    "resnet@64": ({"name": "resnet", "stage_sizes": (1, 1, 1), "width": 16}, (32, 32, 3), 64),
}


def _config(model: dict, shape: tuple, batch: int, steps: int,
            steps_per_dispatch: int) -> ml_collections.ConfigDict:
    return framework.resolve_config(ml_collections.ConfigDict({
        "model": model,
        "dataset": {"name": "synthetic", "shape": shape, "num_classes": 10,
                    "num_train": 4096, "num_eval": batch, "batch_size": batch},
        "optimizer": {"name": "adam", "learning_rate": 1e-3},
        "train": {"num_steps": steps, "log_every_steps": steps_per_dispatch * 1000,
                  "eval_every_steps": 0, "steps_per_dispatch": steps_per_dispatch},
        "checkpoint": {"every_steps": 0},
    }))


def jaxforge_seconds(model: dict, shape: tuple, batch: int, steps: int,
                     steps_per_dispatch: int) -> float:
    """Wall time of `framework.train` for `steps` steps (fresh workdir, nothing printed)."""
    config = _config(model, shape, batch, steps, steps_per_dispatch)
    with tempfile.TemporaryDirectory() as workdir, contextlib.redirect_stdout(io.StringIO()):
        start = time.perf_counter()
        framework.train(config, workdir)
        return time.perf_counter() - start


def handwritten_seconds(model: dict, shape: tuple, batch: int, steps: int) -> float:
    """A minimal hand-written loop: same module, optimizer and data; jit with donation."""
    config = _config(model, shape, batch, steps, 1)
    start = time.perf_counter()
    source = framework.registry.load("datasets", "synthetic").build(
        config.dataset, framework.DataContext(seed=0))
    module = framework.registry.load("models", config.model.name).build(
        config.model, source.metadata, jnp.float32)
    variables = module.init(jax.random.PRNGKey(0), jnp.zeros((1, *shape)), train=False)
    params, extra = variables["params"], {k: v for k, v in variables.items() if k != "params"}
    tx = optax.adam(1e-3)
    opt_state = tx.init(params)

    def step(params, opt_state, extra, inputs, labels):
        def loss_fn(params):
            logits, updates = module.apply({"params": params, **extra}, inputs, train=True,
                                           mutable=list(extra))
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
            return loss, updates

        (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates_, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates_), opt_state, {**extra, **updates}, loss

    step = jax.jit(step, donate_argnums=(0, 1, 2))
    iterator = source.train_iterator()
    for _ in range(steps):
        data = next(iterator)
        params, opt_state, extra, loss = step(params, opt_state, extra, data["inputs"],
                                              data["label"])
    jax.block_until_ready(loss)
    return time.perf_counter() - start


def per_step(run: Callable[[int], float], short: int, long: int) -> float:
    return (run(long) - run(short)) / (long - short)


def _median_rate(samples: list[float]) -> float:
    return 1.0 / statistics.median(samples)


def startup_seconds() -> dict[str, float]:
    """`jaxforge plugins list` wall time, and time to the first trained step of digits_cnn."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "framework.cli", "plugins", "list"], check=True,
                   capture_output=True)
    plugins_list = time.perf_counter() - start
    config = framework.load_config("experiments/digits_cnn.py", [
        "--config.train.num_steps=1", "--config.train.eval_every_steps=0",
        "--config.checkpoint.every_steps=0"])
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as workdir, contextlib.redirect_stdout(io.StringIO()):
        framework.train(config, workdir)
    return {"plugins_list_s": plugins_list, "first_step_s": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--short", type=int, default=50)
    parser.add_argument("--long", type=int, default=300)
    parser.add_argument("--steps_per_dispatch", type=int, default=10)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    results: dict[str, Any] = {"device": str(jax.devices()[0]), "cases": {}}
    for name in args.cases.split(","):
        model, shape, batch = CASES[name]
        k = args.steps_per_dispatch
        runs = {
            "handwritten": lambda n: handwritten_seconds(model, shape, batch, n),
            "jaxforge": lambda n: jaxforge_seconds(model, shape, batch, n, 1),
            f"jaxforge_k{k}": lambda n: jaxforge_seconds(model, shape, batch, n, k),
        }
        samples: dict[str, list[float]] = {key: [] for key in runs}
        for _ in range(args.repeats):  # Interleaved, so drift hits every side alike.
            for key, run in runs.items():
                samples[key].append(per_step(run, args.short, args.long))
        rates = {key: _median_rate(values) for key, values in samples.items()}
        results["cases"][name] = {
            "steps_per_sec": rates,
            "ratio_to_handwritten": {key: rate / rates["handwritten"]
                                     for key, rate in rates.items()},
        }
    results["startup"] = startup_seconds()
    print(f"device: {results['device']}; per-step time from ({args.long} - {args.short}) steps, "
          f"median of {args.repeats} interleaved repeats")
    columns = list(next(iter(results["cases"].values()))["steps_per_sec"])
    print(f"{'case':12s}" + "".join(f"{c:>22s}" for c in columns))
    for name, result in results["cases"].items():
        cells = [f"{result['steps_per_sec'][c]:9.1f}/s ({result['ratio_to_handwritten'][c]:.2f}x)"
                 for c in columns]
        print(f"{name:12s}" + "".join(f"{cell:>22s}" for cell in cells))
    print(f"start-up: `jaxforge plugins list` {results['startup']['plugins_list_s']:.2f} s; "
          f"digits_cnn to its first step {results['startup']['first_step_s']:.2f} s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
