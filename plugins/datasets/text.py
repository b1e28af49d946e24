"""Text as next-token sequences: local files, the Python standard library, or a TFDS text feature.

Documents are tokenised (UTF-8 bytes by default, or a SentencePiece model), each followed by a
separator, concatenated, and cut into examples of seq_len + 1 tokens: `inputs` the first seq_len,
`label` the last seq_len (the next token at every position). The examples are written once as
array_record files under `data_dir`, in a folder named by a fingerprint of the documents (path,
size and modification time of every file), the tokenizer and the packing, so a changed corpus is
prepared again and an unchanged one is only read. Grain reads them with a new permutation each
epoch, per-process sharding and an exact resume position, as the `tfds` plugin does; nothing is
held in memory, so a corpus larger than memory works.

The default corpus needs no download: the `.py` files of the standard library of the Python that
runs jaxforge, split into train and eval by file, by a hash of each file's relative path.
"""

from __future__ import annotations

import glob
import hashlib
import itertools
import json
import os
import shutil
import sysconfig
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

import ml_collections
import numpy as np

import framework
from framework import tokenizers
from plugins.datasets import grain_reading

CORPORA = ("stdlib", "files", "tfds")
PREPARED_VERSION = 1  # Bump when the prepared files' layout or packing changes.
NOT_STDLIB = ("site-packages", "dist-packages")  # Installed packages live inside the stdlib dir.


def default_config() -> ml_collections.ConfigDict:
    return framework.fields(
        corpus=("stdlib", "stdlib: the .py files of Python's standard library (every machine "
                          "with Python has them) | files: the `files` glob(s) | tfds: the "
                          "`text_key` feature of the TFDS dataset `tfds_name`."),
        files=("", "corpus=files: glob(s) of UTF-8 text files, comma-separated; `**` matches "
                   "any folders."),
        eval_files=("", "Glob(s) of the eval files (corpus=files); empty: a fraction "
                        "`eval_fraction` of the corpus's files, chosen by a hash of each path."),
        eval_fraction=(0.05, "Without eval_files: the share of files that are eval files."),
        max_files=(0, "Read only the first this many files, in path order (of `files` and of "
                      "`eval_files` each); 0: all. For tests and quick runs."),
        max_bytes=(0, "Stop adding files once they hold this many bytes; 0: no limit."),
        tokenizer=("bytes", "bytes: ids are UTF-8 bytes (vocabulary 256) | the path of a "
                            "SentencePiece .model file."),
        seq_len=(256, "Tokens per example; each example is seq_len + 1 consecutive tokens, "
                      "inputs the first seq_len, label the last seq_len."),
        separator=("\n\n", "Text after every document (file) before the next one."),
        data_dir=("", "Where the prepared array_record files go; empty: jaxforge/text in the "
                      "user's cache folder ($XDG_CACHE_HOME, else ~/.cache)."),
        records_per_file=(65536, "Examples per prepared array_record file."),
        max_eval_examples=(0, "Evaluate on the first this many eval examples; 0: all."),
        shuffle=(True, "A global shuffle of the train examples, different each epoch."),
        num_threads=(4, "Reader threads per process."),
        tfds_name=("", "corpus=tfds: the TFDS dataset, e.g. \"lm1b\"; prepared as "
                       "array_record (the tfds plugin's docs say how)."),
        tfds_data_dir=("", "corpus=tfds: where TFDS keeps prepared datasets; empty: TFDS's "
                           "default."),
        text_key=("text", "corpus=tfds: the feature holding each document's text."),
        train_split=("train", "corpus=tfds: the train split (a TFDS split expression)."),
        eval_split=("test", "corpus=tfds: the eval split (a TFDS split expression)."),
    )


def _globs(spec: str) -> list[str]:
    return [pattern.strip() for pattern in spec.split(",") if pattern.strip()]


def _matches(spec: str) -> list[str]:
    """The files the comma-separated globs match, sorted, each once."""
    paths = {path for pattern in _globs(spec) for path in glob.glob(pattern, recursive=True)}
    return sorted(path for path in paths if os.path.isfile(path))


def _glob_root(pattern: str) -> str:
    """The folder a glob starts from: its leading path parts without wildcards."""
    parts = pattern.replace(os.sep, "/").split("/")[:-1]
    fixed = itertools.takewhile(lambda part: not any(c in part for c in "*?["), parts)
    return "/".join(fixed) or "."


