"""Speed benchmark: jaxforge against a hand-written jit loop, Keras 3 (JAX) and PyTorch, in one run.

Every side trains the same model with Adam on the same synthetic examples in the same order:
    handwritten  a minimal `jax.jit` loop with donated buffers over the same Flax module
    jaxforge     `framework.train` from a config (`train.steps_per_dispatch` k=1)
    keras        Keras 3 on the JAX backend, `model.fit` (when keras is installed)
    torch        PyTorch eager, the usual zero_grad/backward/step loop (when torch is installed)

Each measurement is a fresh process. Per-step time is the difference between a long and a short
run divided by the extra steps, so imports, start-up, compilation and the final evaluation
cancel out. Compilation cancels only on average: on a small CPU its time varies by seconds from
run to run, more than the steps being measured. So the workers share a JAX persistent
compilation cache, which one untimed warm-up run per column fills; every timed run then loads
its programs instead of compiling them (the same for every JAX side). Runs are interleaved and
repeated; the table shows medians, and ratios of steps/s to the hand-written loop. Peak memory
is the growth of the process's peak resident set during the long run, over what it held after
importing its libraries (on the CPU, device memory is host memory); the resident set after those
imports is reported beside it. On a GPU or TPU the JAX sides report the device's peak memory in
use instead.
The work of a step is XLA's count of the hand-written step's floating-point operations (before
its rewrites); TFLOP/s is that count times steps/s, for every column and for the hand-written
step alone on one batch already on the device (`device_resident`: what the chip sustains on the
model, without the input feed), against `--peak-tflops` when given.
jaxforge against the hand-written loop is also measured paired, in one process, for each
k in `--ks` (`train.steps_per_dispatch`; the sweep): `framework.train` runs with a callback
that, at every log, runs a block of the hand-written loop (see tools/loop_ab.py), so both
loops meet the same drift in the machine's speed. The median of the per-round ratios and their
quartiles resolve a few percent, where the separate processes above resolve 10-15%.
Start-up is measured separately: `jaxforge plugins list`, `jaxforge train` stopping at a config
error (an unknown key), and the CLI's time to train one step, cold and with a warm persistent
compilation cache (`JAX_COMPILATION_CACHE_DIR`).

    python tools/bench.py [--cases cnn@64,mlp@64] [--repeats 3] [--json bench.json]
    python tools/bench.py --cases cnn@8192,resnet18@224 --skip keras --no-startup \
        --peak-tflops 989   # On one H200: its dense bfloat16 peak.
    python tools/bench.py --cases lm,vit         # Transformers: also tokens or images per second.
    python tools/bench.py --cases lm@gpu,vit_b16@224 --no-startup --peak-tflops 989
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.metadata
import importlib.util
import io
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
NUM_CLASSES = 10
TOKENS = "bench_tokens"  # The dataset of the language-model cases, registered in-process.


@dataclasses.dataclass(frozen=True)
class Case:
    model: dict[str, Any]  # The jaxforge model section.
    shape: tuple[int, ...]  # One example.
    batch: int
    short: int  # Steps of the short and the long run.
    long: int
    block: int  # Steps per block of the paired measurement (a multiple of every k swept).
    precision: str = "float32"  # `train.precision`: the compute dtype of every JAX side.
    num_train: int = 4096  # Synthetic training examples, cycled through.
    dataset: str = "synthetic"  # `synthetic` images, or TOKENS: random token sequences.
    num_classes: int = NUM_CLASSES  # Classes, or the vocabulary of TOKENS.
    unit: str = ""  # `tokens` or `images`: also print them per second (Transformer cases).

    @property
    def per_step(self) -> int:
        """Tokens or images a step trains on."""
        return self.batch * (self.shape[0] if self.dataset == TOKENS else 1)


def _lm(width: int, depth: int, num_heads: int, mlp_dim: int, seq_len: int) -> dict[str, Any]:
    """The `transformer_lm` plugin's section, with head_dim = width / num_heads."""
    return {"name": "transformer_lm", "width": width, "depth": depth, "num_heads": num_heads,
            "head_dim": width // num_heads, "mlp_dim": mlp_dim, "max_len": seq_len}


def _vit(patch_size: int, width: int, depth: int, num_heads: int, mlp_dim: int
         ) -> dict[str, Any]:
    """The `vit` plugin's section: global-average pooling, learned position embeddings."""
    return {"name": "vit", "patch_size": patch_size, "width": width, "depth": depth,
            "num_heads": num_heads, "mlp_dim": mlp_dim, "pool": "gap",
            "position_embedding": "learned"}


CASES = {  # The default: sized for a 2-core CPU.
    "cnn@64": Case({"name": "cnn"}, (28, 28, 1), 64, 40, 1040, 96),
    "cnn@512": Case({"name": "cnn"}, (28, 28, 1), 512, 8, 168, 32),
    "mlp@64": Case({"name": "mlp"}, (28, 28, 1), 64, 200, 5200, 384),
    "resnet@64": Case({"name": "resnet", "stage_sizes": (1, 1, 1), "width": 16}, (32, 32, 3), 64,
                      10, 110, 16),
}
TRANSFORMER_CASES = {  # Not in the default: byte-level decoder LM, a small ViT on 32x32x3.
    "lm": Case(_lm(128, 2, 4, 384, 64), (64,), 8, 10, 210, 48, dataset=TOKENS, num_classes=256,
               unit="tokens"),
    "vit": Case(_vit(4, 64, 2, 2, 256), (32, 32, 3), 32, 10, 110, 32, unit="images"),
}
ACCELERATOR_CASES = {  # For a GPU or TPU: the tutorial CNN at a large batch, ResNet-18 in bf16.
    "cnn@8192": Case({"name": "cnn"}, (28, 28, 1), 8192, 20, 220, 32, num_train=16384),
    "resnet18@224": Case({"name": "resnet", "stage_sizes": (2, 2, 2, 2), "width": 64,
                          "stem": "imagenet"}, (224, 224, 3), 256, 5, 45, 16,
                         precision="bfloat16", num_train=512),
    # A 1024-wide, 8-block LM (~100M parameters without the embedding) on 1024-token sequences
    # of a 32k vocabulary; ViT-B/16 at 224x224. Both bfloat16.
    "lm@gpu": Case(_lm(1024, 8, 8, 2816, 1024), (1024,), 32, 5, 45, 16, precision="bfloat16",
                   num_train=512, dataset=TOKENS, num_classes=32768, unit="tokens"),
    "vit_b16@224": Case(_vit(16, 768, 12, 12, 3072), (224, 224, 3), 256, 5, 45, 16,
                        precision="bfloat16", num_train=512, unit="images"),
}
ALL_CASES = {**CASES, **TRANSFORMER_CASES, **ACCELERATOR_CASES}
KERAS_MODELS = ("cnn", "mlp", "resnet")  # Those `_keras_model` writes; the others skip Keras.


def _on_accelerator() -> bool:
    """Whether JAX computes on a GPU or TPU here (only asked where JAX is already imported)."""
    import jax
    return jax.default_backend() != "cpu"


def _rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB.


# ------------------------------------------------------------------------ the sides (workers)

def _random_tokens(config: Any, context: Any) -> Any:
    """Uniform random token sequences; each example's labels are its inputs shifted by one."""
    import numpy as np

    import framework
    rng = np.random.default_rng(config.data_seed)

    def split(count: int) -> dict[str, Any]:
        tokens = rng.integers(0, config.num_classes, (count, config.shape[0] + 1), np.int32)
        return {"inputs": tokens[:, :-1], "label": tokens[:, 1:]}

    metadata = framework.DatasetMetadata(
        input_shape=tuple(config.shape), input_dtype="int32", target_shape=tuple(config.shape),
        num_classes=config.num_classes, num_train=config.num_train, num_eval=config.num_eval)
    return framework.ArraySource(split(config.num_train), split(config.num_eval), metadata,
                                 config, context)


def _register_token_dataset() -> None:
    """Registers TOKENS in this process (the `synthetic` plugin gives float inputs only)."""
    import framework
    framework.registry.register("datasets", TOKENS, framework.Plugin(
        build=_random_tokens, api_version=1, default_config=lambda: framework.fields(
            shape=((128,), "Tokens per example."), num_classes=(256, "The vocabulary."),
            num_train=(4096, "Train examples."), num_eval=(64, "Eval examples."),
            data_seed=(0, "Seeds the tokens."))))


def _jax_config(case: Case, steps: int, steps_per_dispatch: int) -> Any:
    import ml_collections

    import framework
    _register_token_dataset()
    return framework.resolve_config(ml_collections.ConfigDict({
        "model": case.model,
        "dataset": {"name": case.dataset, "shape": case.shape, "num_classes": case.num_classes,
                    "num_train": case.num_train, "num_eval": case.batch,
                    "batch_size": case.batch},
        "optimizer": {"name": "adam", "learning_rate": 1e-3},
        "train": {"num_steps": steps, "eval_every_steps": 0,  # Evaluate only at the end.
                  "log_every_steps": -(-100 // steps_per_dispatch) * steps_per_dispatch,
                  "steps_per_dispatch": steps_per_dispatch, "precision": case.precision},
        "checkpoint": {"every_steps": 0},
    }))


def _batches(case: Case, steps: int) -> tuple[Any, Any]:
    """The examples the JAX sides see, in their order: [steps * batch, ...] inputs and labels."""
    import numpy as np

    import framework
    config = _jax_config(case, steps, 1)
    source = framework.registry.load("datasets", case.dataset).build(
        config.dataset, framework.DataContext(seed=0))
    iterator = source.train_iterator()
    batches = [next(iterator) for _ in range(steps)]
    return (np.concatenate([b["inputs"] for b in batches]),
            np.concatenate([b["label"] for b in batches]))


def run_jaxforge(case: Case, steps: int) -> float:
    import framework
    config = _jax_config(case, steps, 1)
    with tempfile.TemporaryDirectory() as workdir, contextlib.redirect_stdout(io.StringIO()):
        start = time.perf_counter()
        framework.train(config, workdir)
        return time.perf_counter() - start


def handwritten_training(case: Case, config: Any, grad_norm: bool = False
                         ) -> tuple[Any, tuple[Any, Any, Any], Any]:
    """What a researcher writes by hand: same module, optimizer and data; jit with donation.

    Returns the data source, the initial `(params, opt_state, extra)` and the jitted step
    `(params, opt_state, extra, inputs, labels) -> (params, opt_state, extra, metric)`. The metric
    is the loss; with `grad_norm` plus the gradients' global norm, the one more pass over the
    gradients that jaxforge's metrics and non-finite guard make (see tools/step_ab.py)."""
    import jax
    import jax.numpy as jnp
    import optax

    import framework
    source = framework.registry.load("datasets", config.dataset.name).build(
        config.dataset, framework.DataContext(seed=0))
    module = framework.registry.load("models", config.model.name).build(
        config.model, source.metadata, jnp.dtype(case.precision))
    variables = module.init(jax.random.PRNGKey(0),
                            jnp.zeros((1, *case.shape), source.metadata.input_dtype), train=False)
    params, extra = variables["params"], {k: v for k, v in variables.items() if k != "params"}
    tx = optax.adam(1e-3, eps=1e-7)

    def step(params, opt_state, extra, inputs, labels):
        def loss_fn(params):
            logits, updates = module.apply({"params": params, **extra}, inputs, train=True,
                                           mutable=list(extra))
            loss = optax.softmax_cross_entropy_with_integer_labels(  # Per class or token.
                logits.astype(jnp.float32), labels).mean()
            return loss, updates

        (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates_, opt_state = tx.update(grads, opt_state, params)
        metric = loss + optax.tree.norm(grads) if grad_norm else loss
        return optax.apply_updates(params, updates_), opt_state, {**extra, **updates}, metric

    return source, (params, tx.init(params), extra), jax.jit(step, donate_argnums=(0, 1, 2))


def time_on_one_batch(step: Any, state: list[Any], inputs: Any, labels: Any, steps: int
                      ) -> tuple[list[Any], float]:
    """Seconds for `steps` of a `handwritten_training` step on one batch already on the device,
    and the state after them (the state passed in is donated)."""
    start = time.perf_counter()
    for _ in range(steps):
        *state, metric = step(*state, inputs, labels)
    metric.block_until_ready()
    return state, time.perf_counter() - start


def run_handwritten(case: Case, steps: int) -> float:
    """The hand-written loop: a Python for over the iterator, one jitted step per batch."""
    import jax
    start = time.perf_counter()
    source, (params, opt_state, extra), step = handwritten_training(
        case, _jax_config(case, steps, 1))
    iterator = source.train_iterator()
    for _ in range(steps):
        batch = next(iterator)
        params, opt_state, extra, loss = step(params, opt_state, extra, batch["inputs"],
                                              batch["label"])
    jax.block_until_ready(loss)
    return time.perf_counter() - start


def _keras_model(case: Case) -> Any:
    import keras
    from keras import layers
    inputs = keras.Input(case.shape)
    if case.model["name"] == "cnn":
        x = layers.Conv2D(32, 3, activation="relu")(inputs)
        x = layers.MaxPooling2D()(x)
        x = layers.Flatten()(x)
        x = layers.Dense(128, activation="relu")(x)
    elif case.model["name"] == "mlp":
        x = layers.Flatten()(inputs)
        x = layers.Dense(512, activation="relu")(x)
        x = layers.Dense(512, activation="relu")(x)
    else:  # The resnet plugin: 3x3 stem, one basic block per stage, global average pool.
        norm = lambda: layers.BatchNormalization(momentum=0.9, epsilon=1e-5)  # noqa: E731
        conv = lambda f, k, s: layers.Conv2D(f, k, s, padding="same", use_bias=False)  # noqa
        if case.model.get("stem") == "imagenet":
            x = layers.ReLU()(norm()(conv(case.model["width"], 7, 2)(inputs)))
            x = layers.MaxPooling2D(3, 2, padding="same")(x)
        else:
            x = layers.ReLU()(norm()(conv(case.model["width"], 3, 1)(inputs)))
        for stage, blocks in enumerate(case.model["stage_sizes"]):
            features = case.model["width"] * 2**stage
            for block in range(blocks):
                strides = 2 if stage > 0 and block == 0 else 1
                y = layers.ReLU()(norm()(conv(features, 3, strides)(x)))
                y = norm()(conv(features, 3, 1)(y))
                if x.shape != y.shape:
                    x = norm()(conv(features, 1, strides)(x))
                x = layers.ReLU()(layers.Add()([x, y]))
        x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(NUM_CLASSES)(x))


def run_keras(case: Case, steps: int) -> float:
    """The Keras tutorial's way: compile with Adam and a from-logits loss, then `fit`."""
    import keras
    inputs, labels = _batches(case, steps)
    if case.precision == "bfloat16":
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    start = time.perf_counter()
    model = _keras_model(case)
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.fit(inputs, labels, batch_size=case.batch, epochs=1, shuffle=False, verbose=0)
    return time.perf_counter() - start


def _torch_lm(case: Case) -> Any:
    """The `transformer_lm` plugin in PyTorch as LLaMA's reference code writes it: token
    embedding, pre-norm blocks (RMSNorm, rotary queries and keys, causal
    `scaled_dot_product_attention`, SwiGLU), final RMSNorm, logits from the embedding / sqrt(width).
    """
    import torch
    from torch import nn
    functional = nn.functional
    m = case.model
    width, heads, head_dim, half = m["width"], m["num_heads"], m["head_dim"], m["head_dim"] // 2
    angles = torch.arange(case.shape[0], dtype=torch.float32)[:, None] * 10000.0 ** (
        -torch.arange(half, dtype=torch.float32) / half)  # [T, half], as the plugin's `rotary`.

    def rotary(x: Any, cos: Any, sin: Any) -> Any:  # [B, heads, T, head_dim]
        first, second = x[..., :half].float(), x[..., half:].float()
        return torch.cat([first * cos - second * sin, second * cos + first * sin], -1).to(x.dtype)

    def linear(inputs: int, outputs: int) -> nn.Linear:
        return nn.Linear(inputs, outputs, bias=False)

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attention_norm = nn.RMSNorm(width, eps=1e-6)
            self.query, self.key, self.value = (linear(width, heads * head_dim) for _ in range(3))
            self.out = linear(heads * head_dim, width)
            self.mlp_norm = nn.RMSNorm(width, eps=1e-6)
            self.wi_gate, self.wi_up = linear(width, m["mlp_dim"]), linear(width, m["mlp_dim"])
            self.wo = linear(m["mlp_dim"], width)

        def forward(self, x: Any, cos: Any, sin: Any) -> Any:
            batch, length, _ = x.shape
            y = self.attention_norm(x)
            q, k, v = (p(y).view(batch, length, heads, head_dim).transpose(1, 2)
                       for p in (self.query, self.key, self.value))
            y = functional.scaled_dot_product_attention(
                rotary(q, cos, sin), rotary(k, cos, sin), v, is_causal=True)
            x = x + self.out(y.transpose(1, 2).reshape(batch, length, heads * head_dim))
            y = self.mlp_norm(x)
            return x + self.wo(functional.silu(self.wi_gate(y)) * self.wi_up(y))

    class LM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embedding = nn.Embedding(case.num_classes, width)
            self.layers = nn.ModuleList(Block() for _ in range(m["depth"]))
            self.final_norm = nn.RMSNorm(width, eps=1e-6)
            self.register_buffer("cos", angles.cos(), persistent=False)
            self.register_buffer("sin", angles.sin(), persistent=False)

        def forward(self, tokens: Any) -> Any:
            x = self.embedding(tokens)
            for layer in self.layers:
                x = layer(x, self.cos, self.sin)
            return functional.linear(self.final_norm(x), self.embedding.weight) / width**0.5

    return LM()


def _torch_vit(case: Case) -> Any:
    """The `vit` plugin in PyTorch (gap pooling, learned position embeddings): patch embedding
    by a strided convolution, pre-norm blocks (LayerNorm, `scaled_dot_product_attention`,
    tanh-approximated GELU as `flax.linen.gelu`), final LayerNorm, mean over patches, head."""
    import torch
    from torch import nn
    functional = nn.functional
    m = case.model
    width, heads, patch = m["width"], m["num_heads"], m["patch_size"]
    patches = (case.shape[0] // patch) * (case.shape[1] // patch)

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm_1, self.norm_2 = nn.LayerNorm(width, eps=1e-6), nn.LayerNorm(width, eps=1e-6)
            self.query, self.key, self.value, self.out = (nn.Linear(width, width)
                                                          for _ in range(4))
            self.mlp_in = nn.Linear(width, m["mlp_dim"])
            self.mlp_out = nn.Linear(m["mlp_dim"], width)

        def forward(self, x: Any) -> Any:
            batch, length, _ = x.shape
            y = self.norm_1(x)
            q, k, v = (p(y).view(batch, length, heads, width // heads).transpose(1, 2)
                       for p in (self.query, self.key, self.value))
            y = functional.scaled_dot_product_attention(q, k, v)
            x = x + self.out(y.transpose(1, 2).reshape(batch, length, width))
            y = functional.gelu(self.mlp_in(self.norm_2(x)), approximate="tanh")
            return x + self.mlp_out(y)

    class ViT(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embedding = nn.Conv2d(case.shape[-1], width, patch, patch)
            self.pos_embedding = nn.Parameter(torch.randn(1, patches, width) / width**0.5)
            self.blocks = nn.Sequential(*(Block() for _ in range(m["depth"])))
            self.encoder_norm = nn.LayerNorm(width, eps=1e-6)
            self.head = nn.Linear(width, case.num_classes)

        def forward(self, images: Any) -> Any:  # [B, C, H, W]
            x = self.embedding(images).flatten(2).transpose(1, 2) + self.pos_embedding
            return self.head(self.encoder_norm(self.blocks(x)).mean(1))

    return ViT()


def _torch_model(case: Case) -> Any:
    from torch import nn
    if case.model["name"] == "transformer_lm":
        return _torch_lm(case)
    if case.model["name"] == "vit":
        return _torch_vit(case)
    if case.model["name"] == "cnn":
        height, width, channels = case.shape
        flat = 32 * ((height - 2) // 2) * ((width - 2) // 2)
        return nn.Sequential(nn.Conv2d(channels, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Flatten(), nn.Linear(flat, 128), nn.ReLU(),
                             nn.Linear(128, NUM_CLASSES))
    if case.model["name"] == "mlp":
        size = 1
        for d in case.shape:
            size *= d
        return nn.Sequential(nn.Flatten(), nn.Linear(size, 512), nn.ReLU(), nn.Linear(512, 512),
                             nn.ReLU(), nn.Linear(512, NUM_CLASSES))

    class Block(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.body = nn.Sequential(
                nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
            self.shortcut = (nn.Identity() if cin == cout and stride == 1 else nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)))

        def forward(self, x: Any) -> Any:
            return nn.functional.relu(self.shortcut(x) + self.body(x))

    width = case.model["width"]
    if case.model.get("stem") == "imagenet":
        layers: list[Any] = [nn.Conv2d(case.shape[-1], width, 7, 2, 3, bias=False),
                             nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
    else:
        layers = [nn.Conv2d(case.shape[-1], width, 3, 1, 1, bias=False), nn.BatchNorm2d(width),
                  nn.ReLU()]
    cin = width
    for stage, blocks in enumerate(case.model["stage_sizes"]):
        for block in range(blocks):
            layers.append(Block(cin, width * 2**stage, 2 if stage > 0 and block == 0 else 1))
            cin = width * 2**stage
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(cin, NUM_CLASSES))


def run_torch(case: Case, steps: int) -> float:
    """The PyTorch tutorial loop: zero_grad, forward, loss, backward, step; no sync per step.

    On a GPU, as its performance guide recommends: channels-last images, bfloat16 autocast when
    the case computes in bfloat16, each batch copied to the device as the step needs it.
    Token sequences: the loss over every token, as the JAX sides'."""
    import torch
    inputs, labels = _batches(case, steps)
    images = inputs.ndim == 4
    inputs = torch.from_numpy(inputs)  # Images NHWC -> NCHW, as PyTorch indexes them.
    inputs = inputs.permute(0, 3, 1, 2) if images else inputs.long()
    labels = torch.from_numpy(labels).long()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    memory_format = (torch.channels_last if device.type == "cuda" and images
                     else torch.contiguous_format)
    inputs = inputs.contiguous(memory_format=memory_format)
    autocast = torch.autocast(device.type, torch.bfloat16, enabled=case.precision == "bfloat16")
    start = time.perf_counter()
    model = _torch_model(case).to(device, memory_format=memory_format)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-7)
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()
    for i in range(steps):
        rows = slice(i * case.batch, (i + 1) * case.batch)
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            logits = model(inputs[rows].to(device))
            loss = loss_fn(logits.reshape(-1, logits.shape[-1]), labels[rows].to(device).flatten())
        loss.backward()
        optimizer.step()
    loss.item()
    return time.perf_counter() - start


SIDES = {"handwritten": run_handwritten, "jaxforge": run_jaxforge, "keras": run_keras,
         "torch": run_torch}


def _import_libraries(side: str) -> None:
    """What the side's run will import, so the memory baseline comes after it."""
    if side == "keras":
        os.environ["KERAS_BACKEND"] = "jax"
        import keras  # noqa: F401
    elif side == "torch":  # Its data comes from the JAX sides' code: JAX must leave the GPU be.
        os.environ["JAX_PLATFORMS"] = "cpu"
        import torch  # noqa: F401
    else:
        import flax.linen  # noqa: F401
        import optax  # noqa: F401

        import framework
        if side == "jaxforge":  # What `framework.train` loads: the loop, Orbax, TensorBoard.
            import orbax.checkpoint  # noqa: F401

            import framework.loop  # noqa: F401
            from framework.tensorboard_log import _import_tensorboardx
            _import_tensorboardx()


def worker(side: str, case_name: str, steps: int) -> None:
    """One measurement in this process: prints {"seconds", "peak_mib", "imports_mib"} as JSON.

    On a GPU or TPU, `peak_mib` is the device's peak memory in use instead."""
    _import_libraries(side)
    baseline = _rss_mib()
    seconds = SIDES[side](ALL_CASES[case_name], steps)
    if side in ("handwritten", "jaxforge") and _on_accelerator():
        import jax
        peak_mib = jax.devices()[0].memory_stats()["peak_bytes_in_use"] / 2**20
    elif side == "torch" and sys.modules["torch"].cuda.is_available():
        peak_mib = sys.modules["torch"].cuda.max_memory_allocated() / 2**20
    else:
        peak_mib = _peak_rss_mib() - baseline
    print(json.dumps({"seconds": seconds, "peak_mib": peak_mib, "imports_mib": baseline}))


def paired_worker(case_name: str, steps_per_dispatch: int, rounds: int) -> None:
    """The paired measurement of jaxforge at k against the hand-written loop, in this process:
    prints `loop_ab.paired_summary` of its rounds as JSON."""
    import loop_ab
    case = ALL_CASES[case_name]
    interleave = loop_ab.measure(case_name, rounds, case.block, steps_per_dispatch)
    hand, jaxforge = ([s / case.block for s in interleave.seconds[side]]
                      for side in ("hand", "jaxforge"))
    print(json.dumps(loop_ab.paired_summary(hand, jaxforge)))


def step_cost(case_name: str) -> dict[str, Any]:
    """The device, and the work of one step: XLA's count of the hand-written step's
    floating-point operations, and that step's rate on one batch already on the device (no
    input feed): what the chip sustains on this model."""
    import jax
    case = ALL_CASES[case_name]
    source, (params, opt_state, extra), step = handwritten_training(case, _jax_config(case, 1, 1))
    batch = next(source.train_iterator())
    inputs, labels = jax.device_put(batch["inputs"]), jax.device_put(batch["label"])
    # Counted on the program before XLA's rewrites: the model's own operations.
    flops = step.lower(params, opt_state, extra, inputs, labels).cost_analysis()["flops"]
    state, _ = time_on_one_batch(step, [params, opt_state, extra], inputs, labels, 2)  # Warm-up.
    state, seconds = time_on_one_batch(step, state, inputs, labels, 3)
    steps = max(10, math.ceil(2.0 / (seconds / 3)))  # About 2 s, in one stretch.
    rate = steps / time_on_one_batch(step, state, inputs, labels, steps)[1]
    device = jax.devices()[0]
    return {"device": f"{jax.device_count()} x {device.device_kind}",
            "platform": device.platform, "flops_per_step": flops,
            "device_resident_steps_per_sec": rate}


# ------------------------------------------------------------------------ the driver

def compilation_cache_env(cache_dir: str) -> dict[str, str]:
    """The environment that makes JAX keep every compiled program in `cache_dir`."""
    return {**os.environ, "JAX_COMPILATION_CACHE_DIR": cache_dir,
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
            "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}


def _in_worker(args: list[str], what: str, env: dict[str, str] | None) -> dict[str, Any]:
    """Runs this script with `args` in a fresh process; its last line of output, as JSON."""
    result = subprocess.run([sys.executable, __file__, *args], cwd=REPO, capture_output=True,
                            text=True, env=env)
    if result.returncode:
        raise RuntimeError(f"{what} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def measure(side: str, case_name: str, steps: int, env: dict[str, str] | None = None
            ) -> dict[str, float]:
    return _in_worker(["--worker", side, case_name, str(steps)],
                      f"{side} on {case_name}", env)


def installed_sides() -> list[str]:
    return ["handwritten", "jaxforge"] + [
        side for side in ("keras", "torch") if importlib.util.find_spec(side) is not None]


def paired_sweep(case_name: str, ks: list[int], rounds: int, env: dict[str, str]
                 ) -> dict[str, Any]:
    """For each k: jaxforge's steps/s over the hand-written loop's, paired in one process (the
    median of the per-round ratios and their quartiles), and both sides' median ms/step."""
    return {str(k): _in_worker(["--paired", case_name, str(k), str(rounds)],
                               f"the paired measurement of {case_name} at k={k}", env)
            for k in ks}


def bench_case(case_name: str, sides: list[str], repeats: int, ks: list[int],
               rounds: int) -> dict[str, Any]:
    """Median steps/s of every column over interleaved repeats, ratios, peak memory, the
    TFLOP/s they achieve at XLA's count of the model's operations per step, and the paired
    sweep over steps per dispatch."""
    case = ALL_CASES[case_name]
    sides = [s for s in sides if s != "keras" or case.model["name"] in KERAS_MODELS]
    seconds_per_step: dict[str, list[float]] = {side: [] for side in sides}
    peak_mib: dict[str, list[float]] = {side: [] for side in sides}
    imports_mib: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as cache_dir:
        env = compilation_cache_env(cache_dir)
        cost = _in_worker(["--step-cost", case_name], f"the step cost of {case_name}", env)
        for side in sides:  # Warm-up: compile every program of both runs once.
            if side != "torch":  # PyTorch eager compiles nothing.
                measure(side, case_name, case.short, env)
                measure(side, case_name, case.long, env)
        for _ in range(repeats):  # Interleaved, so drift in the machine's speed hits every column.
            for side in sides:
                short = measure(side, case_name, case.short, env)
                long = measure(side, case_name, case.long, env)
                seconds_per_step[side].append(
                    (long["seconds"] - short["seconds"]) / (case.long - case.short))
                peak_mib[side].append(long["peak_mib"])
                imports_mib[side] = long["imports_mib"]
        sweep = paired_sweep(case_name, ks, rounds, env)
    rates = {c: 1.0 / statistics.median(v) for c, v in seconds_per_step.items()}
    peaks = {c: statistics.median(v) for c, v in peak_mib.items()}
    return {
        "steps": [case.short, case.long], "steps_per_sec": rates, "paired": sweep,
        "ratio_to_handwritten": {c: r / rates["handwritten"] for c, r in rates.items()},
        **cost,
        "tflops": {c: r * cost["flops_per_step"] / 1e12 for c, r in
                   {**rates, "device_resident": cost["device_resident_steps_per_sec"]}.items()},
        "peak_mib": peaks, "imports_mib": imports_mib,
        "spread": {c: (max(v) - min(v)) / statistics.median(v)
                   for c, v in seconds_per_step.items()},
        **({"unit": case.unit, "per_sec": {  # Tokens or images per second.
            c: r * case.per_step for c, r in
            {**rates, "device_resident": cost["device_resident_steps_per_sec"]}.items()}}
           if case.unit else {}),
    }


CONFIG_ERROR = ["train", "--config", "experiments/digits_cnn.py", "--workdir", "WORKDIR",
                "--config.train.nope=1"]
"""A config error: `jaxforge train` with an unknown key, which exits with status 2."""


def startup_seconds(repeats: int) -> dict[str, float]:
    """Median wall time of `jaxforge plugins list`, of `jaxforge train` failing on a config
    error (an unknown key: reported before JAX is imported), and of the CLI training digits_cnn
    1 step without and with a warm persistent compilation cache."""
    def wall(args: list[str], env: dict[str, str] | None = None, status: int = 0) -> float:
        with tempfile.TemporaryDirectory() as workdir:
            command = [a.replace("WORKDIR", workdir) for a in args]
            start = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "framework.cli", *command], cwd=REPO,
                                  capture_output=True, env=env)
            seconds = time.perf_counter() - start
            if done.returncode != status:
                raise RuntimeError(f"`jaxforge {' '.join(args)}` exited with {done.returncode}, "
                                   f"not {status}: {done.stderr.decode()[-2000:]}")
            return seconds

    train_one_step = ["train", "--config", "experiments/digits_cnn.py", "--workdir", "WORKDIR",
                      "--config.train.num_steps=1"]
    with tempfile.TemporaryDirectory() as cache_dir:
        cached = compilation_cache_env(cache_dir)
        wall(train_one_step, cached)  # Fills the cache.
        return {
            "plugins_list_s": statistics.median(wall(["plugins", "list"]) for _ in range(repeats)),
            "config_error_s": statistics.median(
                wall(CONFIG_ERROR, status=2) for _ in range(repeats)),
            "train_one_step_s": statistics.median(wall(train_one_step) for _ in range(repeats)),
            "train_one_step_cached_s": statistics.median(
                wall(train_one_step, cached) for _ in range(repeats)),
        }


def print_table(results: dict[str, Any], peak_tflops: float | None) -> None:
    columns = ["handwritten", "jaxforge"] + [
        side for side in ("keras", "torch") if side in results["sides"]]
    print(f"machine: {results['machine']}; jax {results['versions']['jax']}; per-step time from "
          f"(long - short) steps, median of {results['repeats']} interleaved repeats")
    print("steps/s (ratio to handwritten)")
    print(f"{'case':11s}" + "".join(f"{c:>20s}" for c in columns))
    for name, case in results["cases"].items():
        cells = [f"{case['steps_per_sec'][c]:.1f} ({case['ratio_to_handwritten'][c]:.2f}x)"
                 if c in case["steps_per_sec"] else "-" for c in columns]
        print(f"{name:11s}" + "".join(f"{cell:>20s}" for cell in cells))
    _print_paired(results)
    print("TFLOP/s at XLA's count of the hand-written step's operations; device_resident: that"
          " step on one batch already on the device"
          + (f"; % of the {peak_tflops:g} TFLOP/s peak" if peak_tflops else ""))
    tflops_columns = ["handwritten", "jaxforge", "device_resident"]
    print(f"{'case':13s}{'GFLOP/step':>12s}" + "".join(f"{c:>18s}" for c in tflops_columns))
    for name, case in results["cases"].items():
        cells = [f"{case['tflops'][c]:.3g}" + (f" ({100 * case['tflops'][c] / peak_tflops:.1f}%)"
                                               if peak_tflops else "") for c in tflops_columns]
        print(f"{name:13s}{case['flops_per_step'] / 1e9:12.3g}"
              + "".join(f"{cell:>18s}" for cell in cells))
    accelerator = any(case["platform"] != "cpu" for case in results["cases"].values())
    print("peak device memory in use, in MiB, for the JAX sides; elsewhere the growth of the peak"
          " resident set (resident after imports)" if accelerator else
          "peak memory growth during training, in MiB (resident after imports)")
    print(f"{'case':11s}" + "".join(f"{c:>20s}" for c in columns))
    for name, case in results["cases"].items():
        cells = [f"{case['peak_mib'][c]:.0f} ({case['imports_mib'][c]:.0f})"
                 if c in case["peak_mib"] else "-" for c in columns]
        print(f"{name:11s}" + "".join(f"{cell:>20s}" for cell in cells))
    _print_throughput(results, columns)
    startup = results.get("startup")
    if startup is None:
        return
    print(f"start-up: `jaxforge plugins list` {startup['plugins_list_s']:.2f} s; a config "
          f"error (`jaxforge train ... --config.train.nope=1`) {startup['config_error_s']:.2f} s; "
          f"`jaxforge train` of digits_cnn for one step {startup['train_one_step_s']:.2f} s, "
          f"{startup['train_one_step_cached_s']:.2f} s with a warm compilation cache")


def _print_paired(results: dict[str, Any]) -> None:
    """The sweep: jaxforge's steps/s over the hand-written loop's, paired in one process."""
    ks = results["ks"]
    print(f"jaxforge / hand-written steps/s by steps per dispatch k, paired in one process: "
          f"median of {results['rounds']} rounds [quartiles]")
    print(f"{'case':11s}{'hand-written':>14s}" + "".join(f"{f'k={k}':>20s}" for k in ks))
    for name, case in results["cases"].items():
        sweep = case["paired"]
        cells = [f"{sweep[str(k)]['ratio']:.3f} [{sweep[str(k)]['quartiles'][0]:.2f}-"
                 f"{sweep[str(k)]['quartiles'][1]:.2f}]" for k in ks]
        hand = f"{sweep[str(ks[0])]['handwritten_ms']:.3g} ms"
        print(f"{name:11s}{hand:>14s}" + "".join(f"{cell:>20s}" for cell in cells))


def _print_throughput(results: dict[str, Any], columns: list[str]) -> None:
    """Tokens or images per second of the cases that count them (the Transformer cases)."""
    counted = {name: case for name, case in results["cases"].items() if "unit" in case}
    if not counted:
        return
    print("tokens or images per second; device_resident: the hand-written step on one batch "
          "already on the device")
    columns = [*columns, "device_resident"]
    print(f"{'case':11s}{'unit':>8s}" + "".join(f"{c:>16s}" for c in columns))
    for name, case in counted.items():
        cells = [f"{case['per_sec'][c]:.4g}" if c in case["per_sec"] else "-" for c in columns]
        print(f"{name:11s}{case['unit']:>8s}" + "".join(f"{cell:>16s}" for cell in cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES),
                        help=f"of {', '.join(ALL_CASES)}; "
                             f"{', '.join(ACCELERATOR_CASES)} are sized for a GPU or TPU; "
                             f"{', '.join(TRANSFORMER_CASES)} (Transformers, CPU-sized) are "
                             f"not in the default")
    parser.add_argument("--skip", default="", help="installed sides to leave out: keras,torch")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--no-startup", action="store_true", help="skip the start-up timings")
    parser.add_argument("--ks", default="1,2,4,8,16",
                        help="the steps per dispatch of the paired sweep")
    parser.add_argument("--rounds", type=int, default=10,
                        help="paired blocks of each side per k")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the chip's peak in the cases' precision, to print TFLOP/s against")
    parser.add_argument("--worker", nargs=3, metavar=("SIDE", "CASE", "STEPS"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--step-cost", metavar="CASE", help=argparse.SUPPRESS)
    parser.add_argument("--paired", nargs=3, metavar=("CASE", "K", "ROUNDS"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.paired:
        case_name, k, rounds = args.paired
        paired_worker(case_name, int(k), int(rounds))
        return
    if args.worker:
        side, case_name, steps = args.worker
        worker(side, case_name, int(steps))
        return
    if args.step_cost:
        print(json.dumps(step_cost(args.step_cost)))
        return

    # JAX is left unimported here: on a GPU it would take the memory the workers need.
    sides = [side for side in installed_sides() if side not in args.skip.split(",")]
    versions = {name: importlib.metadata.version(name)
                for name in ("jax", *(side for side in sides if side in ("keras", "torch")))}
    ks = [int(k) for k in args.ks.split(",")]
    results: dict[str, Any] = {"versions": versions, "repeats": args.repeats, "sides": sides,
                               "ks": ks, "rounds": args.rounds, "cases": {}}
    for name in args.cases.split(","):
        if name not in ALL_CASES:
            parser.error(f"unknown case {name!r}; choose from {', '.join(ALL_CASES)}")
    for name in args.cases.split(","):
        results["cases"][name] = case = bench_case(name, sides, args.repeats, ks, args.rounds)
        results["machine"] = f"{os.cpu_count()} CPU cores, {case['device']}"
        print(f"{name}: {json.dumps(case['steps_per_sec'])}; paired ratio by k: "
              f"{json.dumps({k: round(v['ratio'], 3) for k, v in case['paired'].items()})}",
              flush=True)
        if args.json:  # After every case, so a run stopped early keeps what it measured.
            args.json.write_text(json.dumps(results, indent=2) + "\n")
    if not args.no_startup:
        results["startup"] = startup_seconds(args.repeats)
    print_table(results, args.peak_tflops)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
