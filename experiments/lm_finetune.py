"""Fine-tuning a language model: the stdlib code model of lm_stdlib.py, on jaxforge's own source.

    jaxforge train --config experiments/lm_stdlib.py --workdir runs/lm_stdlib
    jaxforge train --config experiments/lm_finetune.py --workdir runs/lm_finetune

Run from the repository's root: the corpus is its `framework/` and `plugins/` Python files
(`text` dataset, `corpus="files"`), a fifth of the files held out for evaluation by a hash of
their paths. The model and its byte vocabulary are lm_stdlib.py's, so every parameter loads
from `init_from.path=runs/lm_stdlib` (parameters only: a fresh AdamW, its own warm-up and decay).
From scratch, for comparison (the same data, steps and optimizer):

    jaxforge train --config experiments/lm_finetune.py --workdir runs/lm_finetune_scratch \\
        --config.init_from.path=""

Measured on 2 CPU cores shared with a test run (seeds 0 1 2, `--config.seed=N`), final eval bits
per byte (eval/bits_per_token) on the 256 held-out sequences: fine-tuned 1.830, 1.839, 1.827;
from scratch 3.240, 3.266, 3.242; the pretrained model unchanged (every parameter frozen,
`'--config.regularizers.freeze.include=(".*",)' --config.train.num_steps=1`) 2.521. 30 to 45 s a
run. docs/after-training.md has the table.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.model = ml_collections.ConfigDict({  # lm_stdlib.py's model.
        "name": "transformer_lm", "width": 128, "depth": 3, "num_heads": 4, "head_dim": 32,
        "mlp_dim": 384, "max_len": 512})
    config.dataset = ml_collections.ConfigDict({
        "name": "text", "corpus": "files", "files": "framework/*.py,plugins/**/*.py",
        "eval_fraction": 0.2, "seq_len": 128, "batch_size": 16, "max_eval_examples": 256})
    config.optimizer = ml_collections.ConfigDict({"name": "adamw", "learning_rate": 1e-3,
                                                  "schedule": "cosine", "warmup_steps": 20})
    config.train = ml_collections.ConfigDict({
        "num_steps": 200,
        "log_every_steps": 50,
        "grad_clip_norm": 1.0,
        "eval_every_steps": 100,
    })
    config.checkpoint = ml_collections.ConfigDict({"every_steps": 200})
    config.init_from = ml_collections.ConfigDict({"path": "runs/lm_stdlib"})
    return config
