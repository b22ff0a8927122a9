"""PANet neck and head as mmocr 0.4 defines them (the versions TCM-PAN trains with), Flax NNX, NHWC.

* ``FPEMFFM`` (mmocr ``FPEM_FFM``): per level a 1x1 conv (bias) -> BN -> ReLU down to ``conv_out`` channels, then
  ``fpem_repeat`` FPEMs whose outputs are summed level-wise (FFM), and the three coarser sums resized bilinearly
  (``align_corners=False``, no antialiasing) to the finest one: four [B, H/4, W/4, conv_out] maps.
* ``FPEM``: an up path ``c4' = SC(up(c5) + c4)``, ``c3' = SC(up(c4') + c3)``, ``c2' = SC(up(c3') + c2)`` and a down
  path ``c3'' = SC_s2(up(c3' -> c2') + c2')``, ``c4'' = SC_s2(up(c4' -> c3'') + c3'')``,
  ``c5'' = SC_s2(up(c5 -> c4'') + c4'')`` (the released code upsamples the coarse map onto the fine one and then
  strides, unlike the paper; the original ``c5`` is used), ``up`` being PyTorch's legacy nearest resize to a size.
  ``SC`` is mmocr's ``SeparableConv2d``: depthwise 3x3 (bias, padding 1 on both sides also at stride 2, i.e.
  output ``ceil(H / 2)``) -> pointwise 1x1 (bias) -> BN -> ReLU.
* ``PANHead``: the four neck maps concatenated (``4 conv_out`` channels) -> 1x1 conv (bias) to 6 channels: text
  logit, kernel logit, 4-d instance embedding.
* ``PANDecoder``: ``neck`` + ``bbox_head`` under the detector's attribute names; ``load_official_pan`` builds one
  from mmocr-named ``neck.*`` / ``bbox_head.*`` tensors (sizes read from the tensor shapes).

Parameter names mirror the PyTorch modules (``neck/reduce_conv_c2/0`` conv and ``/1`` BN of mmocr's
``nn.Sequential``, ``neck/fpems/0/up_add1/depthwise_conv``, ``bbox_head/out_conv``).

BatchNorm (``TorchBatchNorm``): PyTorch's train-mode semantics: normalisation by the biased batch variance (two-pass,
float32), running statistics updated with momentum 0.1 from the batch mean and the *unbiased* batch variance
(``n / (n - 1)``, n = B H W); ``model.eval()`` uses the running statistics. Under ``jax.jit`` with a data-sharded
batch the statistics span the global batch (SyncBN). Init as mmocr: Xavier-uniform convs with zero bias in the neck
(its ``init_cfg`` reaches every Conv2d), Normal(0, 0.01) for the head conv, BN scale 1 and bias 0.
``dtype`` is the compute dtype (parameters stay float32; BatchNorm statistics are float32).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from clip_text_spot.heads.common import nearest_resize, official_to_flat
from clip_text_spot.models.clip.convert import CheckpointMismatchError, assign_flat
from clip_text_spot.models.layers import Dtype, conv2d
from clip_text_spot.models.resize import resize_grid

LEVELS = ("c2", "c3", "c4", "c5")
PAN_OUT_CHANNELS = 6
XAVIER_UNIFORM = nnx.initializers.xavier_uniform()  # mmocr's neck init (gain 1)


class TorchBatchNorm(nnx.BatchNorm):
    """``nnx.BatchNorm`` (same variables and ``train()``/``eval()`` switch) with PyTorch's running-variance update.

    Train mode normalises by the biased batch variance and updates ``var`` with the unbiased one, as
    ``torch.nn.BatchNorm2d`` does; flax's own BatchNorm updates it with the biased variance.
    """

    def __call__(self, x: jax.Array) -> jax.Array:
        """[..., C] -> [..., C]; in train mode also updates ``mean`` / ``var`` in place."""
        xf = x.astype(jnp.float32)
        if self.use_running_average:
            mean, var = self.mean[...], self.var[...]
        else:
            axes = tuple(range(x.ndim - 1))
            mean = jnp.mean(xf, axis=axes)
            var = jnp.mean(jnp.square(xf - mean), axis=axes)
            n = x.size // x.shape[-1]
            m = self.momentum
            self.mean[...] = m * self.mean[...] + (1.0 - m) * mean
            self.var[...] = m * self.var[...] + (1.0 - m) * var * (n / max(n - 1, 1))
        y = (xf - mean) * jax.lax.rsqrt(var + self.epsilon) * self.scale[...] + self.bias[...]
        return y.astype(x.dtype)


def _bn(c: int, *, rngs: nnx.Rngs) -> TorchBatchNorm:
    return TorchBatchNorm(c, momentum=0.9, epsilon=1e-5, rngs=rngs)


def _conv(cin: int, cout: int, k: int, *, rngs: nnx.Rngs, dtype: Dtype, **kw) -> nnx.Conv:
    """The neck's biased conv (Xavier-uniform init); ``kw``: ``stride``, ``groups``."""
    return conv2d(cin, cout, k, bias=True, init=XAVIER_UNIFORM, rngs=rngs, dtype=dtype, **kw)


