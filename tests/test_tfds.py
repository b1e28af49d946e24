"""The `tfds` dataset plugin, against TFDS mock data (no network) and a missing dataset."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

import framework

pytestmark = pytest.mark.slow


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
    assert batch["inputs"].dtype == np.float32 and 0.0 <= batch["inputs"].min() <= 1.0
    assert batch["inputs"].max() <= 1.0 and batch["label"].max() < 10
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
