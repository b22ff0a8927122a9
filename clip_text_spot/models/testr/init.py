"""Initialisers of the official TESTR modules (PyTorch defaults and the transformer's xavier re-init) and the
Linear factory the TESTR modules share."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from clip_text_spot.models.layers import Dtype

# xavier_uniform over PyTorch's packed (3d, d) in_proj_weight (what the official init draws) = this per q/k/v kernel
PACKED_XAVIER = nnx.initializers.variance_scaling(0.5, "fan_in", "uniform")
XAVIER = nnx.initializers.xavier_uniform()


def torch_bias_init(fan_in: int) -> nnx.initializers.Initializer:
    """PyTorch's default Linear/Conv bias init, U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = fan_in**-0.5

    def init(key: jax.Array, shape: tuple[int, ...], dtype: Dtype = jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def linear(
    din: int,
    dout: int,
    axes: tuple[str | None, str | None],
    *,
    rngs: nnx.Rngs,
    dtype: Dtype = None,
    kernel_init: nnx.initializers.Initializer = XAVIER,
    bias_init: nnx.initializers.Initializer | None = None,
) -> nnx.Linear:
    """``nnx.Linear`` [din, dout] with logical ``axes``; default inits: xavier-uniform kernel (the official
    transformer re-inits every matrix so), PyTorch's U(+-1/sqrt(din)) bias."""
    bias_init = bias_init or torch_bias_init(din)
    return nnx.Linear(
        din,
        dout,
        dtype=dtype,
        rngs=rngs,
        kernel_init=nnx.with_partitioning(kernel_init, axes),
        bias_init=nnx.with_partitioning(bias_init, (axes[1],)),
    )


def torch_kernel_init() -> nnx.initializers.Initializer:
    """PyTorch's default Linear weight init (kaiming-uniform, a = sqrt(5)) = U(+-1/sqrt(fan_in))."""
    return nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
