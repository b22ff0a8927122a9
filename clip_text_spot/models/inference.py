"""Jitted inference on a fixed NNX module, without ``nnx.jit``'s per-call walk of the module graph, and host work
overlapped with the next batch's device work.

``nnx.jit`` traverses the module on every call to collect its state and write changes back. For CLIP ViT-B/16 (398
arrays) that costs about 80 ms per call on a 2-core CPU, a third of what the text tower itself takes for a batch of 8
(``bench/clip_vs_torch.py``). Inference changes nothing in the module, so :func:`inference_fn` splits it once and each
call is a plain ``jax.jit`` over the state arrays. :func:`compiled` does the same for a model's public inference
methods (``model.encode_image(x)`` compiles per input shape on first use); ``with jax.disable_jit():`` or
``CLIP_TEXT_SPOT_EAGER=1`` runs them op by op for debugging.
"""

from __future__ import annotations

import functools
import os
import platform
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple, TypeVar

import jax
import jax.extend
import numpy as np
from flax import nnx

T = TypeVar("T")


class _Static:
    """A static jit argument whose hash is computed once: a large module's ``GraphDef`` takes about a millisecond to
    hash, which ``jax.jit`` would otherwise pay on every call."""

    __slots__ = ("_hash", "value")

    def __init__(self, value: Any):
        self.value, self._hash = value, hash(value)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Static) and (self.value is other.value or self.value == other.value)


def _apply_impl(fn: Callable[..., Any], graphdef: _Static, statics: _Static, leaves: list, *arrays: Any) -> Any:
    """``fn`` on the module rebuilt from ``graphdef`` (its ``GraphDef`` and state tree structure) and the state's
    ``leaves``: a flat list crosses the jit boundary in C++, where an ``nnx.State`` is flattened node by node."""
    graph, treedef = graphdef.value
    args, kwargs = _join(statics.value, arrays)
    return fn(nnx.merge(graph, jax.tree.unflatten(treedef, leaves)), *args, **kwargs)


# XLA's CPU backend (jaxlib 0.10.2) hands dots and convolutions to YNNPACK, with the elementwise work around them.
# Inference programs whose convolutions do most of the multiply-adds run faster with the convolutions on XLA's own
# kernels, and their transformer parts with each dot on YNNPACK: against the default, CLIP-RN50 encode_image took
# 0.80x the time at 640x640 and TCM's match 0.83x at 640x640, 0.81x at 1024x1824 (XLA's kernels for everything:
# within 2% of that). The dot-bound ViT-B/16 towers keep the default (1.10x with the split), and so do training steps
# (the demo FastTCM step took 1.27x with it: its backward convolutions). bench/cpu_kernels.py measures all three.
CONV_KERNELS = (("xla_cpu_experimental_ynn_fusion_type", "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"),)
# Dot-bound programs whose matmuls have many rows run faster with each dot alone on oneDNN (the elementwise work and
# the attention's batched products stay on YNNPACK): its matmuls reach 392-403 GFLOP/s at 1576 rows and ViT-B/16's
# widths on a 2-core AVX-512 CPU, YNNPACK's 345-369, and CLIP ViT-B/16's image tower at batch 8 took 0.89-0.92x the
# default's time. Below about 1000 rows the two are even, and at a few rows oneDNN's fixed cost per call (about 0.1 ms)
# makes it 2-3x slower, hence ONEDNN_MIN_ROWS. oneDNN's fusions of a dot with its neighbours
# (LIBRARY_FUSION_TYPE_DOT) are not used: in jaxlib 0.10.2 some kill the process or give wrong values (README).
ONEDNN_DOTS = (
    ("xla_cpu_use_onednn", True),
    ("xla_cpu_experimental_onednn_fusion_type", "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"),
)
ONEDNN_MIN_ROWS = 1024
# Convolutional programs whose dots mostly have fewer than XLA_MAX_ROWS rows (CLIP-RN50's attention pool at 224x224
# and batch 1: 50 keys, one query) run faster with their dots on XLA's own kernels too: in chains of 50-row dots
# these reach 148-161 GFLOP/s, YNNPACK 97-130 (at 100 rows YNNPACK leads, 244-263 against 194-217), and CLIP-RN50
# encode_image at 224x224 took 0.93-0.96x the split's time (bench/cpu_kernels.py). Dot-bound programs of few-row
# dots keep YNNPACK: one 24-token prompt through CLIP ViT-B/16's text tower took 0.94x and 1.00x the time on XLA's
# kernels in two runs, DPTR's decode_logits on one crop (26-row decoder dots in a loop) 1.07x.
XLA_KERNELS = (("xla_cpu_experimental_ynn_fusion_type", ""),)
XLA_MAX_ROWS = 64
Options = tuple[tuple[str, str | bool], ...]
_CHOICES: dict[tuple, Callable[..., Any]] = {}


@functools.cache
def _applier(options: Options) -> Callable[..., Any]:
    """``_apply_impl`` jitted with XLA compiler ``options`` (one jit, hence one compilation cache, per value)."""
    return jax.jit(_apply_impl, static_argnums=(0, 1, 2), compiler_options=dict(options) or None)


