"""The `tfds` dataset plugin: Grain over array_record written here, TFDS mock data, and errors."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

import framework

NUM_TRAIN, NUM_TEST = 40, 10


class TinyImages(tfds.core.GeneratorBasedBuilder):
    """A 40 + 10 example image dataset; pixel (0, 0) of example i holds i, to identify it."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(6, 6, 1), dtype=np.uint8),
            "label": tfds.features.ClassLabel(num_classes=3)}))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(NUM_TRAIN, 0),
                "test": self._generate_examples(NUM_TEST, 100)}

    def _generate_examples(self, count, first):
        rng = np.random.default_rng(first)
        for i in range(count):
            image = rng.integers(0, 255, (6, 6, 1), dtype=np.uint8)
            image[0, 0, 0] = first + i
            yield i, {"image": image, "label": i % 3}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tfds")
    TinyImages(data_dir=str(directory), file_format="array_record").download_and_prepare()
    return str(directory)


def tiny_source(data_dir, process_index=0, process_count=1, batch_size=8, **fields):
    plugin = framework.registry.load("datasets", "tfds")
    config = plugin.default_config()
    config.update({"tfds_name": "tiny_images", "data_dir": data_dir, "download": False,
                   "normalize": "none", "batch_size": batch_size, "eval_batch_size": 4,
                   "num_threads": 2, **fields})
    return plugin.build(config, framework.DataContext(0, process_index, process_count))


def ids(batch):
    return batch["inputs"][:, 0, 0, 0].astype(int).tolist()


def test_metadata_comes_from_the_dataset(data_dir):
    metadata = tiny_source(data_dir).metadata
    assert metadata.input_shape == (6, 6, 1) and metadata.num_classes == 3
    assert (metadata.num_train, metadata.num_eval) == (NUM_TRAIN, NUM_TEST)


def test_each_epoch_covers_the_split_once_shuffled_differently(data_dir):
    iterator = tiny_source(data_dir).train_iterator()
    epochs = [[i for _ in range(5) for i in ids(next(iterator))] for _ in range(2)]
    assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(NUM_TRAIN))
    assert epochs[0] != epochs[1] and epochs[0] != list(range(NUM_TRAIN))


def test_two_processes_read_disjoint_halves_of_every_global_batch(data_dir):
    whole = tiny_source(data_dir).train_iterator()
    shards = [tiny_source(data_dir, p, 2).train_iterator() for p in range(2)]
    seen = []
    for _ in range(5):  # One epoch of global batches.
        parts = [ids(next(shard)) for shard in shards]
        assert len(parts[0]) == len(parts[1]) == 4 and not set(parts[0]) & set(parts[1])
        assert parts[0] + parts[1] == ids(next(whole))
        seen += parts[0] + parts[1]
    assert sorted(seen) == list(range(NUM_TRAIN))


def test_streaming_and_cached_reading_give_the_same_batches(data_dir):
    cached = tiny_source(data_dir).train_iterator()
    streamed = tiny_source(data_dir, cache=False).train_iterator()
    for _ in range(6):
        a, b = next(cached), next(streamed)
        np.testing.assert_array_equal(a["inputs"], b["inputs"])
        np.testing.assert_array_equal(a["label"], b["label"])
    evaluated = [tiny_source(data_dir, cache=c).eval_batches() for c in (True, False)]
    for a, b in zip(*evaluated):
        np.testing.assert_array_equal(a["inputs"], b["inputs"])
        np.testing.assert_array_equal(a["mask"], b["mask"])


def test_data_dir_on_gs_reads_the_same_batches(data_dir, jaxforge_gcs_bucket):
    """array_record files in a bucket (`dataset.data_dir=gs://...`), read by Grain through
    array_record's own Cloud Storage reader, as the local copy: cached, and streamed (eval
    only here: an endless streamed train iterator keeps reading ahead in threads, which would
    outlive the emulator at the end of the session)."""
    from pathlib import Path

    from etils import epath

    for file in Path(data_dir).rglob("*"):
        if file.is_file():
            target = epath.Path(jaxforge_gcs_bucket) / file.relative_to(data_dir).as_posix()
            target.write_bytes(file.read_bytes())
    local, remote = tiny_source(data_dir), tiny_source(jaxforge_gcs_bucket)
    assert remote.metadata == local.metadata
    batches = [remote.train_iterator(), local.train_iterator()]
    for _ in range(6):  # More than an epoch.
        assert ids(next(batches[0])) == ids(next(batches[1]))
    streamed = tiny_source(jaxforge_gcs_bucket, cache=False)
    assert ([ids(b) for b in streamed.eval_batches()] == [ids(b) for b in remote.eval_batches()]
            == [ids(b) for b in local.eval_batches()])


