"""Tokenizers: text <-> integer ids, shared by the `text` dataset and generation.

A tokenizer has `vocab_size`, `encode(text) -> list[int]` and `decode(ids) -> str`. A dataset
plugin that yields tokens gives its tokenizer as `plugin.tokenizer(config)`, so that
`jaxforge generate` decodes with the vocabulary the model was trained on, without building the
dataset. `load` turns a dataset's `tokenizer` field into one.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from typing import Any, Protocol

from framework.errors import ConfigError

BYTES = "bytes"


class Tokenizer(Protocol):
    """What a dataset's `tokenizer(config)` returns."""

    vocab_size: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


class ByteTokenizer:
    """Ids are the UTF-8 bytes of the text: no vocabulary file, nothing unknown, 256 ids."""

    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        # A sample cut mid-character (or a model's stray byte) decodes to U+FFFD, not an error.
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")


class SentencePieceTokenizer:
    """A trained SentencePiece model (`.model` file): its pieces are the vocabulary."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        import sentencepiece

        self.path = os.fspath(path)
        self._processor: Any = sentencepiece.SentencePieceProcessor(model_file=self.path)
        self.vocab_size = int(self._processor.get_piece_size())

    def encode(self, text: str) -> list[int]:
        return list(self._processor.encode(text))

    def decode(self, ids: Sequence[int]) -> str:
        return self._processor.decode([int(i) for i in ids])


def load(spec: str, key: str = "dataset.tokenizer") -> ByteTokenizer | SentencePieceTokenizer:
    """`bytes`, or the path of a SentencePiece `.model` file; anything else is a ConfigError
    on `key` that says what is accepted."""
    if spec == BYTES:
        return ByteTokenizer()
    if not os.path.isfile(spec):
        raise ConfigError.for_key(key, f"is {spec!r}: neither 'bytes' nor an existing "
                                       "SentencePiece .model file.")
    try:
        return SentencePieceTokenizer(spec)
    except (RuntimeError, OSError) as error:
        raise ConfigError.for_key(key, f"is {spec!r}, which is not a SentencePiece model "
                                       f"({' '.join(str(error).split())}).") from None


def fingerprint(spec: str) -> str:
    """What identifies a tokenizer's vocabulary: `bytes`, or a SentencePiece file's contents."""
    if spec == BYTES:
        return BYTES
    with open(spec, "rb") as file:
        return "sentencepiece:" + hashlib.sha256(file.read()).hexdigest()
