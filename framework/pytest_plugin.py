"""jaxforge's pytest plugin (entry point group `pytest11`): fixtures for testing plugins.

    def test_my_net_trains(jaxforge_registry, jaxforge_tiny_config, tmp_path):
        jaxforge_registry.register("models", "my_net", my_net)
        config = jaxforge_tiny_config(model={"name": "my_net"}, train={"num_steps": 20})
        summary = framework.train(framework.resolve_config(config), tmp_path)

`jaxforge_gcs_bucket` is a fresh bucket on a local Cloud Storage emulator (`gs://` workdirs and
data without a network; needs jaxforge's `test` extra).

Installing jaxforge activates it in every pytest session, so it imports nothing (no JAX) until a
fixture is used. Conformance checks are in `framework.testing`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

import pytest


@pytest.fixture
def jaxforge_registry() -> Iterator[Any]:
    """The plugin registry, isolated for one test: installed plugins are discovered afresh (a
    distribution installed by the test is found), and plugins registered in-process during the
    test are gone after it."""
    from framework.registry import registry

    with registry.isolated():
        yield registry


@pytest.fixture
def jaxforge_tiny_config() -> Callable[..., Any]:
    """`framework.testing.tiny_config`: a seconds-long experiment to build and train plugins in;
    call it with sections to change, e.g. `jaxforge_tiny_config(model={"name": "my_net"})`."""
    from framework.testing import tiny_config

    return tiny_config


_bucket_numbers = itertools.count()


@pytest.fixture(scope="session")
def jaxforge_gcs_emulator() -> Iterator[str]:
    """The URL of a Cloud Storage emulator on 127.0.0.1, one process for the whole session."""
    pytest.importorskip("gcp_storage_emulator", reason="the GCS emulator is in the test extra")
    from framework import gcs_emulator

    with gcs_emulator.emulator() as endpoint:
        yield endpoint


@pytest.fixture
def jaxforge_gcs_bucket(jaxforge_gcs_emulator: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """`gs://NAME` of a new, empty bucket on the emulator; os.environ points tensorstore
    (Orbax), gcsfs (`etils.epath`) and google-cloud-storage at it for the test, subprocesses
    included."""
    from framework import gcs_emulator

    for key, value in gcs_emulator.environment(jaxforge_gcs_emulator).items():
        monkeypatch.setenv(key, value)
    gcs_emulator.use_plain_gcsfs()
    name = f"jaxforge-test-{next(_bucket_numbers)}"
    gcs_emulator.create_bucket(jaxforge_gcs_emulator, name)
    return f"gs://{name}"
