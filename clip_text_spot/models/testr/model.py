"""TESTR, polygon variant (the spotter TCM plugs into; spotting.md §1): input projections, positional encodings,
the deformable transformer and the shared heads, on NHWC backbone features.

``TESTR.forward_features([res3, res4, res5], image_sizes)`` is the official ``TESTR.forward`` after the backbone:
padding masks per level from the unpadded image sizes, ``input_proj`` (1x1 conv + GroupNorm(32) per backbone level,
then 3x3 stride-2 convs for the extra levels, the first on the raw last feature), 2-D sine positions from the masks,
the transformer, and per decoder layer ``ctrl_point_class`` / ``ctrl_point_coord`` (one module shared by all layers)
and ``text_class``.

Padding. By default a padded batch is computed as the official code computes it (so official-module references on
padded batches match): GroupNorm statistics include padded positions, the extra level's conv reads padded features
and its mask is the torch-nearest resize of the stride-8 mask. The official runs put one image on each device, so
no padding ever reaches them; ``isolate_padding=True`` makes a padded batch give each image the result it gets alone
(GroupNorm statistics over valid positions only, padded features zeroed before the extra-level convs, extra-level
masks from the image sizes by conv arithmetic). Either way top-k never picks padded tokens.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from clip_text_spot.models.layers import Dtype
from clip_text_spot.models.testr.init import XAVIER, linear, torch_bias_init, torch_kernel_init
from clip_text_spot.models.testr.position import sine_position_1d, sine_position_2d
from clip_text_spot.models.testr.transformer import DeformableTransformer

PRIOR_BIAS = float(-np.log((1 - 0.01) / 0.01))  # class-logit bias for a 1% prior


@dataclasses.dataclass(frozen=True)
class TESTRConfig:
    """TESTR sizes (official config keys in comments; defaults = Base-TESTR polygon)."""

    dim: int = 256  # HIDDEN_DIM
    heads: int = 8  # NHEADS
    levels: int = 4  # NUM_FEATURE_LEVELS (1 or >= number of backbone levels)
    enc_layers: int = 6  # ENC_LAYERS
    dec_layers: int = 6  # DEC_LAYERS
    ffn: int = 1024  # DIM_FEEDFORWARD
    enc_points: int = 4  # encoder MSDeformAttn points (official key DEC_N_POINTS: models.py swaps them)
    dec_points: int = 4  # decoder MSDeformAttn points (official key ENC_N_POINTS)
    num_queries: int = 100  # NUM_QUERIES
    ctrl_points: int = 16  # NUM_CTRL_POINTS
    chars: int = 25  # NUM_CHARS
    voc_size: int = 96  # VOC_SIZE (text classes = voc_size + 1)
    backbone_channels: tuple[int, ...] = (512, 1024, 2048)  # res3..res5 (hard-coded officially)
    strides: tuple[int, ...] = (8, 16, 32)
    use_polygon: bool = True  # USE_POLYGON (False: Bezier variant's offset sigmoid)
    dropout: float = 0.1  # DROPOUT
    activation: str = "relu"
    isolate_padding: bool = False
    dtype: str = "float32"

    def __post_init__(self):
        n = len(self.backbone_channels)
        if self.levels != 1 and self.levels < n:
            raise ValueError(f"levels must be 1 or >= the {n} backbone levels, got {self.levels}")
        if len(self.strides) != n:
            raise ValueError(f"strides {self.strides} do not match backbone channels {self.backbone_channels}")
        if self.dim % 32:
            raise ValueError(f"dim {self.dim} must be divisible by 32 (GroupNorm(32))")


class GroupNorm(nnx.Module):
    """``nn.GroupNorm(groups, C)`` on NHWC (eps 1e-5, biased variance, float32 statistics); with ``mask`` [B, H, W]
    (True = pad) the statistics cover the valid positions only."""

    def __init__(self, channels: int, groups: int = 32, *, rngs: nnx.Rngs, dtype: Dtype = None, eps: float = 1e-5):
        self.groups, self.eps, self.dtype = groups, eps, dtype
        self.scale = nnx.Param(
            nnx.with_partitioning(nnx.initializers.ones_init(), ("embed",))(rngs.params(), (channels,))
        )
        self.bias = nnx.Param(
            nnx.with_partitioning(nnx.initializers.zeros_init(), ("embed",))(rngs.params(), (channels,))
        )

    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        b, h, w, c = x.shape
        xg = x.astype(jnp.float32).reshape(b, h * w, self.groups, c // self.groups)
        if mask is None:
            mean = xg.mean(axis=(1, 3), keepdims=True)
            var = jnp.square(xg - mean).mean(axis=(1, 3), keepdims=True)
        else:
            valid = (~mask).reshape(b, h * w, 1, 1).astype(jnp.float32)
            count = valid.sum(axis=1, keepdims=True) * (c // self.groups)
            mean = (xg * valid).sum(axis=(1, 3), keepdims=True) / count
            var = (jnp.square(xg - mean) * valid).sum(axis=(1, 3), keepdims=True) / count
        y = ((xg - mean) / jnp.sqrt(var + self.eps)).reshape(b, h, w, c)
        return (y * self.scale[...] + self.bias[...]).astype(self.dtype or x.dtype)


class InputProjection(nnx.Module):
    """``input_proj[l]``: conv (1x1, or 3x3 stride 2 padding 1 for an extra level) + GroupNorm(32)."""

    def __init__(self, cin: int, dim: int, extra: bool, *, rngs: nnx.Rngs, dtype: Dtype = None):
        k, s = (3, 2) if extra else (1, 1)
        self.conv = nnx.Conv(
            cin,
            dim,
            kernel_size=(k, k),
            strides=(s, s),
            padding=((k // 2, k // 2),) * 2,
            dtype=dtype,
            rngs=rngs,
            kernel_init=nnx.with_partitioning(XAVIER, (None, None, "conv_in", "conv_out")),
            bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), ("conv_out",)),
        )
        self.norm = GroupNorm(dim, rngs=rngs, dtype=dtype)

    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        return self.norm(self.conv(x), mask)


class MLP(nnx.Module):
    """Official ``MLP(din, hidden, dout, n)``: ``layers/0..n-1`` Linear, ReLU between."""

    def __init__(self, din: int, hidden: int, dout: int, n: int, *, rngs: nnx.Rngs, dtype: Dtype = None):
        dims = [din] + [hidden] * (n - 1) + [dout]
        self.layers = nnx.List(
            [
                linear(a, b, ("embed", "embed"), rngs=rngs, dtype=dtype, kernel_init=torch_kernel_init())
                for a, b in zip(dims[:-1], dims[1:], strict=True)
            ]
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = jax.nn.relu(x)
        return x


def inverse_sigmoid(x: jax.Array, eps: float = 1e-5) -> jax.Array:
    """``adet.utils.misc.inverse_sigmoid``: log(x / (1 - x)) with x clamped to [0, 1] and both terms to >= eps."""
    x = jnp.clip(x, 0.0, 1.0)
    return jnp.log(jnp.maximum(x, eps) / jnp.maximum(1.0 - x, eps))


def padding_mask(image_sizes: jax.Array, shape: tuple[int, int], stride: int) -> jax.Array:
    """[B, H, W] True = pad: position (y, x) is valid when y < ceil(h / stride) and x < ceil(w / stride)."""
    h, w = shape
    vh = (image_sizes[:, 0] + stride - 1) // stride
    vw = (image_sizes[:, 1] + stride - 1) // stride
    ys = jnp.arange(h)[None, :, None] < vh[:, None, None]
    xs = jnp.arange(w)[None, None, :] < vw[:, None, None]
    return ~(ys & xs)


def nearest_resize_mask(mask: jax.Array, shape: tuple[int, int]) -> jax.Array:
    """torch ``F.interpolate(mask.float(), size, mode="nearest").bool()``: source index floor(dst * in / out) with
    the scale in float32 (not jax.image.resize's half-pixel centres)."""

    def index(n_in: int, n_out: int) -> np.ndarray:
        if n_in == n_out:
            return np.arange(n_out)
        scale = np.float32(n_in) / np.float32(n_out)
        return np.minimum(np.floor(np.arange(n_out, dtype=np.float32) * scale).astype(np.int64), n_in - 1)

    return mask[:, index(mask.shape[1], shape[0])][:, :, index(mask.shape[2], shape[1])]


def _valid_extent(mask: jax.Array) -> jax.Array:
    """[B, 2] valid (rows, columns) of a top-left-aligned padding mask."""
    return jnp.stack([jnp.sum(~mask[:, :, 0], 1), jnp.sum(~mask[:, 0, :], 1)], -1)


class TESTR(nnx.Module):
    """TESTR on backbone features (see module docstring). Parameter names mirror the official ``TESTR`` module."""

    def __init__(self, config: TESTRConfig, *, rngs: nnx.Rngs):
        self.config = cfg = config
        dtype = cfg.dtype
        d = cfg.dim
        if cfg.levels == 1:
            projections = [InputProjection(cfg.backbone_channels[-1], d, False, rngs=rngs, dtype=dtype)]
        else:
            projections = [InputProjection(c, d, False, rngs=rngs, dtype=dtype) for c in cfg.backbone_channels]
            cin = cfg.backbone_channels[-1]
            for _ in range(cfg.levels - len(cfg.backbone_channels)):
                projections.append(InputProjection(cin, d, True, rngs=rngs, dtype=dtype))
                cin = d
        self.input_proj = nnx.List(projections)
        self.transformer = DeformableTransformer(
            d,
            cfg.heads,
            cfg.levels,
            cfg.enc_layers,
            cfg.dec_layers,
            cfg.ffn,
            cfg.enc_points,
            cfg.dec_points,
            cfg.dropout,
            cfg.activation,
            rngs=rngs,
            dtype=dtype,
        )
        torch_kernel = torch_kernel_init()
        prior = nnx.initializers.constant(PRIOR_BIAS)
        self.ctrl_point_class = linear(
            d, 1, ("embed", None), rngs=rngs, dtype=dtype, kernel_init=torch_kernel, bias_init=prior
        )
        self.ctrl_point_coord = MLP(d, d, 2, 3, rngs=rngs, dtype=dtype)
        last = self.ctrl_point_coord.layers[-1]
        last.kernel[...] = jnp.zeros(last.kernel.shape, last.kernel.dtype)
        last.bias[...] = jnp.zeros(last.bias.shape, last.bias.dtype)
        self.bbox_coord = MLP(d, d, 4, 3, rngs=rngs, dtype=dtype)
        last = self.bbox_coord.layers[-1]
        last.bias[...] = last.bias[...].at[2:].set(0.0)
        self.bbox_class = linear(
            d, 1, ("embed", None), rngs=rngs, dtype=dtype, kernel_init=torch_kernel, bias_init=prior
        )
        self.text_class = linear(
            d,
            cfg.voc_size + 1,
            ("embed", "vocab"),
            rngs=rngs,
            dtype=dtype,
            kernel_init=torch_kernel,
            bias_init=torch_bias_init(d),
        )
        normal = nnx.initializers.normal(1.0)
        self.ctrl_point_embed = nnx.Param(
            nnx.with_partitioning(normal, (None, "embed"))(rngs.params(), (cfg.ctrl_points, d))
        )
        self.text_embed = nnx.Param(nnx.with_partitioning(normal, (None, "embed"))(rngs.params(), (cfg.chars, d)))

    def project(self, features: Sequence[jax.Array], image_sizes: jax.Array) -> tuple[list[jax.Array], list[jax.Array]]:
        """(projected levels [B, H_l, W_l, d], padding masks [B, H_l, W_l]) from the backbone levels."""
        cfg = self.config
        if len(features) != len(cfg.backbone_channels):
            raise ValueError(f"expected {len(cfg.backbone_channels)} backbone levels, got {len(features)}")
        masks = [padding_mask(image_sizes, f.shape[1:3], s) for f, s in zip(features, cfg.strides, strict=True)]
        if cfg.levels == 1:
            features, masks = features[-1:], masks[-1:]
        iso = cfg.isolate_padding
        srcs = [proj(f, m if iso else None) for proj, f, m in zip(self.input_proj, features, masks, strict=False)]
        prev, prev_mask = features[-1], masks[-1]
        for proj in self.input_proj[len(srcs) :]:
            if iso:
                prev = jnp.where(prev_mask[..., None], jnp.zeros((), prev.dtype), prev)
                h, w = (prev.shape[1] + 1) // 2, (prev.shape[2] + 1) // 2
                extent = (_valid_extent(prev_mask) + 1) // 2
                mask = ~(
                    (jnp.arange(h)[None, :, None] < extent[:, 0, None, None])
                    & (jnp.arange(w)[None, None, :] < extent[:, 1, None, None])
                )
                src = proj(prev, mask)
            else:
                src = proj(prev)
                mask = nearest_resize_mask(masks[0], src.shape[1:3])
            srcs.append(src)
            masks.append(mask)
            prev, prev_mask = src, mask
        return srcs, masks

    def forward_features(
        self,
        features: Sequence[jax.Array],
        image_sizes: jax.Array,
        capture: dict | None = None,
        rngs: nnx.Rngs | None = None,
    ) -> dict:
        """``features`` NHWC backbone levels (res3, res4, res5), ``image_sizes`` int [B, 2] unpadded (h, w) in input
        pixels -> the official output dict: ``pred_logits`` [B, Q, P, 1], ``pred_ctrl_points`` [B, Q, P, 2] in
        [0, 1] of the unpadded image, ``pred_texts`` [B, Q, T, V + 1], ``aux_outputs`` (the same for decoder layers
        0..n-2) and ``enc_outputs`` (``pred_logits`` [B, S, 1], ``pred_boxes`` [B, S, 4] sigmoid cx, cy, w, h).
        ``capture`` (a dict) receives intermediates under the official fixture's names (``src_proj_l0``, ``pos_l0``,
        ``memory``, ``hs``, ...; per-layer ones nested: ``enc0``, ``dec0``)."""
        cfg = self.config
        srcs, masks = self.project(features, image_sizes)
        pos = [sine_position_2d(m, cfg.dim // 2).astype(s.dtype) for s, m in zip(srcs, masks, strict=True)]
        text_pos = sine_position_1d(cfg.chars, cfg.dim)
        if capture is not None:
            for i, (s, m, p) in enumerate(zip(srcs, masks, pos, strict=True)):
                capture.update({f"src_proj_l{i}": s, f"mask_l{i}": m, f"pos_l{i}": p})
            capture["text_pos_embed"] = text_pos
        out = self.transformer(
            srcs,
            masks,
            pos,
            self.ctrl_point_embed[...],
            self.text_embed[...],
            text_pos,
            self.bbox_class,
            self.bbox_coord,
            cfg.num_queries,
            capture=capture,
            rngs=rngs,
        )
        if capture is not None:
            capture.update(hs=out["hs"], hs_text=out["hs_text"])
        reference = inverse_sigmoid(self._to_unit(out["reference_points"], inverse=True))[:, :, None, :2]
        layers = []
        for hs, hs_text in zip(out["hs"], out["hs_text"], strict=True):
            coords = self.ctrl_point_coord(hs).astype(jnp.float32) + reference
            layers.append(
                {
                    "pred_logits": self.ctrl_point_class(hs).astype(jnp.float32),
                    "pred_ctrl_points": self._to_unit(coords),
                    "pred_texts": self.text_class(hs_text).astype(jnp.float32),
                }
            )
        return {
            **layers[-1],
            "aux_outputs": layers[:-1],
            "enc_outputs": {
                "pred_logits": out["enc_outputs_class"].astype(jnp.float32),
                "pred_boxes": jax.nn.sigmoid(out["enc_outputs_coord_unact"]),
            },
        }

    def _to_unit(self, x: jax.Array, inverse: bool = False) -> jax.Array:
        """Polygon variant: sigmoid (``inverse``: identity before ``inverse_sigmoid``). Bezier variant: the offset
        sigmoid 2 sigmoid(x) - 0.5 over [-0.5, 1.5] (``inverse``: (x + 0.5) / 2)."""
        if self.config.use_polygon:
            return x if inverse else jax.nn.sigmoid(x)
        return (x + 0.5) / 2.0 if inverse else jax.nn.sigmoid(x) * 2.0 - 0.5


class TESTRDetector(nnx.Module):
    """A backbone and TESTR: ``backbone.features(pixels)`` (NHWC maps finest first; the detectron2 ``ResNet`` of
    ``backbone.py`` or CLIP's ``ModifiedResNet``) feeds its last ``len(backbone_channels)`` levels to TESTR."""

    def __init__(self, backbone: nnx.Module, testr: TESTR):
        self.backbone = backbone
        self.testr = testr

    def __call__(
        self, pixels: jax.Array, image_sizes: jax.Array, capture: dict | None = None, rngs: nnx.Rngs | None = None
    ) -> dict:
        """Normalised, zero-padded NHWC ``pixels`` [B, H, W, 3] and unpadded ``image_sizes`` int [B, 2] (h, w) ->
        ``TESTR.forward_features``' output dict."""
        levels = len(self.testr.config.backbone_channels)
        features = self.backbone.features(pixels)[-levels:]
        return self.testr.forward_features(features, image_sizes, capture=capture, rngs=rngs)
