"""Where one train step's time goes: the bench's hand-written JAX step, or its PyTorch step.

    jax    `jax.profiler.trace` over `--steps` steps on one batch already on the device; XLA:CPU's
           op events summed over its threads and grouped by the module in each op's HLO
           `op_name` (forward or backward)
    torch  `torch.profiler` over `--steps` steps; its table of ops by self CPU time

    python tools/step_profile.py --case vit --side jax [--steps 10]
"""

from __future__ import annotations

import argparse
import collections
import glob
import re
import tempfile
import time
from typing import Any

import bench

MODULES = ("MultiHeadDotProductAttention", "attention", "MlpBlock", "mlp", "LayerNorm", "norm",
           "embedding", "head")


def module_of(op_name: str) -> str:
    """`forward attention`, `backward MlpBlock`, ...: the module an XLA op was traced from."""
    direction = "backward" if "transpose(jvp" in op_name else "forward"
    found = next((m for m in MODULES if m in op_name), None)
    return f"{direction} {found}" if found else "optimizer, loss, other"


def profile_jax(case: bench.Case, steps: int) -> None:
    import jax
    from jax.profiler import ProfileData
    source, state, step = bench.handwritten_training(case, bench._jax_config(case, 1, 1))
    batch = next(source.train_iterator())
    inputs, labels = jax.device_put(batch["inputs"]), jax.device_put(batch["label"])
    state, _ = bench.time_on_one_batch(step, list(state), inputs, labels, 3)
    state, seconds = bench.time_on_one_batch(step, state, inputs, labels, steps)
    print(f"{seconds / steps * 1e3:.1f} ms/step")
    trace_dir = tempfile.mkdtemp()
    with jax.profiler.trace(trace_dir):
        bench.time_on_one_batch(step, state, inputs, labels, steps)
    text = step.lower(*state, inputs, labels).compile().as_text()
    op_names = dict(re.findall(r"%([\w.\-]+) = .*?op_name=\"([^\"]*)\"", text))
    data = ProfileData.from_file(glob.glob(f"{trace_dir}/**/*.xplane.pb", recursive=True)[0])
    modules: collections.Counter[str] = collections.Counter()
    for plane in data.planes:
        for line in plane.lines:
            for event in line.events:
                if "XLAEigen" in line.name and event.name in op_names:
                    modules[module_of(op_names[event.name])] += event.duration_ns
    print(f"op time summed over XLA's threads: {sum(modules.values()) / steps / 1e6:.1f} ms/step")
    for module, ns in modules.most_common():
        print(f"{ns / steps / 1e6:8.2f} ms/step  {module}")


def profile_torch(case: bench.Case, steps: int) -> None:
    import torch
    from torch.profiler import ProfilerActivity, profile
    inputs, labels = bench._batches(case, 1)
    x = torch.from_numpy(inputs)
    x = x.permute(0, 3, 1, 2).contiguous() if x.ndim == 4 else x.long()
    y = torch.from_numpy(labels).long().flatten()
    model = bench._torch_model(case)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-7)

    def run(count: int) -> Any:
        for _ in range(count):
            optimizer.zero_grad(set_to_none=True)
            logits = model(x)
            torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y).backward()
            optimizer.step()

    run(3)
    start = time.perf_counter()
    run(steps)
    print(f"{(time.perf_counter() - start) / steps * 1e3:.1f} ms/step, "
          f"{torch.get_num_threads()} threads")
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run(steps)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", default="vit", choices=list(bench.ALL_CASES))
    parser.add_argument("--side", default="jax", choices=["jax", "torch"])
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    profile = profile_jax if args.side == "jax" else profile_torch
    profile(bench.ALL_CASES[args.case], args.steps)


if __name__ == "__main__":
    main()
