"""The one exception family users see: a message that says what is wrong and what would be right."""

from __future__ import annotations


class JaxforgeError(Exception):
    """Base class of the errors the CLI prints as one clean message (exit status 2)."""


class ConfigError(JaxforgeError):
    """A config that does not validate. Raised before anything is trained.

    `key` and `detail` are set when the error is about one field, so that an error raised by a
    plugin about its own field (`weight`) can be reported at its full path
    (`config.regularizers.l2.weight`).
    """

    def __init__(self, message: str, *, key: str | None = None, detail: str | None = None):
        super().__init__(message)
        self.key, self.detail = key, detail

    @classmethod
    def for_key(cls, key: str, detail: str) -> ConfigError:
        return cls(f"config.{key} {detail}", key=key, detail=detail)
