"""vit: shapes, parameter count and names of big_vision's layout, attention equal to flax's,
logical axes, the conformance checks, tensor parallelism on `model`, bad patch sizes."""

import json
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import framework
from framework import loop
from framework.testing import check_plugin, tiny_config
from plugins.models import vit

VIT = "vit"  # The installed plugin.
MU = {"name": VIT, "patch_size": 4, "width": 32, "depth": 1, "mlp_dim": 128, "num_heads": 2}
IMAGES = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 3))


def module(**fields):
    return vit.ViT(**{"num_classes": 10, **{k: v for k, v in MU.items() if k != "name"},
                      **fields})


def init(model):
    return model.init(jax.random.PRNGKey(0), IMAGES, train=False)


def test_logits_shape_parameter_count_and_big_visions_names():
    variables = init(module())
    assert module().apply(variables, IMAGES, train=False).shape == (2, 10)
    params = nn.unbox(variables["params"])
    # Patch embedding 4x4x3x32 + 32; 4 positions x 32; a block: 2 LayerNorms 2x64, q, k, v, out
    # 4x(32x32 + 32), MLP 32x128 + 128 + 128x32 + 32; the final LayerNorm 64; the head 32x10 + 10.
    block = 2 * 64 + 4 * (32 * 32 + 32) + (32 * 128 + 128 + 128 * 32 + 32)
    count = (4 * 4 * 3 * 32 + 32) + 4 * 32 + block + 64 + (32 * 10 + 10)
    assert sum(x.size for x in jax.tree.leaves(params)) == count
    assert set(params) == {"embedding", "pos_embedding", "Transformer", "head"}
    assert set(params["Transformer"]["encoderblock_0"]) == {
        "LayerNorm_0", "MultiHeadDotProductAttention_0", "LayerNorm_1", "MlpBlock_0"}
    cls = nn.unbox(init(module(pool="cls", position_embedding="sincos2d"))["params"])
    assert "pos_embedding" not in cls and cls["cls"].shape == (32,)


def test_attention_computes_what_flaxs_multi_head_attention_computes():
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 5, 32))
    ours = vit.MultiHeadAttention(num_heads=2, dtype=jnp.float32)
    params = nn.unbox(ours.init(jax.random.PRNGKey(2), x))
    flax_attention = nn.MultiHeadDotProductAttention(num_heads=2)
    np.testing.assert_allclose(ours.apply(params, x), flax_attention.apply(params, x, x),
                               atol=1e-5)


@pytest.mark.parametrize("pool", ["cls", "gap"])
def test_every_parameter_has_logical_axis_names(pool):
    leaves = jax.tree.leaves(init(module(pool=pool))["params"],
                             is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    assert all(isinstance(leaf, nn.LogicallyPartitioned) and len(leaf.names) == leaf.value.ndim
               for leaf in leaves)
    names = {name for leaf in leaves for name in leaf.names}
    assert names <= {name for name, _ in vit.LOGICAL_AXIS_RULES}


def test_sincos_position_embedding_is_big_visions():
    table = vit.sincos_2d(2, 3, 8)
    assert table.shape == (6, 8)
    # Position (y=1, x=2): sin(x * omega), cos(x * omega), sin(y * omega), cos(y * omega).
    omega = 1 / 10_000.0 ** np.array([0.0, 1.0])
    np.testing.assert_allclose(table[5], np.concatenate([np.sin(2 * omega), np.cos(2 * omega),
                                                         np.sin(omega), np.cos(omega)]),
                               atol=1e-6)


def vit_config(**sections):
    return tiny_config(model={**MU, **sections.pop("model", {})},
                       dataset={"shape": (8, 8, 3)}, **sections)


@pytest.mark.slow
def test_the_plugin_passes_the_conformance_checks():
    results = check_plugin("models", vit.plugin, vit_config(model={
        "pool": "cls", "position_embedding": "sincos2d", "dropout_rate": 0.1}))
    assert {r.check for r in results if r.status == "skip"} <= {
        "import_leaves_jax_uninitialised", "model_convert_weights"}


@pytest.mark.slow
def test_tensor_parallel_training_splits_heads_and_mlp_over_model_and_matches_one_device(
        tmp_path):
    train = {"num_steps": 6, "log_every_steps": 2, "eval_every_steps": 0}
    for name, mesh in {"one": {"data": 1}, "tp": {"data": 2, "fsdp": 2, "model": 2}}.items():
        framework.train(framework.resolve_config(vit_config(
            mesh={**mesh, "fsdp_min_size": 1}, train=train)), tmp_path / name)
    _, state, _ = loop.restore(tmp_path / "tp")
    block = state.params["Transformer"]["encoderblock_0"]
    attention = block["MultiHeadDotProductAttention_0"]
    assert attention["query"]["kernel"].sharding.spec == P("fsdp", "model", None)
    assert attention["out"]["kernel"].sharding.spec == P("model", None, "fsdp")
    assert block["MlpBlock_0"]["Dense_0"]["kernel"].sharding.spec == P("fsdp", "model")
    assert block["MlpBlock_0"]["Dense_1"]["kernel"].sharding.spec == P("model", "fsdp")
    table = (tmp_path / "tp" / "parameters.txt").read_text()
    assert re.search(r"MultiHeadDotProductAttention_0/query/kernel +\(32, 2, 16\) +float32 +"
                     r"1,024 +\('fsdp', 'model', None\)", table)
    assert re.search(r"MlpBlock_0/Dense_1/kernel +\(128, 32\) .* \('model', 'fsdp'\)", table)
    tp, one = ([json.loads(line) for line in
                (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
               for run in ("tp", "one"))
    assert [r["train/loss"] for r in tp] == pytest.approx([r["train/loss"] for r in one],
                                                          rel=1e-4)


def test_a_patch_size_that_does_not_divide_the_images_is_a_config_error():
    with pytest.raises(framework.ConfigError, match="patch_size=3 must divide the images' "
                                                    "height and width.*\\(8, 8, 3\\)"):
        loop.set_up(framework.resolve_config(vit_config(model={"patch_size": 3})))