@pytest.mark.parametrize("num_workers, cache", [(0, True), (2, False)])
def test_restored_iterator_continues_exactly_mid_epoch(data_dir, num_workers, cache):
    iterator = tiny_source(data_dir, num_workers=num_workers, cache=cache).train_iterator()
    for _ in range(3):  # 24 of 40 examples: mid-epoch.
        next(iterator)
    state = iterator.get_state()
    expected = [ids(next(iterator)) for _ in range(4)]  # Crosses into the next epoch.
    restored = tiny_source(data_dir, num_workers=num_workers, cache=cache).train_iterator()
    restored.set_state(state)
    assert [ids(next(restored)) for _ in range(4)] == expected


def test_eval_covers_every_example_once_over_processes(data_dir):
    seen = []
    for process in range(2):
        for batch in tiny_source(data_dir, process, 2).eval_batches():
            assert len(batch["label"]) == 2
            seen += [i for i, real in zip(ids(batch), batch["mask"]) if real]
    assert sorted(seen) == list(range(100, 100 + NUM_TEST))


@pytest.mark.slow
def test_training_resumes_from_the_saved_data_position(data_dir, tmp_path, tiny):
    def config(num_steps):
        return framework.resolve_config(tiny(
            dataset={"name": "tfds", "tfds_name": "tiny_images", "data_dir": data_dir,
                     "download": False, "batch_size": 8, "eval_batch_size": 8},
            model={"name": "cnn", "conv_features": (4,), "dense_features": (8,)},
            train={"num_steps": num_steps, "log_every_steps": 4, "eval_every_steps": 12},
            checkpoint={"every_steps": 4}))

    assert framework.train(config(8), tmp_path / "resumed")["steps"] == 8  # Mid-epoch 2.
    resumed = framework.train(config(12), tmp_path / "resumed", allow_config_change=True)
    straight = framework.train(config(12), tmp_path / "straight")
    assert resumed["resumed_from_step"] == 8
    assert resumed["final"]["eval/loss"] == pytest.approx(straight["final"]["eval/loss"],
                                                          rel=1e-6)


@pytest.mark.slow
def test_mnist_experiment_trains_on_tfds_mock_data(tmp_path):
    with tfds.testing.mock_data(num_examples=128):
        config = framework.load_config("experiments/mnist_cnn.py", [
            "--config.train.num_steps=8", "--config.train.log_every_steps=4",
            "--config.train.eval_every_steps=8", "--config.checkpoint.every_steps=8",
            "--config.dataset.eval_batch_size=64"])
        source = framework.registry.load("datasets", "tfds").build(
            config.dataset, framework.DataContext(seed=0))
        summary = framework.train(config, tmp_path)
    assert source.metadata.input_shape == (28, 28, 1) and source.metadata.num_classes == 10
    assert source.metadata.num_train == 128 and source.metadata.num_eval == 128
    batch = next(source.train_iterator())
    assert batch["inputs"].dtype == np.uint8 and batch["inputs"].shape == (64, 28, 28, 1)
    assert batch["label"].max() < 10
    assert summary["steps"] == 8 and np.isfinite(summary["final"]["eval/loss"])


def test_unreadable_dataset_says_how_to_prepare_it(tmp_path):
    config = framework.resolve_config(framework.load_config("experiments/mnist_cnn.py", [
        f"--config.dataset.data_dir={tmp_path}", "--config.dataset.download=false"]))
    with pytest.raises(framework.JaxforgeError) as error:
        framework.train(config, tmp_path / "run")
    message = str(error.value)
    assert "Cannot read TFDS dataset 'mnist' split 'train'" in message
    assert "tfds build mnist --file_format=array_record --data_dir DIR" in message
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_batches_hold_the_stored_uint8_pixels_and_say_how_to_normalise_them(data_dir):
    source = tiny_source(data_dir, normalize="mean_std", mean=(0.5,), std=(0.25,))
    assert source.metadata.input_dtype == "uint8"
    assert source.metadata.normalize == framework.InputNormalization(mean=(0.5,), std=(0.25,))
    for cache in (True, False):  # What crosses to the device: the stored bytes.
        source = tiny_source(data_dir, cache=cache)
        assert next(source.train_iterator())["inputs"].dtype == np.uint8
        assert next(source.eval_batches())["inputs"].dtype == np.uint8


def test_the_same_examples_in_memory_give_the_same_batches(data_dir):
    from plugins.datasets.tfds_source import ReadExamples, read_split

    source = tiny_source(data_dir)
    arrays = [read_split(ReadExamples(tfds.data_source("tiny_images", split=split,
                                                       data_dir=data_dir), "image", "label"),
                         count) for split, count in (("train", NUM_TRAIN), ("test", NUM_TEST))]
    config = framework.fields(batch_size=(8, ""), eval_batch_size=(4, ""))
    memory = framework.ArraySource(*arrays, source.metadata, config, framework.DataContext(0))
    grain, in_memory = source.train_iterator(), memory.train_iterator()
    for _ in range(7):  # Into the second epoch.
        a, b = next(grain), next(in_memory)
        np.testing.assert_array_equal(a["inputs"], b["inputs"])
        np.testing.assert_array_equal(a["label"], b["label"])


