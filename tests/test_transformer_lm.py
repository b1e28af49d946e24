"""transformer_lm: shapes, parameters and their logical axes, scan/remat, causality, the
conformance checks, tensor parallelism on the `model` axis, and its bad-input errors."""

import dataclasses
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

import framework
from framework import loop
from framework.cli import main
from framework.testing import check_plugin, tiny_config
from plugins.models import transformer_lm

LM = "transformer_lm"  # The installed plugin.
BYTES = "bytes_under_test"
TEXT = b"def add(a, b):\n    return a + b\n\ndef mul(a, b):\n    return a * b\n\n" * 24
TINY = {"name": LM, "width": 32, "depth": 2, "num_heads": 2, "head_dim": 16, "mlp_dim": 64,
        "max_len": 64}


def build_bytes(config: ml_collections.ConfigDict, context: framework.DataContext
                ) -> framework.ArraySource:
    """Windows of `length` + 1 bytes of TEXT; inputs are the first `length`, labels the last."""
    data = np.frombuffer(TEXT, np.uint8).astype(np.int32)
    windows = np.lib.stride_tricks.sliding_window_view(data, config.length + 1)[::7]
    split = len(windows) * 3 // 4
    train, evaluation = ({"inputs": w[:, :-1].copy(), "label": w[:, 1:].copy()}
                         for w in (windows[:split], windows[split:]))
    metadata = framework.DatasetMetadata(input_shape=(config.length,), num_classes=256,
                                         num_train=split, num_eval=len(windows) - split,
                                         input_dtype="int32", target_shape=(config.length,))
    return framework.ArraySource(train, evaluation, metadata, config, context)


BYTES_PLUGIN = framework.Plugin(build=build_bytes, api_version=framework.PLUGIN_API_VERSION,
                                default_config=lambda: framework.fields(
                                    length=(16, "Tokens per example.")))


@pytest.fixture
def lm_plugins():
    with framework.registry.registered("datasets", BYTES, BYTES_PLUGIN):
        yield


def lm_config(**sections):
    """A seconds-long experiment: the tiny LM on TEXT."""
    sections = {"model": TINY, "dataset": {"name": BYTES, "batch_size": 8}, **sections}
    sections["model"] = {**TINY, **sections["model"]}
    return tiny_config(**sections)


def module(**fields):
    return transformer_lm.TransformerLM(**{"vocab_size": 256, **{
        k: v for k, v in TINY.items() if k != "name"}, **fields})


TOKENS = jnp.asarray(np.frombuffer(TEXT[:32], np.uint8).reshape(2, 16), jnp.int32)


def test_logits_shape_and_parameter_count():
    variables = module().init(jax.random.PRNGKey(0), TOKENS, train=False)
    assert module().apply(variables, TOKENS, train=False).shape == (2, 16, 256)
    count = sum(x.size for x in jax.tree.leaves(nn.unbox(variables["params"])))
    # Embedding 256x32; per block q, k, v 3x32x2x16, out 2x16x32, SwiGLU 3x32x64, two norms 2x32.
    per_block = 3 * 32 * 32 + 32 * 32 + 3 * 32 * 64 + 2 * 32
    assert count == 256 * 32 + 2 * per_block + 32
    untied = module(tied_embedding=False).init(jax.random.PRNGKey(0), TOKENS, train=False)
    assert sum(x.size for x in jax.tree.leaves(nn.unbox(untied["params"]))) == count + 32 * 256


