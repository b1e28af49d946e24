"""tools/bench.py's Transformer cases: the data they train on, and that the PyTorch side is the
same model as the JAX sides (same weights give the same logits)."""

import dataclasses
import importlib.util
import re
import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import framework

torch = pytest.importorskip("torch")

_spec = importlib.util.spec_from_file_location(
    "bench", Path(__file__).resolve().parent.parent / "tools" / "bench.py")
bench = sys.modules["bench"] = importlib.util.module_from_spec(_spec)  # As step_ab imports it.
_spec.loader.exec_module(bench)

TINY = {
    "lm": dataclasses.replace(bench.ALL_CASES["lm"], model=bench._lm(32, 2, 2, 64, 16),
                              shape=(16,), batch=4, num_classes=50, num_train=8),
    "vit": dataclasses.replace(bench.ALL_CASES["vit"], model=bench._vit(4, 32, 2, 2, 64),
                               shape=(8, 8, 3), batch=4, num_train=8),
}
# Flax parameter paths -> the PyTorch modules' names (then `kernel`/`scale`/... -> `weight`).
RENAMES = [(r"layers_(\d+)", r"layers.\1"), (r"Transformer/encoderblock_(\d+)", r"blocks.\1"),
           (r"LayerNorm_0", "norm_1"), (r"LayerNorm_1", "norm_2"), (r"Dense_0", "mlp_in"),
           (r"Dense_1", "mlp_out"), (r"(attention|mlp|MultiHeadDotProductAttention_0|"
                                     r"MlpBlock_0|Transformer)/", ""),
           (r"/(kernel|scale|embedding)$", "/weight"), ("/", ".")]


def as_torch(path: str, value: np.ndarray, width: int) -> tuple[str, np.ndarray]:
    """A Flax parameter as the PyTorch side's: its name, and the value in torch's layout."""
    for pattern, replacement in RENAMES:
        path = re.sub(pattern, replacement, path)
    if value.ndim == 4:  # Patch embedding: HWIO -> OIHW.
        value = value.transpose(3, 2, 0, 1)
    elif value.ndim == 3:  # Per-head projections: [embed, heads, kv] or [heads, kv, embed].
        value = (value.reshape(width, -1) if value.shape[0] == width
                 else value.reshape(-1, width)).T
    elif value.ndim == 2 and path.endswith(".bias"):  # Per-head biases [heads, kv].
        value = value.reshape(-1)
    elif value.ndim == 2 and path == "pos_embedding":
        value = value[None]
    elif value.ndim == 2 and path != "embedding.weight":  # Dense kernels: [in, out] -> [out, in].
        value = value.T
    return path, np.ascontiguousarray(value)


@pytest.mark.parametrize("name", ["lm", "vit"])
def test_the_pytorch_model_computes_the_plugins_logits(name):
    case = TINY[name]
    config = bench._jax_config(case, 1, 1)
    source = framework.registry.load("datasets", case.dataset).build(
        config.dataset, framework.DataContext(seed=0))
    module = framework.registry.load("models", case.model["name"]).build(
        config.model, source.metadata, jnp.float32)
    inputs = next(source.train_iterator())["inputs"]
    params = nn.unbox(module.init(jax.random.PRNGKey(0), inputs, train=False))["params"]
    if name == "vit":  # Its head starts at zero: every logit would be 0 on both sides.
        params["head"]["kernel"] = jnp.ones_like(params["head"]["kernel"])
    expected = module.apply({"params": params}, inputs, train=False)

    model = bench._torch_model(case)
    flat = {"/".join(key.key for key in path): np.asarray(value)
            for path, value in jax.tree_util.tree_flatten_with_path(params)[0]}
    state = dict(as_torch(path, value, case.model["width"]) for path, value in flat.items())
    model.load_state_dict({k: torch.tensor(v) for k, v in state.items()})
    torch_inputs = torch.from_numpy(inputs)
    torch_inputs = torch_inputs.permute(0, 3, 1, 2) if name == "vit" else torch_inputs.long()
    with torch.no_grad():
        logits = model(torch_inputs).numpy()
    np.testing.assert_allclose(logits, expected, atol=2e-4, rtol=2e-4)


def test_the_token_data_predicts_the_next_token():
    case = TINY["lm"]
    source = framework.registry.load("datasets", bench.TOKENS).build(
        bench._jax_config(case, 1, 1).dataset, framework.DataContext(seed=0))
    batch = next(source.train_iterator())
    assert batch["inputs"].shape == batch["label"].shape == (4, 16)
    np.testing.assert_array_equal(batch["inputs"][:, 1:], batch["label"][:, :-1])
    assert source.metadata.num_classes == 50 and case.per_step == 4 * 16
