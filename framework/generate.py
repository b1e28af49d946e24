"""Text from a trained language model: a cached prefill and decode step, each compiled once.

`Generator` holds two jitted functions over a Linen module that keeps a key/value cache
(`__call__(tokens, *, train, decode, start)`, see framework/plugin.py): `prefill` runs the prompt,
padded to the cache's fixed length, through the model in one call and samples the first new token
from the logits at the prompt's last position; `decode` feeds one token at its position and
samples the next. Every call of either has the same shapes, so a whole text compiles each once.
The keys and values prefill writes past the prompt (of padding) are overwritten by the decode
steps before any query can see them: a query at position p attends to positions up to p only.

`generate(workdir, prompt)` loads a run's checkpoint (`framework.load`) and its dataset's
tokenizer, and returns the new text (`generate_text` does the same for a model loaded once);
`jaxforge generate` prints the prompt and that text.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from framework import kinds
from framework.errors import JaxforgeError
from framework.registry import registry
from framework.tokenizers import ByteTokenizer, Tokenizer


def sample(logits: jax.Array, rng: jax.Array, temperature: float, top_k: int) -> jax.Array:
    """One token id per row of `logits` [B, vocab]: the most probable at temperature 0, else
    drawn from softmax(logits / temperature) restricted to the `top_k` most probable (0: all)."""
    if temperature == 0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits.astype(jnp.float32) / temperature
    if 0 < top_k < logits.shape[-1]:
        kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    return jax.random.categorical(rng, logits).astype(jnp.int32)


def check_generates(module: Any) -> None:
    """A JaxforgeError unless `module` is a Linen module with the decoding interface."""
    if not isinstance(module, nn.Module):
        raise JaxforgeError(f"Generation needs a Flax Linen model; this one is a "
                            f"{type(module).__name__}.")
    parameters = inspect.signature(module.__call__).parameters
    if not {"decode", "start"} <= set(parameters):
        raise JaxforgeError(
            f"The model {type(module).__name__} cannot generate: its __call__ takes no `decode` "
            "and `start` arguments (a key/value cache; see transformer_lm).")


class Generator:
    """Prefill and decode steps of `module` for batches of `batch_size` texts of at most
    `length` tokens (prompt and new tokens): the cache's fixed shape."""

    def __init__(self, module: nn.Module, params: Any, length: int, batch_size: int = 1) -> None:
        check_generates(module)
        self.module, self.params, self.length = module, params, length
        tokens = jnp.zeros((batch_size, length), jnp.int32)
        self.cache_shapes = jax.eval_shape(lambda: module.init(
            jax.random.PRNGKey(0), tokens, train=False, decode=True)["cache"])
        self.prefill = jax.jit(self._prefill, static_argnames=("temperature", "top_k"))
        # Each step's cache replaces the last one's in place (donated), not beside it.
        self.decode = jax.jit(self._decode, static_argnames=("temperature", "top_k"),
                              donate_argnames=("cache",))

    def _logits(self, params: Any, cache: Any, tokens: jax.Array, start: jax.Array
                ) -> tuple[jax.Array, Any]:
        logits, updates = self.module.apply({"params": params, "cache": cache}, tokens,
                                            train=False, decode=True, start=start,
                                            mutable=["cache"])
        return logits, updates["cache"]

    def _prefill(self, params: Any, tokens: jax.Array, prompt_length: jax.Array, rng: jax.Array,
                 *, temperature: float, top_k: int) -> tuple[jax.Array, jax.Array, Any]:
        """`tokens` [B, length]: the prompts, then padding -> (next token, its logits, cache)."""
        cache = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), self.cache_shapes)
        logits, cache = self._logits(params, cache, tokens, jnp.int32(0))
        last = jnp.take(logits, prompt_length - 1, axis=1)
        return sample(last, rng, temperature, top_k), last, cache

    def _decode(self, params: Any, cache: Any, token: jax.Array, position: jax.Array,
                rng: jax.Array, *, temperature: float, top_k: int
                ) -> tuple[jax.Array, jax.Array, Any]:
        """`token` [B] at `position` -> (the next token, its logits, the cache)."""
        logits, cache = self._logits(params, cache, token[:, None], position)
        return sample(logits[:, 0], rng, temperature, top_k), logits[:, 0], cache

    def generate(self, prompt: Sequence[int], max_new_tokens: int, temperature: float = 1.0,
                 top_k: int = 0, seed: int = 0) -> list[int]:
        """`max_new_tokens` ids after `prompt`; the same seed gives the same ids."""
        prompt = [int(i) for i in prompt]
        _check_lengths(len(prompt), max_new_tokens, self.length)
        tokens = jnp.zeros((1, self.length), jnp.int32).at[0, :len(prompt)].set(
            jnp.asarray(prompt, jnp.int32))
        key = jax.random.PRNGKey(seed)
        options = dict(temperature=float(temperature), top_k=int(top_k))
        token, _, cache = self.prefill(self.params, tokens, jnp.int32(len(prompt)),
                                       jax.random.fold_in(key, 0), **options)
        new = [token]
        for i in range(1, max_new_tokens):
            token, _, cache = self.decode(self.params, cache, token,
                                          jnp.int32(len(prompt) + i - 1),
                                          jax.random.fold_in(key, i), **options)
            new.append(token)
        return [int(t[0]) for t in jax.device_get(new)]