@pytest.mark.parametrize("scan", [False, True])
def test_every_parameter_has_logical_axis_names(scan):
    params = module(scan_layers=scan, tied_embedding=False).init(
        jax.random.PRNGKey(0), TOKENS, train=False)["params"]
    leaves = jax.tree.leaves(params, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    assert all(isinstance(leaf, nn.LogicallyPartitioned) for leaf in leaves)
    names = {leaf.names for leaf in leaves}
    block = {("embed", "heads", "kv"), ("heads", "kv", "embed"), ("embed", "mlp"),
             ("mlp", "embed"), ("norm",)}
    layered = {("layers", *n) for n in block} if scan else block
    assert names == layered | {("vocab", "embed"), ("embed", "vocab"), ("norm",)}
    assert all(len(leaf.names) == leaf.value.ndim for leaf in leaves)


def test_scanned_layers_compute_the_same_as_unrolled_ones():
    unrolled = nn.unbox(module().init(jax.random.PRNGKey(0), TOKENS, train=False))["params"]
    layers = [unrolled.pop(f"layers_{i}") for i in range(2)]
    stacked = {**unrolled, "layers": jax.tree.map(lambda *x: jnp.stack(x), *layers)}
    expected = module().apply({"params": {**unrolled, **{f"layers_{i}": layer for i, layer
                                                          in enumerate(layers)}}},
                              TOKENS, train=False)
    scanned = module(scan_layers=True).apply({"params": stacked}, TOKENS, train=False)
    np.testing.assert_allclose(scanned, expected, atol=1e-5)


@pytest.mark.parametrize("scan", [False, True])
def test_remat_gives_the_same_logits_and_gradients(scan):
    params = nn.unbox(module(scan_layers=scan).init(jax.random.PRNGKey(0), TOKENS,
                                                    train=False))["params"]

    def loss(params, remat):
        logits = module(scan_layers=scan, remat=remat, dropout_rate=0.1).apply(
            {"params": params}, TOKENS, train=True, rngs={"dropout": jax.random.PRNGKey(1)})
        return optax.softmax_cross_entropy_with_integer_labels(logits, TOKENS).mean()

    (plain, plain_grads), (remat, remat_grads) = (
        jax.value_and_grad(loss)(params, r) for r in (False, True))
    assert remat == pytest.approx(float(plain), rel=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), remat_grads,
                 plain_grads)


def test_a_future_token_does_not_change_earlier_logits():
    model = module()
    variables = model.init(jax.random.PRNGKey(0), TOKENS, train=False)
    changed = TOKENS.at[:, 10].set((TOKENS[:, 10] + 1) % 256)
    before, after = (model.apply(variables, t, train=False) for t in (TOKENS, changed))
    np.testing.assert_array_equal(before[:, :10], after[:, :10])
    assert not np.allclose(before[:, 10:], after[:, 10:])


@pytest.mark.slow
@pytest.mark.parametrize("scan", [False, True])
def test_the_plugin_passes_the_conformance_checks(lm_plugins, scan):
    results = check_plugin("models", transformer_lm.plugin,
                           lm_config(model={"scan_layers": scan, "remat": scan}))
    assert {r.check for r in results if r.status == "skip"} <= {
        "import_leaves_jax_uninitialised", "model_convert_weights"}


