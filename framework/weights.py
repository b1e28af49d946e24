"""Weights files: a run's parameters (and batch statistics) as one `.safetensors` file.

A weights file holds one tensor per array, keyed `COLLECTION/PATH`: the collection is `params`
or a mutable model collection (`batch_stats`), the path is the parameter's path as
parameters.txt prints it (`framework.path_text`), e.g. `params/Dense_0/kernel`,
`batch_stats/BatchNorm_0/mean`. Its metadata (safetensors' string header) says where it came
from: `format` (`jaxforge-weights`), `format_version`, `jaxforge_version`, `model` (the model
plugin of the run), `step`, `ema` (`true` when the parameters are the EMA ones) and `source`
(the workdir's name). `jaxforge weights export` writes one; `config.init_from.path` reads one.
"""

from __future__ import annotations

import importlib.metadata
import json
from typing import Any

import numpy as np
from etils import epath

from framework.errors import JaxforgeError
from framework.workdir import absolute

FORMAT = "jaxforge-weights"
FORMAT_VERSION = "1"
SUFFIX = ".safetensors"


def jaxforge_version() -> str:
    try:
        return importlib.metadata.version("jaxforge")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def save_weights(path: str | epath.Path, tensors: dict[str, np.ndarray],
                 metadata: dict[str, Any]) -> epath.Path:
    """Write `tensors` (name -> array) and `metadata` (values written as text) to `path`."""
    from safetensors.numpy import save_file

    path = epath.Path(path)
    if path.suffix != SUFFIX:
        raise JaxforgeError(f"{path}: a weights file's name ends in {SUFFIX}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    header = {"format": FORMAT, "format_version": FORMAT_VERSION,
              "jaxforge_version": jaxforge_version(),
              **{key: str(value) for key, value in metadata.items()}}
    partial = path.with_name(path.name + ".partial")
    save_file({name: np.ascontiguousarray(array) for name, array in tensors.items()},
              str(partial), metadata=header)
    partial.replace(path)  # Never a half-written file under the final name.
    return path


def load_weights(path: str | epath.Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The tensors and metadata of a safetensors file; a missing, corrupted or truncated file is
    one JaxforgeError."""
    from safetensors import safe_open

    path = epath.Path(path)
    if not path.is_file():
        raise JaxforgeError(f"The weights file {path} does not exist.")
    try:
        with safe_open(str(path), framework="numpy") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    except Exception as error:  # safetensors raises SafetensorError, OSError, ValueError...
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise JaxforgeError(f"The weights file {path} is corrupted or truncated: it cannot be "
                            f"read as safetensors ({message}).") from None
    if not tensors:
        raise JaxforgeError(f"The weights file {path} holds no tensors.")
    return tensors, metadata


def flat_collections(params: Any, model_state: dict[str, Any] | None) -> dict[str, Any]:
    """`{"params/Dense_0/kernel": array, "batch_stats/...": array}` from a params tree and the
    mutable collections."""
    import jax

    from framework.sharding import path_text

    flat = {}
    for collection, tree in {"params": params, **(model_state or {})}.items():
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
            flat[f"{collection}/{path_text(path)}"] = leaf
    return flat


def export(workdir: str | epath.Path, output: str | epath.Path, step: int | None = None,
           ema: bool = False) -> tuple[epath.Path, int, int]:
    """Write a workdir's checkpoint (the latest, or `step`) as a weights file: its parameters
    (the EMA ones with `ema`) and mutable collections. Returns (path, step, tensor count)."""
    from framework import init_from

    source = init_from.find_source(workdir, step, key="")
    if source.kind != "checkpoint":
        raise JaxforgeError(f"--workdir {workdir} is a weights file already; export reads a "
                            "workdir or a checkpoint directory.")
    flat = init_from.read_checkpoint(source, use_ema=ema, wanted=None, shardings=None)
    tensors = {name: np.asarray(array) for name, array in flat.items()}
    config = _source_config(source.workdir)
    path = save_weights(output, tensors, {
        "model": config.get("model", {}).get("name", "unknown"), "step": source.step,
        "ema": "true" if ema else "false", "source": absolute(source.workdir).name})
    return path, source.step, len(tensors)


def _source_config(workdir: epath.Path | None) -> dict[str, Any]:
    try:
        return json.loads((epath.Path(workdir) / "config.json").read_text()) if workdir else {}
    except (OSError, json.JSONDecodeError):
        return {}
