"""A small byte-level code model: `transformer_lm` on Python's own standard library (no download).

    jaxforge train --config experiments/lm_stdlib.py --workdir runs/lm_stdlib
    jaxforge generate --workdir runs/lm_stdlib --prompt "def " --max_new_tokens 200 \\
      --temperature 0.8 --top_k 40 --seed 0

`transformer_lm` (width 128, 3 blocks, 4 heads of 32, SwiGLU 384; 672,640 parameters) on the
`text` dataset's default corpus, this Python's standard library (1,790 files, 31.5 MB), as bytes
in sequences of 128; batch 16, AdamW 3e-3 with warm-up and cosine decay, 1,200 steps (2.5
million bytes, about 8% of an epoch). Evaluated on the first 256 eval sequences (32,768 bytes).

Measured on 2 CPU cores shared with other jobs (seed 0): final eval bits per byte
(eval/bits_per_token) 1.958, eval perplexity 3.886, next-byte accuracy 0.632 (2.155 / 4.455 /
0.601 at step 600); 698 s of training at a load average of about 8 (a second run: the same
numbers, 677 s; 4.3 steps/s, so about 280 s in all, while the load fell). A generated sample is
in docs/transformers.md.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.model = ml_collections.ConfigDict({
        "name": "transformer_lm", "width": 128, "depth": 3, "num_heads": 4, "head_dim": 32,
        "mlp_dim": 384, "max_len": 512})
    config.dataset = ml_collections.ConfigDict({"name": "text", "seq_len": 128,
                                                "batch_size": 16, "max_eval_examples": 256})
    config.optimizer = ml_collections.ConfigDict({"name": "adamw", "learning_rate": 3e-3,
                                                  "schedule": "cosine", "warmup_steps": 100})
    config.train = ml_collections.ConfigDict({
        "num_steps": 1200,
        "log_every_steps": 100,
        "grad_clip_norm": 1.0,
        "eval_every_steps": 600,
    })
    config.checkpoint = ml_collections.ConfigDict({"every_steps": 600})
    return config
