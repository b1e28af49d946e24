"""Generation: cached decoding equals recomputing, a seed fixes the text, each step compiles once,
and a trained run generates through `jaxforge generate` and from Python."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_transformer_lm import lm_config, lm_plugins, module  # noqa: F401 (a fixture)

import framework
from framework import generate as generate_lib
from framework.cli import main
from framework.generate import Generator, sample

PROMPT = [int(b) for b in b"def add(a"]


def trained_free_params(**fields):
    return nn.unbox(module(**fields).init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32),
                                          train=False))["params"]


@pytest.mark.parametrize("scan", [False, True])
def test_cached_decoding_gives_the_logits_of_recomputing_the_whole_sequence(scan):
    model, params = module(scan_layers=scan), trained_free_params(scan_layers=scan)
    generator = Generator(model, params, length=24)
    tokens = jnp.zeros((1, 24), jnp.int32).at[0, :len(PROMPT)].set(jnp.asarray(PROMPT))
    rng = jax.random.PRNGKey(0)
    token, logits, cache = generator.prefill(params, tokens, jnp.int32(len(PROMPT)), rng,
                                             temperature=1.0, top_k=0)
    sequence, cached = list(PROMPT), [logits[0]]
    for position in range(len(PROMPT), 20):
        sequence.append(int(token[0]))
        token, logits, cache = generator.decode(params, cache, token, jnp.int32(position), rng,
                                                temperature=1.0, top_k=0)
        cached.append(logits[0])
    full = model.apply({"params": params}, jnp.asarray([sequence]), train=False)[0]
    np.testing.assert_allclose(np.stack(cached), full[len(PROMPT) - 1:], atol=1e-5)
    assert generator.decode._cache_size() == 1  # One compilation for every token.


def test_the_same_seed_gives_the_same_tokens_and_another_seed_others():
    generator = Generator(module(), trained_free_params(), length=40)
    first, again, other = (generator.generate(PROMPT, 30, temperature=1.0, top_k=0, seed=s)
                           for s in (0, 0, 1))
    assert first == again and first != other and len(first) == 30


def test_sampling_at_temperature_zero_or_top_k_one_takes_the_most_probable_token():
    logits = jax.random.normal(jax.random.PRNGKey(0), (4, 256))
    expected = np.argmax(logits, axis=-1)
    for temperature, top_k in ((0.0, 0), (5.0, 1)):
        tokens = sample(logits, jax.random.PRNGKey(1), temperature, top_k)
        np.testing.assert_array_equal(tokens, expected)
    top3 = np.argsort(-np.asarray(logits), axis=-1)[:, :3]
    for seed in range(20):
        tokens = np.asarray(sample(logits, jax.random.PRNGKey(seed), 2.0, 3))
        assert all(t in row for t, row in zip(tokens, top3, strict=True))


def test_a_text_longer_than_the_cache_or_an_empty_prompt_is_an_error():
    generator = Generator(module(), trained_free_params(), length=16)
    with pytest.raises(framework.JaxforgeError, match="9 tokens\\) and max_new_tokens=8 make "
                                                      "17 tokens; this model takes at most 16"):
        generator.generate(PROMPT, 8)
    with pytest.raises(framework.JaxforgeError, match="The prompt is empty"):
        generator.generate([], 8)


def test_a_model_without_a_cache_cannot_generate():
    with pytest.raises(framework.JaxforgeError, match="takes no `decode` and `start`"):
        Generator(nn.Dense(4), {}, length=8)


@pytest.mark.slow
@pytest.mark.usefixtures("lm_plugins")
def test_a_trained_run_generates_from_the_cli_and_from_python(tmp_path, capsys):
    framework.train(framework.resolve_config(lm_config(
        mesh={"data": 1}, train={"num_steps": 60, "log_every_steps": 20,
                                 "eval_every_steps": 0})), tmp_path)
    capsys.readouterr()
    flags = ["--workdir", str(tmp_path), "--prompt", "def ", "--max_new_tokens", "40",
             "--temperature", "0.8", "--top_k", "40", "--seed", "0"]
    assert main(["generate", *flags]) == 0
    printed = capsys.readouterr().out
    text = generate_lib.generate(tmp_path, "def ", 40, temperature=0.8, top_k=40, seed=0)
    assert printed == "def " + text + "\n"
    loaded = framework.load(tmp_path)
    assert text != generate_lib.generate_text(loaded, "def ", 40, seed=1)
    greedy = generate_lib.generate_text(loaded, "def ", 40, temperature=0.0)
    assert greedy.startswith(("add(a, b):\n    return a", "mul(a, b):\n    return a"))
    with pytest.raises(framework.JaxforgeError, match="this model takes at most 64 \\(its "
                                                      "max_len\\)"):
        generate_lib.generate_text(loaded, "def ", 61)


class Letters:
    """A tokenizer of the letters a-z: ids 0..25."""

    vocab_size = 26

    def encode(self, text):
        return [ord(c) - ord("a") for c in text]

    def decode(self, ids):
        return "".join(chr(ord("a") + i) for i in ids)


def test_the_tokenizer_is_the_datasets_and_must_match_the_vocabulary(tiny):
    plugin = framework.Plugin(build=lambda config, context: None, tokenizer=lambda c: Letters(),
                              api_version=framework.PLUGIN_API_VERSION)
    with framework.registry.registered("datasets", "letters", plugin):
        config = tiny(dataset={"name": "letters"})
        assert isinstance(generate_lib.tokenizer_for(config, 26), Letters)
        with pytest.raises(framework.JaxforgeError, match="tokenizer has 26 ids but the model "
                                                          "256"):
            generate_lib.tokenizer_for(config, 256)
    assert generate_lib.tokenizer_for(tiny(), 256).encode("é") == [0xC3, 0xA9]  # Bytes.
    with pytest.raises(framework.JaxforgeError, match="gives no tokenizer, and the model's "
                                                      "vocabulary \\(4\\) is not bytes"):
        generate_lib.tokenizer_for(tiny(), 4)
