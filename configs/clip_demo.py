"""Contrastive training of a small CLIP on synthetic word crops (the embedded default until the FastTCM demo).

    python -m clip_text_spot.main --config=configs/clip_demo.py --workdir=/tmp/clip_demo

Image tower: a small ModifiedResNet on 32x128 word crops rendered on the fly (clip_text_spot.data.synthetic); text
tower: a small transformer over OpenAI's CLIP BPE vocabulary (bundled). Each crop's caption is its word. Evaluation:
image->text retrieval top-1 among the held-out split's captions (``retrieval_top1`` in metrics.jsonl).
Arguments: ``:steps=N`` (default 1000), ``:batch=N`` (default 64). On a 2-core CPU the default run takes about
6 minutes and reaches ~0.2 retrieval top-1 among 100 words (chance: 0.01).
"""

from __future__ import annotations

import ml_collections

from configs.common import parse_arg, trainer_defaults


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    a = parse_arg(arg, steps=1000, batch=64)
    config = trainer_defaults(ml_collections.ConfigDict())
    config.task = "clip_contrastive"
    config.total_steps = a.steps
    config.batch_size = a.batch
    config.eval_every = 250
    config.ckpt_every = 250
    config.best_metric = "retrieval_top1"

    config.model = ml_collections.ConfigDict()
    config.model.preset = "tiny_rn"  # clip_text_spot.models.clip.config.preset
    config.model.checkpoint = ""  # a CLIP checkpoint to start from (see README "CLIP weights"); empty: random init
    config.model.dtype = "float32"  # compute dtype; "bfloat16" keeps params in float32
    config.model.context_length = 16

    config.data = ml_collections.ConfigDict()
    config.data.crop_size = (32, 128)
    config.data.vocab_size = 100  # words drawn from the N most frequent English words
    config.data.eval_samples = 256
    config.data.workers = 0  # grain worker processes (0: in-process)

    config.optim = ml_collections.ConfigDict()
    config.optim.name = "adamw"
    config.optim.lr = 1e-3
    config.optim.weight_decay = 0.05
    config.optim.schedule = "cosine"
    config.optim.warmup_steps = 50
    config.optim.grad_clip = 1.0
    config.optim.groups = []
    return config
