"""Workdir safety: one run per workdir at a time, and no silent change of a run's config.

The lock is an `flock` on `WORKDIR/.lock`: the kernel releases it when the process dies, so a
crashed run never leaves a stale lock behind. On an object store (`gs://`), where no lock spans
the hosts, it is a lease object instead (`framework.lease`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from typing import Any

import ml_collections
from etils import epath

from framework.config import base_config
from framework.errors import JaxforgeError


class WorkdirLock:
    """Held for the whole run; a second run on the same workdir is refused."""

    def __init__(self, workdir: epath.Path) -> None:
        from framework.lease import Lease

        self._path = epath.Path(workdir) / ".lock"
        self._file = None
        self._lease = Lease(workdir) if is_url(workdir) else None

    def __enter__(self) -> WorkdirLock:
        if self._lease is not None:
            self._lease.__enter__()
            return self
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self._path, "a+")
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.seek(0)
            holder = self._file.read().strip() or "another process"
            self._file.close()
            raise JaxforgeError(
                f"Another run is using {self._path.parent} (pid {holder}). Wait for it to end, "
                "or give this run another --workdir.") from None
        self._file.seek(0)
        self._file.truncate()
        self._file.write(str(os.getpid()))
        self._file.flush()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self._lease is not None:
            self._lease.__exit__(*exc_info)
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix[:-1]: tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(_flatten(value, f"{prefix}{key}."))
    return flat


def config_changes(workdir: epath.Path, config: ml_collections.ConfigDict) -> list[str]:
    """`key: old -> new` for every field where the workdir's config.json differs from `config`.

    The `mesh` section is left out: it describes the machine, not the experiment, and a run may
    resume on another topology (the checkpoint is resharded on load). A framework field the
    workdir's config.json does not have, at its default (`loss.name`, added after the run was
    written), is no change either: the run used what that default means.
    """
    path = epath.Path(workdir) / "config.json"
    if not path.exists():
        return []
    old = _flatten(json.loads(path.read_text()))
    new = _flatten(json.loads(json.dumps(config.to_dict())))  # Tuples compare as lists.
    defaults = _flatten(json.loads(json.dumps(base_config().to_dict())))
    return [f"{key}: {old.get(key, '<absent>')!r} -> {new.get(key, '<absent>')!r}"
            for key in sorted(set(old) | set(new))
            if old.get(key) != new.get(key) and not key.startswith("mesh.")
            and not (key not in old and key in defaults and new[key] == defaults[key])]


def check_config_unchanged(workdir: epath.Path, config: ml_collections.ConfigDict,
                           allow_change: bool) -> None:
    changes = config_changes(workdir, config)
    if changes and not allow_change:
        shown = "; ".join(changes[:10]) + ("; ..." if len(changes) > 10 else "")
        raise JaxforgeError(
            f"{workdir} holds a run with a different config ({shown}). Resuming it with this "
            "config would mix two experiments: use another --workdir, or pass "
            "--allow_config_change to continue it with the new config.")


def is_url(path: str | epath.Path) -> bool:
    """A `gs://` (or other object store) path, as opposed to a local one."""
    return "://" in str(path)


def absolute(path: str | epath.Path) -> epath.Path:
    """A local path made absolute; a URL as it is (`epath`'s `absolute` would prefix the
    current directory to it)."""
    path = epath.Path(path)
    return path if is_url(path) else path.absolute()


def forget_listings(path: str | epath.Path) -> None:
    """Make the next listing of the URL `path` (and its parents) ask the object store: gcsfs (which
    `etils.epath` uses for `gs://` without TensorFlow) caches listings, so a process that reads
    a running workdir would not see the objects written since it last looked."""
    with contextlib.suppress(ImportError):
        from etils.epath import backend

        backend.fsspec_backend.fs(path).invalidate_cache(os.fspath(path))
