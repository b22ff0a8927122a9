"""FastTCM-DBNet (and TCM-DBNet) text detection.

    python -m clip_text_spot.main --config=configs/fasttcm.py:demo --workdir=runs/fasttcm_demo        # embedded demo
    python -m clip_text_spot.main --config=configs/fasttcm.py:ic15 --workdir=runs/ic15 \
        --config.model.clip_checkpoint=RN50.safetensors --config.data.root=data/prepared/icdar2015

Arguments (comma separated): a dataset preset — ``ic15`` (default), ``td500``, ``ctw1500``, ``totaltext``,
``synthtext_pretrain`` — or ``demo``; ``tcm`` switches to TCM (image-conditioned prompt, no text cache); ``steps=N``.

The paper recipe (tcm.md §4): CLIP RN50 (attention-pool grid for 640-px crops), the code's predefined prompt, 4 or 32
learnable contexts, two 3-layer decoders (width 256, 4 heads, dropout 0.1), FPNC + DB head; 640x640 crops with
colour jitter, flip, rotation +-10 degrees, scale 0.5-3 and EastRandomCrop; text tower frozen, image backbone at lr x
0.1, no weight decay on norms and biases; poly schedule (power 0.9); batch 16 (128 for the synthetic pre-training);
per-dataset optimiser, epochs, test resize and DB post-processing as the released configs. Without a CLIP
checkpoint or a dataset path it stops at once naming the flag to set. ``demo``: a small CLIP (random init unless
``--config.model.clip_checkpoint`` is given) on synthetic scenes, sized for a 2-core CPU.
"""

from __future__ import annotations

import ml_collections

from configs.common import parse_arg, trainer_defaults

# dataset preset: (train images, learnable contexts, optimiser, lr, weight decay, epochs, eval (H, W), post-process)
# Test resize: mmocr keep-ratio into (4068, 1024) etc.; our eval_size is the padded box (H, W) for landscape images.
PRESETS = {
    "ic15": dict(images=1000, n_ctx=4, optim="adam", lr=1e-4, wd=1e-4, epochs=1200, eval_size=(1024, 1824)),
    "td500": dict(images=700, n_ctx=4, optim="ranger", lr=1e-3, wd=0.0, epochs=1200, eval_size=(736, 1312)),
    "ctw1500": dict(images=1000, n_ctx=32, optim="adamw", lr=1e-4, wd=1e-4, epochs=1200, eval_size=(1024, 1824)),
    "totaltext": dict(images=1255, n_ctx=32, optim="adamw", lr=1e-4, wd=1e-4, epochs=1200, eval_size=(800, 1440)),
    "synthtext_pretrain": dict(
        images=1_000_000, n_ctx=32, optim="ranger", lr=1e-3, wd=0.0, epochs=20, eval_size=(1024, 1824), batch=128
    ),
}
POSTPROCESS = {"ic15": "tcm_ic15", "td500": "tcm_td500", "ctw1500": "tcm_ctw1500", "totaltext": "tcm_totaltext"}
POSTPROCESS["synthtext_pretrain"] = "tcm_pretrain"


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    a = parse_arg(arg, variant="ic15", tcm=False, steps=0)
    if a.variant != "demo" and a.variant not in PRESETS:
        raise ValueError(f"configs/fasttcm.py: unknown argument {a.variant!r}; use demo or one of {sorted(PRESETS)}")
    config = trainer_defaults(ml_collections.ConfigDict())
    config.task = "fasttcm"
    config.best_metric = "hmean"
    config.vis_images = 4

    m = config.model = ml_collections.ConfigDict()
    m.variant = "tcm" if a.tcm else "fasttcm"
    m.clip_preset = "rn50"
    m.clip_checkpoint = ""  # CLIP RN50 (OpenAI names in .safetensors, or a `convert` output)
    m.require_clip = True
    m.pool_size = 640  # attention-pool grid = pool_size / 32 (20x20 for 640-px crops)
    m.prompt = "the pixels of many arbitrary-shape text instances."
    m.n_ctx = 4
    m.decoder_width, m.decoder_heads, m.decoder_layers, m.dropout = 256, 4, 3, 0.1
    m.lateral_channels, m.out_channels = 256, 64
    m.tau = 0.07
    m.aux_weight = 1.0
    m.dtype = "float32"  # "bfloat16": bf16 compute, f32 params

    d = config.data = ml_collections.ConfigDict()
    d.name = a.variant
    d.root = ""  # prepared dataset (python -m clip_text_spot.data.prepare)
    d.train_split, d.eval_split = "train", "test"
    d.protocol = "curved" if a.variant in ("ctw1500", "totaltext") else "icdar2015"
    d.crop_size = 640
    d.scale_range = (0.5, 3.0)
    d.workers = 8
    d.eval_batch_size = 1
    d.max_polys = 256

    config.postprocess = ml_collections.ConfigDict({"preset": POSTPROCESS.get(a.variant, "tcm_pretrain")})
    config.postprocess.overrides = ml_collections.ConfigDict()

    o = config.optim = ml_collections.ConfigDict()
    o.groups = [("^text_encoder/", 0.0), ("^backbone/", 0.1)]  # frozen text tower, backbone lr x 0.1
    o.schedule = "poly"
    o.poly_power = 0.9
    o.grad_clip = 0.0

    if a.variant == "demo":
        return _demo(config, a)
    p = PRESETS[a.variant]
    config.batch_size = p.get("batch", 16)
    config.total_steps = a.steps or p["images"] * p["epochs"] // config.batch_size
    config.eval_every = config.ckpt_every = 2000
    m.n_ctx = p["n_ctx"]
    d.eval_size = p["eval_size"]
    o.name, o.lr, o.weight_decay = p["optim"], p["lr"], p["wd"]
    if o.name == "ranger":
        o.b1, o.eps = 0.95, 1e-5
    return config


def _demo(config: ml_collections.ConfigDict, a: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Small CLIP, synthetic scenes, 2-core CPU: learns to detect words in a few minutes."""
    m, d, o = config.model, config.data, config.optim
    m.clip_preset = "tiny_rn"
    m.require_clip = False
    m.pool_size = 256
    m.decoder_width, m.decoder_heads, m.decoder_layers = 32, 4, 1
    m.lateral_channels, m.out_channels = 64, 16
    d.name = "synthetic"
    d.image_size = (256, 256)
    d.num_words = (2, 5)
    d.style = ml_collections.ConfigDict(dict(font_size=(20, 40), max_rotation=10.0, curve_prob=0.0))
    d.crop_size = 256
    d.scale_range = (0.7, 1.5)
    d.workers = 0
    d.eval_samples = 64
    d.eval_size = (256, 256)
    d.eval_batch_size = 8
    d.max_polys = 16
    config.postprocess.preset = "tcm_pretrain"
    config.batch_size = 8
    config.total_steps = a.steps or 500
    config.eval_every = config.ckpt_every = 250
    config.log_every = 25
    o.groups = [("^text_encoder/", 0.0)]  # random-init backbone trains at the full rate
    o.name, o.lr, o.weight_decay = "adam", 1e-3, 0.0
    o.schedule = "poly"
    o.warmup_steps = 50
    o.grad_clip = 5.0
    return config
