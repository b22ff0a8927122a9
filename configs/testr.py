"""TESTR end-to-end text spotting (polygon variant; spotting.md §3.5-3.6, §4).

    python -m clip_text_spot.main --config=configs/testr.py:demo --workdir=runs/testr_demo          # embedded demo
    python -m clip_text_spot.main --config=configs/testr.py:totaltext --workdir=runs/testr_tt \
        --config.model.init=pretrain_testr_R_50_polygon.safetensors --config.data.root=data/prepared/totaltext
    python -m clip_text_spot.main --config=configs/testr.py:eval,totaltext --workdir=runs/testr_tt_eval \
        --config.spotter=runs/testr_tt --config.data.root=data/prepared/totaltext [--config.lexicon.kind=full ...]

Arguments (comma separated): a preset — ``pretrain``, ``totaltext`` (default), ``ctw1500``, ``icdar2015`` — or
``demo``; ``eval`` (with a preset: its test size, threshold and protocol) evaluates a trained spotter
(``--config.spotter``: a TESTR workdir or checkpoint, or an official ``.safetensors`` with
``--config.official_kwargs=JSON``) without training; ``steps=N``.

Presets carry the official solver (AdamW, weight decay 1e-4, backbone and ``sampling_offsets`` at 0.1 x lr,
gradient-norm clip 0.1, step decay x 0.1), batch 8, iterations, train/test sizes and inference thresholds of the
released TESTR polygon configs. Deviations: a fixed padded training box (``data.box``, default max_size x max_size)
instead of per-batch padding; weight decay skips vectors (biases, norms), which the official per-parameter groups
decay too. ``demo``: a tiny CLIP ResNet and a small TESTR on 256x256 synthetic scenes of a 50-word vocabulary,
sized for a 2-core CPU.
"""

from __future__ import annotations

import ml_collections

from configs.common import parse_arg, trainer_defaults

CTLABELS = "".join(chr(c) for c in range(32, 127))  # TESTR's 95 characters (voc_size 96)
PRETRAIN_SHORT = tuple(range(480, 897, 32))
# preset: lr, iterations, lr-decay milestones, train short sides / max, test short / max, threshold, chars, protocol
PRESETS = {
    "pretrain": dict(lr=1e-4, iters=440_000, steps=(340_000,), short=PRETRAIN_SHORT, max=1600, test=(1600, 1824),
                     thr=0.45, chars=25, protocol="curved"),
    "totaltext": dict(lr=1e-5, iters=20_000, steps=(), short=PRETRAIN_SHORT, max=1600, test=(1600, 1824), thr=0.45,
                      chars=25, protocol="curved"),
    "ctw1500": dict(lr=1e-5, iters=200_000, steps=(300_000,), short=PRETRAIN_SHORT, max=1333, test=(1000, 1824),
                    thr=0.7, chars=100, protocol="curved"),
    "icdar2015": dict(lr=1e-5, iters=20_000, steps=(), short=(800, 832, 864, 896, 1000, 1200, 1400), max=2333,
                      test=(1440, 4000), thr=0.3, chars=25, protocol="icdar2015"),
}  # fmt: skip
DEMO_WORDS = dict(
    vocab_size=50,
    word_kind_weights=(0.8, 0.1, 0.1, 0.0, 0.0),
    fonts=("DejaVuSans", "DejaVuSans-Bold"),
    background_weights=(0.7, 0.2, 0.1, 0.0),
    background_contrast=0.5,
    font_size=(24, 40),
    max_rotation=10.0,
    curve_prob=0.0,
    perspective=0.0,
)


