"""ArraySource: deterministic, disjoint shards, exact resume, eval covering every example once."""

import ml_collections
import numpy as np
import pytest

import framework
from framework.data import ArraySource, CheckedIterator, batch_problem, check_batch
from framework.errors import ConfigError, JaxforgeError
from framework.plugin import DataContext, DatasetMetadata


def source(process_index=0, process_count=1, seed=0, batch_size=8, eval_batch_size=8,
           num_train=20, num_eval=21):
    train = {"inputs": np.arange(num_train, dtype=np.float32)[:, None],
             "label": np.arange(num_train, dtype=np.int32)}
    evaluation = {"inputs": np.arange(num_eval, dtype=np.float32)[:, None],
                  "label": np.arange(num_eval, dtype=np.int32)}
    metadata = DatasetMetadata((1,), 10, num_train, num_eval)
    config = ml_collections.ConfigDict({"batch_size": batch_size,
                                        "eval_batch_size": eval_batch_size})
    return ArraySource(train, evaluation, metadata, config,
                       DataContext(seed, process_index, process_count))


def take(iterator, n):
    return [next(iterator)["label"] for _ in range(n)]


def test_each_epoch_is_a_permutation_and_seeds_differ():
    labels = np.concatenate(take(source().train_iterator(), 5))  # 40 = two epochs of 20.
    assert sorted(labels[:20]) == list(range(20)) and sorted(labels[20:]) == list(range(20))
    other = np.concatenate(take(source(seed=1).train_iterator(), 5))
    assert not np.array_equal(labels, other)
    again = np.concatenate(take(source().train_iterator(), 5))
    np.testing.assert_array_equal(labels, again)


def test_process_shards_are_disjoint_and_cover_the_global_batch():
    whole = take(source(batch_size=8).train_iterator(), 6)
    shards = [take(source(p, 4, batch_size=8).train_iterator(), 6) for p in range(4)]
    for step in range(6):
        parts = [shard[step] for shard in shards]
        assert all(len(part) == 2 for part in parts)
        union = np.concatenate(parts)
        assert sorted(union) == sorted(whole[step])
        if step < 2:  # Inside the first epoch, no example can repeat: shards are disjoint.
            assert len(set(union)) == 8


