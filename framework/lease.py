"""One run per `gs://` workdir: a lease object, the object-store counterpart of the local flock.

The workers of a TPU pod share no file system, and a process that dies (a preempted spot VM)
releases nothing. So the run holds `WORKDIR/.lease`, a small JSON object naming its holder and
how long the lease lasts, created only if absent (`ifGenerationMatch=0`) and rewritten every
`ttl_s / 3` seconds only if it is still the version this run wrote (`ifGenerationMatch=G`). A
lease not renewed for `ttl_s` seconds belongs to a dead run: the next run takes it over, again
under a generation precondition, so of two runs starting at once only one wins.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

from etils import epath

from framework.errors import JaxforgeError

TTL_S = 60.0  # A dead run's workdir is free again after this long.
FIRST_CONTACT_S = 10.0  # An unreachable store fails the run's start within this, not minutes.


def _blob(url: str) -> Any:
    from google.cloud import storage

    bucket, _, name = url.removeprefix("gs://").partition("/")
    return storage.Client().bucket(bucket).blob(name)


class Lease:
    """Held for the whole run on an object store; a second run within `ttl_s` is refused."""

    def __init__(self, workdir: epath.Path, ttl_s: float = TTL_S) -> None:
        self.url = str(epath.Path(workdir) / ".lease")
        self.ttl_s = ttl_s
        self.holder = f"{socket.gethostname()} pid {os.getpid()} ({uuid.uuid4().hex[:8]})"
        self._generation: int | None = None
        self._stop = threading.Event()
        self._renewer = threading.Thread(target=self._renew_until_released, daemon=True)

    def __enter__(self) -> Lease:
        from google.api_core import exceptions

        with _plain_errors(self.url):
            blob = _blob(self.url)
            current = _read(blob)
            if current is not None and not self._expired(current):
                raise self._busy(current[0])
            try:  # Absent: create it. Expired: replace the version read, nothing newer.
                self._write(blob, current[1] if current else 0)
            except exceptions.PreconditionFailed:
                raise self._busy((_read(blob) or ({}, 0))[0]) from None
        self._renewer.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        from google.api_core import exceptions

        self._stop.set()
        self._renewer.join()
        if self._generation is not None:
            # Taken over after this run stalled past the ttl: the new holder owns it.
            with contextlib.suppress(exceptions.PreconditionFailed, exceptions.NotFound):
                _blob(self.url).delete(if_generation_match=self._generation)

    def _write(self, blob: Any, generation: int) -> None:
        body = {"holder": self.holder, "ttl_s": self.ttl_s, "written": time.time()}
        blob.upload_from_string(json.dumps(body), content_type="application/json",
                                if_generation_match=generation, timeout=FIRST_CONTACT_S,
                                retry=_retry())
        self._generation = int(blob.generation)

    def _renew_until_released(self) -> None:
        from google.api_core import exceptions

        while not self._stop.wait(self.ttl_s / 3):
            try:
                self._write(_blob(self.url), self._generation)
            except exceptions.PreconditionFailed:
                print(f"jaxforge: lost the lease {self.url} to another run (this one stalled "
                      f"past {self.ttl_s:.0f} s); two runs now write this workdir.",
                      file=sys.stderr)
                self._generation = None
                return
            except Exception as error:  # A network blip: the next renewal tries again.
                print(f"jaxforge: renewing {self.url} failed ({error}); retrying.",
                      file=sys.stderr)

    def _expired(self, current: tuple[dict[str, Any], int]) -> bool:
        body, _ = current
        return time.time() > body.get("written", 0) + body.get("ttl_s", self.ttl_s)

    def _busy(self, body: dict[str, Any]) -> JaxforgeError:
        workdir = self.url.removesuffix("/.lease")
        left = body.get("written", 0) + body.get("ttl_s", self.ttl_s) - time.time()
        return JaxforgeError(
            f"Another run is using {workdir} ({body.get('holder', 'unknown holder')}; its lease "
            f"{self.url} runs {max(left, 0):.0f} s more unless renewed). Wait for it to end, or "
            "give this run another --workdir.")


def _read(blob: Any) -> tuple[dict[str, Any], int] | None:
    """The lease's contents and generation, or None when there is none."""
    from google.api_core import exceptions

    try:
        text = blob.download_as_text(timeout=FIRST_CONTACT_S, retry=_retry())
    except exceptions.NotFound:
        return None
    try:
        body = json.loads(text)
    except json.JSONDecodeError:
        body = {}  # Unreadable: treated as expired.
    return body, int(blob.generation)


def _retry() -> Any:
    from google.cloud.storage.retry import DEFAULT_RETRY

    return DEFAULT_RETRY.with_timeout(FIRST_CONTACT_S)


@contextlib.contextmanager
def _plain_errors(url: str) -> Iterator[None]:
    """Cloud Storage's errors at a run's start as one line naming the URL and the likely fix."""
    from google.api_core import exceptions
    from google.auth import exceptions as auth_exceptions

    bucket = "gs://" + url.removeprefix("gs://").split("/")[0]
    try:
        yield
    except exceptions.NotFound as error:
        raise JaxforgeError(
            f"Cannot write {url}: bucket {bucket} does not exist ({error.code}). Create it "
            f"(gcloud storage buckets create {bucket} --location=REGION) or fix the "
            "--workdir.") from None
    except (exceptions.Forbidden, exceptions.Unauthorized) as error:
        raise JaxforgeError(
            f"Cannot write {url}: permission denied ({error.code}). Grant this machine's "
            f"service account roles/storage.objectUser on {bucket}.") from None
    except auth_exceptions.DefaultCredentialsError:
        raise JaxforgeError(
            f"Cannot write {url}: no Google credentials here. On a TPU VM they come with the "
            "VM's service account; elsewhere run `gcloud auth application-default login`."
        ) from None
    except (exceptions.RetryError, exceptions.GoogleAPICallError, OSError) as error:
        raise JaxforgeError(
            f"Cannot reach Cloud Storage for {url} within {FIRST_CONTACT_S:.0f} s "
            f"({type(error).__name__}). Check the network (or STORAGE_EMULATOR_HOST).") from None
