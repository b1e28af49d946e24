"""Tests run on the CPU with 8 simulated devices, so sharded code meets a real mesh.

jaxforge's own pytest plugin (framework/pytest_plugin.py, fixtures `jaxforge_registry` and
`jaxforge_tiny_config`) is active here as in any environment jaxforge is installed in.
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8").strip()

import pytest

pytest_plugins = ("pytester",)  # Runs a plugin author's test session (test_testing.py).

from framework.testing import tiny_config  # noqa: E402


@pytest.fixture
def tiny():
    return tiny_config
