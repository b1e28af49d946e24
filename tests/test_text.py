"""The `text` dataset plugin: stdlib and file corpora packed into array_record, read by Grain."""

import json
import os
import shutil
import textwrap

import numpy as np
import pytest
import tensorflow_datasets as tfds

import framework
from framework import tokenizers
from framework.cli import main
from framework.registry import registry
from framework.testing import IN_PROCESS_NAME, check_plugin, tiny_config
from plugins.datasets import text

TEXT = registry.load("datasets", "text")  # The installed entry point.
STDLIB = {"max_bytes": 120_000, "seq_len": 16, "eval_fraction": 0.3}  # A few files: seconds.


def config(data_dir, batch_size=8, **fields):
    section = TEXT.default_config()
    section.update({"data_dir": str(data_dir), "batch_size": batch_size, "eval_batch_size": 6,
                    "num_threads": 2, **fields})
    TEXT.validate(section)
    return section


def source(data_dir, process_index=0, process_count=1, seed=0, **fields):
    return TEXT.build(config(data_dir, **fields),
                      framework.DataContext(seed, process_index, process_count))


def rows(batch):
    return [tuple(row) for row in batch["inputs"].tolist()]


def corpus_bytes(section, split):
    """The split's documents as the plugin concatenates them, as UTF-8 bytes."""
    documents = text.corpus(section)
    return b"".join((t + section.separator).encode() for t in documents.texts(split))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("text_cache")


@pytest.fixture
def numbered(tmp_path):
    """Ten small files whose lines say which file and line they are."""
    folder = tmp_path / "corpus"
    folder.mkdir()
    for f in range(10):
        (folder / f"doc{f}.txt").write_text("".join(f"file {f} line {n}\n" for n in range(6)))
    return folder


def test_stdlib_examples_are_shifted_token_runs_of_real_source_text(cache):
    data = source(cache, **STDLIB)
    metadata = data.metadata
    assert (metadata.input_shape, metadata.target_shape) == ((16,), (16,))
    assert (metadata.input_dtype, metadata.target_dtype, metadata.num_classes) == (
        "int32", "int32", 256)
    batch = next(data.train_iterator())
    assert batch["inputs"].dtype == batch["label"].dtype == np.int32
    np.testing.assert_array_equal(batch["inputs"][:, 1:], batch["label"][:, :-1])
    train = corpus_bytes(config(cache, **STDLIB), "train")
    for inputs, label in zip(batch["inputs"], batch["label"]):
        assert bytes([*inputs, label[-1]]) in train  # 17 consecutive bytes of the sources.
    assert "def " in TEXT.tokenizer(config(cache, **STDLIB)).decode(
        [token for row in rows_of_split(data) for token in row])


def rows_of_split(data):
    return [row.tolist() for b in data.eval_batches() for row, real in zip(b["inputs"], b["mask"])
            if real]


def split_bytes(data, split):
    """Every stored example of a split, whole (inputs and the last label), in stored order."""
    count = data.metadata.num_train if split == "train" else data.metadata.num_eval
    batch = data.read[split](np.arange(count))
    return b"".join(bytes([*inputs, label[-1]]) for inputs, label in
                    zip(batch["inputs"].tolist(), batch["label"].tolist()))


def test_stdlib_splits_by_file_with_no_overlap_the_same_everywhere(cache):
    section = config(cache, **STDLIB)
    documents = text.corpus(section)
    train, evaluation = documents.splits["train"], documents.splits["eval"]
    assert train and evaluation and not set(train) & set(evaluation)
    assert all(not os.path.isabs(name) and name.endswith(".py") for name in train + evaluation)
    assert text.corpus(section).splits == documents.splits
    held_out = corpus_bytes(section, "eval")
    for row in rows_of_split(source(cache, **STDLIB))[:20]:
        assert bytes(row) in held_out


def test_a_files_corpus_splits_the_same_wherever_it_lives(tmp_path, numbered):
    def split(folder):
        documents = text.corpus(config(tmp_path, corpus="files", files=f"{folder}/*.txt",
                                       eval_fraction=0.2))
        return {k: [os.path.basename(n) for n in v] for k, v in documents.splits.items()}

    moved = tmp_path / "elsewhere" / "corpus"
    shutil.copytree(numbered, moved)
    assert split(numbered) == split(moved)
    assert split(numbered)["eval"] and not set(split(numbered)["eval"]) & set(
        split(numbered)["train"])


