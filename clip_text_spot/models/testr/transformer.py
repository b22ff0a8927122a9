"""TESTR's deformable transformer: encoder, two-stage proposals with top-k, composite decoder (spotting.md §1.3-1.6).

Parameter names follow the official ``adet/layers/deformable_transformer.py`` modules (``encoder/layers/0/self_attn``,
``decoder/layers/0/attn_intra``, ``norm_cross_text``, ``enc_output``, ``pos_trans``...); PyTorch's packed
``nn.MultiheadAttention`` becomes ``q_proj``/``k_proj``/``v_proj``/``out_proj`` (``layers.Attention``). All norms are
post-norm. Dropout (residual and FFN, official rate 0.1) is active in train mode with keys from the ``rngs`` call
argument; the attention-probability dropout inside PyTorch's ``nn.MultiheadAttention`` is not reproduced.

``capture`` arguments (a dict or None) collect intermediates under the fixture's names for parity checks; they cost
nothing when None.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from clip_text_spot.models.layers import Attention, Dtype, activation, layer_norm, multi_head_attention
from clip_text_spot.models.testr.deform_attn import MSDeformAttn, Shapes, level_starts
from clip_text_spot.models.testr.init import PACKED_XAVIER, XAVIER, linear
from clip_text_spot.models.testr.position import proposal_position


def _attention(dim: int, heads: int, rngs: nnx.Rngs, dtype: Dtype) -> Attention:
    """PyTorch ``nn.MultiheadAttention(dim, heads)`` as separate projections (zero biases, as torch inits them)."""
    attn = Attention(dim, heads, rngs=rngs, dtype=dtype)
    for proj in (attn.q_proj, attn.k_proj, attn.v_proj, attn.out_proj):
        init = XAVIER if proj is attn.out_proj else PACKED_XAVIER
        proj.kernel[...] = init(rngs.params(), proj.kernel.shape, proj.kernel.dtype)
    return attn


def _self_attention(attn: Attention, qk: jax.Array, v: jax.Array) -> jax.Array:
    """Attention with queries = keys = ``qk`` and values ``v`` over [B, L, D] (TESTR adds positions to q/k only)."""
    out = multi_head_attention(attn.q_proj(qk), attn.k_proj(qk), attn.v_proj(v), attn.heads)
    return attn.out_proj(out)


def _sub(capture: dict | None, key: str) -> dict | None:
    return None if capture is None else capture.setdefault(key, {})


class FFN(nnx.Module):
    """``linear2(drop(act(linear1(x))))``: the post-norm layers' feed-forward (the caller adds and normalises)."""

    def __init__(self, dim: int, hidden: int, act: str, dropout: float, *, rngs: nnx.Rngs, dtype: Dtype):
        self.act = act
        self.linear1 = linear(dim, hidden, ("embed", "mlp"), rngs=rngs, dtype=dtype)
        self.linear2 = linear(hidden, dim, ("mlp", "embed"), rngs=rngs, dtype=dtype)
        self.drop = nnx.Dropout(dropout)

    def __call__(self, x: jax.Array, rngs: nnx.Rngs | None) -> jax.Array:
        return self.linear2(self.drop(activation(self.act)(self.linear1(x)), rngs=rngs))


class EncoderLayer(nnx.Module):
    """``DeformableTransformerEncoderLayer``: deformable self-attention over all levels, then the FFN, post-norm."""

    def __init__(self, dim, ffn, heads, levels, points, dropout, act, *, rngs: nnx.Rngs, dtype: Dtype = None):
        self.self_attn = MSDeformAttn(dim, levels, heads, points, rngs=rngs, dtype=dtype)
        self.norm1 = layer_norm(dim, rngs=rngs, dtype=dtype)
        self.ffn = FFN(dim, ffn, act, dropout, rngs=rngs, dtype=dtype)
        self.norm2 = layer_norm(dim, rngs=rngs, dtype=dtype)
        self.drop1 = nnx.Dropout(dropout)
        self.drop2 = nnx.Dropout(dropout)

    def __call__(self, src, pos, reference_points, shapes: Shapes, mask, capture=None, rngs=None) -> jax.Array:
        attn = self.self_attn(src + pos, reference_points, src, shapes, mask, capture=_sub(capture, "self_attn"))
        src = self.norm1(src + self.drop1(attn, rngs=rngs))
        return self.norm2(src + self.drop2(self.ffn(src, rngs), rngs=rngs))


