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

TESTR-TCM / TESTR-FastTCM (spotting.md §5; ``models/testr/tcm.py``): the flag ``tcm`` or ``fasttcm`` with a preset,
and a backbone flag:

    python -m clip_text_spot.main --config=configs/testr.py:totaltext,fasttcm,r50 --workdir=runs/testr_fasttcm_tt \
        --config.model.init=totaltext_testr_R_50_polygon.safetensors \
        --config.model.tcm.clip_checkpoint=RN50.safetensors --config.data.root=data/prepared/totaltext \
        [--config.data.fraction=0.1]
    python -m clip_text_spot.main --config=configs/testr.py:demo_fasttcm --workdir=runs/testr_fasttcm_demo

* ``r50`` (default): detectron2's ImageNet ResNet-50 as released (``model.backbone="resnet50"``; score map on res4;
  CLIP contributes the text tower of ``model.tcm.text_clip``); ``cr50``: the paper's CLIP RN50 with the dense
  attention pool (``model.backbone="clip:rn50"``; score map added to C5). ``model.tcm.clip_checkpoint``: OpenAI RN50
  (safetensors) for the text tower and, with ``cr50``, the backbone; the presets require it (``model.require_init``).
* ``model.tcm``: prompt and decoders of the released ``clip_config.py`` (4 contexts, 3-layer width-256 decoders,
  dropout 0.1, tau 0.07), ``pix_loss_weight`` (1.0, the released scripts; Base-CLIP-TESTR.yaml says 2.0),
  ``pixel_target`` (``"binary"``; ``"instance"``: the released instance-index target), ``shrink_ratio`` 0.9.
* LR groups (§5.3) in ``optim.groups``: backbone and every CLIP module at LR_BACKBONE (0.1 x lr; the demo: 1 x),
  ``sampling_offsets`` at 0.1 x lr, as the released trainer does (its text tower trains too); the config argument
  ``freeze_text`` freezes the text tower (as the detector recipe does).
* Solver of the TESTR-CLIP configs (§5.4): batch 1 (``IMS_PER_BATCH 1``), lr 1e-5, 20k iterations (Total-Text,
  IC15), CTW1500 200k with Ranger (b1 0.95, eps 1e-5; the configs' gradient centralisation is not implemented);
  ``pretrain`` keeps TESTR's. Released inits: Total-Text from TESTR's Total-Text fine-tune, IC15 / CTW1500 from
  TESTR's pre-training (``--config.model.init``). ``model.isolate_padding`` is True (padded batches equal batch 1).
* ``demo_fasttcm`` (= ``demo,fasttcm``): the demo with FastTCM on its tiny CLIP ResNet (``cr50`` form) and small
  decoders, 800 steps (the plain demo's 1200 would take over 20 minutes on 2 cores); ``demo,tcm`` the TCM form.

Few-shot (the paper's 10%-label runs): ``--config.data.fraction=0.1`` trains on a seeded subset of the train split
(``data.fraction_seed``; image names in ``WORKDIR/train_subset.txt``; ``tasks.fasttcm``'s helpers).
"""

from __future__ import annotations

import ml_collections

from clip_text_spot.models.fasttcm.config import CODE_PROMPT
from clip_text_spot.models.testr.tcm import TESTRTCMConfig, optim_groups
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


# TESTR-CLIP solver per preset (spotting.md §5.4): iterations, batch, optimiser
TCM_PRESETS = {
    "totaltext": dict(iters=20_000, batch=1),
    "icdar2015": dict(iters=20_000, batch=1),
    "ctw1500": dict(iters=200_000, batch=1, optim="ranger"),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    a = parse_arg(
        arg, variant="totaltext", eval=False, steps=0, tcm=False, fasttcm=False, r50=False, cr50=False,
        freeze_text=False,
    )  # fmt: skip
    if a.variant == "demo_fasttcm":
        a.variant, a.fasttcm = "demo", True
    if a.variant != "demo" and a.variant not in PRESETS:
        raise ValueError(
            f"configs/testr.py: unknown argument {a.variant!r}; use demo, demo_fasttcm or one of {sorted(PRESETS)}"
        )
    if a.tcm and a.fasttcm or a.r50 and a.cr50:
        raise ValueError("configs/testr.py: choose one of tcm / fasttcm and one of r50 / cr50")
    if (a.r50 or a.cr50 or a.freeze_text) and not (a.tcm or a.fasttcm):
        raise ValueError("configs/testr.py: r50 / cr50 / freeze_text go with tcm or fasttcm")
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
    m.variant = "testr"  # "tcm" / "fasttcm": TESTR-TCM / TESTR-FastTCM (module docstring)
    t = m.tcm = ml_collections.ConfigDict()
    t.clip_checkpoint = ""  # OpenAI RN50 (.safetensors): text tower, and with a clip: backbone the backbone
    t.text_clip = "rn50"  # CLIP preset of the text tower beside a resnet50 backbone (a clip: backbone brings its own)
    t.prompt, t.n_ctx = CODE_PROMPT, 4
    t.decoder_width, t.decoder_heads, t.decoder_layers, t.dropout = 256, 4, 3, 0.1
    t.tau = 0.07
    t.pixel_target = "binary"  # or "instance": the released instance-index target
    t.shrink_ratio = 0.9
    t.pix_loss_weight = 1.0

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
    d.fraction = 1.0  # few-shot: train on this fraction of the train split (tasks/fasttcm.py helpers)
    d.fraction_seed = 0
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
    if a.tcm or a.fasttcm:
        _tcm(config, a)
    return _eval(config) if a.eval else config


def _tcm(config: ml_collections.ConfigDict, a: ml_collections.ConfigDict) -> None:
    """TESTR-TCM / TESTR-FastTCM on top of a preset or the demo (module docstring)."""
    m, o = config.model, config.optim
    m.variant = "tcm" if a.tcm else "fasttcm"
    m.isolate_padding = True
    if a.cr50:
        m.backbone = "clip:rn50"
    elif a.r50:
        m.backbone = "resnet50"
    demo = config.data.name == "synthetic"
    o.groups = optim_groups(TESTRTCMConfig(freeze_text=a.freeze_text), backbone_mult=1.0 if demo else 0.1)
    p = TCM_PRESETS.get(config.data.name)
    if p is None:
        return
    config.batch_size = p["batch"]
    config.total_steps = a.steps or p["iters"]
    if p.get("optim") == "ranger":
        o.name, o.b1, o.eps = "ranger", 0.95, 1e-5


def _eval(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Evaluation-only stage: a trained spotter on the preset's test split (``tasks.testr.TESTRSpotEvalTask``)."""
    config.task = "testr_eval"
    config.spotter = ""  # TESTR workdir / checkpoint, or an official .safetensors
    config.official_kwargs = ""  # JSON of from_official_spotter arguments (with an official checkpoint)
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
    # TESTR-TCM / FastTCM steps take ~1 s on 2 cores against ~0.7 s: 800 steps keep their demo within 20 minutes
    config.total_steps = a.steps or (800 if a.tcm or a.fasttcm else 1200)
    config.eval_every = config.ckpt_every = max(1, config.total_steps // 2)
    config.log_every = 25
    config.tensorboard = True
    o.lr, o.weight_decay = 1e-3, 1e-4
    o.groups = [("sampling_offsets", 0.1)]
    o.grad_clip = 1.0
    o.schedule, o.milestones = "multistep", (int(0.8 * config.total_steps),)
    o.warmup_steps = 50
    t = m.tcm
    t.decoder_width, t.decoder_heads, t.decoder_layers, t.dropout = 32, 4, 1, 0.0
    return config
