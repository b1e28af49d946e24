"""A trained model as a `jax.export` artifact that runs without jaxforge, Flax or the plugins.

The eval-mode forward pass is serialized with `jax.export`, its parameters closed over as
constants and its batch dimension symbolic, so the file is one function `inputs -> logits` for
any batch size. It takes inputs as the run's dataset yields them (`metadata.input_dtype`): for a
dataset that normalises on the device (`DatasetMetadata.normalize`, e.g. the `tfds` plugin's
uint8 images) the stored pixels, normalised inside the exported function. Loading it needs JAX
only:

    exported = jax.export.deserialize(bytearray(open("model.jaxexport", "rb").read()))
    logits = exported.call(inputs)  # inputs: exported.in_avals[0], any batch size
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from etils import epath

from framework.errors import JaxforgeError
from framework.predict import LoadedModel, forward_fn

PLATFORMS = ("cpu", "cuda", "rocm", "tpu")


def check_platforms(platforms: Sequence[str] | None) -> None:
    """A JaxforgeError for a platform name `jax.export` does not know."""
    unknown = sorted(set(platforms or ()) - set(PLATFORMS))
    if unknown or (platforms is not None and not platforms):
        raise JaxforgeError(f"Unknown platform(s) {', '.join(unknown) or '(none given)'}; "
                            f"choose from {', '.join(PLATFORMS)}.")


def export_model(loaded: LoadedModel,
                 platforms: Sequence[str] | None = None) -> jax.export.Exported:
    """`loaded`'s eval forward pass as an `Exported` with a symbolic batch dimension and the
    parameters inside, for `platforms` (default: this machine's backend)."""
    check_platforms(platforms)
    # Host copies: constants in the exported module, not arrays placed on this run's mesh.
    params, model_state = jax.device_get((loaded.params, loaded.model_state))
    forward = forward_fn(loaded.model, loaded.metadata.normalize)

    def logits(inputs: jax.Array) -> jax.Array:  # float32, as `LoadedModel.predict` gives.
        return jax.tree.map(lambda x: x.astype(np.float32),
                            forward(params, model_state, inputs))

    shape = jax.export.symbolic_shape(
        ", ".join(["batch", *map(str, loaded.metadata.input_shape)]))
    spec = jax.ShapeDtypeStruct(shape, np.dtype(loaded.metadata.input_dtype))
    return jax.export.export(jax.jit(logits),
                             platforms=list(platforms) if platforms else None)(spec)


def write_export(loaded: LoadedModel, output: str | epath.Path,
                 platforms: Sequence[str] | None = None) -> jax.export.Exported:
    """Serialize `export_model(loaded, platforms)` into the file `output`."""
    exported = export_model(loaded, platforms)
    try:
        blob = exported.serialize()
    except ImportError as error:  # jax serializes with flatbuffers, an optional dependency.
        raise JaxforgeError(f"Cannot serialize the export: {error}.") from None
    epath.Path(output).write_bytes(blob)
    return exported
