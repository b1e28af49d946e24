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
    assert batch["inputs"].dtype == np.float32 and batch["inputs"].shape == (64, 28, 28, 1)
    assert batch["inputs"].min() >= 0.0 and batch["inputs"].max() <= 1.0
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