def encoder_reference_points(shapes: Shapes, valid_ratios: jax.Array) -> jax.Array:
    """Pixel centres of every level normalised by its valid size, then scaled by each level's valid ratio:
    [B, S, L, 2] (x, y). ``valid_ratios`` [B, L, 2] (w, h)."""
    refs = []
    for lvl, (h, w) in enumerate(shapes):
        ry, rx = np.meshgrid(np.arange(h, dtype=np.float32) + 0.5, np.arange(w, dtype=np.float32) + 0.5, indexing="ij")
        ry = jnp.asarray(ry.reshape(-1))[None] / (valid_ratios[:, None, lvl, 1] * h)
        rx = jnp.asarray(rx.reshape(-1))[None] / (valid_ratios[:, None, lvl, 0] * w)
        refs.append(jnp.stack([rx, ry], -1))
    return jnp.concatenate(refs, 1)[:, :, None] * valid_ratios[:, None]


class CompositeDecoderLayer(nnx.Module):
    """``DeformableCompositeTransformerDecoderLayer``: a location branch over [B, Q, P, d] (queries x control points)
    and a character branch over [B, Q, T, d], each: intra-instance self-attention (positions on q/k), inter-instance
    self-attention per point/character slot (no positions), deformable cross-attention to the memory around the
    instance's box, FFN; post-norm everywhere. The branches share only the box and the memory."""

    BRANCHES = ("", "_text")

    def __init__(self, dim, ffn, heads, levels, points, dropout, act, *, rngs: nnx.Rngs, dtype: Dtype = None):
        for s in self.BRANCHES:
            setattr(self, f"attn_cross{s}", MSDeformAttn(dim, levels, heads, points, rngs=rngs, dtype=dtype))
            for step in ("cross", "intra", "inter"):
                setattr(self, f"norm_{step}{s}", layer_norm(dim, rngs=rngs, dtype=dtype))
            setattr(self, f"attn_intra{s}", _attention(dim, heads, rngs, dtype))
            setattr(self, f"attn_inter{s}", _attention(dim, heads, rngs, dtype))
            setattr(self, f"ffn{s}", FFN(dim, ffn, act, dropout, rngs=rngs, dtype=dtype))
            setattr(self, f"norm3{s}", layer_norm(dim, rngs=rngs, dtype=dtype))
        self.drop = nnx.Dropout(dropout)

    def branch(self, s, tgt, pos, refs, memory, shapes: Shapes, mask, capture, rngs) -> jax.Array:
        """One branch (``s`` = "" for locations, "_text" for characters): [B, Q, K, d] -> [B, Q, K, d]."""
        b, q, k, d = tgt.shape
        qk = (tgt + pos).reshape(b * q, k, d)
        out = _self_attention(getattr(self, f"attn_intra{s}"), qk, tgt.reshape(b * q, k, d)).reshape(tgt.shape)
        tgt = getattr(self, f"norm_intra{s}")(tgt + self.drop(out, rngs=rngs))
        if capture is not None:
            capture[f"after_norm_intra{s}"] = tgt
        swapped = tgt.swapaxes(1, 2).reshape(b * k, q, d)
        out = _self_attention(getattr(self, f"attn_inter{s}"), swapped, swapped).reshape(b, k, q, d).swapaxes(1, 2)
        tgt = getattr(self, f"norm_inter{s}")(tgt + self.drop(out, rngs=rngs))
        if capture is not None:
            capture[f"after_norm_inter{s}"] = tgt
        box = jnp.broadcast_to(refs[:, :, None], (b, q, k, *refs.shape[2:])).reshape(b, q * k, *refs.shape[2:])
        cross = getattr(self, f"attn_cross{s}")
        out = cross(
            (tgt + pos).reshape(b, q * k, d), box, memory, shapes, mask, capture=_sub(capture, f"attn_cross{s}")
        )
        tgt = getattr(self, f"norm_cross{s}")(tgt + self.drop(out.reshape(tgt.shape), rngs=rngs))
        if capture is not None:
            capture[f"after_norm_cross{s}"] = tgt
        ffn = getattr(self, f"ffn{s}")
        return getattr(self, f"norm3{s}")(tgt + self.drop(ffn(tgt, rngs), rngs=rngs))

    def __call__(self, tgt, pos, tgt_text, pos_text, refs, memory, shapes: Shapes, mask, capture=None, rngs=None):
        """``refs`` [B, Q, L, 4]: each instance's box scaled per level by the valid ratios."""
        tgt = self.branch("", tgt, pos, refs, memory, shapes, mask, capture, rngs)
        tgt_text = self.branch("_text", tgt_text, pos_text, refs, memory, shapes, mask, capture, rngs)
        return tgt, tgt_text