def depthwise_conv3x3(conv: nnx.Conv, x: jax.Array) -> jax.Array:
    """``conv`` (a depthwise 3x3 ``nnx.Conv``, padding 1, stride ``conv.strides``) applied to NHWC ``x`` as a sum of
    nine shifted, strided products instead of a grouped convolution.

    Same parameters and result as ``conv(x)`` up to float rounding (taps summed in row-major order, then the bias),
    but XLA's CPU grouped convolution is slow, its backward pass most of all: on [8, 64, 64, 128] (the demo's
    stride-4 maps) 29 vs 471 ms forward and 578 vs 1838 ms forward + backward (2 shared cores).
    """
    s = conv.strides[0]
    dtype = conv.dtype or x.dtype
    x = jnp.pad(x.astype(dtype), ((0, 0), (1, 1), (1, 1), (0, 0)))
    kernel = conv.kernel[...].astype(dtype)
    ho, wo = (x.shape[1] - 3) // s + 1, (x.shape[2] - 3) // s + 1
    taps = [
        x[:, i : i + s * (ho - 1) + 1 : s, j : j + s * (wo - 1) + 1 : s] * kernel[i, j, 0]
        for i in range(3)
        for j in range(3)
    ]
    return sum(taps[1:], taps[0]) + conv.bias[...].astype(dtype)


