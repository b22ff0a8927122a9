"""TCM-FCENet neck and head (mmdet 2.x ``FPN`` + mmocr 0.4 ``FCEHead``), Flax NNX, NHWC (``fcenet_panet.md`` §1.2-1.3).

* ``FPN`` (TCM's config: ``num_outs = 3`` over C3-C5, ``norm_cfg=None``, ``act_cfg=None``): a 1x1 lateral conv (with
  bias) per level, the top-down path ``L_{i-1} += nearest(L_i)``, a 3x3 conv (with bias) per level; no norm, no
  activation, no extra levels (``add_extra_convs`` / ``relu_before_extra_convs`` have no effect at ``num_outs ==
  num_ins``). TCM's C5 arrives concatenated with the K-channel score map: ``in_channels[-1] = 2048 + K``.
* ``FCEHead``: two 3x3 convs shared by all levels, ``out_conv_cls`` (4: text bg/fg, centre bg/fg logits) and
  ``out_conv_reg`` (2 (2k + 1): real then imaginary parts of c_{-k..k}); no towers, no activation.
* ``FCEDecoder``: ``neck`` + ``bbox_head`` under the detector's attribute names, so an mmocr checkpoint's ``neck.*``
  (mmdet FPN names, e.g. ``neck.lateral_convs.0.conv.weight``) and ``bbox_head.*`` tensors load by name
  (``load_official_fcenet``); a missing, unexpected or mis-shaped tensor is a ``CheckpointMismatchError`` naming it.

Init as the official modules: FPN convs Xavier-uniform (gain 1), head convs Normal(0, 0.01), biases 0. ``dtype`` is
the compute dtype (parameters stay float32).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import numpy as np
from flax import nnx

from clip_text_spot.heads.common import nearest_resize, official_to_flat
from clip_text_spot.models.clip.convert import assign_flat
from clip_text_spot.models.fasttcm.official import read_official_state
from clip_text_spot.models.layers import Dtype, conv2d


class ConvModule(nnx.Module):
    """mmcv ``ConvModule`` without norm and activation: a conv with bias held as ``conv`` (for the names)."""

    def __init__(self, cin: int, cout: int, k: int, *, rngs: nnx.Rngs, dtype: Dtype = None):
        self.conv = conv2d(cin, cout, k, bias=True, init=nnx.initializers.xavier_uniform(), rngs=rngs, dtype=dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.conv(x)


class FPN(nnx.Module):
    """mmdet's ``FPN`` as TCM-FCENet configures it: one output per input level, no norm, no activation."""

    def __init__(
        self,
        in_channels: Sequence[int] = (512, 1024, 2049),
        out_channels: int = 256,
        *,
        rngs: nnx.Rngs,
        dtype: Dtype = None,
    ):
        self.in_channels = tuple(in_channels)
        self.lateral_convs = nnx.List(
            [ConvModule(c, out_channels, 1, rngs=rngs, dtype=dtype) for c in self.in_channels]
        )
        self.fpn_convs = nnx.List(
            [ConvModule(out_channels, out_channels, 3, rngs=rngs, dtype=dtype) for _ in self.in_channels]
        )

    def __call__(self, feats: Sequence[jax.Array]) -> list[jax.Array]:
        """[B, H_i, W_i, C_i] levels (finest first) -> [B, H_i, W_i, out_channels] per level."""
        if len(feats) != len(self.in_channels):
            raise ValueError(f"FPN expects {len(self.in_channels)} feature maps, got {len(feats)}")
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, feats, strict=True)]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + nearest_resize(laterals[i], laterals[i - 1].shape[-3:-1])
        return [conv(x) for conv, x in zip(self.fpn_convs, laterals, strict=True)]


class FCEHead(nnx.Module):
    """mmocr's ``FCEHead``: the classification and Fourier regression convs, shared by every level."""

    def __init__(self, in_channels: int = 256, fourier_degree: int = 5, *, rngs: nnx.Rngs, dtype: Dtype = None):
        init = nnx.initializers.normal(0.01)
        self.out_conv_cls = conv2d(in_channels, 4, 3, bias=True, init=init, rngs=rngs, dtype=dtype)
        self.out_conv_reg = conv2d(
            in_channels, 2 * (2 * fourier_degree + 1), 3, bias=True, init=init, rngs=rngs, dtype=dtype
        )

    def __call__(self, feats: Sequence[jax.Array]) -> list[tuple[jax.Array, jax.Array]]:
        """Per level ``(cls [B, h, w, 4], reg [B, h, w, 2 (2k + 1)])``."""
        return [(self.out_conv_cls(x), self.out_conv_reg(x)) for x in feats]


class FCEDecoder(nnx.Module):
    """``neck`` (FPN) + ``bbox_head`` (FCEHead): [C3, C4, C5(+score map)] -> per level (cls, reg), strides 8-32."""

    def __init__(
        self,
        in_channels: Sequence[int] = (512, 1024, 2049),
        out_channels: int = 256,
        fourier_degree: int = 5,
        *,
        rngs: nnx.Rngs,
        dtype: Dtype = None,
    ):
        self.neck = FPN(in_channels, out_channels, rngs=rngs, dtype=dtype)
        self.bbox_head = FCEHead(out_channels, fourier_degree, rngs=rngs, dtype=dtype)

    def __call__(self, feats: Sequence[jax.Array]) -> list[tuple[jax.Array, jax.Array]]:
        return self.bbox_head(self.neck(feats))


def load_official_fcenet(model: FCEDecoder, source: str | Mapping[str, np.ndarray]) -> None:
    """Assign an mmocr/TCM FCENet checkpoint's ``neck.*`` and ``bbox_head.*`` tensors (a ``.safetensors`` path or a
    state dict; other tensors such as the backbone's are skipped) to ``model`` in place.

    Raises ``CheckpointMismatchError`` naming every missing, unexpected or mis-shaped tensor (in our ``/`` names).
    """
    sd = read_official_state(source) if isinstance(source, str) else source
    name = source if isinstance(source, str) else "state dict"
    assign_flat(model, official_to_flat(sd), f"FCENet weights ({name})")