def valid_ratios(masks: Sequence[jax.Array]) -> jax.Array:
    """[B, L, 2] (w, h): each level's valid width / height over its padded size (from row 0 / column 0)."""
    out = []
    for m in masks:
        _, h, w = m.shape
        vh = jnp.sum(~m[:, :, 0], 1).astype(jnp.float32) / h
        vw = jnp.sum(~m[:, 0, :], 1).astype(jnp.float32) / w
        out.append(jnp.stack([vw, vh], -1))
    return jnp.stack(out, 1)


def encoder_output_proposals(mask_flat: jax.Array, shapes: Shapes) -> tuple[jax.Array, jax.Array]:
    """``gen_encoder_output_proposals``' boxes: (proposal logits [B, S, 4] (cx, cy, w, h) with +inf at padded and
    border tokens, keep [B, S] = the token is valid and its box lies within (0.01, 0.99))."""
    b = mask_flat.shape[0]
    props = []
    for lvl, ((h, w), start) in enumerate(zip(shapes, level_starts(shapes), strict=True)):
        m = mask_flat[:, start : start + h * w].reshape(b, h, w)
        vh = jnp.sum(~m[:, :, 0], 1)
        vw = jnp.sum(~m[:, 0, :], 1)
        gy, gx = np.meshgrid(np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32), indexing="ij")
        scale = jnp.stack([vw, vh], -1).astype(jnp.float32)[:, None, None, :]
        grid = (jnp.asarray(np.stack([gx, gy], -1))[None] + 0.5) / scale
        wh = jnp.full_like(grid, np.float32(0.05) * np.float32(2.0**lvl))
        props.append(jnp.concatenate([grid, wh], -1).reshape(b, h * w, 4))
    props = jnp.concatenate(props, 1)
    inside = jnp.all((props > 0.01) & (props < 0.99), -1)
    keep = inside & ~mask_flat
    logits = jnp.where(keep[..., None], jnp.log(props / (1 - props)), jnp.inf)
    return logits, keep