def _split_keys(paths: list[str], spec: str) -> dict[str, str]:
    """Each path relative to the folder its glob starts from: what decides its split, so that
    the split does not depend on where the corpus folder is."""
    roots = [_glob_root(pattern) for pattern in _globs(spec)]
    keys = {}
    for path in paths:
        root = next((r for r in roots if not os.path.relpath(path, r).startswith("..")), ".")
        keys[path] = os.path.relpath(path, root)
    return keys


def _check_globs(config: ml_collections.ConfigDict, section: str = "") -> None:
    """Each glob field matches a file (`section`: the key's prefix outside `validate`)."""
    for key in ("files", "eval_files"):
        if config[key]:
            framework.check(bool(_matches(config[key])), section + key,
                            f"is {config[key]!r}, which matches no files.")


def validate(config: ml_collections.ConfigDict) -> None:
    framework.check(config.corpus in CORPORA, "corpus",
                    f"must be one of {', '.join(CORPORA)}, got {config.corpus!r}.")
    framework.check(bool(config.files) == (config.corpus == "files"), "files",
                    "names the corpus when corpus='files', and only then; got corpus="
                    f"{config.corpus!r}, files={config.files!r}.")
    framework.check(not config.eval_files or config.corpus == "files", "eval_files",
                    "is for corpus='files' only.")
    framework.check(bool(config.tfds_name) == (config.corpus == "tfds"), "tfds_name",
                    "names the dataset when corpus='tfds', and only then; got corpus="
                    f"{config.corpus!r}, tfds_name={config.tfds_name!r}.")
    framework.check(0 < config.eval_fraction < 1, "eval_fraction",
                    f"must be in (0, 1), got {config.eval_fraction}.")
    framework.check(config.seq_len >= 1, "seq_len", f"must be >= 1, got {config.seq_len}.")
    for key in ("max_files", "max_bytes", "max_eval_examples"):
        framework.check(config[key] >= 0, key, f"must be >= 0 (0: no limit), got {config[key]}.")
    for key in ("records_per_file", "num_threads"):
        framework.check(config[key] >= 1, key, f"must be >= 1, got {config[key]}.")
    _check_globs(config)
    tokenizers.load(config.tokenizer, key="tokenizer")


def tokenizer(config: ml_collections.ConfigDict) -> tokenizers.Tokenizer:
    """The dataset's tokenizer (for generation), from its config alone."""
    return tokenizers.load(config.tokenizer)


# The documents ---------------------------------------------------------------------------------


def _hash_fraction(name: str) -> float:
    """A stable number in [0, 1) for a path: the same split on every machine and run."""
    portable = name.replace(os.sep, "/").encode()
    return int(hashlib.sha256(portable).hexdigest()[:12], 16) / 16 ** 12


def _capped(paths: list[str], config: ml_collections.ConfigDict) -> list[str]:
    """The first paths within max_files and max_bytes."""
    if config.max_files:
        paths = paths[:config.max_files]
    if not config.max_bytes:
        return paths
    kept, total = [], 0
    for path in paths:
        if total >= config.max_bytes:
            break
        kept.append(path)
        total += os.path.getsize(path)
    return kept


def stdlib_files() -> tuple[str, list[str]]:
    """The standard library's folder and its .py files, relative to it, sorted."""
    root = sysconfig.get_paths()["stdlib"]
    names = glob.glob("**/*.py", root_dir=root, recursive=True)
    return root, sorted(name for name in names
                        if not set(name.split(os.sep)[:-1]) & set(NOT_STDLIB))


class FileCorpus:
    """Documents that are files: `names` relative to `root`, split into train and eval."""

    def __init__(self, root: str, train: list[str], evaluation: list[str]) -> None:
        self.root, self.splits = root, {"train": train, "eval": evaluation}

    def identity(self) -> dict[str, Any]:
        """Path, size and modification time of every file: a changed file changes it."""
        def stamp(name: str) -> list[Any]:
            status = os.stat(os.path.join(self.root, name))
            return [name, status.st_size, status.st_mtime_ns]
        return {split: [stamp(name) for name in names] for split, names in self.splits.items()}

    def describe(self, split: str) -> str:
        return f"{len(self.splits[split])} files"

    def texts(self, split: str) -> Iterator[str]:
        for name in self.splits[split]:
            with open(os.path.join(self.root, name), encoding="utf-8", errors="replace") as file:
                yield file.read()


