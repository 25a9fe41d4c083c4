"""Map readers: how the softmax maps of each attention layout are read, fused paths left on.

One reader per attention module class. A reader attaches forward hooks to one attention module
and hands each forward's ``AttentionScores`` to a ``MapSink`` (``sink.scores``): the scaled
queries and keys, any logit bias and the head mixing before and after the softmax, from which
the softmax maps (B, H, T, T) and, in layouts that mix heads after the softmax, the maps that
multiply V are recomputed, whole or a tile at a time (``deepvit_diag.metrics.scores``). Nothing is
switched or replaced: where a fused kernel (``F.scaled_dot_product_attention``) never builds the
maps, the scores give them with the same operations in the same order as the module's own
non-fused path:

==========================  ===========================  ====================================================
attention layout            module                       maps
==========================  ===========================  ====================================================
multi-head attention        timm ``Attention``           ``softmax(q_norm(q) * scale @ k_norm(k)^T)``, from the
                                                         ``qkv`` projection's output (no second projection)
Re-attention (DeepViT)      ``ReAttention``              as timm ``Attention``; post: ``mix_heads`` (Θ, Norm and
                                                         scale) of the softmax maps
rotary attention (EVA)      ``EvaAttention``,            q, k from the module input (``q_bias``/``k_bias``/
                            ``AttentionRope``            ``v_bias`` or separate projections), q/k norm, rotary
                                                         embedding on the patch tokens (the ``rope`` argument)
relative position bias      BEiT ``Attention``           q, k from the module input, plus the block's own
(BEiT)                                                   table bias and the model's shared one
relative position           ``RelPosAttention``          q, k from the module input, plus ``rel_pos`` (MLP or
(timm ``vit_relpos``)                                    table) or the shared bias
talking heads (CaiT)        ``TalkingHeadAttn``          pre: the softmax of the ``proj_l``-mixed logits (what
                                                         enters ``proj_w``); post: after ``proj_w``
class attention (CaiT)      ``ClassAttn``                the class token's query over every token: (B, H, 1, T),
                                                         handed over as maps (``sink.pre``)
==========================  ===========================  ====================================================

Attention masks are not part of ViT classification; a reader that sees one refuses rather than
return maps that ignore it. Architectures without one global T x T map per head are refused by
``refusal`` with the reason (``NOT_GLOBAL``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from timm.layers import Attention as TimmAttention
from timm.layers import AttentionRope, apply_rot_embed_cat
from timm.models.beit import Attention as BeitAttention
from timm.models.cait import ClassAttn, TalkingHeadAttn
from timm.models.eva import EvaAttention
from timm.models.vision_transformer_relpos import RelPosAttention
from torch import nn
from torch.utils.hooks import RemovableHandle

from .attention_scores import AttentionScores, affine_head_mixing
from .errors import DiagError
from .models.attention import ReAttention

Handles = list[RemovableHandle]

# How a block mixes its maps across heads after the softmax (what ``post`` then holds).
REATTENTION, TALKING_HEADS = "re-attention", "talking-heads"
MIXING_BLOCKS = {REATTENTION: "Re-attention blocks", TALKING_HEADS: "talking-heads blocks"}


class MapSink(Protocol):
    def scores(self, scores: AttentionScores) -> None: ...

    def pre(self, maps: torch.Tensor) -> None: ...


@dataclass(frozen=True)
class MapReader:
    """How the maps of one attention layout (one way of computing them) are read.

    Attributes:
        layout: the attention layout's name in messages and the README's table.
        attach: ``attach(attn, sink)`` registers the hooks and returns their handles.
        mixing: ``mixing(attn)``: ``REATTENTION`` / ``TALKING_HEADS`` when this module mixes its maps
            across heads after the softmax (``post`` differs from ``pre``), else None.
    """

    layout: str
    attach: Callable[[nn.Module, MapSink], Handles]
    mixing: Callable[[nn.Module], str | None] = lambda attn: None


def _argument(args: tuple, kwargs: dict[str, Any], index: int, name: str) -> Any:
    """A forward argument given by position or by name (None when not given)."""
    return args[index] if len(args) > index else kwargs.get(name)


def _refuse_mask(attn: nn.Module, args: tuple, kwargs: dict[str, Any], mask_index: int) -> None:
    if _argument(args, kwargs, mask_index, "attn_mask") is not None or _argument(
        args, kwargs, mask_index + 1, "is_causal"
    ):
        raise DiagError(
            f"{type(attn).__name__} was called with an attention mask, which deepvit-diag does not read "
            "(ViT classification passes none)"
        )


def _on_input(attn: nn.Module, read: Callable[[tuple, dict[str, Any]], None]) -> Handles:
    """A hook that calls ``read(args, kwargs)`` after each forward of ``attn``, without gradients."""

    def hook(module: nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> None:
        with torch.no_grad():
            read(args, kwargs)

    return [attn.register_forward_hook(hook, with_kwargs=True)]


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, T, H * d) -> (B, H, T, d)."""
    batch, tokens, _ = x.shape
    return x.reshape(batch, tokens, heads, -1).transpose(1, 2)


