"""TensorBoard event files for a run: every logged metric as a scalar, the config as hparams.

Written with tensorboardX, so TensorFlow is not needed. tensorboardX queues each event and a
background thread writes and flushes the file, so logging never waits on the disk. On `gs://`
tensorboardX keeps the file in memory and uploads all of it at each flush (google-cloud-storage,
no TensorFlow): there it flushes every `_FLUSH_SECS_OBJECT_STORE` seconds, and only when there
is something new (see `_register_gcs_writer`). Process 0
writes (like metrics.jsonl); on the other processes every method does nothing.
"""

from __future__ import annotations

import itertools
import os
import sys
from pathlib import Path
from typing import Any

import ml_collections

from framework.config import flatten, is_section
from framework.workdir import is_url

# Events queued before `add_scalar` would wait for the writer thread: far more than a log step
# adds, so the training loop never blocks on it.
_MAX_QUEUE = 1000
# How often the writer thread flushes: a running TensorBoard shows new points within seconds.
_FLUSH_SECS = 5
# Each flush to an object store uploads the whole file: less often.
_FLUSH_SECS_OBJECT_STORE = 30
# Event file names hold the time in whole seconds and the host; a run resumed within the same
# second would reopen (and truncate) the same file. TensorBoard's own writer adds the process id
# and a counter for this; so do we.
_writer_count = itertools.count()


def _import_tensorboardx() -> Any:
    """tensorboardX, without the PyTorch it imports when installed (~1.5 s and ~300 MiB).

    tensorboardX imports torch only to accept torch tensors as values; we log Python floats.
    While it loads, `import torch` fails (a None entry in sys.modules), unless the user's
    program has imported torch already; afterwards torch imports as usual.
    """
    if "torch" in sys.modules:
        import tensorboardX
        return tensorboardX
    sys.modules["torch"] = None  # type: ignore[assignment]
    try:
        import tensorboardX
    finally:
        del sys.modules["torch"]
    return tensorboardX


def _register_gcs_writer(tensorboardx: Any) -> None:
    """tensorboardX's `gs://` event file, uploaded only when it grew: tensorboardX's own uploads
    the whole file again at every flush, at close and when garbage-collected (after the run, or
    at exit, when the network may be gone and its retries would hold the process for minutes)."""
    record_writer = tensorboardx.record_writer

    class UploadsWhatIsNew(record_writer.GCSRecordWriter):
        uploaded = 0

        def flush(self) -> None:
            if self.buffer.tell() != self.uploaded:
                super().flush()
                self.uploaded = self.buffer.tell()

    class Factory(record_writer.GCSRecordWriterFactory):
        def open(self, path: str) -> Any:
            return UploadsWhatIsNew(path)

    record_writer.register_writer_factory("gs", Factory())


def hparams_of(config: ml_collections.ConfigDict) -> dict[str, bool | int | float | str]:
    """The config as flat `section.field` hyperparameters of the kinds TensorBoard shows.

    Tuples become their text (`"(32, 64)"`); unset (None) fields are left out.
    """
    flat: dict[str, Any] = {}
    for path, value in flatten(config):
        if isinstance(value, (bool, int, float, str)):
            flat[path] = value
        elif value is not None and not is_section(value):
            flat[path] = str(tuple(value) if isinstance(value, list) else value)
    return flat


class TensorBoardLog:
    """The run's event file in `logdir`, continued after a resume.

    On resume, points logged after the restored step by the interrupted run are hidden
    (tensorboardX's `purge_step`), so the curves read as one uninterrupted run, as in
    metrics.jsonl.
    """

    def __init__(self, logdir: Path, resume_step: int, enabled: bool) -> None:
        self._writer = None
        if enabled:
            tensorboardx = _import_tensorboardx()
            if is_url(logdir):
                _register_gcs_writer(tensorboardx)
            self._writer = tensorboardx.SummaryWriter(
                str(logdir), purge_step=resume_step + 1 if resume_step else None,
                max_queue=_MAX_QUEUE,
                flush_secs=_FLUSH_SECS_OBJECT_STORE if is_url(logdir) else _FLUSH_SECS,
                filename_suffix=f".{os.getpid()}.{next(_writer_count)}")

    def write_hparams(self, config: ml_collections.ConfigDict) -> None:
        """Record the resolved config for TensorBoard's HPARAMS tab.

        Only the session-start record is written: TensorBoard then collects the hyperparameters
        of every run under its logdir and offers each run's scalars as metrics to compare.
        """
        if self._writer is None:
            return
        _, session_start, _ = _import_tensorboardx().summary.hparams(hparams_of(config), {})
        self._writer.file_writer.add_summary(session_start)

    def write(self, step: int, metrics: dict[str, float]) -> None:
        if self._writer is None:
            return
        for tag, value in metrics.items():
            self._writer.add_scalar(tag, value, step)

    def close(self) -> None:
        """Write out everything queued and close the file."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
