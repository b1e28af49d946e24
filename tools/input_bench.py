"""Input benchmark: does the TFDS/Grain pipeline slow training down?

Trains the Keras-tutorial CNN (batch 64) three times per repetition, interleaved: fed by the
`tfds` plugin (array_record files, generated here so no download is needed, read by Grain) with
its default in-memory cache and streaming from the files (`cache=False`), and fed from the same
examples held in memory by `ArraySource`. Prints the median steady-state steps/s of each and the
ratios to `ArraySource` (target >= 0.95).

    python tools/input_bench.py [--steps 600] [--repeats 3] [--examples 20000]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import tempfile
from pathlib import Path

import ml_collections
import numpy as np
import tensorflow_datasets as tfds

import framework
from framework.metrics import read_metrics
from plugins.datasets.tfds_source import ReadExamples, read_split


class BenchDigits(tfds.core.GeneratorBasedBuilder):
    """MNIST-shaped random images (28x28x1 uint8, 10 classes), stored as array_record."""

    VERSION = tfds.core.Version("1.0.0")
    NUM_EXAMPLES = 20000

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(28, 28, 1), dtype=np.uint8),
            "label": tfds.features.ClassLabel(num_classes=10)}))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(self.NUM_EXAMPLES, 0),
                "test": self._generate_examples(1000, 1)}

    def _generate_examples(self, count: int, seed: int):
        rng = np.random.default_rng(seed)
        for i in range(count):
            yield i, {"image": rng.integers(0, 256, (28, 28, 1), dtype=np.uint8),
                      "label": int(rng.integers(10))}


def _config(dataset: dict, steps: int) -> ml_collections.ConfigDict:
    return framework.resolve_config(ml_collections.ConfigDict({
        "model": {"name": "cnn"},
        "dataset": {"batch_size": 64, "eval_batch_size": 1000, **dataset},
        "train": {"num_steps": steps, "log_every_steps": 100, "eval_every_steps": 0},
        "checkpoint": {"every_steps": 0},
    }))


def _steady_steps_per_sec(workdir: Path) -> float:
    """Mean steps/s over the log intervals after the first (which includes compilation)."""
    records = read_metrics(workdir / "metrics.jsonl")
    return statistics.mean(r["steps_per_sec"] for r in records[1:])


def _in_memory_plugin(data_dir: str) -> framework.Plugin:
    """The same examples, as the `tfds` plugin gives them, read once into numpy arrays."""

    def build(config, context):
        tfds_plugin = framework.registry.load("datasets", "tfds")
        tfds_config = tfds_plugin.default_config()
        tfds_config.update({"tfds_name": "bench_digits", "data_dir": data_dir,
                            "download": False, "batch_size": 64, "eval_batch_size": 1000})
        grain = tfds_plugin.build(tfds_config, context)
        arrays = [read_split(ReadExamples(tfds.data_source("bench_digits", split=split,
                                                            data_dir=data_dir),
                                          "image", "label"), count)
                  for split, count in (("train", grain.metadata.num_train),
                                       ("test", grain.metadata.num_eval))]
        return framework.ArraySource(*arrays, grain.metadata, config, context)

    return framework.Plugin(build=build, api_version=framework.PLUGIN_API_VERSION)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--examples", type=int, default=20000)
    args = parser.parse_args()
    BenchDigits.NUM_EXAMPLES = args.examples
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = str(Path(tmp) / "tfds")
        with contextlib.redirect_stdout(io.StringIO()):
            BenchDigits(data_dir=data_dir, file_format="array_record").download_and_prepare()
        grain = {"name": "tfds", "tfds_name": "bench_digits", "data_dir": data_dir,
                 "download": False}
        rates: dict[str, list[float]] = {"grain": [], "streaming": [], "memory": []}
        with framework.registry.registered("datasets", "memory", _in_memory_plugin(data_dir)):
            for repeat in range(args.repeats):
                for name, dataset in (("grain", grain),
                                      ("streaming", {**grain, "cache": False}),
                                      ("memory", {"name": "memory"})):
                    workdir = Path(tmp) / f"{name}-{repeat}"
                    with contextlib.redirect_stdout(io.StringIO()):
                        framework.train(_config(dataset, args.steps), workdir)
                    rates[name].append(_steady_steps_per_sec(workdir))
    median = {name: statistics.median(values) for name, values in rates.items()}
    print(f"tutorial CNN, batch 64, {args.steps} steps x {args.repeats} interleaved repeats")
    labels = {"grain": "Grain, cached (default)", "streaming": "Grain, streaming files",
              "memory": "ArraySource in memory"}
    for name, label in labels.items():
        ratio = median[name] / median["memory"]
        print(f"  {label:24s} {median[name]:8.1f} steps/s  ratio {ratio:.3f}  "
              f"runs {[round(r, 1) for r in rates[name]]}")

if __name__ == "__main__":
    main()
