"""tools/input_bench.py's feed mode: every pipeline's row, measured on tiny generated data."""

import importlib.util
import math
import sys
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "input_bench", Path(__file__).resolve().parent.parent / "tools" / "input_bench.py")
input_bench = sys.modules["input_bench"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(input_bench)

PIPELINES = ["memory copy + device_put", "array_record read, no decoding",
             "tfds cached (default)", "tfds streaming, 8 threads", "tfds streaming, 1 worker",
             "tfds streaming, 2 workers"]


def test_feed_shapes_name_the_two_benchmark_shapes_or_any_other():
    assert input_bench.feed_shape("28") == (28, 28, 1)
    assert input_bench.feed_shape("224") == (224, 224, 3)
    assert input_bench.feed_shape("32x32x3") == (32, 32, 3)


def test_sized_restores_the_builder_after():
    with input_bench.sized(input_bench.BenchImages, SHAPE=(8, 8, 3), NUM_EXAMPLES=10):
        assert input_bench.BenchImages.SHAPE == (8, 8, 3)
    assert input_bench.BenchImages.SHAPE == (224, 224, 3)
    assert input_bench.BenchImages.NUM_EXAMPLES == 2000


@pytest.mark.parametrize("shape", [(28, 28, 1), (32, 32, 3)])
def test_feed_measures_every_pipeline_delivering_the_stored_bytes(shape):
    rows = input_bench.feed_rows(shape, num_examples=100, num_batches=4, repeats=1,
                                 batch_size=16)
    by_name = {row.pipeline: row for row in rows}
    assert list(by_name) == PIPELINES
    assert all(row.examples_per_s > 0 and row.cpu_s_per_batch > 0 for row in rows)
    raw = by_name.pop("array_record read, no decoding")
    assert raw.ratio_to_raw_read == 1.0
    assert raw.bytes_per_example > math.prod(shape)  # The serialized record, label and all.
    for row in by_name.values():  # What crosses to the device is the image as stored.
        assert row.bytes_per_example == math.prod(shape), row.pipeline
        assert row.mb_per_s == pytest.approx(row.examples_per_s * math.prod(shape) / 1e6)