def test_the_order_is_the_seeds_and_each_epoch_covers_the_train_split_once(tmp_path, numbered):
    fields = {"corpus": "files", "files": f"{numbered}/*.txt", "seq_len": 8,
              "eval_fraction": 0.2}
    data = source(tmp_path / "cache", **fields)
    num_train = data.metadata.num_train
    assert num_train >= 24
    everything = sorted(rows(data.read["train"](np.arange(num_train))))

    def stream(seed):
        iterator = source(tmp_path / "cache", seed=seed, **fields).train_iterator()
        return [r for _ in range(2 * num_train // 8 + 1) for r in rows(next(iterator))]

    first, again, other = stream(0), stream(0), stream(1)
    assert first == again and first != other
    epochs = first[:num_train], first[num_train:2 * num_train]
    assert sorted(epochs[0]) == sorted(epochs[1]) == everything
    assert epochs[0] != epochs[1]  # A new permutation each epoch.


def test_restored_iterator_continues_exactly_mid_epoch(cache):
    iterator = source(cache, **STDLIB).train_iterator()
    for _ in range(3):
        next(iterator)
    state = json.loads(json.dumps(iterator.get_state()))
    expected = [rows(next(iterator)) for _ in range(4)]
    restored = source(cache, **STDLIB).train_iterator()
    restored.set_state(state)
    assert [rows(next(restored)) for _ in range(4)] == expected


def test_two_processes_read_disjoint_halves_of_every_global_batch(cache):
    whole = source(cache, **STDLIB).train_iterator()
    shards = [source(cache, p, 2, **STDLIB).train_iterator() for p in range(2)]
    for _ in range(3):
        parts = [rows(next(shard)) for shard in shards]
        assert len(parts[0]) == len(parts[1]) == 4 and not set(parts[0]) & set(parts[1])
        assert parts[0] + parts[1] == rows(next(whole))
    evaluated = [source(cache, p, 2, **STDLIB).eval_batches() for p in range(2)]
    assert all(len(batch["mask"]) == 3 for batches in evaluated for batch in batches)


def test_a_corpus_of_many_prepared_files_reads_every_example(tmp_path, numbered):
    fields = {"corpus": "files", "files": f"{numbered}/*.txt", "seq_len": 8,
              "eval_fraction": 0.2, "records_per_file": 5}
    data = source(tmp_path / "cache", **fields)
    assert len([n for n in os.listdir(data.folder) if n.startswith("train-")]) > 2
    section = config(tmp_path, **fields)
    packed = list(text.pack(text.corpus(section).texts("train"), tokenizers.ByteTokenizer(),
                            section.separator, 9, np.dtype(np.uint8)))
    assert data.metadata.num_train == len(packed)
    stored = data.read["train"](np.arange(len(packed)))
    np.testing.assert_array_equal(stored["inputs"], np.stack(packed)[:, :-1])


def test_a_changed_corpus_is_prepared_again_and_an_unchanged_one_is_only_read(tmp_path,
                                                                              numbered):
    fields = {"corpus": "files", "files": f"{numbered}/*.txt", "seq_len": 8,
              "eval_fraction": 0.2}
    first = source(tmp_path / "cache", **fields).folder
    written = os.stat(os.path.join(first, "info.json")).st_mtime_ns
    assert source(tmp_path / "cache", **fields).folder == first
    assert os.stat(os.path.join(first, "info.json")).st_mtime_ns == written
    with open(numbered / "doc3.txt", "a") as file:
        file.write("a new line\n")
    changed = source(tmp_path / "cache", **fields)
    assert changed.folder != first
    assert b"a new line" in split_bytes(changed, "train") + split_bytes(changed, "eval")
    assert source(tmp_path / "cache", **{**fields, "seq_len": 6}).folder not in (
        first, changed.folder)


@pytest.mark.parametrize("fields, message", [
    ({"corpus": "files", "files": "nowhere/*.txt"},
     "config.dataset.files is 'nowhere/*.txt', which matches no files."),
    ({"tokenizer": "nowhere.model"},
     "config.dataset.tokenizer is 'nowhere.model': neither 'bytes' nor an existing "
     "SentencePiece .model file."),
    ({"files": "x/*.txt"}, "config.dataset.files names the corpus when corpus='files'"),
    ({"corpus": "books"}, "config.dataset.corpus must be one of stdlib, files, tfds"),
])
def test_bad_fields_are_one_config_error_before_anything_is_built(fields, message):
    experiment = tiny_config(dataset={"name": "text", **fields})
    with pytest.raises(framework.ConfigError) as error:
        framework.resolve_config(experiment)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_a_file_that_is_not_a_sentencepiece_model_is_a_config_error(tmp_path):
    bogus = tmp_path / "words.model"
    bogus.write_text("not a model")
    with pytest.raises(framework.ConfigError, match=r"^config.dataset.tokenizer is '.*words"
                       r".model', which is not a SentencePiece model \("):
        tokenizers.load(str(bogus))


EXPERIMENT = textwrap.dedent("""
    import ml_collections

    def get_config():
        return ml_collections.ConfigDict({{
            "model": {{"name": "mlp"}},
            "dataset": {{"name": "text", "corpus": "files", "files": {files!r},
                        "data_dir": {cache!r}, "seq_len": 8, "batch_size": 4}},
            "train": {{"num_steps": 4}}}})
""")


def test_an_empty_corpus_exits_2_with_one_line_before_training(tmp_path, capsys):
    for name in ("a.txt", "b.txt", "c.txt"):
        (tmp_path / name).write_text("")
    experiment = tmp_path / "lm.py"
    experiment.write_text(EXPERIMENT.format(files=f"{tmp_path}/*.txt", cache=str(tmp_path)))
    status = main(["train", "--config", str(experiment), "--workdir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert status == 2 and len(err.strip().splitlines()) == 1, err
    assert "the train split of the 'files' corpus (3 files) holds fewer than seq_len + 1 = 9 " \
           "tokens: not one example." in err
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_a_sentencepiece_model_tokenizes_the_corpus(tmp_path, numbered):
    import sentencepiece

    sample = tmp_path / "sample.txt"
    sample.write_text("".join(f"the quick brown fox {n} jumps over the lazy dog {n}\n"
                              for n in range(400)))
    prefix = str(tmp_path / "tiny")
    sentencepiece.SentencePieceTrainer.train(input=str(sample), model_prefix=prefix,
                                             vocab_size=60, model_type="unigram",
                                             minloglevel=2)
    fields = {"corpus": "files", "files": f"{numbered}/*.txt", "seq_len": 8,
              "eval_fraction": 0.2, "tokenizer": prefix + ".model"}
    data = source(tmp_path / "cache", **fields)
    tokenizer = TEXT.tokenizer(config(tmp_path, **fields))
    assert isinstance(tokenizer, tokenizers.SentencePieceTokenizer)
    assert data.metadata.num_classes == tokenizer.vocab_size == 60
    assert tokenizer.decode(tokenizer.encode("the lazy dog")) == "the lazy dog"
    assert next(data.train_iterator())["inputs"].max() < 60
    stored = data.read["train"](np.arange(data.metadata.num_train))
    assert "file 2 line 4" in tokenizer.decode(np.concatenate(
        [[*inputs, label[-1]] for inputs, label in zip(stored["inputs"], stored["label"])]))
    bytes_source = source(tmp_path / "cache", **{**fields, "tokenizer": "bytes"})
    assert bytes_source.folder != data.folder


def test_the_byte_tokenizer_round_trips_utf8_and_survives_a_cut_character():
    tokenizer = tokenizers.ByteTokenizer()
    ids = tokenizer.encode("π = 3.14")
    assert ids[:2] == list("π".encode()) and tokenizer.decode(ids) == "π = 3.14"
    assert tokenizer.decode(ids[1:]) == "\ufffd = 3.14"


class TinyText(tfds.core.GeneratorBasedBuilder):
    """Two splits of numbered sentences in a `text` feature."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
            {"text": tfds.features.Text()}))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(30, "train"),
                "test": self._generate_examples(10, "test")}

    def _generate_examples(self, count, split):
        for i in range(count):
            yield i, {"text": f"{split} sentence number {i}."}


def test_a_tfds_text_feature_goes_through_the_same_tokenisation(tmp_path):
    TinyText(data_dir=str(tmp_path / "tfds"), file_format="array_record").download_and_prepare()
    fields = {"corpus": "tfds", "tfds_name": "tiny_text", "tfds_data_dir": str(tmp_path / "tfds"),
              "seq_len": 12}
    data = source(tmp_path / "cache", **fields)
    train, evaluation = split_bytes(data, "train"), split_bytes(data, "eval")
    assert b"train sentence number 7.\n\n" in train and b"test" not in train
    assert b"test sentence number 3.\n\n" in evaluation and b"train" not in evaluation


def test_the_plugin_passes_the_dataset_conformance_checks(tmp_path):
    experiment = tiny_config(dataset={"name": IN_PROCESS_NAME, "data_dir": str(tmp_path), **STDLIB,
                                      "batch_size": 6, "eval_batch_size": 10})
    results = check_plugin("datasets", TEXT, experiment)
    assert {r.check for r in results if r.status == "pass"} >= {
        "dataset_builds", "dataset_train_batches", "dataset_eval_batches",
        "dataset_deterministic", "dataset_shards", "dataset_restorable"}


def test_register_dataset_accepts_a_tokenizer():
    with registry.isolated():
        framework.register_dataset("tokens", tokenizer=text.tokenizer)(text.build)
        plugin = registry.load("datasets", "local:tokens")
    assert plugin.tokenizer(config("unused")).vocab_size == 256
