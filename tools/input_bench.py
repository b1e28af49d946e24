"""Input benchmark: does the TFDS/Grain pipeline slow training down; how fast is the feed alone?

Training mode (the default) trains the Keras-tutorial CNN (batch 64) three times per repetition,
interleaved: fed by the `tfds` plugin (array_record files, generated here so no download is
needed, read by Grain) with its default in-memory cache and streaming from the files
(`cache=False`), and fed from the same examples held in memory by `ArraySource`. Prints the
median steady-state steps/s of each and the ratios to `ArraySource` (target >= 0.95).

    python tools/input_bench.py [--steps 600] [--repeats 3] [--examples 20000]

Feed mode (`--feed`) trains nothing: it times batches of 64 delivered to the device (each
`jax.device_put` and waited for) by the `tfds` plugin cached, streaming with reader threads, and
streaming with 1 and 2 worker processes, against the limits of the machine: a numpy copy of
contiguous batch-sized blocks of the same pixels put on the device, and the array_record files
read with no decoding. Random uint8 images, generated in a temporary directory (deleted after).

    python tools/input_bench.py --feed [--feed-shapes 28,224] [--feed-batches 200] [--repeats 3]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import io
import math
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
import psutil  # Installed with orbax-checkpoint: the CPU time of Grain's worker processes.
import tensorflow_datasets as tfds
from array_record.python.array_record_data_source import ArrayRecordDataSource

import framework
from framework.metrics import read_metrics
from plugins.datasets.tfds_source import ReadExamples, read_split


class BenchImages(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Random images of `SHAPE` (uint8, 10 classes), stored as array_record. The feed benchmark
    sets `SHAPE` and `NUM_EXAMPLES` (with `sized`) before preparing and reading it."""

    VERSION = tfds.core.Version("1.0.0")
    SHAPE: tuple[int, ...] = (224, 224, 3)
    NUM_EXAMPLES = 2000
    NUM_EVAL = 64

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            # Raw bytes: the default encoding stores uint8 as int64 varints (1.5 bytes a pixel,
            # parsed one by one), which costs more than everything else in the pipeline.
            "image": tfds.features.Tensor(shape=self.SHAPE, dtype=np.uint8,
                                          encoding=tfds.features.Encoding.BYTES),
            "label": tfds.features.ClassLabel(num_classes=10)}))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(self.NUM_EXAMPLES, 0),
                "test": self._generate_examples(self.NUM_EVAL, 1)}

    def _generate_examples(self, count: int, seed: int):
        rng = np.random.default_rng(seed)
        for i in range(count):
            yield i, {"image": rng.integers(0, 256, self.SHAPE, dtype=np.uint8),
                      "label": int(rng.integers(10))}


class BenchDigits(BenchImages, skip_registration=True):
    """MNIST-shaped random images (28x28x1 uint8, 10 classes), stored as array_record."""

    SHAPE = (28, 28, 1)
    NUM_EXAMPLES = 20000
    NUM_EVAL = 1000


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


# The feed alone: the pipeline delivering batches to the device, no training ----------------

FEED_BATCH = 64
FEED_WARMUP_BATCHES = 3  # Not timed: Grain's threads and worker processes start up here.
FEED_SHAPES = {"28": (28, 28, 1), "224": (224, 224, 3)}


def builder_for(shape: tuple[int, ...]) -> type[BenchImages]:
    """`BenchDigits` (20,000 examples by default) for 28x28x1, `BenchImages` for the rest."""
    return BenchDigits if shape == BenchDigits.SHAPE else BenchImages


def feed_shape(text: str) -> tuple[int, ...]:
    """`28` (MNIST's 28x28x1), `224` (ImageNet's 224x224x3), or any `HxWxC`."""
    return FEED_SHAPES.get(text) or tuple(int(d) for d in text.split("x"))


