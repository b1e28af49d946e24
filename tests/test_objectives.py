"""Beyond classification: a sequence model and a regression model train through the loop,
their losses and metrics averaged per target, padding counting for nothing."""

import json
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import framework
from framework import loop
from framework.loss import batch_means, eval_sums
from framework.model import classification_loss
from framework.testing import parametrize_with_checks, run_checks
from framework.workdir import config_changes

VOCAB, LENGTH = 8, 6


def token_split(rng, count):
    """Sequences that count up modulo VOCAB from a random start: the next token is learnable
    from the current one. The last targets of odd examples are padding, labelled -1."""
    start = rng.integers(0, VOCAB, (count, 1))
    tokens = ((start + np.arange(LENGTH + 1)) % VOCAB).astype(np.int32)
    mask = np.ones((count, LENGTH), np.float32)
    mask[1::2, -2:] = 0.0
    label = np.where(mask > 0, tokens[:, 1:], -1).astype(np.int32)
    return {"inputs": tokens[:, :-1], "label": label, "label_mask": mask}


def build_tokens(config, context):
    rng = np.random.default_rng(0)
    train, evaluation = token_split(rng, config.num_train), token_split(rng, config.num_eval)
    metadata = framework.DatasetMetadata(
        input_shape=(LENGTH,), input_dtype="int32", target_shape=(LENGTH,),
        target_dtype="int32", num_classes=VOCAB, num_train=config.num_train,
        num_eval=config.num_eval)
    return framework.ArraySource(train, evaluation, metadata, config, context)


class TokenModel(nn.Module):
    """Embedding, then a Dense over each token: logits [B, T, vocab]."""

    vocab: int

    @nn.compact
    def __call__(self, tokens, *, train):
        return nn.Dense(self.vocab)(nn.Embed(self.vocab, 16)(tokens))


class ValueModel(nn.Module):
    """One Dense: a float per target."""

    outputs: int

    @nn.compact
    def __call__(self, x, *, train):
        return nn.Dense(self.outputs)(x)


def build_values(config, context):
    """Regression: two float targets per example, a fixed linear map of four inputs."""
    rng = np.random.default_rng(0)
    weights = rng.standard_normal((4, 2)).astype(np.float32)

    def split(count):
        inputs = rng.standard_normal((count, 4)).astype(np.float32)
        return {"inputs": inputs, "label": inputs @ weights}

    metadata = framework.DatasetMetadata(
        input_shape=(4,), target_shape=(2,), target_dtype="float32", num_classes=0,
        num_train=config.num_train, num_eval=config.num_eval)
    return framework.ArraySource(split(config.num_train), split(config.num_eval), metadata,
                                 config, context)


def split_sizes():
    return framework.fields(num_train=(256, "Train examples."), num_eval=(50, "Eval examples."))


TOKENS = framework.Plugin(build=build_tokens, default_config=split_sizes, api_version=1)
VALUES = framework.Plugin(build=build_values, default_config=split_sizes, api_version=1)
TOKEN_MODEL = framework.Plugin(build=lambda config, metadata, dtype: TokenModel(
    metadata.num_classes), api_version=1)
VALUE_MODEL = framework.Plugin(build=lambda config, metadata, dtype: ValueModel(
    metadata.target_shape[0]), api_version=1)


@pytest.fixture(autouse=True)
def in_process_plugins():
    registry = framework.registry
    with registry.registered("datasets", "tokens", TOKENS), \
            registry.registered("datasets", "values", VALUES), \
            registry.registered("models", "token_model", TOKEN_MODEL), \
            registry.registered("models", "value_model", VALUE_MODEL):
        yield


def experiment(dataset, model, loss, **train):
    return ml_collections.ConfigDict({
        "model": {"name": model}, "dataset": {"name": dataset, "batch_size": 32},
        "loss": {"name": loss}, "optimizer": {"name": "adam", "learning_rate": 0.05},
        "train": {"num_steps": 30, "log_every_steps": 10, "eval_every_steps": 30,
                  "best_metric": "eval/loss", "best_mode": "min", **train},
        "checkpoint": {"every_steps": 30}})


