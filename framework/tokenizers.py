"""Tokenizers: text <-> integer ids, shared by the `text` dataset and generation.

A tokenizer has `vocab_size`, `encode(text) -> list[int]` and `decode(ids) -> str`. A dataset
plugin that yields tokens gives its tokenizer as `plugin.tokenizer(config)`, so that
`jaxforge generate` decodes with the vocabulary the model was trained on, without building the
dataset.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


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