@contextlib.contextmanager
def sized(builder: type[BenchImages], **attributes: Any) -> Iterator[None]:
    """The builder's class attributes (`SHAPE`, `NUM_EXAMPLES`) set while the dataset is
    prepared and read (TFDS builds its features from the class), then restored."""
    saved = {name: getattr(builder, name) for name in attributes}
    for name, value in attributes.items():
        setattr(builder, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(builder, name, value)


@dataclasses.dataclass(frozen=True)
class FeedRun:
    """One timed run of a pipeline: batches delivered, bytes per example and CPU time."""

    examples_per_s: float
    bytes_per_example: float
    cpu_s_per_batch: float


@dataclasses.dataclass(frozen=True)
class FeedRow:
    """A pipeline's median over the repeats, with the spread (max - min) / median."""

    pipeline: str
    examples_per_s: float
    spread: float
    bytes_per_example: float
    cpu_s_per_batch: float
    ratio_to_raw_read: float

    @property
    def mb_per_s(self) -> float:
        return self.examples_per_s * self.bytes_per_example / 1e6


def cpu_seconds() -> float:
    """CPU time of this process over all its threads, plus that of its live child processes
    (Grain's workers), which `time.process_time` does not see."""
    total = time.process_time()
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            times = child.cpu_times()
            total += times.user + times.system
    return total


def to_device(batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """The batch on the device, its bytes really across (not merely queued)."""
    return jax.block_until_ready(jax.device_put(batch))


def time_feed(next_batch: Callable[[], float], num_batches: int, batch_size: int) -> FeedRun:
    """`next_batch()` delivers one batch and returns its bytes per example."""
    for _ in range(FEED_WARMUP_BATCHES):
        next_batch()
    start, cpu = time.perf_counter(), cpu_seconds()
    for _ in range(num_batches):
        bytes_per_example = next_batch()
    wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    return FeedRun(num_batches * batch_size / wall, bytes_per_example, cpu / num_batches)


class GrainFeed:
    """Batches of the `tfds` plugin's train iterator, each put on the device."""

    def __init__(self, source: Any) -> None:
        self.iterator = source.train_iterator()

    def __call__(self) -> float:
        batch = to_device(next(self.iterator))
        return batch["inputs"].nbytes / len(batch["inputs"])

    def close(self) -> None:
        self.iterator.close()  # Ends Grain's worker processes and reader threads.


class MemoryCopyFeed:
    """The ceiling for delivering these bytes: copy the next contiguous batch-sized block of
    the split's pixels (one numpy copy), then put it on the device."""

    def __init__(self, pixels: np.ndarray, batch_size: int) -> None:
        self.pixels, self.batch_size, self.next_start = pixels, batch_size, 0

    def __call__(self) -> float:
        start = self.next_start if self.next_start + self.batch_size <= len(self.pixels) else 0
        self.next_start = start + self.batch_size
        block = to_device(self.pixels[start:self.next_start].copy())
        return block.nbytes / self.batch_size

    def close(self) -> None:
        pass


class RawReadFeed:
    """The files read with no decoding: array_record's reader over the split's files, one
    batch-sized read of serialized records at a time in the plugin's shuffled order."""

    def __init__(self, records: Any, batch_size: int, seed: int) -> None:
        self.records, self.batch_size = records, batch_size
        self.order, self.next_start = framework.EpochOrder(len(records), seed), 0

    def __call__(self) -> float:
        positions = self.order.take(self.next_start, self.batch_size)
        self.next_start += self.batch_size
        return sum(len(r) for r in self.records.__getitems__(positions)) / self.batch_size

    def close(self) -> None:
        pass


def tfds_sources(name: str, data_dir: str, batch_size: int) -> dict[str, Any]:
    """The `tfds` plugin's cached, threaded streaming, and 1 and 2 worker pipelines."""
    plugin = framework.registry.load("datasets", "tfds")
    defaults = plugin.default_config()
    variants = {"tfds cached (default)": {},
                f"tfds streaming, {defaults.num_threads} threads": {"cache": False},
                "tfds streaming, 1 worker": {"cache": False, "num_workers": 1},
                "tfds streaming, 2 workers": {"cache": False, "num_workers": 2}}
    sources = {}
    for label, fields in variants.items():
        config = plugin.default_config()
        config.update({"tfds_name": name, "data_dir": data_dir, "download": False,
                       "batch_size": batch_size, "eval_batch_size": batch_size, **fields})
        sources[label] = plugin.build(config, framework.DataContext(0))
    return sources


def feed_pipelines(name: str, data_dir: str, batch_size: int
                   ) -> dict[str, Callable[[], Any]]:
    """Each pipeline's label -> a function that opens a fresh feed of it (one per run)."""
    train = tfds.data_source(name, split="train", data_dir=data_dir, download=False)
    pixels = read_split(ReadExamples(train, "image", "label"), len(train))["inputs"]
    records = ArrayRecordDataSource(train.dataset_info.splits["train"].file_instructions)
    pipelines = {"memory copy + device_put": lambda: MemoryCopyFeed(pixels, batch_size),
                 "array_record read, no decoding": lambda: RawReadFeed(records, batch_size, 0)}
    for label, source in tfds_sources(name, data_dir, batch_size).items():
        pipelines[label] = functools.partial(GrainFeed, source)
    return pipelines


def measure_feed(pipelines: dict[str, Callable[[], Any]], num_batches: int, repeats: int,
                 batch_size: int) -> list[FeedRow]:
    """Every pipeline timed once per repeat, interleaved; the median run of each, as a row."""
    runs: dict[str, list[FeedRun]] = {label: [] for label in pipelines}
    for _ in range(repeats):
        for label, open_feed in pipelines.items():
            feed = open_feed()
            try:
                runs[label].append(time_feed(feed, num_batches, batch_size))
            finally:
                feed.close()
    medians = {label: statistics.median(r.examples_per_s for r in rs)
               for label, rs in runs.items()}
    raw = medians["array_record read, no decoding"]
    return [FeedRow(label, medians[label],
                    (max(r.examples_per_s for r in rs) - min(r.examples_per_s for r in rs))
                    / medians[label], rs[-1].bytes_per_example,
                    statistics.median(r.cpu_s_per_batch for r in rs), medians[label] / raw)
            for label, rs in runs.items()]


def feed_rows(shape: tuple[int, ...], num_examples: int, num_batches: int, repeats: int,
              batch_size: int = FEED_BATCH) -> list[FeedRow]:
    """Generate `num_examples` random images of `shape` as array_record in a temporary
    directory (deleted after), and measure every pipeline feeding them to the device."""
    builder = builder_for(shape)
    with tempfile.TemporaryDirectory() as tmp, \
            sized(builder, SHAPE=shape, NUM_EXAMPLES=num_examples):
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            builder(data_dir=tmp, file_format="array_record").download_and_prepare()
        pipelines = feed_pipelines(builder.name, tmp, batch_size)
        return measure_feed(pipelines, num_batches, repeats, batch_size)


def print_feed_table(shape: tuple[int, ...], num_examples: int, rows: list[FeedRow]) -> None:
    stored = math.prod(shape)
    print(f"\n{'x'.join(map(str, shape))} uint8, {num_examples} examples ({stored} bytes "
          "stored per image); median (spread) over the repeats")
    print(f"  {'pipeline':32s} {'examples/s':>18s} {'MB/s':>8s} {'/raw':>6s} "
          f"{'B/example':>10s} {'CPU ms/batch':>12s}")
    for row in rows:
        rate = f"{row.examples_per_s:,.0f} ({row.spread:.0%})"
        print(f"  {row.pipeline:32s} {rate:>18s} {row.mb_per_s:8.1f} "
              f"{row.ratio_to_raw_read:6.2f} {row.bytes_per_example:10,.0f} "
              f"{row.cpu_s_per_batch * 1e3:12.2f}")


def feed_main(args: argparse.Namespace) -> None:
    print(f"the feed alone: batches of {FEED_BATCH} to {jax.devices()[0]}, "
          f"{args.feed_batches} timed batches x {args.repeats} interleaved repeats")
    for shape in map(feed_shape, args.feed_shapes.split(",")):
        num_examples = args.feed_examples or builder_for(shape).NUM_EXAMPLES
        rows = feed_rows(shape, num_examples, args.feed_batches, args.repeats)
        print_feed_table(shape, num_examples, rows)



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--examples", type=int, default=20000)
    parser.add_argument("--feed", action="store_true",
                        help="time the pipeline alone, delivering batches to the device")
    parser.add_argument("--feed-shapes", default="28,224",
                        help="image shapes: 28 (28x28x1), 224 (224x224x3) or HxWxC")
    parser.add_argument("--feed-batches", type=int, default=200,
                        help=f"timed batches per run (after {FEED_WARMUP_BATCHES} untimed)")
    parser.add_argument("--feed-examples", type=int, default=0,
                        help="examples generated per shape; 0: 20000 for 28, else 2000")
    args = parser.parse_args()
    if args.feed:
        feed_main(args)
        return
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