def _split_by_hash(names: list[str], fraction: float, keys: dict[str, str] | None = None
                   ) -> tuple[list[str], list[str]]:
    """(train, eval): a name is eval when the hash of its key (the name itself, by default) is
    below `fraction`."""
    keys = keys or {name: name for name in names}
    evaluation = [name for name in names if _hash_fraction(keys[name]) < fraction]
    chosen = set(evaluation)
    return [name for name in names if name not in chosen], evaluation


def file_corpus(config: ml_collections.ConfigDict) -> FileCorpus:
    """The corpus's files, capped, split into train and eval by file."""
    if config.corpus == "stdlib":
        root, names = stdlib_files()
        root_names = [os.path.join(root, name) for name in names]
        names = [os.path.relpath(path, root) for path in _capped(root_names, config)]
        return FileCorpus(root, *_split_by_hash(names, config.eval_fraction))
    _check_globs(config, "dataset.")
    names = _capped(_matches(config.files), config)
    if not config.eval_files:
        keys = _split_keys(names, config.files)
        return FileCorpus("", *_split_by_hash(names, config.eval_fraction, keys))
    evaluation = _capped(_matches(config.eval_files), config)
    chosen = set(evaluation)
    return FileCorpus("", [name for name in names if name not in chosen], evaluation)


class TfdsCorpus:
    """Documents that are the `text_key` feature of a TFDS dataset's records."""

    def __init__(self, config: ml_collections.ConfigDict) -> None:
        from plugins.datasets import tfds_source

        self.config = config
        self.sources = {split: tfds_source.data_source(config.tfds_name, name,
                                                       config.tfds_data_dir, "tfds_data_dir")
                        for split, name in (("train", config.train_split),
                                            ("eval", config.eval_split))}

    def identity(self) -> dict[str, Any]:
        info = self.sources["train"].dataset_info
        return {"tfds": [self.config.tfds_name, str(info.version), self.config.text_key,
                         self.config.train_split, self.config.eval_split,
                         {split: len(source) for split, source in self.sources.items()}]}

    def describe(self, split: str) -> str:
        return f"{len(self.sources[split])} records"

    def texts(self, split: str) -> Iterator[str]:
        for record in self.sources[split]:
            text = record[self.config.text_key]
            yield text.decode("utf-8", errors="replace") if isinstance(text, bytes) else text


def corpus(config: ml_collections.ConfigDict) -> FileCorpus | TfdsCorpus:
    return TfdsCorpus(config) if config.corpus == "tfds" else file_corpus(config)


# Preparing: tokens packed into array_record files, once -----------------------------------------


def cache_dir(config: ml_collections.ConfigDict) -> str:
    if config.data_dir:
        return config.data_dir
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "jaxforge", "text")


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned type that holds every id (prepared files stay small)."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if vocab_size <= np.iinfo(dtype).max + 1:
            return np.dtype(dtype)
    raise framework.ConfigError(f"A vocabulary of {vocab_size} ids is too large.")


def fingerprint(config: ml_collections.ConfigDict, documents: FileCorpus | TfdsCorpus) -> str:
    """What the prepared files depend on; any change prepares them again."""
    key = {"version": PREPARED_VERSION, "documents": documents.identity(),
           "tokenizer": tokenizers.fingerprint(config.tokenizer), "seq_len": config.seq_len,
           "separator": config.separator, "records_per_file": config.records_per_file}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]


def pack(texts: Iterable[str], tokenizer: tokenizers.Tokenizer, separator: str, length: int,
         dtype: np.dtype) -> Iterator[np.ndarray]:
    """Consecutive runs of `length` tokens of the documents, each followed by the separator
    (the tokens after the last full run are dropped)."""
    after = tokenizer.encode(separator)
    buffer = np.empty(0, dtype)
    for text in texts:
        buffer = np.concatenate([buffer, np.asarray(tokenizer.encode(text) + after, dtype)])
        count = len(buffer) // length
        yield from buffer[:count * length].reshape(count, length)
        buffer = buffer[count * length:]


def write_records(records: Iterable[np.ndarray], folder: str, split: str,
                  records_per_file: int) -> int:
    """Write `{split}-NNNNN.array_record` files of at most records_per_file records each
    (group size 1: Grain reads any record alone); returns how many records were written."""
    from array_record.python.array_record_module import ArrayRecordWriter

    count, writer = 0, None
    for record in records:
        if count % records_per_file == 0:
            if writer is not None:
                writer.close()
            path = os.path.join(folder, f"{split}-{count // records_per_file:05d}.array_record")
            writer = ArrayRecordWriter(path, "group_size:1,uncompressed")
        writer.write(record.tobytes())
        count += 1
    if writer is not None:
        writer.close()
    return count