def test_restored_iterator_continues_exactly():
    iterator = source().train_iterator()
    take(iterator, 3)  # Mid-epoch: 24 of 20 examples.
    state = iterator.get_state()
    expected = take(iterator, 4)
    restored = source().train_iterator()
    restored.set_state(state)
    for a, b in zip(expected, take(restored, 4)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("process_count", [1, 3])
def test_eval_counts_every_example_exactly_once(process_count):
    seen = []
    batches = 0
    for p in range(process_count):
        for batch in source(p, process_count, eval_batch_size=6).eval_batches():
            assert len(batch["label"]) == 6 // process_count  # Fixed shapes: one compilation.
            seen.extend(batch["label"][batch["mask"]].tolist())
            batches += 1
    assert sorted(seen) == list(range(21))
    assert batches == 4 * process_count  # ceil(21 / 6) per process.


def test_batch_that_does_not_split_over_processes_is_a_config_error():
    with pytest.raises(ConfigError, match="config.dataset.batch_size=9 does not split over 2"):
        source(0, 2, batch_size=9).train_iterator()


class Batches:
    def __init__(self, *batches):
        self.batches = iter(batches)

    def __next__(self):
        return next(self.batches)


@pytest.mark.parametrize("batch, problem", [
    ({"inputs": np.zeros((4, 2), np.float32), "label": np.zeros(4, np.int32)},
     "train batch['inputs'] has examples of shape (2,), but the metadata promises "
     "input_shape=(1,)."),
    ({"inputs": np.zeros((4, 1), np.float32), "label": np.arange(8, 12, dtype=np.int32)},
     "train batch['label'] has values outside [0, num_classes=10): [10 11]."),
    ({"inputs": np.zeros((4, 1), np.float64), "label": np.zeros(4, np.int32)},
     "train batch['inputs'] is float64, but the metadata promises input_dtype='float32'."),
    ({"inputs": np.zeros((4, 1), np.float32)}, "it needs `inputs` and `label`"),
    ({"inputs": np.zeros((4, 1), np.float32), "label": np.zeros(3, np.int32)},
     "train batch['label'] has shape (3,); its leading dimension must be this process's batch "
     "size 4."),
])
def test_the_loop_and_the_conformance_checks_apply_one_set_of_batch_rules(batch, problem):
    metadata = DatasetMetadata((1,), 10, 20, 20)
    assert problem in batch_problem(batch, metadata, size=4)
    with pytest.raises(JaxforgeError) as error:
        next(CheckedIterator(Batches(batch), metadata, "mine"))
    assert str(error.value).startswith("Dataset plugin 'mine' yielded a train batch that breaks "
                                       "the dataset contract: ")
    assert problem in str(error.value)


TOKENS = DatasetMetadata((3,), 5, 20, 20, input_dtype="int32", target_shape=(3,))
TOKEN_INPUTS = np.zeros((2, 3), np.int32)


@pytest.mark.parametrize("batch, problem", [
    ({"inputs": TOKEN_INPUTS, "label": np.zeros((2, 2), np.int32)},
     "train batch['label'] has examples of shape (2,), but the metadata promises "
     "target_shape=(3,)."),
    ({"inputs": TOKEN_INPUTS, "label": np.zeros((2, 3), np.float32)},
     "train batch['label'] is float32, but the metadata promises target_dtype='int32'."),
    ({"inputs": TOKEN_INPUTS, "label": np.full((2, 3), 5, np.int32)},
     "train batch['label'] has values outside [0, num_classes=5): [5]."),
    ({"inputs": TOKEN_INPUTS, "label": np.zeros((2, 3), np.int32),
      "label_mask": np.ones((2, 2), np.float32)},
     "train batch['label_mask'] is float32[2, 2]; it must be float (1 counts, 0 is padding) of "
     "the label's shape [2, 3]."),
    ({"inputs": TOKEN_INPUTS, "label": np.zeros((2, 3), np.int32),
      "label_mask": np.ones((2, 3), np.int32)}, "train batch['label_mask'] is int32[2, 3]"),
])
def test_sequence_targets_follow_the_metadata(batch, problem):
    assert problem in batch_problem(batch, TOKENS)


def test_padded_targets_may_hold_any_id():
    batch = {"inputs": TOKEN_INPUTS, "label": np.array([[1, 2, -1], [4, 0, 0]], np.int32),
             "label_mask": np.array([[1, 1, 0], [1, 1, 1]], np.float32)}
    assert batch_problem(batch, TOKENS) is None


def test_metadata_without_target_fields_checks_labels_as_before():
    """Datasets written before target_shape/target_dtype: a model's own loss may read labels of
    any shape and dtype (an autoencoder's images), so only the class range is checked."""
    metadata = DatasetMetadata((1,), 10, 20, 20)
    images = {"inputs": np.zeros((4, 1), np.float32), "label": np.zeros((4, 2, 2), np.float32)}
    assert batch_problem(images, metadata) is None


def test_eval_batches_pass_the_batch_rules():
    data = source(process_count=1)
    for batch in data.eval_batches():
        check_batch(batch, DatasetMetadata((1,), 21, 20, 21), "mine", "eval batch")


def test_eval_positions_pad_the_last_global_batch_and_mask_it():
    # 10 examples, global eval batch 4 over 2 processes: 3 batches, the last half padding.
    positions, mask = framework.eval_positions(np.arange(6), 4, 2, 1, 10)
    assert positions.tolist() == [2, 3, 6, 7, 0, 0]
    assert mask.tolist() == [True, True, True, True, False, False]
