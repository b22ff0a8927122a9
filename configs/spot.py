"""End-to-end text spotting: a FastTCM detector and a DPTR recogniser in one pipeline (``clip_text_spot.spotter``).

    python -m clip_text_spot.main --config=configs/spot.py:demo --workdir=runs/spot_demo                # embedded demo
    python -m clip_text_spot.main --config=configs/spot.py:eval --workdir=runs/spot_ic15 \
        --config.detector=runs/ic15 --config.recognizer=runs/dptr_finetune \
        --config.data.name=ic15 --config.data.root=data/prepared/icdar2015 \
        [--config.lexicon.kind=strong --config.lexicon.dir=DIR]

Arguments: ``demo`` (default) or ``eval``; ``steps=N`` and ``batch=N`` (every training stage of the demo).

``demo``: four stages in one command, sized for a 2-core CPU. ``detector``: the FastTCM demo (configs/fasttcm.py) on
synthetic scenes whose words come from a small vocabulary; ``pretrain`` and ``finetune``: the DPTR demo
(configs/dptr.py) with the same vocabulary, fonts and word kinds, and the recogniser changes of
``DEMO_RECOGNISER``; ``spot``: the two models spot the detector's
held-out synthetic scenes and ``metrics.jsonl`` gets ``e2e_hmean`` next to the detection ``hmean``
(``clip_text_spot.tasks.spot``). Running it again reuses the trained stages.

``eval``: only the spotting stage, for trained models (``--config.detector``, ``--config.recognizer``: workdirs or
checkpoints) on a prepared dataset's test split with transcriptions (``python -m clip_text_spot.data.prepare``).
End-to-end protocol by default (IC15, CTW1500); ``--config.word_spotting=True`` for Total-Text. Lexicons
(``--config.lexicon.kind``: none | generic | weak | strong | full, files in ``--config.lexicon.dir`` under the
AdelaiDet names or ``--config.lexicon.words`` / ``.pairs``; ``--config.lexicon.policy``: deepsolo | testr).
"""

from __future__ import annotations

import ml_collections

from configs import dptr, fasttcm
from configs.common import parse_arg

# Demo words and looks shared by the detection scenes and the recognition crops: 50 words (lower, Title, UPPER),
# four fonts, mostly gradient backgrounds (no photos), so that a recogniser trained for ~5 CPU minutes reads them;
# the same font sizes and no perspective, so that rectified detections look like the crops the recogniser saw.
DEMO_STYLE = dict(
    vocab_size=50,
    word_kind_weights=(0.8, 0.1, 0.1, 0.0, 0.0),
    fonts=("DejaVuSans", "DejaVuSans-Bold", "DejaVuSerif", "DejaVuSansMono"),
    background_weights=(0.7, 0.2, 0.1, 0.0),
    background_contrast=0.5,
    font_size=(20, 40),
    perspective=0.0,
)
# Recogniser changes to the DPTR demo (whose fine-tuning recipe, configs/dptr.py DEMO_FINETUNE, it shares): its
# crops are cut along each word's rotated quad with corner noise of 5% of the word height, as rectified detections
# are (with plain bounding-box crops a recogniser read 82% of such crops but only 24% of the detected words).
DEMO_RECOGNISER = dict(pretrain_steps=200, finetune_steps=1800, box_jitter=0.05, max_rotation=10.0)
DEMO_DETECTOR_STEPS = 450  # evaluated once, at the end (the spotting stage reports its hmean again)
# The demo's detector, trained for minutes, tracks word rotation poorly (orientation errors of 5.5 degrees std,
# boxes 1.22 +- 0.23 of the word's height); the recogniser misreads such crops, so the demo re-fits each detected
# quad to the word's ink before reading (rectify.refine_quad) and grows it by 0.2 of its height.
DEMO_SPOT = dict(refine=True, pad=0.2)


def eval_config() -> ml_collections.ConfigDict:
    """The spotting stage: models, evaluation data, pipeline options (``SpotOptions``) and lexicon."""
    config = ml_collections.ConfigDict()
    config.task = "spot"
    config.seed = 0
    config.detector = ""  # FastTCM / TCM workdir or checkpoint
    config.recognizer = ""  # DPTR fine-tuning workdir or checkpoint, or an official FILE.safetensors (+ FILE.json)
    config.best = False  # use the best-eval checkpoints instead of the latest
    config.word_spotting = False  # True: Total-Text's word-spotting mode
    config.vis_images = 4
    d = config.data = ml_collections.ConfigDict()
    d.name = "ic15"
    d.root = ""  # prepared dataset (python -m clip_text_spot.data.prepare)
    d.train_split, d.eval_split = "train", "test"
    d.protocol = "icdar2015"
    s = config.spot = ml_collections.ConfigDict()
    s.eval_size = ()  # (H, W); empty: the detector's
    s.batch_size = 1
    s.max_crops = 64
    s.supersample = 2
    s.side_points = 16
    s.layout = "contour"
    s.min_score = 0.0
    s.pad = 0.1  # grow each region by this fraction of its height (detections are tight, training crops are not)
    s.refine = False  # re-fit each detected quad to the word's ink before reading (SpotOptions.refine)
    s.postprocess = ml_collections.ConfigDict()  # DB post-processing overrides
    lex = config.lexicon = ml_collections.ConfigDict()
    lex.kind = "none"
    lex.policy = "deepsolo"
    lex.dir = ""
    lex.words = ""
    lex.pairs = ""
    return config


def _demo(a: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    steps = f"steps={a.steps}" if a.steps else ""
    det = fasttcm.get_config(",".join(filter(None, ["demo", steps])))
    det.data.style.update(DEMO_STYLE)
    det.tensorboard = False
    if a.batch:
        det.batch_size = a.batch
    if not a.steps:
        det.total_steps = det.eval_every = det.ckpt_every = DEMO_DETECTOR_STEPS
    rec = dptr.get_config(",".join(filter(None, ["demo", steps, f"batch={a.batch}" if a.batch else ""])))
    pre, ft, r = rec.pretrain, rec.finetune, DEMO_RECOGNISER
    ft.data.style.update(DEMO_STYLE)
    pre.text.vocab_size = DEMO_STYLE["vocab_size"]
    pre.text.kind_weights = DEMO_STYLE["word_kind_weights"]
    ft.data.box_jitter = r["box_jitter"]
    ft.data.style.max_rotation = r["max_rotation"]
    if not a.steps:
        pre.total_steps = r["pretrain_steps"]
        pre.eval_every = pre.ckpt_every = r["pretrain_steps"] // 2
        ft.total_steps = r["finetune_steps"]
        ft.eval_every = ft.ckpt_every = r["finetune_steps"] // 2
    spot = eval_config()
    spot.detector, spot.recognizer = "stage:detector", "stage:finetune"
    spot.data = ml_collections.ConfigDict(det.data.to_dict())
    spot.spot.batch_size = 8
    spot.spot.refine, spot.spot.pad = DEMO_SPOT["refine"], DEMO_SPOT["pad"]

    config = ml_collections.ConfigDict()
    config.stages = ("detector", "pretrain", "finetune", "spot")
    config.detector, config.pretrain, config.finetune, config.spot = det, pre, ft, spot
    return config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    a = parse_arg(arg, variant="demo", steps=0, batch=0)
    if a.variant == "demo":
        return _demo(a)
    if a.variant == "eval":
        return eval_config()
    raise ValueError(f"configs/spot.py: unknown argument {a.variant!r}; use demo or eval")