def _too_little(config: ml_collections.ConfigDict, documents: FileCorpus | TfdsCorpus,
                split: str) -> framework.ConfigError:
    return framework.ConfigError(
        f"config.dataset: the {split} split of the {config.corpus!r} corpus "
        f"({documents.describe(split)}) holds fewer than seq_len + 1 = {config.seq_len + 1} "
        f"tokens: not one example. Give it more text (files, eval_fraction, max_files) or a "
        "smaller seq_len.")


def prepare(config: ml_collections.ConfigDict, tokenizer: tokenizers.Tokenizer) -> str:
    """The folder of the prepared files for this config, written now unless already there.

    Written into a temporary folder and renamed, so a reader never sees half a preparation and
    processes that prepare at once agree on the result."""
    documents = corpus(config)
    folder = os.path.join(cache_dir(config), fingerprint(config, documents))
    if os.path.exists(os.path.join(folder, "info.json")):
        return folder
    partial = f"{folder}.partial-{uuid.uuid4().hex}"
    os.makedirs(partial)
    try:
        info = {"dtype": token_dtype(tokenizer.vocab_size).name, "splits": {}}
        for split in ("train", "eval"):
            records = pack(documents.texts(split), tokenizer, config.separator,
                           config.seq_len + 1, np.dtype(info["dtype"]))
            count = write_records(records, partial, split, config.records_per_file)
            if count == 0:
                raise _too_little(config, documents, split)
            info["splits"][split] = count
        with open(os.path.join(partial, "info.json"), "w") as file:
            json.dump(info, file)
        os.rename(partial, folder)
    except OSError:
        if not os.path.exists(os.path.join(folder, "info.json")):
            raise  # Not another process having prepared the same folder first.
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return folder


# Reading ---------------------------------------------------------------------------------------


class ReadSequences:
    """A batch of example indices -> `inputs` and `label` (the tokens shifted by one), int32:
    one read of the files for the whole batch, decoded as one array (every record holds the
    same number of tokens)."""

    def __init__(self, source: Any, dtype: np.dtype) -> None:
        self.source, self.dtype = source, dtype

    def __call__(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        records = self.source.__getitems__([int(i) for i in indices])
        tokens = np.frombuffer(b"".join(records), self.dtype).reshape(len(records), -1)
        tokens = tokens.astype(np.int32)
        return {"inputs": tokens[:, :-1], "label": tokens[:, 1:]}


class TextSource:
    """The `DataSource` of a prepared text corpus."""

    def __init__(self, folder: str, vocab_size: int, config: ml_collections.ConfigDict,
                 context: framework.DataContext) -> None:
        import grain

        with open(os.path.join(folder, "info.json")) as file:
            info = json.load(file)
        self.folder, self._config, self._context = folder, config, context
        # The examples of each split by index (`read["train"](indices)`), as batches hold them.
        self.read = {split: ReadSequences(grain.sources.ArrayRecordDataSource(
            sorted(glob.glob(os.path.join(folder, f"{split}-*.array_record")))),
            np.dtype(info["dtype"])) for split in ("train", "eval")}
        num_eval = info["splits"]["eval"]
        if config.max_eval_examples:
            num_eval = min(num_eval, config.max_eval_examples)
        self.metadata = framework.DatasetMetadata(
            input_shape=(config.seq_len,), input_dtype="int32", target_shape=(config.seq_len,),
            target_dtype="int32", num_classes=vocab_size, num_train=info["splits"]["train"],
            num_eval=num_eval)

    def train_iterator(self) -> framework.TrainIterator:
        return grain_reading.train_iterator(
            self.metadata.num_train, self.read["train"], self._config.batch_size,
            self._context, shuffle=self._config.shuffle, num_threads=self._config.num_threads)

    def eval_batches(self) -> Iterator[dict[str, np.ndarray]]:
        return grain_reading.eval_batches(
            self.metadata.num_eval, self.read["eval"],
            self._config.eval_batch_size or self._config.batch_size, self._context,
            num_threads=self._config.num_threads)


def build(config: ml_collections.ConfigDict, context: framework.DataContext) -> TextSource:
    tokens = tokenizer(config)
    return TextSource(prepare(config, tokens), tokens.vocab_size, config, context)


plugin = framework.Plugin(build=build, default_config=default_config, validate=validate,
                          tokenizer=tokenizer, api_version=1,
                          description=__doc__.splitlines()[0])