class MatmulFlops(NamedTuple):
    """Multiply-add FLOPs of a program: in convolutions, in dots, and in the dots without batch dimensions whose
    left operand has at least ``ONEDNN_MIN_ROWS`` rows (``wide_dot``) or fewer than ``XLA_MAX_ROWS``
    (``narrow_dot``)."""

    conv: float
    dot: float
    wide_dot: float
    narrow_dot: float


def matmul_flops(jaxpr: jax.extend.core.Jaxpr) -> MatmulFlops:
    """The :class:`MatmulFlops` of ``jaxpr`` and the jaxprs nested in it (a scan's body times its length)."""
    conv = dot = wide = narrow = 0.0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "conv_general_dilated":
            rhs, out = eqn.invars[1].aval.shape, eqn.outvars[0].aval.shape
            conv += 2.0 * np.prod(out) * np.prod(rhs) / rhs[eqn.params["dimension_numbers"].rhs_spec[0]]
        elif name == "dot_general":
            (contract, _), (batch, _) = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            flops = 2.0 * np.prod(eqn.outvars[0].aval.shape) * np.prod([lhs[d] for d in contract])
            rows = np.prod([n for d, n in enumerate(lhs) if d not in contract])
            dot += flops
            wide += flops if not batch and rows >= ONEDNN_MIN_ROWS else 0.0
            narrow += flops if not batch and rows < XLA_MAX_ROWS else 0.0
        trips = eqn.params.get("length", 1) if name == "scan" else 1
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            c, d, w, n = matmul_flops(sub)
            conv, dot, wide, narrow = conv + trips * c, dot + trips * d, wide + trips * w, narrow + trips * n
    return MatmulFlops(conv, dot, wide, narrow)


def onednn_cpu() -> bool:
    """True on x86 CPUs, where jaxlib's XLA carries oneDNN (``ONEDNN_DOTS``)."""
    return platform.machine().lower() in ("x86_64", "amd64")


def cpu_options(jaxpr: jax.extend.core.Jaxpr) -> Options:
    """The XLA options an inference program compiles with on the CPU: when convolutions do more than half of its
    matmul FLOPs, ``XLA_KERNELS`` if dots with fewer than ``XLA_MAX_ROWS`` rows do more than half of its dot FLOPs,
    else ``CONV_KERNELS``; ``ONEDNN_DOTS`` on x86 when dots with at least ``ONEDNN_MIN_ROWS`` rows do more than half;
    otherwise none. None either when ``XLA_FLAGS`` chooses the YNNPACK or oneDNN fusions itself."""
    flags = os.environ.get("XLA_FLAGS", "")
    if jax.default_backend() != "cpu" or "ynn_fusion_type" in flags or "onednn" in flags:
        return ()
    flops = matmul_flops(jaxpr)
    if flops.conv > flops.dot:
        return XLA_KERNELS if flops.narrow_dot > flops.dot / 2 else CONV_KERNELS
    if flops.wide_dot > flops.dot / 2 and onednn_cpu():
        return ONEDNN_DOTS
    return ()


def _apply(fn: Callable[..., Any], graphdef: _Static, statics: _Static, leaves: list, *arrays: Any) -> Any:
    """``_apply_impl`` run as a jitted program, compiled with the options ``cpu_options`` chose for its first trace
    at these argument shapes (that trace is jit's own, reused by the call)."""
    key = (fn, graphdef, statics, tuple((np.shape(a), getattr(a, "dtype", type(a))) for a in arrays))
    apply = _CHOICES.get(key)
    if apply is None:
        jaxpr = _applier(()).trace(fn, graphdef, statics, leaves, *arrays).jaxpr.jaxpr
        if len(_CHOICES) > 4096:
            _CHOICES.clear()
        apply = _CHOICES[key] = _applier(cpu_options(jaxpr))
    return apply(fn, graphdef, statics, leaves, *arrays)


def _is_array(x: Any) -> bool:
    return isinstance(x, jax.Array | np.ndarray | np.generic)


def _split_args(args: tuple, kwargs: dict) -> tuple[Any, list[Any]] | None:
    """(hashable description of the non-array arguments, the array arguments), or None when an argument is neither
    an array nor hashable (an ``nnx.Rngs``, say): such a call runs eagerly."""
    leaves, treedef = jax.tree.flatten((args, kwargs), is_leaf=lambda x: isinstance(x, nnx.Pytree))
    arrays, consts = [], []
    for leaf in leaves:
        if _is_array(leaf):
            arrays.append(leaf)
            consts.append(None)
        elif isinstance(leaf, nnx.Pytree):
            return None
        else:
            try:
                hash(leaf)
            except TypeError:
                return None
            consts.append((leaf,))
    return (treedef, tuple(consts)), arrays


def _join(statics: tuple, arrays: tuple) -> tuple[tuple, dict]:
    treedef, consts = statics
    it = iter(arrays)
    return jax.tree.unflatten(treedef, [next(it) if c is None else c[0] for c in consts])