def _fused_qk(qkv: torch.Tensor, heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A fused projection's output (B, T, 3 * H * d) -> q, k (B, H, T, d)."""
    batch, tokens, _ = qkv.shape
    q, k, _ = qkv.reshape(batch, tokens, 3, heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
    return q, k


def _qkv_with_split_bias(attn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """EVA's and BEiT's fused projection: ``qkv`` without bias, plus ``cat(q_bias, k_bias, v_bias)``
    (``k_bias`` is a zero buffer), as their forwards compute it with ``F.linear``."""
    if attn.q_bias is None:
        return attn.qkv(x)
    return F.linear(x, attn.qkv.weight, torch.cat((attn.q_bias, attn.k_bias, attn.v_bias)))


# ----------------------------------------------------------------------------- the readers


def _on_qkv(attn: nn.Module, scores: Callable[[torch.Tensor], AttentionScores], sink: MapSink) -> Handles:
    """A hook on the fused ``qkv`` projection that hands ``scores(its output)`` to the sink."""

    def hook(module: nn.Module, args: tuple, qkv: torch.Tensor) -> None:
        with torch.no_grad():
            sink.scores(scores(qkv))

    return [attn.qkv.register_forward_hook(hook)]


def _attach_timm(attn: nn.Module, sink: MapSink) -> Handles:
    def scores(qkv: torch.Tensor) -> AttentionScores:
        q, k = _fused_qk(qkv, attn.num_heads)
        return AttentionScores(attn.q_norm(q) * attn.scale, attn.k_norm(k))

    return _on_qkv(attn, scores, sink)


def _reattention_mixing(attn: ReAttention) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """Θ, Norm and scale as one affine map over heads where they are one (Conv2d Θ with BatchNorm
    on its running statistics), else the module's own ``mix_heads``."""
    if not attn.apply_transform:
        return None
    norm = getattr(attn, "var_norm", None)
    if attn.theta_kind != "conv" or norm.training or not norm.track_running_stats:
        return attn.mix_heads
    gain = torch.rsqrt(norm.running_var + norm.eps) * attn.reatten_scale
    if norm.affine:
        gain = gain * norm.weight
    shift = (attn.reatten_matrix.bias - norm.running_mean) * gain
    if norm.affine:
        shift = shift + norm.bias * attn.reatten_scale
    return affine_head_mixing(attn.reatten_matrix.weight[:, :, 0, 0] * gain[:, None], shift)


def _attach_reattention(attn: ReAttention, sink: MapSink) -> Handles:
    folded: dict[str, Any] = {}

    def mixing() -> Callable[[torch.Tensor], torch.Tensor] | None:
        # Folded again only when a weight, a statistic or the mode has changed since the last forward.
        modes = tuple(module.training for module in attn.modules())
        state = (modes, *((t.data_ptr(), t._version) for t in (*attn.parameters(), *attn.buffers())))
        if folded.get("state") != state:
            folded.update(state=state, mix=_reattention_mixing(attn))
        return folded["mix"]

    def scores(qkv: torch.Tensor) -> AttentionScores:
        q, k = _fused_qk(qkv, attn.num_heads)
        return AttentionScores(attn.q_norm(q) * attn.scale, attn.k_norm(k), mix_maps=mixing())

    return _on_qkv(attn, scores, sink)


def _attach_rotary(attn: nn.Module, sink: MapSink) -> Handles:
    def read(args: tuple, kwargs: dict[str, Any]) -> None:
        _refuse_mask(attn, args, kwargs, mask_index=2)
        x, rope = _argument(args, kwargs, 0, "x"), _argument(args, kwargs, 1, "rope")
        if attn.qkv is not None:
            qkv = _qkv_with_split_bias(attn, x) if hasattr(attn, "q_bias") else attn.qkv(x)
            q, k = _fused_qk(qkv, attn.num_heads)
        else:
            q = _split_heads(attn.q_proj(x), attn.num_heads)
            k = _split_heads(attn.k_proj(x), getattr(attn, "num_kv_heads", attn.num_heads))
        q, k = attn.q_norm(q), attn.k_norm(k)
        if rope is not None:  # prefix tokens carry no rotary position
            prefix, half = attn.num_prefix_tokens, getattr(attn, "rotate_half", False)
            q, k = (
                torch.cat([t[:, :, :prefix], apply_rot_embed_cat(t[:, :, prefix:], rope, half=half)], dim=2).type_as(t)
                for t in (q, k)
            )
        groups = getattr(attn, "num_kv_groups", 1)
        if groups > 1:  # grouped-query attention: head h uses key head h // groups
            k = k.repeat_interleave(groups, dim=1)
        sink.scores(AttentionScores(q * attn.scale, k))

    return _on_input(attn, read)


def _attach_beit(attn: BeitAttention, sink: MapSink) -> Handles:
    def read(args: tuple, kwargs: dict[str, Any]) -> None:
        x, shared = _argument(args, kwargs, 0, "x"), _argument(args, kwargs, 1, "shared_rel_pos_bias")
        q, k = _fused_qk(_qkv_with_split_bias(attn, x), attn.num_heads)
        biases = (attn._get_rel_pos_bias(),) if attn.relative_position_bias_table is not None else ()
        sink.scores(AttentionScores(q * attn.scale, k, biases + ((shared,) if shared is not None else ())))

    return _on_input(attn, read)


def _attach_relpos(attn: RelPosAttention, sink: MapSink) -> Handles:
    def read(args: tuple, kwargs: dict[str, Any]) -> None:
        x, shared = _argument(args, kwargs, 0, "x"), _argument(args, kwargs, 1, "shared_rel_pos")
        q, k = _fused_qk(attn.qkv(x), attn.num_heads)
        # rel_pos adds its bias (get_bias()) to the logits; without it the shared bias is added.
        bias = attn.rel_pos.get_bias() if attn.rel_pos is not None else shared
        sink.scores(AttentionScores(attn.q_norm(q) * attn.scale, attn.k_norm(k), () if bias is None else (bias,)))

    return _on_input(attn, read)


def _attach_talking_heads(attn: TalkingHeadAttn, sink: MapSink) -> Handles:
    # proj_l and proj_w are Linear layers over the head axis.
    def scores(qkv: torch.Tensor) -> AttentionScores:
        q, k = _fused_qk(qkv, attn.num_heads)
        mix_logits = affine_head_mixing(attn.proj_l.weight, attn.proj_l.bias)
        return AttentionScores(
            q * attn.scale, k, mix_logits=mix_logits, mix_maps=affine_head_mixing(attn.proj_w.weight, attn.proj_w.bias)
        )

    return _on_qkv(attn, scores, sink)


def _attach_class_attention(attn: ClassAttn, sink: MapSink) -> Handles:
    def read(args: tuple, kwargs: dict[str, Any]) -> None:
        x = _argument(args, kwargs, 0, "x")
        q = _split_heads(attn.q(x[:, :1]), attn.num_heads)
        k = _split_heads(attn.k(x), attn.num_heads)
        sink.pre(AttentionScores(q * attn.scale, k).pre())

    return _on_input(attn, read)


READERS: dict[type, MapReader] = {
    TimmAttention: MapReader("multi-head attention", _attach_timm),
    ReAttention: MapReader(
        "Re-attention (DeepViT)", _attach_reattention, lambda attn: REATTENTION if attn.apply_transform else None
    ),
    EvaAttention: MapReader("rotary attention (EVA)", _attach_rotary),
    AttentionRope: MapReader("rotary attention", _attach_rotary),
    BeitAttention: MapReader("relative position bias (BEiT)", _attach_beit),
    RelPosAttention: MapReader("relative position attention", _attach_relpos),
    TalkingHeadAttn: MapReader("talking heads (CaiT)", _attach_talking_heads, lambda attn: TALKING_HEADS),
}
# Attention in blocks that only update the class token (CaiT's class-attention stage): (B, H, 1, T) maps.
CLASS_ATTENTION_READERS: dict[type, MapReader] = {
    ClassAttn: MapReader("class attention (CaiT)", _attach_class_attention)
}


def reader_for(attn: Any, readers: dict[type, MapReader] = READERS) -> MapReader | None:
    """The reader of ``attn``'s class, or of the nearest base class whose forward it keeps (a subclass
    with its own forward may compute something else)."""
    for cls in type(attn).__mro__:
        if cls in readers:
            return readers[cls] if type(attn).forward is cls.forward else None
    return None


# Model and attention classes whose attention is not one global T x T map per head.
NOT_GLOBAL = {
    "WindowAttention": "each head attends within local windows (Swin), not over all tokens at once",
    "XCA": "cross-covariance attention (XCiT) mixes channels: a d x d map per head, not T x T over tokens",
    "MultiScaleAttention": "pooling attention (MViT) pools queries and keys to other token counts",
    "LevitDistilled": "LeViT's attention stages pool queries and keys, so maps are not T x T",
    "Levit": "LeViT's attention stages pool queries and keys, so maps are not T x T",
    "PoolingVisionTransformer": "PiT pools tokens between stages, so blocks see different token counts",
    "CrossVit": "CrossViT runs two token grids that exchange only their class tokens through cross-attention",
}


def qualified_name(obj: Any) -> str:
    """``module.Class`` of an object, so that classes named alike (timm's and BEiT's ``Attention``) differ."""
    cls = type(obj)
    return f"{cls.__module__}.{cls.__name__}"


def refusal(model: nn.Module, model_name: str) -> str | None:
    """Why ``model``'s maps cannot be read, naming the attention module's path, or None when nothing in
    ``NOT_GLOBAL`` is found."""
    model_reason = NOT_GLOBAL.get(type(model).__name__)
    for path, module in model.named_modules():
        reason = NOT_GLOBAL.get(type(module).__name__) if path else None
        if reason is None and model_reason and path.rsplit(".", 1)[-1] == "attn":
            reason = model_reason
        if reason:
            return f"cannot read attention maps of {model_name}: {path} is {qualified_name(module)}; {reason}"
    if model_reason:
        return f"cannot read attention maps of {model_name} ({qualified_name(model)}): {model_reason}"
    return None
