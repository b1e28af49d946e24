"""A local Cloud Storage server for tests: the `gcp-storage-emulator` package, run in its own
process on 127.0.0.1, with the environment that points tensorstore (Orbax) and gcsfs
(`etils.epath`) at it.

    with emulator() as endpoint:
        create_bucket(endpoint, "bucket")
        with env(endpoint):  # os.environ for this process and the subprocesses it starts
            framework.train(config, "gs://bucket/run")

`python -m framework.gcs_emulator` serves (after a small patch, see `_patch`) and prints its port.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from typing import Any

# gcsfs probes each bucket over gRPC for hierarchical namespaces (60 s against an emulator)
# unless this is off; it is read when gcsfs is first imported.
_GCSFS_PROBE_OFF = {"GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}


def environment(endpoint: str) -> dict[str, str]:
    """The variables that send tensorstore, gcsfs, google-cloud-storage and google-cloud-cpp
    (array_record's reader of `gs://` files) to `endpoint`."""
    return {
        "CLOUD_STORAGE_EMULATOR_ENDPOINT": endpoint,
        "TENSORSTORE_GCS_HTTP_URL": endpoint,
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",  # Sent by tensorstore, ignored.
        "STORAGE_EMULATOR_HOST": endpoint,
        **_GCSFS_PROBE_OFF,
    }


@contextlib.contextmanager
def env(endpoint: str) -> Iterator[None]:
    """`environment(endpoint)` in os.environ while the block runs."""
    saved = {key: os.environ.get(key) for key in environment(endpoint)}
    os.environ.update(environment(endpoint))
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def emulator(timeout_s: float = 30) -> Iterator[str]:
    """Start the emulator process on a free port of 127.0.0.1; yield its URL; stop it."""
    process = subprocess.Popen([sys.executable, "-m", "framework.gcs_emulator"],
                               stdout=subprocess.PIPE, text=True)
    try:
        port = _read_port(process, timeout_s)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _read_port(process: subprocess.Popen, timeout_s: float) -> int:
    import selectors

    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    if not selector.select(timeout_s):
        raise RuntimeError(f"The GCS emulator did not start within {timeout_s} s.")
    line = process.stdout.readline()
    if not line.strip().isdigit():
        raise RuntimeError(f"The GCS emulator did not start (it printed {line!r}).")
    return int(line)


def use_plain_gcsfs() -> None:
    """`gs://` through gcsfs's plain file system even where gcsfs was imported before
    `GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT` was turned off (its probe waits 60 s per bucket)."""
    import fsspec

    for protocol in ("gs", "gcs"):  # etils.epath asks for "gcs".
        fsspec.register_implementation(protocol, "gcsfs.core.GCSFileSystem", clobber=True)


def create_bucket(endpoint: str, name: str) -> None:
    """Create bucket `name` through the JSON API, as `gcloud storage buckets create` would."""
    request = urllib.request.Request(
        f"{endpoint}/storage/v1/b?project=test", data=json.dumps({"name": name}).encode(),
        headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=10):
        pass


def _patch() -> None:
    """Object downloads answer with `x-goog-generation`, as Cloud Storage does: tensorstore's
    reads need it, and the emulator leaves it out. A client that hangs up early (a ranged read
    that got what it needed) is not an error worth a traceback."""
    import socketserver

    from gcp_storage_emulator import server
    from gcp_storage_emulator.handlers import objects

    original = objects.download

    def download(request: Any, response: Any, storage: Any, *args: Any, **kwargs: Any) -> None:
        original(request, response, storage, *args, **kwargs)
        with contextlib.suppress(Exception):  # Not found: the original set the status.
            obj = storage.get_file_obj(request.params["bucket_name"],
                                       request.params["object_id"])
            response["x-goog-generation"] = str(obj["generation"])
            response["x-goog-metageneration"] = str(obj["metageneration"])

    objects.download = download  # `objects.get` calls it for `?alt=media`.
    report = socketserver.BaseServer.handle_error
    socketserver.BaseServer.handle_error = lambda self, request, address: (
        None if isinstance(sys.exc_info()[1], ConnectionError) else report(self, request, address))
    for _, handlers in server.HANDLERS:
        for method, handler in handlers.items():
            if handler is original:
                handlers[method] = download


def main() -> None:
    """Serve in memory on a free port of 127.0.0.1 until terminated; print the port first."""
    import logging
    import signal

    from gcp_storage_emulator.server import create_server

    logging.basicConfig(level=logging.CRITICAL)  # As its --quiet: a 404 is no error here.
    _patch()
    stop_signals = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)  # The server thread inherits it.
    server = create_server("127.0.0.1", 0, in_memory=True)
    server.start()
    print(server._api._httpd.server_address[1], flush=True)
    signal.sigwait(stop_signals)
    server.stop()


if __name__ == "__main__":
    main()
