"""jaxforge: a JAX research framework. This module is its public API.

Names are imported on first use, so `import framework` (and `jaxforge plugins list`) stays fast
and never starts JAX. Plugins import only what is exported here; their tests also use
`framework.testing` (conformance checks, `tiny_config`).
"""

from __future__ import annotations

import importlib
from typing import Any

from framework import kinds
from framework.errors import ConfigError, JaxforgeError
from framework.registry import PLUGIN_API_VERSION, PluginAPIVersionWarning, PluginError, registry

_LAZY = {
    "train": "framework.loop",
    "evaluate": "framework.loop",
    "load": "framework.predict",
    "LoadedModel": "framework.predict",
    "Plugin": "framework.plugin",
    "DatasetMetadata": "framework.plugin",
    "InputNormalization": "framework.plugin",
    "DataContext": "framework.plugin",
    "Callback": "framework.plugin",
    "HostCopy": "framework.state",
    "LoggedState": "framework.step",
    "WeightedLoss": "framework.loss",
    **{kind.decorator: "framework.plugin" for kind in kinds.KINDS},  # register_model, ...
    "ArraySource": "framework.data",
    "DataSource": "framework.data",
    "TrainIterator": "framework.data",
    "local_batch_size": "framework.data",
    "eval_positions": "framework.data",
    "EpochOrder": "framework.data",
    "path_text": "framework.sharding",
    "check": "framework.config",
    "fields": "framework.config",
    "field_docs": "framework.config",
    "load_config": "framework.config",
    "resolve_config": "framework.config",
    "schedule_fields": "framework.schedules",
    "validate_schedule": "framework.schedules",
    "make_schedule": "framework.schedules",
}

__all__ = ["ConfigError", "JaxforgeError", "PLUGIN_API_VERSION", "PluginAPIVersionWarning",
           "PluginError", "registry", "testing", *_LAZY]


_SUBMODULES = ("testing",)


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"framework.{name}")
    if name not in _LAZY:
        raise AttributeError(f"module 'framework' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