class DeformableTransformer(nnx.Module):
    """``DeformableTransformer`` as TESTR builds it: two-stage, references never refined, intermediate outputs."""

    def __init__(
        self,
        dim: int,
        heads: int,
        levels: int,
        enc_layers: int,
        dec_layers: int,
        ffn: int,
        enc_points: int,
        dec_points: int,
        dropout: float,
        act: str = "relu",
        *,
        rngs: nnx.Rngs,
        dtype: Dtype = None,
    ):
        self.dim = dim
        self.encoder_layers = nnx.List(
            [
                EncoderLayer(dim, ffn, heads, levels, enc_points, dropout, act, rngs=rngs, dtype=dtype)
                for _ in range(enc_layers)
            ]
        )
        self.decoder_layers = nnx.List(
            [
                CompositeDecoderLayer(dim, ffn, heads, levels, dec_points, dropout, act, rngs=rngs, dtype=dtype)
                for _ in range(dec_layers)
            ]
        )
        self.level_embed = nnx.Param(
            nnx.with_partitioning(nnx.initializers.normal(1.0), (None, "embed"))(rngs.params(), (levels, dim))
        )
        self.enc_output = linear(dim, dim, ("embed", "embed"), rngs=rngs, dtype=dtype)
        self.enc_output_norm = layer_norm(dim, rngs=rngs, dtype=dtype)
        self.pos_trans = linear(dim, dim, ("embed", "embed"), rngs=rngs, dtype=dtype)
        self.pos_trans_norm = layer_norm(dim, rngs=rngs, dtype=dtype)

    def __call__(
        self,
        srcs: Sequence[jax.Array],
        masks: Sequence[jax.Array],
        pos: Sequence[jax.Array],
        query_embed: jax.Array,
        text_embed: jax.Array,
        text_pos: jax.Array,
        bbox_class: Callable[[jax.Array], jax.Array],
        bbox_coord: Callable[[jax.Array], jax.Array],
        num_queries: int,
        capture: dict | None = None,
        rngs: nnx.Rngs | None = None,
    ) -> dict[str, jax.Array]:
        """Levels ``srcs`` / ``pos`` [B, H_l, W_l, d] and ``masks`` [B, H_l, W_l] (True = pad); ``query_embed``
        [P, d], ``text_embed`` / ``text_pos`` [T, d]; ``bbox_class`` / ``bbox_coord`` the shared proposal heads.

        Returns ``hs`` [n_dec, B, Q, P, d], ``hs_text`` [n_dec, B, Q, T, d], ``reference_points`` [B, Q, 4]
        (sigmoid boxes, no gradient), ``enc_outputs_class`` [B, S, 1] and ``enc_outputs_coord_unact`` [B, S, 4].
        Top-k ranks padded tokens last (the official code would rank them by the constant logit of a zeroed token).
        """
        b = srcs[0].shape[0]
        shapes: Shapes = tuple((int(s.shape[1]), int(s.shape[2])) for s in srcs)
        src_flat = jnp.concatenate([s.reshape(b, -1, self.dim) for s in srcs], 1)
        mask_flat = jnp.concatenate([m.reshape(b, -1) for m in masks], 1)
        level_embed = self.level_embed[...].astype(pos[0].dtype)
        pos_flat = jnp.concatenate([p.reshape(b, -1, self.dim) + level_embed[i] for i, p in enumerate(pos)], 1)
        ratios = valid_ratios(masks)
        refs = encoder_reference_points(shapes, ratios)
        if capture is not None:
            capture.update(mask_flatten=mask_flat, valid_ratios=ratios, enc_reference_points=refs)
        memory = src_flat
        for i, layer in enumerate(self.encoder_layers):
            memory = layer(memory, pos_flat, refs, shapes, mask_flat, _sub(capture, f"enc{i}"), rngs)
            if capture is not None:
                capture[f"enc_layer{i}_out"] = memory

        proposals, keep = encoder_output_proposals(mask_flat, shapes)
        output_memory = self.enc_output_norm(self.enc_output(jnp.where(keep[..., None], memory, 0)))
        enc_class = bbox_class(output_memory)
        enc_delta = bbox_coord(output_memory)
        enc_coord_unact = enc_delta.astype(jnp.float32) + proposals
        scores = jnp.where(mask_flat, -jnp.inf, enc_class[..., 0].astype(jnp.float32))
        topk = jax.lax.top_k(scores, num_queries)[1]
        coords_unact = jax.lax.stop_gradient(jnp.take_along_axis(enc_coord_unact, topk[..., None], axis=1))
        reference_points = jax.nn.sigmoid(coords_unact)
        proposal_pos = proposal_position(coords_unact, self.dim).astype(output_memory.dtype)
        query_pos = self.pos_trans_norm(self.pos_trans(proposal_pos))
        if capture is not None:
            capture.update(
                memory=memory,
                output_memory=output_memory,
                output_proposals=proposals,
                enc_bbox_delta=enc_delta,
                enc_outputs_coord_unact=enc_coord_unact,
                topk_indices=topk,
                topk_coords_unact=coords_unact,
                reference_points=reference_points,
                proposal_pos_embed=proposal_pos,
                query_pos=query_pos,
            )

        q, p, t, d = num_queries, query_embed.shape[0], text_embed.shape[0], self.dim
        tgt = jnp.broadcast_to(query_embed.astype(query_pos.dtype), (b, q, p, d))
        tgt_pos = jnp.broadcast_to(query_pos[:, :, None], (b, q, p, d))
        tgt_text = jnp.broadcast_to(text_embed.astype(query_pos.dtype), (b, q, t, d))
        text_pos = jnp.broadcast_to(text_pos.astype(query_pos.dtype), (b, q, t, d))
        box_refs = reference_points[:, :, None] * jnp.concatenate([ratios, ratios], -1)[:, None]
        if capture is not None:
            capture["dec_reference_points_input"] = box_refs
        hs, hs_text = [], []
        for i, layer in enumerate(self.decoder_layers):
            tgt, tgt_text = layer(
                tgt, tgt_pos, tgt_text, text_pos, box_refs, memory, shapes, mask_flat, _sub(capture, f"dec{i}"), rngs
            )
            hs.append(tgt)
            hs_text.append(tgt_text)
        return {
            "hs": jnp.stack(hs),
            "hs_text": jnp.stack(hs_text),
            "reference_points": reference_points,
            "enc_outputs_class": enc_class,
            "enc_outputs_coord_unact": enc_coord_unact,
        }