class SeparableConv(nnx.Module):
    """mmocr's ``SeparableConv2d``: depthwise 3x3 (stride 1 or 2; ``depthwise_conv3x3``) -> pointwise 1x1 -> BN ->
    ReLU."""

    def __init__(self, channels: int, stride: int, *, rngs: nnx.Rngs, dtype: Dtype = None):
        self.depthwise_conv = _conv(channels, channels, 3, rngs=rngs, dtype=dtype, stride=stride, groups=channels)
        self.pointwise_conv = _conv(channels, channels, 1, rngs=rngs, dtype=dtype)
        self.bn = _bn(channels, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return jax.nn.relu(self.bn(self.pointwise_conv(depthwise_conv3x3(self.depthwise_conv, x))))


def _up_add(coarse: jax.Array, fine: jax.Array) -> jax.Array:
    """mmocr's ``_upsample_add``: ``F.interpolate(coarse, size=fine's H, W)`` (legacy nearest) + ``fine``."""
    return nearest_resize(coarse, fine.shape[-3:-1]) + fine


class FPEM(nnx.Module):
    """Feature pyramid enhancement module: up path (stride 1) then down path (stride 2), see the module docstring."""

    def __init__(self, channels: int, *, rngs: nnx.Rngs, dtype: Dtype = None):
        for i in (1, 2, 3):
            setattr(self, f"up_add{i}", SeparableConv(channels, 1, rngs=rngs, dtype=dtype))
        for i in (1, 2, 3):
            setattr(self, f"down_add{i}", SeparableConv(channels, 2, rngs=rngs, dtype=dtype))

    def __call__(self, c2: jax.Array, c3: jax.Array, c4: jax.Array, c5: jax.Array) -> tuple[jax.Array, ...]:
        c4 = self.up_add1(_up_add(c5, c4))
        c3 = self.up_add2(_up_add(c4, c3))
        c2 = self.up_add3(_up_add(c3, c2))
        c3 = self.down_add1(_up_add(c3, c2))
        c4 = self.down_add2(_up_add(c4, c3))
        c5 = self.down_add3(_up_add(c5, c4))
        return c2, c3, c4, c5


class FPEMFFM(nnx.Module):
    """mmocr's ``FPEM_FFM`` neck: [C2, C3, C4, C5'] NHWC at strides 4..32 -> four [B, H/4, W/4, conv_out] maps."""

    def __init__(
        self,
        in_channels: Sequence[int] = (256, 512, 1024, 2049),
        conv_out: int = 128,
        fpem_repeat: int = 2,
        *,
        rngs: nnx.Rngs,
        dtype: Dtype = None,
    ):
        if len(in_channels) != len(LEVELS):
            raise ValueError(f"FPEMFFM takes {len(LEVELS)} levels, got in_channels={tuple(in_channels)}")
        self.in_channels = tuple(in_channels)
        for name, cin in zip(LEVELS, self.in_channels, strict=True):
            reduce = nnx.List([_conv(cin, conv_out, 1, rngs=rngs, dtype=dtype), _bn(conv_out, rngs=rngs)])
            setattr(self, f"reduce_conv_{name}", reduce)
        self.fpems = nnx.List([FPEM(conv_out, rngs=rngs, dtype=dtype) for _ in range(fpem_repeat)])

    def __call__(self, feats: Sequence[jax.Array]) -> tuple[jax.Array, ...]:
        if len(feats) != len(LEVELS):
            raise ValueError(f"FPEMFFM expects {len(LEVELS)} feature maps, got {len(feats)}")
        reduced = []
        for name, x in zip(LEVELS, feats, strict=True):
            conv, bn = getattr(self, f"reduce_conv_{name}")
            reduced.append(jax.nn.relu(bn(conv(x))))
        levels = tuple(reduced)
        fused = None
        for fpem in self.fpems:
            levels = fpem(*levels)
            fused = levels if fused is None else tuple(f + x for f, x in zip(fused, levels, strict=True))
        size = fused[0].shape[-3:-1]
        return (fused[0], *(resize_grid(f, size, "bilinear") for f in fused[1:]))


class PANHead(nnx.Module):
    """mmocr's ``PANHead``: concatenated neck maps -> 1x1 conv to [B, H/4, W/4, 6] (text, kernel, 4-d embedding)."""

    def __init__(self, in_channels: int, *, rngs: nnx.Rngs, dtype: Dtype = None):
        init = nnx.initializers.normal(0.01)
        self.out_conv = conv2d(in_channels, PAN_OUT_CHANNELS, 1, bias=True, init=init, rngs=rngs, dtype=dtype)

    def __call__(self, feats: Sequence[jax.Array]) -> jax.Array:
        return self.out_conv(jnp.concatenate(list(feats), axis=-1))


class PANDecoder(nnx.Module):
    """``neck`` (FPEM_FFM) + ``bbox_head`` (PANHead): [C2, C3, C4, C5(+score map)] -> [B, H/4, W/4, 6]."""

    def __init__(
        self,
        in_channels: Sequence[int] = (256, 512, 1024, 2049),
        conv_out: int = 128,
        fpem_repeat: int = 2,
        *,
        rngs: nnx.Rngs,
        dtype: Dtype = None,
    ):
        self.neck = FPEMFFM(in_channels, conv_out, fpem_repeat, rngs=rngs, dtype=dtype)
        self.bbox_head = PANHead(conv_out * len(LEVELS), rngs=rngs, dtype=dtype)

    def __call__(self, feats: Sequence[jax.Array]) -> jax.Array:
        return self.bbox_head(self.neck(feats))


def _shape(sd: Mapping[str, np.ndarray], name: str) -> tuple[int, ...]:
    if name not in sd:
        raise CheckpointMismatchError(f"PANet checkpoint lacks tensor {name!r}")
    return tuple(np.shape(sd[name]))


def load_official_pan(source: str | Mapping[str, np.ndarray], dtype: Dtype = None) -> PANDecoder:
    """A ``PANDecoder`` holding mmocr 0.4 / TCM ``neck.*`` + ``bbox_head.*`` tensors: a ``.safetensors`` path (a whole
    TCM-PAN checkpoint re-saved as the README describes; pickles are refused) or a dict of arrays.

    ``in_channels``, ``conv_out`` and ``fpem_repeat`` are read from the shapes of ``neck.reduce_conv_c*.0.weight``
    and the ``neck.fpems.N`` names; other tensors of a whole TCM state dict (backbone, text encoder...) are skipped.
    A missing, unexpected or mis-shaped ``neck``/``bbox_head`` tensor raises ``CheckpointMismatchError`` naming it.
    The model is returned in eval mode (running BatchNorm statistics).
    """
    # imported here: the FastTCM detector package may import this module
    from clip_text_spot.models.fasttcm.official import read_official_state

    sd = read_official_state(source) if isinstance(source, str) else dict(source)
    in_channels = [_shape(sd, f"neck.reduce_conv_{name}.0.weight") for name in LEVELS]
    conv_out = in_channels[0][0]
    repeats = {int(k.split(".")[2]) for k in sd if k.startswith("neck.fpems.")}
    if repeats != set(range(len(repeats))) or not repeats:
        raise CheckpointMismatchError(f"PANet checkpoint has FPEM indices {sorted(repeats)}, expected 0..N-1")
    model = PANDecoder([s[1] for s in in_channels], conv_out, len(repeats), rngs=nnx.Rngs(0), dtype=dtype)
    source_name = source if isinstance(source, str) else "PANet state dict"
    assign_flat(model, official_to_flat(sd), f"{source_name} (neck.* / bbox_head.*)")
    model.eval()
    return model