def inference_fn(fn: Callable[..., Any], module: nnx.Module) -> Callable[..., Any]:
    """``fn(module, *args)`` as a jitted function of ``args``; ``module`` is split here, once.

    Compilations are cached on ``fn`` (by identity: pass a module-level function or method, not a fresh lambda, to reuse
    them), the module's graph definition and the argument shapes, so binding the next evaluation's weights of the same
    model compiles nothing. Changes ``fn`` makes to the module (batch statistics, RNG counters) are dropped; bind
    again after changing ``module`` (training steps, ``nnx.update``) rather than relying on what the split kept.
    """
    graph, state = nnx.split(module)
    leaves, treedef = jax.tree.flatten(state)
    graphdef = _Static((graph, treedef))

    def call(*args: Any, **kwargs: Any) -> Any:
        split = _split_args(args, kwargs)
        if split is None:
            return fn(nnx.merge(graph, state), *args, **kwargs)
        statics, arrays = split
        return _apply(fn, graphdef, _Static(statics), leaves, *arrays)

    return call


class _Binding:
    """A module's graph definition and its variables, found once; the state's leaves are read from the variables at
    each call, so weights changed later (``nnx.update``, training) are used."""

    def __init__(self, module: nnx.Module):
        graph, state = nnx.split(module)
        leaves, treedef = jax.tree.flatten(state)
        self.graphdef = _Static((graph, treedef))
        # the split state's leaves are the variables' own arrays: match them by identity, in the state's order
        by_value = {id(node.get_value()): node for _, node in nnx.iter_graph(module) if isinstance(node, nnx.Variable)}
        self.variables = [by_value[id(leaf)] for leaf in leaves]
        # ``get_value`` copies through a tree map and runs hooks (5 us a variable, 2 ms for CLIP ViT-B/16's 398):
        # where it gives the stored array itself (no hooks, no array refs), that array is read directly
        self.raw = all(v.get_value() is v.get_raw_value() for v in self.variables)

    def leaves(self) -> list | None:
        """The variables' current values in state order; None inside a trace (a training step: the caller's jit
        already compiles this)."""
        values = [v.get_raw_value() if self.raw else v.get_value() for v in self.variables]
        if any(isinstance(v, jax.core.Tracer) for v in values):
            return None
        return values


_BINDINGS: weakref.WeakKeyDictionary[nnx.Module, _Binding] = weakref.WeakKeyDictionary()


def eager_mode() -> bool:
    """True under ``jax.disable_jit()`` or with ``CLIP_TEXT_SPOT_EAGER=1``: :func:`compiled` methods run op by op."""
    return bool(jax.config.jax_disable_jit) or os.environ.get("CLIP_TEXT_SPOT_EAGER", "") not in ("", "0")


def compiled(method: Callable[..., T]) -> Callable[..., T]:
    """Decorator for a module's public inference method: called from Python with concrete arrays, it runs as one
    ``jax.jit`` program per input shape (and per value of its non-array arguments), compiled on first use.

    Inside a trace (a jitted training step, or another compiled method) and in :func:`eager_mode` it is the plain
    method. Compiled calls never write back to the module (batch statistics, RNG counters): call inference methods in
    eval mode. Arguments that are neither arrays nor hashable (an ``nnx.Rngs``) run the call eagerly. The plain
    method stays reachable as ``Class.method.__wrapped__``. Weights are read at each call; after changing a module's
    structure (adding or removing submodules), call ``rebind(module)``.
    """

    @functools.wraps(method)
    def wrapper(self: nnx.Module, *args: Any, **kwargs: Any) -> T:
        if eager_mode() or any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves((args, kwargs))):
            return method(self, *args, **kwargs)
        split = _split_args(args, kwargs)
        binding = _BINDINGS.get(self)
        if binding is None:
            binding = _BINDINGS[self] = _Binding(self)
        leaves = None if split is None else binding.leaves()
        if leaves is None:
            return method(self, *args, **kwargs)
        statics, arrays = split
        return _apply(method, binding.graphdef, _Static(statics), leaves, *arrays)

    return wrapper


def rebind(module: nnx.Module) -> None:
    """Forget ``module``'s cached graph definition (after a structural change); the next compiled call re-splits it."""
    _BINDINGS.pop(module, None)


def to_host(tree: Any) -> Any:
    """``tree`` with every array fetched to host numpy (blocks until the device is done)."""
    return jax.tree.map(np.asarray, tree)


def overlapped(
    items: Iterable[T], launch: Callable[[T], Any], fetch: Callable[[Any], Any] = to_host
) -> Iterator[tuple[T, Any]]:
    """``(item, fetch(launch(item)))`` for each item, launching item k+1 before fetching item k.

    JAX dispatches asynchronously, so the device computes the next batch while the caller post-processes this one
    on the host (DB post-processing, writing files); results come in order, one launch ahead. ``items`` is consumed
    one ahead too: a generator that prepares batches does batch k+1's host work while the device runs batch k.
    """
    pending = None
    for item in items:
        out = launch(item)
        if pending is not None:
            yield pending[0], fetch(pending[1])
        pending = (item, out)
    if pending is not None:
        yield pending[0], fetch(pending[1])
