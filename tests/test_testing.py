"""framework.testing: every built-in plugin conforms; broken plugins fail with the reason."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
import tensorflow_datasets as tfds
from test_registry import make_distribution

import framework
from framework.cli import main
from framework.registry import PluginError, registry
from framework.testing import (
    ConformanceError,
    check_plugin,
    checks_for,
    parametrize_with_checks,
    run_checks,
    tiny_config,
)

SMALL = {"resnet": tiny_config(model={"name": "resnet", "stage_sizes": (1,), "width": 4}),
         # A few files of the standard library, prepared under the test's XDG_CACHE_HOME.
         "text": tiny_config(dataset={"name": "text", "max_bytes": 100_000, "seq_len": 16,
                                      "eval_fraction": 0.3})}
BUILTINS = [(info.kind, info.id, SMALL.get(info.name))
            for info in registry.infos() if info.distribution == "jaxforge"]


def test_every_builtin_entry_point_is_checked():
    assert {plugin_id for _, plugin_id, _ in BUILTINS} >= {
        "jaxforge:cnn", "jaxforge:cnn_nnx", "jaxforge:mlp", "jaxforge:resnet",
        "jaxforge:digits", "jaxforge:synthetic", "jaxforge:tfds", "jaxforge:l1", "jaxforge:l2",
        "jaxforge:sgd", "jaxforge:adam", "jaxforge:adamw"}


@pytest.mark.slow
@parametrize_with_checks(BUILTINS)
def test_builtin_plugins_conform(check, monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # Prepared data stays out of ~/.cache.
    with tfds.testing.mock_data(num_examples=64):  # The tfds plugin reads MNIST: mock it offline.
        check()


# Deliberately broken plugins -----------------------------------------------------------------


def failures(kind, plugin, config=None):
    return {r.check: r.message for r in run_checks(kind, plugin, config) if r.status == "fail"}


class Linear(nn.Module):
    num_classes: int
    param_dtype: object = jnp.float32

    @nn.compact
    def __call__(self, x, *, train):
        return nn.Dense(self.num_classes, param_dtype=self.param_dtype)(
            x.reshape((x.shape[0], -1)))


def model_plugin(build, **fields):
    return framework.Plugin(build=build, api_version=framework.PLUGIN_API_VERSION,
                            default_config=lambda: ml_collections.ConfigDict(fields))


def test_a_conforming_in_process_model_passes_and_skips_only_the_import_check():
    good = model_plugin(lambda config, metadata, dtype: Linear(metadata.num_classes))
    results = check_plugin("model", good)
    assert [r.check for r in results] == [c.name for c in checks_for("models")]
    assert {r.check for r in results if r.status == "skip"} == {
        "import_leaves_jax_uninitialised", "model_convert_weights"}  # No convert_weights.


def test_wrong_output_shape_fails_and_says_what_is_wanted():
    wrong = model_plugin(lambda config, metadata, dtype: Linear(metadata.num_classes + 1))
    with pytest.raises(ConformanceError) as error:
        check_plugin("models", wrong)
    message = str(error.value)
    assert "failed 1 of 10 conformance checks" in message and "model_init_and_apply" in message
    assert "float32[32, 5]" in message and "(batch, num_classes) = (32, 4)" in message
    assert "The contract: under jax.jit" in message


def _layer_named(config):
    name = config.layer  # A str where the plugin expected a class.
    return name(4)  # The line the failure must point at.


def crashing_build(config, metadata, dtype):
    return _layer_named(config)


CRASH_LINE = _layer_named.__code__.co_firstlineno + 2


def test_a_plugin_that_crashes_shows_where_in_its_own_code():
    crashing = model_plugin(crashing_build, layer="dense")
    message = failures("models", crashing)["model_builds"]
    assert message.startswith("It raised TypeError: 'str' object is not callable\n")
    assert f'test_testing.py", line {CRASH_LINE}, in _layer_named\n' in message
    assert "    return name(4)" in message and "in crashing_build" in message
    assert "framework/model.py" not in message  # The framework's own frames are left out.
    with pytest.raises(ConformanceError, match=f"test_testing.py\", line {CRASH_LINE}"):
        check_plugin("models", crashing)


def test_plugins_check_shows_the_crash_and_with_verbose_the_whole_traceback(capsys):
    with registry.registered("models", "crashing", model_plugin(crashing_build, layer="x")):
        assert main(["plugins", "check", "local:crashing"]) == 1
        out = capsys.readouterr().out
        assert f'test_testing.py", line {CRASH_LINE}, in _layer_named' in out
        assert "Traceback (most recent call last)" not in out
        assert main(["plugins", "check", "local:crashing", "--verbose"]) == 1
        out = capsys.readouterr().out
        assert "Traceback (most recent call last)" in out and "framework/model.py" in out


def test_params_in_the_compute_dtype_fail_mixed_precision():
    half = model_plugin(lambda config, metadata, dtype: Linear(metadata.num_classes, dtype))
    assert "parameters are ['bfloat16']; keep them float32" in failures("models", half)[
        "model_mixed_precision"]


def test_python_randomness_in_a_model_fails_determinism():
    rng = np.random.default_rng()
    noisy = model_plugin(lambda config, metadata, dtype: NoisyLinear(metadata.num_classes,
                                                                     float(rng.random())))
    assert "A second build initialised with the same rng gave different variables" in failures(
        "models", noisy)["model_deterministic"]


class NoisyLinear(nn.Module):
    num_classes: int
    offset: float

    @nn.compact
    def __call__(self, x, *, train):
        bias_init = nn.initializers.constant(self.offset)
        return nn.Dense(self.num_classes, bias_init=bias_init)(x.reshape((x.shape[0], -1)))


def dataset_plugin(build):
    return framework.Plugin(build=build, api_version=framework.PLUGIN_API_VERSION,
                            default_config=lambda: ml_collections.ConfigDict({"size": 64}))


def arrays(rng, count):
    return {"inputs": rng.standard_normal((count, 4, 4, 1)).astype(np.float32),
            "label": rng.integers(0, 4, count).astype(np.int32)}


def metadata(config):
    return framework.DatasetMetadata((4, 4, 1), 4, config.size, config.size)


def test_a_non_deterministic_dataset_fails():
    def build(config, context):  # Draws its data from fresh OS entropy: a seed cannot pin it.
        rng = np.random.default_rng()
        return framework.ArraySource(arrays(rng, config.size), arrays(rng, config.size),
                                     metadata(config), config, context)

    failed = failures("datasets", dataset_plugin(build))
    assert set(failed) == {"dataset_deterministic", "dataset_shards", "dataset_restorable"}
    assert "Train batch 0 differs between two sources built with seed 0" in failed[
        "dataset_deterministic"]
    assert "The contract: two sources built with the same seed" in failed["dataset_deterministic"]


def test_shards_that_ignore_the_process_index_fail():
    def build(config, context):
        rng = np.random.default_rng(0)
        context = framework.DataContext(context.seed, 0, context.process_count)  # Ignores it.
        return framework.ArraySource(arrays(rng, config.size), arrays(rng, config.size),
                                     metadata(config), config, context)

    assert "shards together are not the batch one process gets" in failures(
        "datasets", dataset_plugin(build))["dataset_shards"]


class ForgetfulSource:
    """Batches that disagree with the metadata, and an iterator that cannot be restored."""

    def __init__(self, config, context):
        self.metadata = framework.DatasetMetadata((4, 4, 1), 4, 64, 10)
        self.config = config

    def train_iterator(self):
        return ForgetfulIterator(self.config.batch_size)

    def eval_batches(self):
        for _ in range(2):
            yield {"inputs": np.zeros((32, 4, 4), np.float64), "label": np.zeros(32, np.int32),
                   "mask": np.ones(32, bool)}


class ForgetfulIterator:
    def __init__(self, batch_size):
        self.batch_size, self.position = batch_size, 0

    def __next__(self):
        self.position += 1
        return {"inputs": np.full((self.batch_size, 4, 4, 1), self.position, np.float32),
                "label": np.full(self.batch_size, 7, np.int32)}

    def get_state(self):
        return {"position": np.int64(self.position)}

    def set_state(self, state):
        pass


def test_dataset_contract_violations_are_each_named():
    failed = failures("datasets", dataset_plugin(ForgetfulSource))
    assert "values outside [0, num_classes=4): [7]" in failed["dataset_train_batches"]
    assert "examples of shape (4, 4), but the metadata promises input_shape=(4, 4, 1)" in failed[
        "dataset_eval_batches"]
    assert "get_state() returned {'position': np.int64(2)}, which is not JSON-serialisable" in (
        failed["dataset_restorable"])


def test_broken_regularizer_optimizer_augmentation_and_callback_fail():
    vector = framework.Plugin(build=lambda config: lambda params, batch, outputs: outputs.sum(0),
                              api_version=1, default_config=lambda: ml_collections.ConfigDict(
                                  {"weight": 1.0}))
    assert "it must be a float scalar" in failures("regularizers", vector)[
        "regularizer_under_jit"]
    first_leaf_only = framework.Plugin(api_version=1, build=lambda config: (
        optax.GradientTransformation(lambda params: (),
                                     lambda updates, state, params=None: (
                                         jax.tree.leaves(updates)[0], state))))
    assert "The regularizer's update has the structure PyTreeDef(*)" in failures(
        "regularizers", first_leaf_only)["regularizer_under_jit"]
    weightless = framework.Plugin(build=lambda config: lambda params, batch, outputs: 0.0,
                                  api_version=1)
    assert "has no `weight` field" in failures("regularizers", weightless)["regularizer_builds"]
    not_optax = framework.Plugin(build=lambda config, num_steps: "sgd", api_version=1)
    assert "build() returned a str" in failures("optimizers", not_optax)["optimizer_builds"]
    to_int = framework.Plugin(api_version=1, build=lambda config: lambda rng, batch: {
        **batch, "inputs": batch["inputs"].astype(jnp.int32)})
    assert "turned batch['inputs'] from float32[32, 4, 4, 1] into int32[32, 4, 4, 1]" in failures(
        "augmentations", to_int)["augmentation_keeps_batch"]
    assert "build() returned an instance of object, without on_log" in failures(
        "callbacks", framework.Plugin(build=lambda config: object(), api_version=1))[
        "callback_builds"]


def test_conforming_output_penalty_augmentation_and_callback_pass():
    def confidence(config):  # Penalises confident logits: uses the model's outputs.
        return lambda params, batch, logits: jnp.mean(jax.nn.logsumexp(logits, axis=-1) ** 2)

    check_plugin("regularizers", framework.Plugin(
        build=confidence, api_version=1,
        default_config=lambda: ml_collections.ConfigDict({"weight": 1e-3})))
    check_plugin("regularizers", framework.Plugin(  # A transformation: decoupled weight decay.
        build=lambda config: optax.add_decayed_weights(config.rate), api_version=1,
        default_config=lambda: ml_collections.ConfigDict({"rate": 1e-4})))

    def flip(config):
        def augment(rng, batch):
            flipped = jax.random.bernoulli(rng, config.probability, (len(batch["inputs"]),))
            inputs = jnp.where(flipped[:, None, None, None], batch["inputs"][:, :, ::-1],
                               batch["inputs"])
            return {**batch, "inputs": inputs}
        return augment

    augmentation = framework.Plugin(build=flip, api_version=1, default_config=lambda:
                                    ml_collections.ConfigDict({"probability": 0.5}))
    check_plugin("augmentations", augmentation)

    class Patience(framework.Callback):
        def on_eval(self, step, metrics, state):
            self.stop_training = metrics["eval/loss"] > 10.0

    check_plugin("callbacks", framework.Plugin(build=lambda config: Patience(), api_version=1))


def test_wrong_api_version_and_default_config_fail():
    old = framework.Plugin(build=lambda config, metadata, dtype: Linear(metadata.num_classes),
                           api_version=0)
    assert "declares api_version=0; this jaxforge implements 1" in failures("models", old)[
        "api_version"]
    plain = framework.Plugin(build=lambda config, num_steps: None, api_version=1,
                             default_config=lambda: {"learning_rate": 0.1})
    assert "default_config() returned a dict" in failures("optimizers", plain)["default_config"]


@pytest.fixture
def broken_distribution(tmp_path, monkeypatch, jaxforge_registry):
    """Installed plugins that crash on import, or start JAX at import."""
    monkeypatch.delenv("JAXFORGE_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    make_distribution(tmp_path, "broken-kit", {"jaxforge.models": {
        "crashes": "broken_kit_crash:plugin", "eager": "broken_kit_eager:plugin"}}, {
        "broken_kit_crash": "raise ImportError('libfoo.so: cannot open shared object file')\n",
        "broken_kit_eager": """
            import jax.numpy as jnp
            import framework
            from plugins.models.mlp import plugin as mlp
            OFFSET = jnp.zeros(())  # An array at import time starts a JAX backend.
            plugin = mlp
        """})
    monkeypatch.syspath_prepend(str(tmp_path))
    return jaxforge_registry


def test_a_plugin_that_crashes_on_import_fails_loading_with_the_reason(broken_distribution):
    failed = failures("models", "broken_kit:crashes")
    assert "failed to load (distribution broken-kit 1.0, entry point crashes = " in failed["loads"]
    assert "libfoo.so: cannot open shared object file" in failed["loads"]
    assert "ImportError: libfoo.so" in failed["import_leaves_jax_uninitialised"]
    assert "model_init_and_apply" in failed  # Nothing can be checked on it.


def test_a_plugin_that_starts_jax_at_import_fails(broken_distribution):
    failed = failures("models", "broken_kit:eager")
    assert set(failed) == {"import_leaves_jax_uninitialised"}
    assert "Importing broken_kit_eager initialised a JAX backend" in failed[
        "import_leaves_jax_uninitialised"]
    assert "jax.distributed.initialize() first" in failed["import_leaves_jax_uninitialised"]


def test_unknown_and_ambiguous_ids_are_errors():
    with pytest.raises(PluginError, match="Did you mean 'resnet'"):
        run_checks("models", "resnt")
    with pytest.raises(PluginError, match="No plugin named 'nothing'"):
        parametrize_with_checks(["nothing"])


# jaxforge plugins check ----------------------------------------------------------------------


def test_plugins_check_prints_a_table_and_exits_0_when_all_pass(capsys):
    assert main(["plugins", "check", "synthetic", "jaxforge:digits"]) == 0
    out = capsys.readouterr().out
    assert "jaxforge:synthetic (dataset, jaxforge" in out and "jaxforge:digits (dataset" in out
    assert "  CHECK " in out and "  dataset_shards " in out and " FAIL " not in out
    assert out.rstrip().endswith("2 plugin(s) checked: 2 passed, 0 failed.")


def test_plugins_check_exits_1_naming_the_failures(broken_distribution, capsys):
    assert main(["plugins", "check", "broken_kit:crash*", "synthetic"]) == 1
    out = capsys.readouterr().out
    assert "  loads                            FAIL" in out
    assert "libfoo.so: cannot open shared object file" in out
    assert out.rstrip().endswith("2 plugin(s) checked: 1 passed, 1 failed (broken_kit:crashes).")


@pytest.mark.parametrize("args, message", [
    (["nosuch"], "No plugin named 'nosuch'. `jaxforge plugins list` shows them all."),
    (["nosuch:*"], "No installed plugin matches 'nosuch:*'"),
    (["cnn", "--config", "missing.py"], "Config file 'missing.py' does not exist"),
    (["cnn", "--config.model"], "--config.model has no value"),
])
def test_plugins_check_exits_2_for_what_it_cannot_check(capsys, args, message):
    assert main(["plugins", "check", *args]) == 2
    captured = capsys.readouterr()
    assert message in captured.err and captured.out == ""


# The pytest plugin ---------------------------------------------------------------------------


def test_isolated_registry_forgets_what_a_test_registered(jaxforge_registry):
    plugin = model_plugin(lambda config, metadata, dtype: Linear(metadata.num_classes))
    with registry.isolated():
        registry.register("models", "scratch", plugin)
        assert registry.resolve("models", "scratch").id == "local:scratch"
    with pytest.raises(PluginError, match="Unknown model plugin 'scratch'"):
        registry.resolve("models", "scratch")


@pytest.mark.slow
def test_pytest_plugin_fixtures_and_parametrize_in_a_plugin_authors_tests(pytester):
    pytester.makepyfile(test_author="""
        import ml_collections
        import framework
        from framework.testing import parametrize_with_checks

        import flax.linen as nn

        class Dense(nn.Module):
            num_classes: int

            @nn.compact
            def __call__(self, x, *, train):
                return nn.Dense(self.num_classes)(x.reshape((x.shape[0], -1)))

        def build(config, metadata, dtype):
            return Dense(metadata.num_classes)

        plugin = framework.Plugin(build=build, api_version=1)

        def test_fixtures(jaxforge_registry, jaxforge_tiny_config, tmp_path):
            jaxforge_registry.register("models", "dense", plugin)
            config = jaxforge_tiny_config(model={"name": "dense"},
                                          train={"num_steps": 4, "log_every_steps": 2,
                                                 "eval_every_steps": 4},
                                          checkpoint={"every_steps": 4})
            summary = framework.train(framework.resolve_config(config), tmp_path)
            assert summary["steps"] == 4

        def test_registration_did_not_leak():
            assert "local:dense" not in {i.id for i in framework.registry.infos("models")}

        @parametrize_with_checks([("models", plugin)])
        def test_conformance(check):
            check()
    """)
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2 + 8, skipped=2)  # The import and convert_weights checks.
