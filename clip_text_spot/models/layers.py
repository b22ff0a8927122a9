"""Building blocks shared by the CLIP towers and the FastTCM/DPTR heads (Flax NNX, parameter names as in HF CLIP).

Parameters carry logical axis names (``embed``, ``mlp``, ``heads``, ``vocab``, ``conv_in``, ``conv_out``); the
sharding rules that map them onto mesh axes live in the config (see ``clip_text_spot.parallel``).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

Dtype = jnp.dtype | str | None

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),  # PyTorch nn.GELU() / HF "gelu": exact erf form
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),  # HF "gelu_new" / "gelu_pytorch_tanh"
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
}


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
    """Look up an activation by its Hugging Face name (``quick_gelu``, ``gelu``, ``gelu_new``, ``relu``)."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; known: {sorted(ACTIVATIONS)}") from None


def dense(
    din: int, dout: int, axes: tuple[str | None, str | None], *, rngs: nnx.Rngs, dtype: Dtype = None, bias: bool = True
) -> nnx.Linear:
    """``nnx.Linear`` with kernel [din, dout] annotated with logical ``axes`` (PyTorch weight transposed)."""
    return nnx.Linear(
        din,
        dout,
        use_bias=bias,
        dtype=dtype,
        rngs=rngs,
        kernel_init=nnx.with_partitioning(nnx.initializers.normal(0.02), axes),
        bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), (axes[1],)),
    )


KAIMING_FAN_OUT = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")


def conv2d(
    cin: int,
    cout: int,
    k: int,
    *,
    rngs: nnx.Rngs,
    dtype: Dtype = None,
    stride: int = 1,
    groups: int = 1,
    bias: bool = False,
    init: nnx.Initializer = KAIMING_FAN_OUT,
) -> nnx.Conv:
    """PyTorch ``Conv2d(cin, cout, k, stride, padding=k // 2, groups=groups, bias=bias)`` on NHWC: kernel
    [k, k, cin / groups, cout] with logical axes (``conv_in``, ``conv_out``) drawn from ``init``, bias 0."""
    pad = k // 2
    return nnx.Conv(
        cin,
        cout,
        kernel_size=(k, k),
        strides=(stride, stride),
        padding=((pad, pad), (pad, pad)),
        feature_group_count=groups,
        use_bias=bias,
        dtype=dtype,
        rngs=rngs,
        kernel_init=nnx.with_partitioning(init, (None, None, "conv_in", "conv_out")),
        bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), ("conv_out",)),
    )


def layer_norm(dim: int, *, rngs: nnx.Rngs, dtype: Dtype = None, eps: float = 1e-5) -> nnx.LayerNorm:
    """LayerNorm with PyTorch's default epsilon 1e-5 (flax defaults to 1e-6)."""
    return nnx.LayerNorm(
        dim,
        epsilon=eps,
        dtype=dtype,
        rngs=rngs,
        scale_init=nnx.with_partitioning(nnx.initializers.ones_init(), ("embed",)),
        bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), ("embed",)),
    )


# On the CPU, attention whose per-head score map has at least this many entries (Lq x Lk) runs one head at a time.
CPU_HEAD_LOOP_MIN = 1 << 17


def multi_head_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, heads: int, mask: jax.Array | None = None
) -> jax.Array:
    """Scaled dot-product attention over projected [B, L, D] inputs split into ``heads``; returns [B, Lq, D].

    ``mask`` is boolean, broadcastable to [B, heads, Lq, Lk], True where attention is allowed. Heads move ahead of
    the sequence axis before the two batched matmuls, and the softmax is normalised after the second one (one pass
    less over the [B, heads, Lq, Lk] weights). At ViT-B/16 shapes on a 2-core CPU the head-major layout alone took
    0.62x the time of ``jax.nn.dot_product_attention`` (whose default is the same unfused XLA computation, in
    [B, L, heads, D/heads] layout) and the late normalisation 0.63x again. Scores, softmax and sums are float32
    whatever the input dtype. On the CPU, when one head's score map has at least ``CPU_HEAD_LOOP_MIN`` entries (CLIP's
    dense attention pool, TCM's visual prompt generator), the heads run one after another (``lax.map``) so each map
    stays in cache instead of all heads' maps going through memory: the same sums per row (identical outputs), 0.34x
    the single-core time at 401 tokens x 32 heads, 0.52x at 1793 x 32 and 1792 x 4; other platforms keep one program.
    The keys are transposed before the score product and the mask is added as a bias of 0 or float32's lowest value
    (masked weights are then exactly 0, as with a select): CLIP ViT-B/16's causal text tower took 0.97x the time.
    """
    if heads > 1 and q.shape[1] * k.shape[1] >= CPU_HEAD_LOOP_MIN:
        return jax.lax.platform_dependent(
            q,
            k,
            v,
            cpu=lambda q, k, v: _head_by_head(q, k, v, heads, mask),
            default=lambda q, k, v: _attention(q, k, v, heads, mask),
        )
    return _attention(q, k, v, heads, mask)