def _check_lengths(prompt_length: int, max_new_tokens: int, length: int) -> None:
    if prompt_length < 1:
        raise JaxforgeError("The prompt is empty: give at least one token to continue.")
    if max_new_tokens < 1:
        raise JaxforgeError(f"max_new_tokens={max_new_tokens}: give a positive number.")
    if prompt_length + max_new_tokens > length:
        raise JaxforgeError(
            f"The prompt ({prompt_length} tokens) and max_new_tokens={max_new_tokens} make "
            f"{prompt_length + max_new_tokens} tokens; this model takes at most {length} "
            "(its max_len).")


def tokenizer_for(config: Any, vocab_size: int) -> Tokenizer:
    """The tokenizer of the run's dataset (its plugin's `tokenizer(config.dataset)`); for a
    dataset without one, bytes when the model's vocabulary is 256."""
    plugin = registry.load(kinds.DATASETS, config.dataset.name)
    make = getattr(plugin, "tokenizer", None)
    if make is not None:
        tokenizer = make(config.dataset)
    elif vocab_size == ByteTokenizer.vocab_size:
        tokenizer = ByteTokenizer()
    else:
        raise JaxforgeError(
            f"The dataset plugin {config.dataset.name!r} gives no tokenizer, and the model's "
            f"vocabulary ({vocab_size}) is not bytes (256): the prompt cannot be encoded.")
    if tokenizer.vocab_size != vocab_size:
        raise JaxforgeError(
            f"The dataset's tokenizer has {tokenizer.vocab_size} ids but the model "
            f"{vocab_size}: the checkpoint was not trained with this tokenizer.")
    return tokenizer


def generate_text(loaded: Any, prompt: str, max_new_tokens: int = 200,
                  temperature: float = 0.8, top_k: int = 40, seed: int = 0) -> str:
    """The text a loaded run's (`framework.load`) language model writes after `prompt`, the
    prompt not included: `max_new_tokens` tokens, sampled at `temperature` among the `top_k`
    most probable (0: all; temperature 0: always the most probable), drawn from `seed`."""
    module = getattr(loaded.model, "module", loaded.model)
    check_generates(module)
    tokenizer = tokenizer_for(loaded.config, loaded.metadata.num_classes)
    ids = tokenizer.encode(prompt)
    _check_lengths(len(ids), max_new_tokens, getattr(module, "max_len", len(ids) + max_new_tokens))
    generator = Generator(module, loaded.params, len(ids) + max_new_tokens)
    return tokenizer.decode(generator.generate(ids, max_new_tokens, temperature, top_k, seed))


def generate(workdir: str | Path, prompt: str, max_new_tokens: int = 200,
             temperature: float = 0.8, top_k: int = 40, seed: int = 0,
             step: int | None = None) -> str:
    """`generate_text` from a run's latest checkpoint (or `step`; its EMA parameters when the
    run kept them)."""
    from framework.predict import load

    return generate_text(load(workdir, step), prompt, max_new_tokens, temperature, top_k, seed)
