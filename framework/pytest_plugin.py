"""jaxforge's pytest plugin (entry point group `pytest11`): fixtures for testing plugins.

    def test_my_net_trains(jaxforge_registry, jaxforge_tiny_config, tmp_path):
        jaxforge_registry.register("models", "my_net", my_net)
        config = jaxforge_tiny_config(model={"name": "my_net"}, train={"num_steps": 20})
        summary = framework.train(framework.resolve_config(config), tmp_path)

Installing jaxforge activates it in every pytest session, so it imports nothing (no JAX) until a
fixture is used. Conformance checks are in `framework.testing`.
"""

from __future__ import annotations

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