def records(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_tensor_parallel_training_splits_heads_and_mlp_over_model_and_matches_one_device(
        tmp_path, lm_plugins):
    train = {"num_steps": 6, "log_every_steps": 2, "eval_every_steps": 0}
    for name, mesh in {"one": {"data": 1}, "tp": {"data": 2, "fsdp": 2, "model": 2}}.items():
        framework.train(framework.resolve_config(lm_config(
            mesh={**mesh, "fsdp_min_size": 1}, train=train)), tmp_path / name)
    _, state, _ = loop.restore(tmp_path / "tp")
    layer = state.params["layers_0"]
    assert layer["attention"]["query"]["kernel"].sharding.spec == P("fsdp", "model", None)
    assert layer["attention"]["out"]["kernel"].sharding.spec == P("model", None, "fsdp")
    assert layer["mlp"]["wi_gate"]["kernel"].sharding.spec == P("fsdp", "model")
    assert layer["mlp"]["wo"]["kernel"].sharding.spec == P("model", "fsdp")
    assert state.params["embedding"]["embedding"].sharding.spec == P("model", "fsdp")
    assert layer["attention_norm"]["scale"].sharding.spec == P(None)
    assert "query/kernel  (32, 2, 16)  float32  1,024  ('fsdp', 'model', None)" in (
        tmp_path / "tp" / "parameters.txt").read_text()
    tp, one = records(tmp_path / "tp"), records(tmp_path / "one")
    assert [r["train/loss"] for r in tp] == pytest.approx([r["train/loss"] for r in one],
                                                          rel=1e-4)


def param_specs(config):
    setup = loop.set_up(framework.resolve_config(config))
    return {framework.path_text(path): sharding.spec for path, sharding
            in jax.tree_util.tree_flatten_with_path(setup.state_sharding.params)[0]}


def test_scanned_layers_are_split_like_unrolled_ones_with_a_whole_layers_axis(lm_plugins):
    specs = param_specs(lm_config(model={"scan_layers": True},
                                  mesh={"data": 2, "fsdp": 2, "model": 2}))
    assert specs["layers/attention/query/kernel"] == P(None, "fsdp", "model", None)
    assert specs["layers/mlp/wo/kernel"] == P(None, "model", "fsdp")


def test_config_logical_axis_rules_replace_the_plugins(lm_plugins):
    specs = param_specs(lm_config(mesh={"data": 4, "model": 2,
                                        "logical_axis_rules": (("mlp", "model"),)}))
    assert specs["layers_0/mlp/wi_up/kernel"] == P(None, "model")
    assert specs["layers_0/attention/query/kernel"] == P(None, None, None)


@pytest.mark.parametrize("model, mesh, message", [
    ({"max_len": 8}, {}, "config.model.max_len=8 is shorter than the dataset's sequences "
                         "\\(16 tokens\\)"),
    ({"dataset": "synthetic"}, {}, "transformer_lm takes token sequences \\(input_shape "
                                   "\\(T,\\), an integer dtype\\); the dataset gives "
                                   "float32 examples of shape \\(28, 28, 1\\)"),
    ({"num_heads": 3}, {"data": 4, "model": 2},
     "annotation \\('embed', 'heads', 'kv'\\) splits dimension 1 of layers_0/attention/"
     "key/kernel \\(shape \\(32, 3, 16\\)\\).* 2 shards, which does not divide 3"),
    ({"mlp_dim": 30, "num_heads": 4, "head_dim": 8}, {"data": 2, "model": 4},
     "annotation \\('embed', 'mlp'\\) splits dimension 1 of layers_0/mlp/wi_gate/kernel "
     "\\(shape \\(32, 30\\)\\).* 4 shards, which does not divide 30"),
])
def test_bad_sizes_are_one_line_errors_before_training(tmp_path, lm_plugins, capsys, model,
                                                       mesh, message):
    model = dict(model)
    data = {"name": model.pop("dataset")} if "dataset" in model else {"name": BYTES}
    config = lm_config(model=model, mesh=mesh, dataset={**data, "batch_size": 8})
    with pytest.raises(framework.ConfigError, match=message):
        loop.set_up(framework.resolve_config(config))
    assert not (tmp_path / "run").exists()


def test_the_cli_reports_a_too_long_sequence_with_exit_status_2(tmp_path, lm_plugins, capsys):
    experiment = tmp_path / "lm.py"
    experiment.write_text(
        "from framework.testing import tiny_config\n\n\ndef get_config():\n"
        f"    return tiny_config(model={ {**TINY, 'max_len': 8} !r}, "
        f"dataset={ {'name': BYTES, 'batch_size': 8} !r})\n")
    status = main(["train", "--config", str(experiment), "--workdir", str(tmp_path / "run")])
    error = capsys.readouterr().err
    assert status == 2 and len(error.strip().splitlines()) == 1
    assert "max_len=8 is shorter than the dataset's sequences (16 tokens)" in error
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_plugins_malformed_logical_axis_rule_is_named_as_the_plugins(lm_plugins):
    broken = dataclasses.replace(transformer_lm.plugin, logical_axis_rules=(("heads", "tensor"),))
    with (framework.registry.registered("models", "broken_lm", broken),
          pytest.raises(framework.ConfigError, match="the model plugin's logical_axis_rules"
                                                     "\\[0\\]=\\('heads', 'tensor'\\)")):
        param_specs(lm_config(model={"name": "broken_lm"}))


@pytest.mark.slow
@pytest.mark.parametrize("mesh", [{"data": 2, "model": 4}])
def test_a_tensor_parallel_checkpoint_resumes_under_another_mesh(tmp_path, lm_plugins, mesh):
    def run(workdir, mesh, steps):
        config = lm_config(model={"num_heads": 4, "head_dim": 8},
                           mesh={**mesh, "fsdp_min_size": 1}, checkpoint={"every_steps": 4},
                           train={"num_steps": steps, "log_every_steps": 2,
                                  "eval_every_steps": 0})
        return framework.train(framework.resolve_config(config), workdir,
                               allow_config_change=True)

    tp = {"data": 2, "fsdp": 2, "model": 2}
    run(tmp_path / "straight", tp, 8)
    run(tmp_path / "moved", tp, 4)
    assert run(tmp_path / "moved", mesh, 8)["resumed_from_step"] == 4
    experiment, moved, _ = loop.restore(tmp_path / "moved")
    assert dict(experiment.mesh.shape) == {"data": 1, "fsdp": 1, "model": 1, **mesh}
    query = moved.params["layers_0"]["attention"]["query"]["kernel"]
    assert query.sharding.shard_shape(query.shape) == (32, 4 // mesh.get("model", 1), 8)
    straight = loop.restore(tmp_path / "straight")[1]
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                 jax.device_get(moved.params), jax.device_get(straight.params))
