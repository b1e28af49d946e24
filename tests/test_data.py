"""ArraySource: deterministic, disjoint shards, exact resume, eval covering every example once."""

import ml_collections
import numpy as np
import pytest

from framework.data import ArraySource
from framework.errors import ConfigError
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