def spot_fields(config: ml_collections.ConfigDict, p: dict) -> None:
    """``config.spot``: inference test size, threshold, batching."""
    s = config.spot = ml_collections.ConfigDict()
    s.test_size, s.max_size = p["test"]
    s.threshold = p["thr"]
    s.batch_size = 1
    s.pad_multiple = 128


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    a = parse_arg(arg, variant="totaltext", eval=False, steps=0)
    if a.variant != "demo" and a.variant not in PRESETS:
        raise ValueError(f"configs/testr.py: unknown argument {a.variant!r}; use demo or one of {sorted(PRESETS)}")
    p = PRESETS.get(a.variant, PRESETS["totaltext"])
    config = trainer_defaults(ml_collections.ConfigDict())
    config.task = "testr"
    config.best_metric = "e2e_hmean"
    config.vis_images = 4
    config.word_spotting = False

    m = config.model = ml_collections.ConfigDict()
    m.backbone = "resnet50"  # or "clip:<preset>" (CLIP ModifiedResNet)
    m.freeze_at = 2
    m.init = ""  # official TESTR detector checkpoint (.safetensors)
    m.backbone_init = ""  # detectron2 ResNet-50 ImageNet weights (.safetensors)
    m.require_init = True
    m.dim, m.heads, m.enc_layers, m.dec_layers, m.ffn = 256, 8, 6, 6, 1024
    m.enc_points = m.dec_points = 4
    m.num_queries, m.ctrl_points, m.chars = 100, 16, p["chars"]
    m.charset = CTLABELS
    m.dropout = 0.1
    m.isolate_padding = False
    m.dtype = "float32"

    config.loss = ml_collections.ConfigDict()
    config.loss.weights = ml_collections.ConfigDict(dict(point_text_weight=4.0))  # LossConfig fields
    config.loss.mask_padded_tokens = True

    d = config.data = ml_collections.ConfigDict()
    d.name = a.variant
    d.root = ""
    d.train_split, d.eval_split = "train", "test"
    d.protocol = p["protocol"]
    d.layout = "paired"  # Total-Text / CTW1500 polygons: top side then bottom side
    d.short_sizes = p["short"]
    d.max_size = p["max"]
    d.box = (-(-p["max"] // 32) * 32,) * 2
    d.crop_prob, d.min_crop_ratio = 1.0, 0.1
    d.max_instances = 100
    d.workers = 8
    spot_fields(config, p)

    o = config.optim = ml_collections.ConfigDict()
    o.name, o.lr, o.weight_decay = "adamw", p["lr"], 1e-4
    o.groups = [("^backbone/", 0.1), ("sampling_offsets", 0.1)]
    o.grad_clip = 0.1
    o.schedule, o.milestones, o.gamma = "multistep", p["steps"], 0.1
    config.batch_size = 8
    config.total_steps = a.steps or p["iters"]
    config.eval_every = config.ckpt_every = 5000

    if a.variant == "demo":
        config = _demo(config, a)
    return _eval(config) if a.eval else config


def _eval(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Evaluation-only stage: a trained spotter on the preset's test split (``tasks.testr.TESTRSpotEvalTask``)."""
    config.task = "testr_eval"
    config.spotter = ""  # TESTR workdir / checkpoint, or an official .safetensors
    config.official_kwargs = ""  # JSON of from_official_testr_detector arguments (with an official checkpoint)
    config.best = False
    lex = config.lexicon = ml_collections.ConfigDict()
    lex.kind, lex.policy, lex.dir, lex.words, lex.pairs = "none", "testr", "", "", ""
    return config


def _demo(config: ml_collections.ConfigDict, a: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Tiny CLIP ResNet + small TESTR on 256x256 synthetic scenes (2-core CPU)."""
    m, d, o = config.model, config.data, config.optim
    m.backbone = "clip:tiny_rn"
    m.require_init = False
    m.dim, m.heads, m.enc_layers, m.dec_layers, m.ffn = 64, 4, 1, 3, 128
    m.enc_points = m.dec_points = 2
    m.num_queries, m.ctrl_points, m.chars = 12, 8, 12
    m.charset = "".join(chr(c) for c in range(ord("a"), ord("z") + 1))
    m.charset += m.charset.upper()
    m.dropout = 0.0
    d.name = "synthetic"
    d.image_size = (256, 256)
    d.num_words = (2, 5)
    d.style = ml_collections.ConfigDict(DEMO_WORDS)
    d.eval_samples = 64
    d.protocol = "curved"
    d.layout = "paired"
    d.short_sizes = (224, 240, 256)
    d.max_size = 256
    d.box = (256, 256)
    d.crop_prob, d.min_crop_ratio = 0.3, 0.5
    d.max_instances = 8
    d.workers = 0
    config.spot.test_size = config.spot.max_size = 256
    config.spot.threshold = 0.3  # IC15's; scores of a short run stay lower than a converged model's
    config.spot.batch_size = 8
    config.spot.pad_multiple = 32
    config.batch_size = 8
    config.total_steps = a.steps or 1200
    config.eval_every = config.ckpt_every = 600
    config.log_every = 25
    config.tensorboard = True
    o.lr, o.weight_decay = 1e-3, 1e-4
    o.groups = [("sampling_offsets", 0.1)]
    o.grad_clip = 1.0
    o.schedule, o.milestones = "multistep", (int(0.8 * config.total_steps),)
    o.warmup_steps = 50
    return config
