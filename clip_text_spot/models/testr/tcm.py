"""TESTR with TCM / FastTCM ("TESTR-CLIP", spotting.md §5): CLIP's text knowledge added to a backbone level before
the transformer, and the instance-language pixel loss.

Forward (``TESTRTCM.forward_features``), with ``TextPrompting`` (``models.fasttcm.matcher``, shared with the DBNet
detector) doing the prompting:

* ``backbone="r50"`` (the released code, default): detectron2's ImageNet ResNet-50 (``backbone.ResNet``); the visual
  tokens are res4 (C = 1024), the global feature their mean; the score map ``S`` [B, h4, w4, 1] is added to res4
  (broadcast over its channels) before TESTR's level-1 projection; res5 stays computed from the unfused res4.
* ``backbone="cr50"`` (the paper's "CR50"): CLIP's ModifiedResNet-50 gives C3..C5 and its dense attention pool on C5
  the global feature and the local map (CLIP's joint space, stride 32); ``S`` is added to res5 (= C5), the level the
  map lives at (the DBNet detector concatenates it there too), so level 2 and the extra level 3 see it. A choice:
  the official spotter never builds this variant.

Then the prompting: text encoder with learnable contexts and the prompt generator's cue (TCM: from the global
feature; FastTCM: from a learned meta query, so ``precompute_text`` caches the text embedding and
``text_cache=`` skips the text tower), FastTCM's BSM in the paper form ``cos(g, t) g + t`` (the released
``is_v2`` projection cannot run: its [1024, 512] ``pix_w`` meets 1024-d text, tcm.md §2.5), the visual prompt
generator on the visual tokens, the context decoder on [global; tokens], and ``S`` = cosine(tokens, text).

Padding (``config.testr.isolate_padding``, default True here): the global feature is the mean over valid positions
and the decoders' keys skip padded tokens, so each image of a padded batch gets its batch-1 result (the attention
pool of "cr50" still sees the padded grid, whose position table is resized to it, as the DBNet detector's);
``False`` reproduces the official code on a padded batch (plain mean and every token a key).

Pixel loss (``pixel_loss``): ``sigmoid`` of ``S / tau`` resized bilinearly (PyTorch semantics) to the target, Dice
with sums over the whole batch. With ``isolate_padding`` each image's valid part of ``S`` is resized to its own image
size and the Dice sums skip padded pixels; otherwise the whole padded map is resized to the padded target and every
pixel counts (official). Target (``pixel_target``): the polygons shrunk with ratio 0.9 (mmocr's kernel offset) and
filled with 1 (``"binary"``, default) or with the instance index 1..N (``"instance"``: the released code, whose
non-binary target distorts the Dice loss). Drawn from the polygons at the network's input size (the official code
draws at the original size and resizes the map with nearest interpolation: a choice, equal up to that resize).

Optimiser groups (``optim_groups``): the official trainer puts every CLIP module under ``backbone.0`` and so trains
them (text tower included: the ``lr x 0`` branch is unreachable) at LR_BACKBONE, ``sampling_offsets`` at 0.1 x
BASE_LR; ``freeze_text=True`` freezes the text tower as the detector recipe does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import cv2
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from clip_text_spot.heads.common import shrink_offset
from clip_text_spot.heads.db.loss import dice_loss
from clip_text_spot.models.clip.model import CLIP
from clip_text_spot.models.clip.resnet import ModifiedResNet
from clip_text_spot.models.fasttcm.config import FastTCMConfig, default_clip
from clip_text_spot.models.fasttcm.matcher import TextPrompting, load_clip_image
from clip_text_spot.models.testr.backbone import ResNet, ResNetConfig
from clip_text_spot.models.testr.losses import LossConfig, criterion_loss
from clip_text_spot.models.testr.model import TESTR, TESTRConfig, padding_mask
from clip_text_spot.models.testr.targets import SpotTargets

BACKBONES = ("r50", "cr50")
PIXEL_TARGETS = ("binary", "instance")


def default_prompting() -> FastTCMConfig:
    """FastTCM prompting around a 1024-d visual space (res4 of R-50, or CLIP RN50's joint space): RN50's text tower,
    the code's prompt with 4 contexts, two 3-layer decoders of width 256 (spotting.md §5.1)."""
    return FastTCMConfig(clip=default_clip(), fast=True)


@dataclasses.dataclass(frozen=True)
class TESTRTCMConfig:
    """A TESTR-TCM / TESTR-FastTCM spotter (module docstring).

    * ``testr``: the spotter (``isolate_padding`` also governs the CLIP side's padding, default True here);
    * ``prompting``: the TCM modules (``fast`` selects FastTCM; ``clip.vision`` is the "cr50" backbone);
    * ``backbone``: ``"r50"`` (detectron2 ResNet of ``resnet``) or ``"cr50"``;
    * ``pixel_target``: ``"binary"`` or ``"instance"`` (official), ``shrink_ratio`` of its kernels (0.9),
      ``pix_loss_weight`` (``CLIP.PIX_CLS_LOSS_WEIGHT``: 1.0 in the released scripts);
    * ``freeze_text``: freeze the CLIP text tower (``optim_groups``; the released trainer trains it).
    """

    testr: TESTRConfig = dataclasses.field(default_factory=lambda: TESTRConfig(isolate_padding=True))
    prompting: FastTCMConfig = dataclasses.field(default_factory=default_prompting)
    backbone: str = "r50"
    resnet: ResNetConfig = dataclasses.field(default_factory=ResNetConfig)
    pixel_target: str = "binary"
    shrink_ratio: float = 0.9
    pix_loss_weight: float = 1.0
    freeze_text: bool = False

    def __post_init__(self):
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {BACKBONES}, got {self.backbone!r}")
        if self.pixel_target not in PIXEL_TARGETS:
            raise ValueError(f"pixel_target must be one of {PIXEL_TARGETS}, got {self.pixel_target!r}")
        if len(self.prompting.prompt_texts) != 1:
            raise ValueError("TESTR-TCM adds a one-channel score map to a backbone level: use exactly one prompt")
        if len(self.testr.backbone_channels) != 3:
            raise ValueError(f"TESTR-TCM expects res3..res5, got backbone channels {self.testr.backbone_channels}")
        c = self.prompting.clip.embed_dim
        if self.backbone == "r50" and self.testr.backbone_channels[1] != c:
            raise ValueError(f"res4 has {self.testr.backbone_channels[1]} channels, the prompting's visual dim is {c}")

    @property
    def score_level(self) -> int:
        """Index in (res3, res4, res5) of the level that gets the score map (res4 for "r50", res5 for "cr50")."""
        return 1 if self.backbone == "r50" else 2


class TESTRTCM(nnx.Module):
    """``backbone`` (or None: features are given to ``forward_features``), ``clip`` (``TextPrompting``) and
    ``testr``. Build a fresh one with ``build_testr_tcm``, an official one with
    ``models.testr.official.from_official_testr_clip``."""

    def __init__(self, config: TESTRTCMConfig, backbone: nnx.Module | None, clip: TextPrompting, testr: TESTR):
        self.config = config
        self.backbone = backbone
        self.clip = clip
        self.testr = testr

    def precompute_text(self) -> jax.Array:
        """FastTCM: the text embedding [1, 1, C] to pass as ``text_cache`` (constant for a set of weights)."""
        return self.clip.precompute_text()

    def _visual(self, features: Sequence[jax.Array], image_sizes: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(global feature [B, C], visual map [B, h, w, C], valid positions [B, h, w]) for the prompting."""
        cfg = self.config
        level = cfg.score_level
        if cfg.backbone == "r50":
            vis = features[level].astype(jnp.float32)
            valid = ~padding_mask(image_sizes, vis.shape[1:3], cfg.testr.strides[level])
            if cfg.testr.isolate_padding:
                weights = valid[..., None].astype(jnp.float32)
                g = (vis * weights).sum((1, 2)) / weights.sum((1, 2))
            else:
                g = vis.mean((1, 2))
            return g, vis, valid
        g, vis = self.backbone.attnpool(features[level].astype(self.clip.config.dtype), dense=True)
        valid = ~padding_mask(image_sizes, vis.shape[1:3], cfg.testr.strides[level])
        return g.astype(jnp.float32), vis.astype(jnp.float32), valid

    def match(
        self,
        features: Sequence[jax.Array],
        image_sizes: jax.Array,
        text_cache: jax.Array | None = None,
        rngs: nnx.Rngs | None = None,
    ) -> dict[str, jax.Array]:
        """The CLIP side on NHWC (res3, res4, res5): ``score_map`` [B, h, w, 1] (cosine) and, under the official
        fixture's names, ``clip_global_feat``, ``clip_prompt_gen``, ``clip_text_embed`` (after BSM),
        ``clip_vis_prompt_diff``, ``clip_text_diff``, ``clip_text_final``."""
        g, vis, valid = self._visual(features, image_sizes)
        b, h, w, c = vis.shape
        tokens_valid = valid.reshape(b, h * w) if self.config.testr.isolate_padding else None
        m = self.clip.match_tokens(g, vis.reshape(b, h * w, c), text_cache, rngs=rngs, valid=tokens_valid)
        names = {"prompt_gen": "prompt_gen", "text_embed": "text_after_bsm", "text_final": "text_final"}
        names.update(vis_prompt_diff="vis_prompt_diff", text_diff="text_diff")
        out = {f"clip_{k}": m[v] for k, v in names.items() if v in m}
        out.update(clip_global_feat=g, score_map=m["score"].reshape(b, h, w, -1))
        return out

    def forward_features(
        self,
        features: Sequence[jax.Array],
        image_sizes: jax.Array,
        text_cache: jax.Array | None = None,
        capture: dict | None = None,
        rngs: nnx.Rngs | jax.Array | None = None,
    ) -> dict:
        """NHWC (res3, res4, res5) and unpadded ``image_sizes`` int [B, 2] -> TESTR's output dict plus
        ``score_map`` [B, h, w, 1] (the cosine map added to the score level). ``text_cache`` (FastTCM) skips the
        text tower; ``capture`` also receives ``match``'s CLIP-side entries."""
        rngs = self.clip.prepare_call(text_cache, rngs)
        matched = self.match(features, image_sizes, text_cache, rngs)
        score = matched["score_map"]
        if capture is not None:
            capture.update({k: v for k, v in matched.items() if k.startswith("clip_")})
        level = self.config.score_level
        fused = list(features)
        fused[level] = features[level] + score.astype(features[level].dtype)
        out = self.testr.forward_features(fused, image_sizes, capture=capture, rngs=rngs)
        out["score_map"] = score
        return out

    def __call__(
        self,
        pixels: jax.Array,
        image_sizes: jax.Array,
        text_cache: jax.Array | None = None,
        capture: dict | None = None,
        rngs: nnx.Rngs | jax.Array | None = None,
    ) -> dict:
        """Normalised, zero-padded NHWC ``pixels`` and unpadded ``image_sizes`` -> ``forward_features``' dict."""
        if self.backbone is None:
            raise ValueError("this TESTRTCM has no backbone: call forward_features with res3..res5")
        features = [f.astype(jnp.float32) for f in self.backbone.features(pixels)[-3:]]
        return self.forward_features(features, image_sizes, text_cache, capture, rngs)

    def load_clip(self, clip: CLIP) -> None:
        """Overwrite the text tower (and for "cr50" the backbone) with a loaded CLIP ResNet model's weights, e.g.
        ``load_pretrained("RN50.safetensors")``; the other modules keep their values."""
        if self.config.backbone == "cr50":
            load_clip_image(self.backbone, clip, self.config.prompting)
        self.clip.load_clip_text(clip)


def build_testr_tcm(
    config: TESTRTCMConfig, *, rngs: nnx.Rngs, prompt_ids: np.ndarray | None = None, with_backbone: bool = True
) -> TESTRTCM:
    """A freshly initialised ``TESTRTCM`` (``with_backbone=False``: no image backbone, features come as input)."""
    dtype = config.prompting.dtype
    backbone = None
    if with_backbone and config.backbone == "r50":
        backbone = ResNet(config.resnet, rngs=rngs, dtype=config.testr.dtype)
    elif with_backbone or config.backbone == "cr50":  # "cr50" needs its attention pool even on given features
        vision = config.prompting.clip.vision
        backbone = ModifiedResNet(vision, config.prompting.clip.embed_dim, rngs=rngs, dtype=dtype)
        channels = tuple(vision.width * 8 * 2**i for i in range(3))
        if channels != tuple(config.testr.backbone_channels):
            expected = config.testr.backbone_channels
            raise ValueError(f"CLIP ResNet C3..C5 have {channels} channels, TESTR expects {expected}")
    clip = TextPrompting(config.prompting, rngs=rngs, prompt_ids=prompt_ids)
    return TESTRTCM(config, backbone, clip, TESTR(config.testr, rngs=rngs))


def pixel_target(
    polygons: Sequence[np.ndarray],
    ignore: Sequence[bool],
    image_hw: tuple[int, int],
    shrink_ratio: float = 0.9,
    instance_index: bool = False,
) -> np.ndarray:
    """int32 [h, w] kernel map of one image: each polygon (pixels, [n, 2]) offset inwards by mmocr's kernel distance
    for ``shrink_ratio`` and filled with 1, or with its index + 1 (``instance_index``, the released code's
    ``generate_kernels``: later polygons overwrite earlier ones; an empty shrink is skipped, a split one keeps its
    first part). Ignored and degenerate (< 3 points) polygons are not drawn (their index is still counted)."""
    kernel = np.zeros(image_hw, np.float32)
    for i, (poly, skip) in enumerate(zip(polygons, ignore, strict=True)):
        poly = np.asarray(poly, np.float32).reshape(-1, 2)
        if skip or len(poly) < 3:
            continue
        _, paths = shrink_offset(poly, shrink_ratio)
        if not paths:
            continue
        cv2.fillPoly(kernel, [np.asarray(paths[0], np.int32).reshape(-1, 2)], i + 1 if instance_index else 1)
    return kernel.astype(np.int32)


def batch_pixel_targets(maps: Sequence[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Per-image kernel maps zero-padded (bottom / right) to ``shape`` and stacked -> int32 [B, H, W]."""
    out = np.zeros((len(maps), *shape), np.int32)
    for i, m in enumerate(maps):
        out[i, : m.shape[0], : m.shape[1]] = m
    return out


def _resize_weights(n_out: int, n_in: int, out_extent: jax.Array, in_extent: jax.Array) -> jax.Array:
    """[B, n_out, n_in] PyTorch bilinear weights (align_corners=False) mapping the first ``in_extent[b]`` source
    positions onto the first ``out_extent[b]`` target positions (float32 scale ``in / out`` as torch computes it)."""
    scale = in_extent.astype(jnp.float32) / out_extent.astype(jnp.float32)
    src = jnp.maximum((jnp.arange(n_out, dtype=jnp.float32)[None] + 0.5) * scale[:, None] - 0.5, 0.0)
    i0 = jnp.minimum(jnp.floor(src).astype(jnp.int32), in_extent[:, None] - 1)
    i1 = jnp.minimum(i0 + 1, in_extent[:, None] - 1)
    lam = (src - i0.astype(jnp.float32))[..., None]
    return jax.nn.one_hot(i0, n_in) * (1.0 - lam) + jax.nn.one_hot(i1, n_in) * lam


def pixel_loss(
    score_map: jax.Array,
    target: jax.Array,
    image_sizes: jax.Array,
    *,
    stride: int,
    tau: float = 0.07,
    binary: bool = True,
    isolate_padding: bool = True,
) -> tuple[jax.Array, jax.Array]:
    """(Dice loss, probability map [B, H, W]) of the score map [B, h, w, 1] (stride ``stride``) against the kernel
    target [B, H, W] of a batch padded to (H, W); ``binary`` compares with ``target > 0`` (else the raw values, the
    official instance indices). See the module docstring for ``isolate_padding``."""
    b, h, w, _ = score_map.shape
    hh, ww = target.shape[1:]
    sizes = jnp.asarray(image_sizes, jnp.int32)
    if isolate_padding:
        out_ext, in_ext = sizes, (sizes + stride - 1) // stride
        mask = ~padding_mask(sizes, (hh, ww), 1)
    else:
        out_ext = jnp.broadcast_to(jnp.array([hh, ww], jnp.int32), (b, 2))
        in_ext = jnp.broadcast_to(jnp.array([h, w], jnp.int32), (b, 2))
        mask = jnp.ones((b, hh, ww), bool)
    my = _resize_weights(hh, h, out_ext[:, 0], in_ext[:, 0])
    mx = _resize_weights(ww, w, out_ext[:, 1], in_ext[:, 1])
    logits = jnp.einsum("boh,bhw,bpw->bop", my, score_map[..., 0] / tau, mx, precision="highest")
    prob = jnp.exp(jax.nn.log_sigmoid(logits))
    gt = (target > 0) if binary else target
    return dice_loss(prob, gt, mask.astype(jnp.float32)), prob


def tcm_criterion_loss(
    outputs: dict,
    targets: SpotTargets,
    pixel_targets: jax.Array,
    image_sizes: jax.Array,
    loss_cfg: LossConfig,
    config: TESTRTCMConfig,
    token_valid: jax.Array | None = None,
    mesh: jax.sharding.Mesh | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(training loss, terms): TESTR's set criterion (``criterion_loss``; ``mesh``: per-device matching) plus
    ``loss_pix_cls`` / ``lossw_pix_cls`` (weight ``config.pix_loss_weight``) on ``outputs["score_map"]``."""
    total, terms = criterion_loss(outputs, targets, loss_cfg, token_valid, mesh)
    pix, _ = pixel_loss(
        outputs["score_map"],
        pixel_targets,
        image_sizes,
        stride=config.testr.strides[config.score_level],
        tau=config.prompting.tau,
        binary=config.pixel_target == "binary",
        isolate_padding=config.testr.isolate_padding,
    )
    weighted = config.pix_loss_weight * pix
    return total + weighted, {**terms, "loss_pix_cls": pix, "lossw_pix_cls": weighted}


def optim_groups(
    config: TESTRTCMConfig, backbone_mult: float = 0.1, offsets_mult: float = 0.1
) -> list[tuple[str, float]]:
    """``config.optim.groups`` for ``clip_text_spot.optim`` (first match wins): the image backbone and every CLIP
    module at ``backbone_mult`` (LR_BACKBONE / BASE_LR: 1e-6 / 1e-5 in the fine-tuning configs), MSDA
    ``sampling_offsets`` at ``offsets_mult``; with ``freeze_text`` the text tower first, frozen."""
    groups = [("^clip/text_encoder/", 0.0)] if config.freeze_text else []
    return [*groups, ("^(backbone|clip)/", backbone_mult), ("sampling_offsets", offsets_mult)]