def _head_by_head(q: jax.Array, k: jax.Array, v: jax.Array, heads: int, mask: jax.Array | None) -> jax.Array:
    """``_attention`` computed for one head at a time."""
    b, lq, d = q.shape

    def split(x: jax.Array) -> jax.Array:
        return jnp.moveaxis(x.reshape(b, x.shape[1], heads, d // heads), 2, 0)

    xs = (split(q), split(k), split(v))
    if mask is not None and mask.ndim == 4 and mask.shape[1] == heads:
        out = jax.lax.map(lambda a: _attention(*a[:3], 1, a[3][:, None]), (*xs, jnp.moveaxis(mask, 1, 0)))
    else:
        out = jax.lax.map(lambda a: _attention(*a, 1, mask), xs)
    return jnp.moveaxis(out, 0, 2).reshape(b, lq, d)


def _attention(q: jax.Array, k: jax.Array, v: jax.Array, heads: int, mask: jax.Array | None) -> jax.Array:
    b, lq, d = q.shape
    lk = k.shape[1]
    hd = d // heads
    q = q * jnp.asarray(hd**-0.5, q.dtype)
    qh = q.reshape(b, lq, heads, hd).transpose(0, 2, 1, 3)
    kt = k.reshape(b, lk, heads, hd).transpose(0, 2, 3, 1)  # [B, heads, D/heads, Lk]: a plain product for the scores
    vh = v.reshape(b, lk, heads, hd).transpose(0, 2, 1, 3)
    scores = jnp.matmul(qh, kt, preferred_element_type=jnp.float32)
    if mask is not None:
        scores = scores + jnp.where(mask, 0.0, jnp.finfo(jnp.float32).min)
    weights = jnp.exp(scores - scores.max(axis=-1, keepdims=True))
    out = jnp.matmul(weights.astype(v.dtype), vh, preferred_element_type=jnp.float32)
    out = (out / weights.sum(axis=-1, keepdims=True)).astype(q.dtype)
    return out.transpose(0, 2, 1, 3).reshape(b, lq, d)


class Attention(nnx.Module):
    """Multi-head attention with separate ``q_proj``/``k_proj``/``v_proj``/``out_proj`` (HF CLIP names).

    ``mask`` is boolean, broadcastable to [B, heads, Lq, Lk], True where attention is allowed. ``qkv_bias=False``
    drops the q/k/v biases (TCM's decoder attention); ``out_proj`` always has one.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        *,
        rngs: nnx.Rngs,
        dtype: Dtype = None,
        out_dim: int | None = None,
        kv_dim=None,
        qkv_bias: bool = True,
    ):
        if dim % heads:
            raise ValueError(f"attention width {dim} is not divisible by {heads} heads")
        kv_dim = kv_dim or dim
        self.heads = heads
        self.q_proj = dense(dim, dim, ("embed", "heads"), rngs=rngs, dtype=dtype, bias=qkv_bias)
        self.k_proj = dense(kv_dim, dim, ("embed", "heads"), rngs=rngs, dtype=dtype, bias=qkv_bias)
        self.v_proj = dense(kv_dim, dim, ("embed", "heads"), rngs=rngs, dtype=dtype, bias=qkv_bias)
        self.out_proj = dense(dim, out_dim or dim, ("heads", "embed"), rngs=rngs, dtype=dtype)

    def __call__(self, x: jax.Array, kv: jax.Array | None = None, mask: jax.Array | None = None) -> jax.Array:
        kv = x if kv is None else kv
        out = multi_head_attention(self.q_proj(x), self.k_proj(kv), self.v_proj(kv), self.heads, mask)
        return self.out_proj(out)


class MLP(nnx.Module):
    """``fc1`` -> activation -> [dropout] -> ``fc2`` (HF CLIP names; OpenAI ``c_fc``/``c_proj``).

    ``dropout > 0`` adds an ``nnx.Dropout`` on the hidden units (active in train mode; the dropout key comes from
    the ``rngs`` call argument).
    """

    def __init__(self, dim: int, hidden: int, act: str, *, rngs: nnx.Rngs, dtype: Dtype = None, dropout: float = 0.0):
        self.act = act
        self.fc1 = dense(dim, hidden, ("embed", "mlp"), rngs=rngs, dtype=dtype)
        self.dropout = nnx.Dropout(dropout) if dropout else None
        self.fc2 = dense(hidden, dim, ("mlp", "embed"), rngs=rngs, dtype=dtype)

    def __call__(self, x: jax.Array, rngs: nnx.Rngs | None = None) -> jax.Array:
        h = activation(self.act)(self.fc1(x))
        if self.dropout is not None:
            h = self.dropout(h, rngs=rngs)
        return self.fc2(h)


def take_rows(a: jax.Array, rows: jax.Array, axis: int) -> jax.Array:
    """Row ``rows[b]`` of sequence ``b`` along ``axis`` of ``a`` [B or 1, ...], kept as a size-1 axis."""
    a = jnp.broadcast_to(a, (rows.shape[0], *a.shape[1:]))
    return jnp.take_along_axis(a, rows.reshape(-1, *([1] * (a.ndim - 1))), axis=axis)


class EncoderLayer(nnx.Module):
    """Pre-LN transformer block: ``x + attn(ln1(x))``, then ``x + mlp(ln2(x))``."""

    def __init__(
        self, dim: int, heads: int, mlp_dim: int, act: str, *, rngs: nnx.Rngs, dtype: Dtype = None, eps: float = 1e-5
    ):
        self.self_attn = Attention(dim, heads, rngs=rngs, dtype=dtype)
        self.layer_norm1 = layer_norm(dim, rngs=rngs, dtype=dtype, eps=eps)
        self.mlp = MLP(dim, mlp_dim, act, rngs=rngs, dtype=dtype)
        self.layer_norm2 = layer_norm(dim, rngs=rngs, dtype=dtype, eps=eps)

    def __call__(self, x: jax.Array, mask: jax.Array | None = None, rows: jax.Array | None = None) -> jax.Array:
        """[B, L, D] -> [B, L, D]. With ``rows`` [B] (int), only that position of each sequence is computed (its
        query still attends to every key): [B, 1, D], all a pooled output needs of a last block."""
        h = self.layer_norm1(x)
        if rows is None:
            x = x + self.self_attn(h, mask=mask)
        else:
            mask = None if mask is None else take_rows(mask, rows, axis=2)
            x = take_rows(x, rows, axis=1) + self.self_attn(take_rows(h, rows, axis=1), kv=h, mask=mask)
        return x + self.mlp(self.layer_norm2(x))


class Encoder(nnx.Module):
    """A stack of ``EncoderLayer`` named ``layers/0 .. layers/N-1`` (HF CLIP layout)."""

    def __init__(
        self,
        dim: int,
        depth: int,
        heads: int,
        mlp_dim: int,
        act: str,
        *,
        rngs: nnx.Rngs,
        dtype: Dtype = None,
        eps: float = 1e-5,
    ):
        self.layers = nnx.List(
            [EncoderLayer(dim, heads, mlp_dim, act, rngs=rngs, dtype=dtype, eps=eps) for _ in range(depth)]
        )

    def __call__(self, x: jax.Array, mask: jax.Array | None = None, rows: jax.Array | None = None) -> jax.Array:
        """[B, L, D] -> [B, L, D], or [B, 1, D] at positions ``rows`` [B] (computed only there in the last block)."""
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x, mask=mask, rows=rows if i == last else None)
        return x
