"""FastTCM / TCM text detection with a DBNet (default), FCENet or PANet head.

    python -m clip_text_spot.main --config=configs/fasttcm.py:demo --workdir=runs/fasttcm_demo        # embedded demo
    python -m clip_text_spot.main --config=configs/fasttcm.py:demo,head=fce --workdir=runs/fce_demo   # FCENet demo
    python -m clip_text_spot.main --config=configs/fasttcm.py:ic15 --workdir=runs/ic15 \
        --config.model.clip_checkpoint=RN50.safetensors --config.data.root=data/prepared/icdar2015

Arguments (comma separated): a dataset preset — ``ic15`` (default), ``td500``, ``ctw1500``, ``totaltext``,
``synthtext_pretrain`` — or ``demo``; ``head=db|fce|pan`` (also ``--config.model.head``, but the argument also
selects the head's recipe: optimiser, epochs, crop and test sizes, targets and post-processing presets); ``tcm``
switches to TCM (image-conditioned prompt, no text cache); ``steps=N``. Few-shot: ``--config.data.fraction=0.1``
(``--config.data.fraction_seed``; the subset's names go to ``WORKDIR/train_subset.txt``).

FCENet / PANet recipes (fcenet_panet.md §5, §9; only IC15 and the pre-training exist as TCM configs, the other
datasets take the nearest released recipe): Ranger lr 1e-3 without weight decay, FCE 1800 epochs at 800-px crops
(IC15 test box 2260 -> (1280, 2272)), PAN 1200 epochs at 736-px crops (test (1333, 736) -> (736, 1312)), 20
epochs for the pre-training; FCE targets with TCM's IC15 or CTW proportion ranges, PAN kernels at shrink 0.5 (0.7
for the pre-training's CTW pipeline); post-processing ``FCE_PRESETS`` / ``PAN_PRESETS``. The train augmentation is
TCM's DBNet pipeline at the head's crop size for every head (FCE's RandomCropPolyInstances / rotate / square-pad
and PAN's ScaleAspectJitter / RandomCropInstances are not ported), and every head normalises with the DB pipeline's
mean/std (the FCE/PAN configs use ImageNet's mean, within 1.5 grey levels of it).

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

# head -> dataset -> recipe fields that differ from the DB recipe above (fcenet_panet.md §5, §9, §11.5-6)
_FCE = dict(optim="ranger", lr=1e-3, wd=0.0, epochs=1800, crop=800, targets="ic15", pool=800)
_PAN = dict(optim="ranger", lr=1e-3, wd=0.0, epochs=1200, crop=736, targets="ic15", pool=736)
HEAD_RECIPES = {
    "db": {},
    "fce": {
        "ic15": dict(_FCE, eval_size=(1280, 2272), postprocess="tcm"),
        "td500": dict(_FCE, eval_size=(1280, 2272), postprocess="tcm"),
        "ctw1500": dict(_FCE, targets="ctw", eval_size=(736, 1088), postprocess="mmocr"),
        "totaltext": dict(_FCE, targets="ctw", eval_size=(960, 1280), postprocess="mmocr"),
        "synthtext_pretrain": dict(_FCE, epochs=20, eval_size=(1280, 2272), postprocess="tcm"),
    },
    "pan": {
        "ic15": dict(_PAN, eval_size=(736, 1312), postprocess="tcm_ic15"),
        "td500": dict(_PAN, eval_size=(736, 1312), postprocess="tcm_ic15"),
        "ctw1500": dict(_PAN, pool=640, eval_size=(736, 1312), postprocess="tcm_ctw1500"),
        "totaltext": dict(_PAN, pool=640, eval_size=(736, 1312), postprocess="mmocr"),
        "synthtext_pretrain": dict(
            _PAN, epochs=20, crop=640, pool=640, targets="ctw1500", eval_size=(640, 1152), postprocess="tcm_pretrain"
        ),
    },
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    a = parse_arg(arg, variant="ic15", tcm=False, steps=0, head="db")
    if a.variant != "demo" and a.variant not in PRESETS:
        raise ValueError(f"configs/fasttcm.py: unknown argument {a.variant!r}; use demo or one of {sorted(PRESETS)}")
    if a.head not in HEAD_RECIPES:
        raise ValueError(f"configs/fasttcm.py: unknown head {a.head!r}; use one of {sorted(HEAD_RECIPES)}")
    config = trainer_defaults(ml_collections.ConfigDict())
    config.task = "fasttcm"
    config.best_metric = "hmean"
    config.vis_images = 4

    m = config.model = ml_collections.ConfigDict()
    m.variant = "tcm" if a.tcm else "fasttcm"
    m.head = a.head  # db | fce | pan (clip_text_spot.heads.HEADS)
    m.clip_preset = "rn50"
    m.clip_checkpoint = ""  # CLIP RN50 (OpenAI names in .safetensors, or a `convert` output)
    m.require_clip = True
    m.pool_size = 640  # attention-pool grid = pool_size / 32 (20x20 for 640-px crops)
    m.prompt = "the pixels of many arbitrary-shape text instances."
    m.n_ctx = 4
    m.decoder_width, m.decoder_heads, m.decoder_layers, m.dropout = 256, 4, 3, 0.1
    m.lateral_channels, m.out_channels = 256, 64  # DB: FPNC widths
    m.fce_channels, m.fourier_degree = 256, 5  # FCE: FPN width, Fourier degree k
    m.pan_channels, m.fpem_repeat = 128, 2  # PAN: FPEM_FFM width and FPEM count
    m.tau = 0.07
    m.aux_weight = 1.0
    m.aux_official_broadcast = False  # FCE aux loss: the released B x B pairing (heads.fce.aux)
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
    d.targets = "default"  # the head's target preset (FCE: ic15 | ctw; PAN: ic15 | ctw1500)
    d.max_instances = 256  # PAN: the loss's static cap on text instances per image
    d.fraction = 1.0  # few-shot: train on this fraction of the train split (tasks/fasttcm.py)
    d.fraction_seed = 0

    config.postprocess = ml_collections.ConfigDict({"preset": POSTPROCESS.get(a.variant, "tcm_pretrain")})
    config.postprocess.overrides = ml_collections.ConfigDict()

    o = config.optim = ml_collections.ConfigDict()
    o.groups = [("^text_encoder/", 0.0), ("^backbone/", 0.1)]  # frozen text tower, backbone lr x 0.1
    o.schedule = "poly"
    o.poly_power = 0.9
    o.grad_clip = 0.0

    if a.variant == "demo":
        return _demo(config, a)
    p = {**PRESETS[a.variant], **HEAD_RECIPES[a.head].get(a.variant, {})}
    config.batch_size = p.get("batch", 16)
    config.total_steps = a.steps or p["images"] * p["epochs"] // config.batch_size
    config.eval_every = config.ckpt_every = 2000
    m.n_ctx = p["n_ctx"]
    d.eval_size = p["eval_size"]
    d.crop_size = p.get("crop", d.crop_size)
    m.pool_size = p.get("pool", m.pool_size)
    d.targets = p.get("targets", d.targets)
    config.postprocess.preset = p.get("postprocess", config.postprocess.preset)
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
    _demo_head(config, a.head, a.steps)
    return config


# demo recipes of the FCE / PAN heads (not the paper's; README "Detection heads"), evaluated every steps / 4.
# Narrow necks as in the DB demo: PAN a 32-channel FPEM_FFM (paper: 128), FCE a 64-channel FPN (paper: 256), i.e.
# train steps of 17-18 GFLOPs (XLA cost analysis) instead of 57-62. PAN: 500 steps; a region is kept when its mean
# text score exceeds 0.8 (mmocr: 0.85, the distance threshold stays 0.85): a probe's score sweep peaked at 0.8
# (hmean 0.90 vs 0.87 at 0.7, step 175 of 700). FCE: 1400 steps; its Fourier regression converges late (hmean 0.31,
# 0.60, 0.82, 0.92 at steps 350, 700, 1050, 1400; 700 steps ended at 0.76).
DEMO_HEADS = {
    "fce": dict(postprocess="mmocr", overrides={}, steps=1400, fce_channels=64),
    "pan": dict(
        postprocess="mmocr", overrides={"min_text_avg_confidence": 0.8}, max_instances=16, steps=500, pan_channels=32
    ),
}


def _demo_head(config: ml_collections.ConfigDict, head: str, steps: int) -> None:
    """The FCE / PAN demo settings on top of the DB demo (same data, model and optimiser unless listed)."""
    if head not in DEMO_HEADS:
        return
    h = DEMO_HEADS[head]
    config.total_steps = steps or h["steps"]
    config.eval_every = config.ckpt_every = config.total_steps // 4
    config.postprocess.preset = h["postprocess"]
    config.postprocess.overrides = ml_collections.ConfigDict(h["overrides"])
    config.data.max_instances = h.get("max_instances", config.data.max_instances)
    for width in ("pan_channels", "fce_channels"):
        config.model[width] = h.get(width, config.model[width])