@pytest.fixture(scope="module")
def uint8_and_float_runs(data_dir, tmp_path_factory):
    """The same training twice: pixels as stored, normalised in the compiled steps (tfds), and
    the same examples normalised on the host as float32 (an in-memory dataset), as before."""
    from framework.testing import tiny_config
    from plugins.datasets.tfds_source import ReadExamples, read_split
    from tests.test_normalization import host_float_path

    fields = {"tfds_name": "tiny_images", "data_dir": data_dir, "download": False,
              "normalize": "mean_std", "mean": (0.45,), "std": (0.27,), "batch_size": 8,
              "eval_batch_size": 8}

    def host_floats(config, context):
        splits = []
        for split, count in (("train", NUM_TRAIN), ("test", NUM_TEST)):
            arrays = read_split(ReadExamples(tfds.data_source("tiny_images", split=split,
                                                              data_dir=data_dir),
                                             "image", "label"), count)
            splits.append({**arrays, "inputs": host_float_path(arrays["inputs"], "mean_std",
                                                               (0.45,), (0.27,))})
        metadata = framework.DatasetMetadata((6, 6, 1), 3, NUM_TRAIN, NUM_TEST)
        return framework.ArraySource(*splits, metadata, config, context)

    def run(name, dataset):
        config = framework.resolve_config(tiny_config(
            dataset=dataset, model={"name": "cnn", "conv_features": (4,), "dense_features": (8,)},
            augmentations={"flip": {}},
            train={"num_steps": 10, "log_every_steps": 5, "eval_every_steps": 10},
            checkpoint={"every_steps": 10}))
        workdir = tmp_path_factory.mktemp(name)
        return framework.train(config, workdir), workdir

    plugin = framework.Plugin(build=host_floats, api_version=framework.PLUGIN_API_VERSION,
                              default_config=lambda: framework.registry.load(
                                  "datasets", "tfds").default_config())
    with framework.registry.registered("datasets", "host_floats", plugin):
        yield {"uint8": run("uint8", {"name": "tfds", **fields}),
                "float": run("float", {"name": "host_floats", **fields})}


def test_training_on_stored_pixels_equals_training_on_host_floats(uint8_and_float_runs):
    from framework.metrics import read_metrics

    uint8, floats = (uint8_and_float_runs[k] for k in ("uint8", "float"))
    for key in ("eval/loss", "eval/accuracy"):
        assert uint8[0]["final"][key] == pytest.approx(floats[0]["final"][key], rel=1e-5)
    logged = [[r["train/loss"] for r in read_metrics(run[1] / "metrics.jsonl")
               if "train/loss" in r] for run in (uint8, floats)]
    assert len(logged[0]) == 2 and logged[0] == pytest.approx(logged[1], rel=1e-5)


def test_predict_export_and_evaluate_agree_on_stored_pixels(uint8_and_float_runs):
    from framework.export import export_model

    workdir = uint8_and_float_runs["uint8"][1]
    loaded = framework.load(workdir)
    inputs, labels = loaded.eval_split()
    assert inputs.dtype == np.uint8 and loaded.metadata.input_dtype == "uint8"
    logits = loaded.predict(inputs)
    accuracy = float(np.mean(np.argmax(logits, -1) == labels))
    assert accuracy == pytest.approx(framework.evaluate(workdir)["eval/accuracy"])
    exported = export_model(loaded)
    assert exported.in_avals[0].dtype == np.uint8
    np.testing.assert_allclose(np.asarray(exported.call(inputs)), logits, rtol=1e-5, atol=1e-5)
    host = framework.load(uint8_and_float_runs["float"][1])  # Floats normalised on the host.
    host_inputs, _ = host.eval_split()
    np.testing.assert_allclose(host.predict(host_inputs), logits, rtol=1e-4, atol=1e-4)


def test_a_model_on_stored_pixels_passes_the_model_conformance_checks(data_dir):
    from framework.testing import check_plugin, tiny_config

    experiment = tiny_config(
        dataset={"name": "tfds", "tfds_name": "tiny_images", "data_dir": data_dir,
                 "download": False, "batch_size": 8, "eval_batch_size": 4},
        model={"name": "cnn", "conv_features": (4,), "dense_features": (8,)})
    model = framework.registry.load("models", "cnn")  # Built for float inputs, fed uint8 data.
    results = check_plugin("models", model, experiment)
    assert results and all(r.status != "fail" for r in results)