SEQUENCE = experiment("tokens", "token_model", "cross_entropy", num_steps=12,  # Half learnt.
                      log_every_steps=4, eval_every_steps=12)
REGRESSION = experiment("values", "value_model", "mse")


def records(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def eval_split_and_logits(workdir, keys):
    """The eval split (its real examples) and the final state's outputs on it."""
    setup, state, _ = loop.restore(workdir)
    batches = list(setup.data.eval_batches())
    split = {k: np.concatenate([b[k][b["mask"]] for b in batches]) for k in keys}
    outputs, _ = setup.model.apply({"params": state.params}, jnp.asarray(split["inputs"]),
                                   False)
    return split, np.asarray(outputs, np.float64)


@pytest.mark.slow
def test_a_sequence_model_trains_with_per_token_metrics_that_exclude_padding(tmp_path):
    summary = framework.train(framework.resolve_config(SEQUENCE), tmp_path)
    lines = records(tmp_path)
    assert lines[-1]["train/loss"] < 0.7 * lines[0]["train/loss"]
    assert lines[0]["train/perplexity"] == pytest.approx(math.exp(lines[0]["train/loss"]))
    final = summary["final"]
    split, logits = eval_split_and_logits(tmp_path, ("inputs", "label", "label_mask"))
    assert len(split["label"]) == 50  # 2 eval batches of 32, the last padded with 14 rows.
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    counted = split["label_mask"] > 0
    labels = np.where(counted, split["label"], 0)
    token_loss = -np.take_along_axis(log_probs, labels[..., None], -1)[..., 0]
    correct = logits.argmax(-1) == labels
    assert final["eval/loss"] == pytest.approx(token_loss[counted].mean(), rel=1e-4)
    assert final["eval/accuracy"] == pytest.approx(correct[counted].mean(), rel=1e-6)
    assert final["eval/perplexity"] == pytest.approx(math.exp(token_loss[counted].mean()),
                                                     rel=1e-4)
    assert final["eval/bits_per_token"] == pytest.approx(final["eval/loss"] / math.log(2))
    # Per token, not per example: the mean of the examples' means differs.
    per_example = (token_loss * counted).sum(-1) / counted.sum(-1)
    assert abs(per_example.mean() - final["eval/loss"]) > 1e-3 * final["eval/loss"]


@pytest.mark.slow
def test_a_regression_model_trains_with_mse_per_target(tmp_path):
    summary = framework.train(framework.resolve_config(REGRESSION), tmp_path)
    lines = records(tmp_path)
    assert lines[-1]["train/loss"] < 0.2 * lines[0]["train/loss"]
    split, outputs = eval_split_and_logits(tmp_path, ("inputs", "label"))
    error = np.mean(np.square(outputs - split["label"]))
    assert summary["final"]["eval/loss"] == pytest.approx(error, rel=1e-4)
    assert summary["final"]["eval/rmse"] == pytest.approx(math.sqrt(error), rel=1e-4)


def test_a_models_own_loss_wins_and_the_loss_plugin_is_not_built(tmp_path):
    """A regression model with its own loss trains on float targets although the default
    loss, cross_entropy, would refuse them."""
    def own_loss(outputs, batch):
        return jnp.mean(jnp.square(outputs - batch["label"]), axis=-1), {}

    model = framework.Plugin(build=VALUE_MODEL.build, loss=own_loss, api_version=1)
    config = experiment("values", "own_loss_model", "cross_entropy", num_steps=2,
                        log_every_steps=1)
    with framework.registry.registered("models", "own_loss_model", model):
        framework.train(framework.resolve_config(config), tmp_path)
    assert set(records(tmp_path)[-1]) >= {"train/loss", "eval/loss"}


def test_a_loss_that_does_not_fit_the_targets_is_a_config_error(tmp_path):
    config = experiment("values", "value_model", "cross_entropy")
    with pytest.raises(framework.ConfigError, match="needs integer targets.*loss.name=mse"):
        framework.train(framework.resolve_config(config), tmp_path)


def test_a_weighted_loss_averages_per_target_and_padding_only_gives_zero():
    result = framework.WeightedLoss(jnp.array([3.0, 1.0, 0.0]), {"accuracy": jnp.array(
        [2.0, 1.0, 0.0])}, jnp.array([3.0, 1.0, 0.0]))
    loss, means = batch_means(result)
    assert float(loss) == 1.0 and float(means["accuracy"]) == 0.75
    sums, count = eval_sums(result, jnp.array([1.0, 0.0, 1.0]))  # The second is eval padding.
    assert float(sums["loss"]) == 3.0 and float(count) == 3.0
    padding = jax.grad(lambda x: batch_means(framework.WeightedLoss(
        x * 0.0, {}, jnp.zeros(2)))[0])(jnp.ones(2))
    assert np.all(np.isfinite(padding))


def test_a_workdir_written_before_the_loss_section_resumes_with_the_default(tmp_path):
    config = framework.resolve_config(framework.testing.tiny_config())
    written = config.to_dict()
    del written["loss"]
    (tmp_path / "config.json").write_text(json.dumps(written))
    assert config_changes(tmp_path, config) == []
    other = framework.resolve_config(framework.testing.tiny_config(loss={"name": "mse"}))
    assert config_changes(tmp_path, other) == ["loss.name: '<absent>' -> 'mse'"]


def test_cross_entropy_on_classes_is_classification_loss_with_mixup_labels():
    metadata = framework.DatasetMetadata(input_shape=(3,), num_classes=5, num_train=1,
                                         num_eval=1)
    loss = framework.registry.load("losses", "cross_entropy").build(None, metadata)
    logits = jax.random.normal(jax.random.PRNGKey(0), (4, 5))
    batch = {"label": jnp.array([0, 1, 2, 3]), "label_b": jnp.array([4, 4, 0, 0]),
             "label_weight": jnp.array([0.5, 1.0, 0.2, 0.0])}
    jax.tree.map(np.testing.assert_array_equal, loss(logits, batch),
                 classification_loss(logits, batch))


def test_label_smoothing_on_tokens_counts_only_the_masked_in_targets():
    penalty = framework.registry.load("regularizers", "label_smoothing").build(
        ml_collections.ConfigDict({"weight": 0.1}))
    logits = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 5))
    label = jnp.array([[1, 2, 3], [4, 0, 99]])  # 99: padding, any id.
    mask = jnp.array([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    log_probs = jax.nn.log_softmax(logits)
    safe = jnp.where(mask > 0, label, 0)
    bracket = -log_probs.mean(-1) + jnp.take_along_axis(log_probs, safe[..., None], -1)[..., 0]
    value = penalty(None, {"label": label, "label_mask": mask}, logits)
    assert float(value) == pytest.approx(float(jnp.sum(bracket * mask) / 5), rel=1e-6)


@pytest.mark.slow
@parametrize_with_checks([
    ("losses", "cross_entropy", SEQUENCE), ("losses", "mse", REGRESSION),
    ("datasets", TOKENS, SEQUENCE), ("models", TOKEN_MODEL, SEQUENCE),
    ("datasets", VALUES, REGRESSION), ("models", VALUE_MODEL, REGRESSION),
])
def test_sequence_and_regression_plugins_conform(check):
    check()


def test_a_sequence_dataset_breaking_its_metadata_fails_its_checks():
    def wrong_shape(config, context):  # Labels one token short of target_shape.
        rng = np.random.default_rng(0)
        train, evaluation = token_split(rng, config.num_train), token_split(rng, config.num_eval)
        train["label"] = train["label"][:, :-1]
        return framework.ArraySource(train, evaluation,
                                     build_tokens(config, context).metadata, config, context)

    plugin = framework.Plugin(build=wrong_shape, default_config=split_sizes, api_version=1)
    failed = {r.check: r.message for r in run_checks("datasets", plugin, SEQUENCE)
              if r.status == "fail"}
    assert "promises target_shape=(6,)" in failed["dataset_train_batches"]
