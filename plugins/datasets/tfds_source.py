"""Any TensorFlow Datasets dataset by name, streamed by Grain from TFDS's array_record files.

No TensorFlow needed: `tfds.data_source` gives random access to the prepared array_record files,
and a Grain pipeline reads them with a global shuffle (a new permutation each epoch), per-process
sharding (process p reads its slice of every global batch), background threads or worker
processes, and an iterator whose position is saved in every checkpoint, so a resumed run reads
exactly the batches it would have read. Splits that fit in memory are decoded once and cached
(`cache`); larger ones are streamed from the files. Input shape and number of classes come from the
dataset's `DatasetInfo`; split sizes from the prepared files.

`data_dir` may be a bucket (`gs://BUCKET/tensorflow_datasets`): array_record reads the files
through its own Cloud Storage client (credentials from the environment, as on a TPU VM).

Without network access, prepare the dataset once elsewhere
(`tfds build NAME --file_format=array_record --data_dir DIR`) and pass `data_dir`. A dataset
prepared only as tfrecord is read through `tfds.load` into memory when TensorFlow is installed
(`pip install jaxforge[tf]`).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from typing import Any

import ml_collections
import numpy as np

import framework
from plugins.datasets import grain_reading

NORMALIZATIONS = ("unit", "mean_std", "none")


def default_config() -> ml_collections.ConfigDict:
    return framework.fields(
        tfds_name=("mnist", "The TFDS dataset, e.g. mnist, fashion_mnist, cifar10; "
                            "\"name:version\" works too."),
        data_dir=("", "Where TFDS keeps prepared datasets, a directory or gs:// URL; empty: "
                      "TFDS's default (~/tensorflow_datasets or $TFDS_DATA_DIR)."),
        download=(True, "Download and prepare (as array_record) when not there yet."),
        train_split=("train", "The train split: any TFDS split expression, e.g. "
                              "\"train[:90%]\"."),
        eval_split=("test", "The eval split: any TFDS split expression."),
        image_key=("image", "The feature read as the inputs."),
        label_key=("label", "The feature read as the integer label."),
        normalize=("unit", "none | unit: pixels / 255 | mean_std: (pixels / 255 - mean) / std."),
        mean=((0.0,), "Per channel (or one value), for normalize=\"mean_std\"."),
        std=((1.0,), "Per channel (or one value, as many as mean), for "
                     "normalize=\"mean_std\"."),
        shuffle=(True, "A global shuffle of the train split, different each epoch."),
        cache=(True, "Decode each split once into memory; False streams from the files."),
        num_workers=(0, "Grain worker processes; 0 reads in background threads."),
        num_threads=(8, "Reader threads per process (or per worker) when streaming."),
    )


def validate(config: ml_collections.ConfigDict) -> None:
    framework.check(bool(config.tfds_name), "tfds_name", "must name a TFDS dataset, e.g. 'mnist'.")
    framework.check(config.normalize in NORMALIZATIONS, "normalize",
                    f"must be one of {', '.join(NORMALIZATIONS)}, got {config.normalize!r}.")
    framework.check(len(config.mean) == len(config.std) and all(s > 0 for s in config.std),
                    "std", f"must be positive, one per mean value; got mean={config.mean}, "
                    f"std={config.std}.")
    framework.check(config.num_workers >= 0, "num_workers",
                    f"must be >= 0, got {config.num_workers}.")
    framework.check(config.num_threads >= 1, "num_threads",
                    f"must be >= 1, got {config.num_threads}.")


def normalization(config: ml_collections.ConfigDict) -> framework.InputNormalization:
    """What `normalize`, `mean` and `std` ask for, applied on the device to the stored pixels."""
    if config.normalize == "none":
        return framework.InputNormalization(scale=1.0)
    if config.normalize == "unit":
        return framework.InputNormalization()
    return framework.InputNormalization(mean=tuple(config.mean), std=tuple(config.std))


class ReadExamples:
    """A batch of indices -> that batch as stored (`inputs` the image's dtype, `label` int32):
    one read of the TFDS files for the whole batch, then two stacks (picklable for workers)."""

    def __init__(self, source: Any, image_key: str, label_key: str) -> None:
        self.source, self.image_key, self.label_key = source, image_key, label_key

    def __call__(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        keys = [int(i) for i in indices]
        try:  # One read for the batch: about a third faster than one read per example.
            examples = self.source.__getitems__(keys)
        except TypeError:  # `tfds.testing.mock_data`'s sources read one example at a time only.
            examples = [self.source[key] for key in keys]
        return {"inputs": np.stack([e[self.image_key] for e in examples]),
                "label": np.asarray([e[self.label_key] for e in examples], np.int32)}


class GatherBatch:
    """A batch of indices -> those rows of in-memory arrays (picklable for workers)."""

    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        self.arrays = arrays

    def __call__(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        return {key: value[indices] for key, value in self.arrays.items()}


def read_split(read: ReadExamples, num_examples: int, chunk: int = 1024
               ) -> dict[str, np.ndarray]:
    """A whole split as one contiguous array per key, read `chunk` examples at a time."""
    parts = [read(np.arange(start, min(start + chunk, num_examples)))
             for start in range(0, num_examples, chunk)]
    return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}


class GrainSource:
    """The `DataSource` of a TFDS dataset read through Grain.

    With `cache` (the default) each split is decoded once into memory and every batch is one
    vectorised gather; without it, every example is read and decoded from the files each epoch
    (for datasets larger than memory; add worker processes then). Both give the same batches.
    """

    def __init__(self, train: Any, evaluation: Any, config: ml_collections.ConfigDict,
                 context: framework.DataContext) -> None:
        self._config, self._context = config, context
        self._num_train, self._num_eval = len(train), len(evaluation)
        self._eval_batch_size = config.eval_batch_size or config.batch_size
        features = train.dataset_info.features
        shape = tuple(features[config.image_key].shape)
        if any(d is None for d in shape):
            raise framework.JaxforgeError(
                f"TFDS {config.tfds_name!r} has images of varying size {shape}; the tfds plugin "
                "needs a fixed image size (resize the dataset, or write a dataset plugin).")
        self.metadata = framework.DatasetMetadata(
            input_shape=shape, num_classes=features[config.label_key].num_classes,
            num_train=len(train), num_eval=len(evaluation),
            input_dtype=np.dtype(features[config.image_key].np_dtype).name,
            normalize=normalization(config))
        self._read_train = self._reader(train)
        self._read_eval = self._reader(evaluation)

    def _num_threads(self) -> int:
        """Reading from memory needs one thread; reading from the files, several."""
        return self._config.num_threads if not self._config.cache else 1

    def _reader(self, source: Any) -> GatherBatch | ReadExamples:
        """How a batch of indices becomes a batch: a gather from memory, or reads from files."""
        read = ReadExamples(source, self._config.image_key, self._config.label_key)
        return GatherBatch(read_split(read, len(source))) if self._config.cache else read

    def train_iterator(self) -> framework.TrainIterator:
        return grain_reading.train_iterator(
            self._num_train, self._read_train, self._config.batch_size, self._context,
            shuffle=self._config.shuffle, num_threads=self._num_threads(),
            num_workers=self._config.num_workers)

    def eval_batches(self) -> Iterator[dict[str, np.ndarray]]:
        return grain_reading.eval_batches(self._num_eval, self._read_eval,
                                          self._eval_batch_size, self._context,
                                          num_threads=self._num_threads())


def _unreadable(name: str, data_dir: str, split: str, error: Exception,
                data_dir_key: str = "data_dir") -> framework.JaxforgeError:
    where = data_dir or "TFDS's default data_dir"
    return framework.JaxforgeError(
        f"Cannot read TFDS dataset {name!r} split {split!r} from {where} "
        f"({type(error).__name__}: {error}). jaxforge reads TFDS data as array_record without "
        f"TensorFlow. Prepare it where there is network access: `tfds build {name} "
        "--file_format=array_record --data_dir DIR`, then pass "
        f"--config.dataset.{data_dir_key}=DIR. "
        "A dataset prepared as tfrecord is read when TensorFlow is installed: "
        "pip install 'jaxforge[tf]'.")


def data_source(name: str, split: str, data_dir: str, data_dir_key: str = "data_dir") -> Any:
    """The random-access source of one prepared split (array_record), without downloading;
    a JaxforgeError that says how to prepare it if it cannot be read."""
    import tensorflow_datasets as tfds

    try:
        return tfds.data_source(name, split=split, data_dir=data_dir or None, download=False)
    except Exception as error:
        raise _unreadable(name, data_dir, split, error, data_dir_key) from error


def _in_memory_with_tensorflow(config: ml_collections.ConfigDict,
                               context: framework.DataContext) -> framework.ArraySource:
    """tfrecord-only datasets: `tfds.load` whole splits into memory (needs the `tf` extra)."""
    import tensorflow_datasets as tfds

    splits, builder = [], tfds.builder(config.tfds_name, data_dir=config.data_dir or None)
    for split in (config.train_split, config.eval_split):
        arrays = tfds.as_numpy(tfds.load(config.tfds_name, split=split, batch_size=-1,
                                         data_dir=config.data_dir or None,
                                         download=config.download))
        splits.append({"inputs": np.asarray(arrays[config.image_key]),
                       "label": np.asarray(arrays[config.label_key], np.int32)})
    train, evaluation = splits
    metadata = framework.DatasetMetadata(
        input_shape=train["inputs"].shape[1:],
        num_classes=builder.info.features[config.label_key].num_classes,
        num_train=len(train["label"]), num_eval=len(evaluation["label"]),
        input_dtype=train["inputs"].dtype.name, normalize=normalization(config))
    return framework.ArraySource(train, evaluation, metadata, config, context)


def build(config: ml_collections.ConfigDict, context: framework.DataContext) -> Any:
    import tensorflow_datasets as tfds

    sources = []
    for split in (config.train_split, config.eval_split):
        try:
            sources.append(tfds.data_source(config.tfds_name, split=split,
                                            data_dir=config.data_dir or None,
                                            download=config.download))
        except Exception as error:
            if importlib.util.find_spec("tensorflow") is not None:
                try:
                    return _in_memory_with_tensorflow(config, context)
                except Exception as tf_error:
                    raise _unreadable(config.tfds_name, config.data_dir, split,
                                      tf_error) from tf_error
            raise _unreadable(config.tfds_name, config.data_dir, split, error) from error
    return GrainSource(*sources, config, context)


plugin = framework.Plugin(build=build, default_config=default_config, validate=validate,
                          api_version=1, description=__doc__.splitlines()[0])
