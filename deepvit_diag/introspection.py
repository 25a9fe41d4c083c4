"""What deepvit-diag reads off a model's structure: its blocks, their attention modules,
the prefix tokens and the patch grid (``Geometry``).

One home for these facts: capture hooks the modules found here, the analysis measures
with the geometry found here, and results record that geometry.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from .errors import DiagError
from .readers import CLASS_ATTENTION_READERS, READERS, REATTENTION, qualified_name, reader_for, refusal


def model_name(model: nn.Module) -> str:
    """The model's timm architecture name, else its class name (for messages)."""
    return (getattr(model, "pretrained_cfg", None) or {}).get("architecture") or type(model).__name__


def usable_model(model: object) -> nn.Module:
    """The module to analyse: a ``torch.compile``d model's original module (``_orig_mod``,
    which shares its weights; hooks see the eager forward pass), after checks that say what
    is wrong and what to do: not a module, weights on the ``meta`` device, not a vision
    transformer."""
    if not isinstance(model, nn.Module):
        raise DiagError(f"model must be a torch.nn.Module (e.g. from timm.create_model), got {type(model).__name__}")
    model = getattr(model, "_orig_mod", model)
    if any(tensor.is_meta for tensor in [*model.parameters(), *model.buffers()]):
        raise DiagError(
            f"{model_name(model)} has its weights on the meta device (created without data): load real weights "
            "first, e.g. model.to_empty(device='cpu') and then model.load_state_dict(...)"
        )
    if not hasattr(model, "blocks") and not hasattr(model, "patch_embed"):
        raise DiagError(
            refusal(model, model_name(model))
            or f"{model_name(model)} is not a vision transformer: deepvit-diag reads the attention maps of "
            "models with a patch embedding and a list of transformer blocks (timm ViT, DeepViT, DeiT, CaiT, ...)"
        )
    return model


def transformer_blocks(model: nn.Module) -> Sequence[nn.Module]:
    """The model's list of transformer blocks (``model.blocks``), or a DiagError that says why not."""
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, (nn.ModuleList, nn.Sequential)) or len(blocks) == 0:
        raise DiagError(
            refusal(model, model_name(model))
            or f"cannot capture attention from {model_name(model)}: it has no `blocks` list of transformer blocks"
        )
    return blocks


def resolve_blocks(model: nn.Module, blocks: Sequence[int] | None) -> list[int]:
    """Sorted unique 0-based block indices; negative indices count from the end."""
    num_blocks = len(transformer_blocks(model))
    if blocks is None:
        return list(range(num_blocks))
    resolved = set()
    for index in blocks:
        if isinstance(index, bool) or not isinstance(index, int) or not -num_blocks <= index < num_blocks:
            raise DiagError(f"block index {index!r} is out of range for a model with {num_blocks} blocks")
        resolved.add(index % num_blocks)
    if not resolved:
        raise DiagError("blocks= selects no block; give at least one block index")
    return sorted(resolved)


def attention_module(model: nn.Module, index: int) -> nn.Module:
    """The attention module of block ``index``, if deepvit-diag has a map reader for it."""
    block = transformer_blocks(model)[index]
    attn = getattr(block, "attn", None)
    if attn is not None and reader_for(attn) is not None:
        return attn
    reason = refusal(model, model_name(model))
    if reason is None:
        what = f"blocks.{index}.attn is {qualified_name(attn)}" if attn is not None else f"blocks.{index} has no attn"
        layouts = ", ".join(f"{cls.__name__} ({reader.layout})" for cls, reader in READERS.items())
        reason = (
            f"cannot read attention maps of {model_name(model)}: {what}, which has no map reader (readers: {layouts})"
        )
    raise DiagError(reason)


def check_readable(model: nn.Module) -> None:
    """A one-line DiagError (which module, and why) unless every attention module of ``model`` has a reader."""
    for index in range(len(transformer_blocks(model))):
        attention_module(model, index)
    class_attention_modules(model)


def head_mixing(attn: nn.Module) -> str | None:
    """How ``attn`` mixes its maps across heads after the softmax (``readers.REATTENTION`` /
    ``readers.TALKING_HEADS``), or None when the maps that multiply V are the softmax maps."""
    return reader_for(attn).mixing(attn)


def class_attention_modules(model: nn.Module) -> list[nn.Module]:
    """The attention modules of blocks that update only the class token (CaiT's ``blocks_token_only``)."""
    blocks = getattr(model, "blocks_token_only", None) or []
    modules = [getattr(block, "attn", None) for block in blocks]
    for index, attn in enumerate(modules):
        if reader_for(attn, CLASS_ATTENTION_READERS) is None:
            raise DiagError(
                f"cannot read attention maps of {model_name(model)}: blocks_token_only.{index}.attn is "
                f"{qualified_name(attn)}, which has no map reader"
            )
    return modules


def num_prefix_tokens(model: nn.Module) -> int:
    """Class/register/distillation tokens in front of the patch tokens in the maps of ``model.blocks``
    (0 in CaiT, whose class token joins only in the class-attention blocks)."""
    if getattr(model, "blocks_token_only", None):
        return 0
    prefix = getattr(model, "num_prefix_tokens", None)
    if prefix is None:
        return 1 if getattr(model, "cls_token", None) is not None else 0
    return int(prefix)


def model_device(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def describe_model(model: nn.Module) -> str:
    """The provenance description, else the timm architecture or class name."""
    provenance = getattr(model, "provenance", None) or {}
    if provenance.get("description"):
        return str(provenance["description"])
    return f"{model_name(model)} ({len(transformer_blocks(model))} blocks, no provenance)"


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    return (int(value), int(value)) if isinstance(value, int) else (int(value[0]), int(value[1]))


@dataclass(frozen=True)
class Geometry:
    """The token layout of a model: what the metrics need to read its maps, and what a
    result needs to draw them. Sizes are (height, width) in pixels; blocks are 0-based.

    Attributes:
        num_blocks, num_heads: transformer blocks and attention heads per block.
        num_prefix_tokens: class/register/distillation tokens before the patches in the maps.
        patch_size, grid_size: one patch in pixels, the patch grid of the images analysed.
        image_size: the size of the images analysed (the model's own unless it takes any size).
        mixing_blocks: blocks whose maps are mixed across heads after the softmax, so that the
            maps that multiply V ("post") differ from the softmax maps ("pre").
        head_mixing: how those blocks mix: ``"re-attention"`` (DeepViT's Θ, Norm and scale) or
            ``"talking-heads"`` (CaiT's learned H x H matrices before and after the softmax).
    """

    num_blocks: int
    num_heads: int
    num_prefix_tokens: int
    patch_size: tuple[int, int]
    grid_size: tuple[int, int]
    image_size: tuple[int, int]
    mixing_blocks: tuple[int, ...] = ()
    head_mixing: str | None = None

    @classmethod
    def of(cls, model: nn.Module, image_size: Sequence[int]) -> Geometry:
        """The geometry of ``model`` fed images of ``image_size`` (height, width): a model built with
        ``dynamic_img_size`` sees the patch grid of whatever size it is given."""
        patch_embed = getattr(model, "patch_embed", None)
        patch_size, grid_size = getattr(patch_embed, "patch_size", None), getattr(patch_embed, "grid_size", None)
        if patch_size is None or grid_size is None:
            raise DiagError(
                f"cannot find the patch grid of {model_name(model)}: it has no patch_embed.patch_size/grid_size"
            )
        image_size = _pair(tuple(image_size))
        if getattr(model, "dynamic_img_size", False):
            grid_size = patch_embed.dynamic_feat_size(image_size)
        blocks = transformer_blocks(model)
        mixing = {index: head_mixing(attention_module(model, index)) for index in range(len(blocks))}
        kinds = {kind for kind in mixing.values() if kind}
        if len(kinds) > 1:
            raise DiagError(f"{model_name(model)} mixes heads in more than one way ({', '.join(sorted(kinds))})")
        return cls(
            num_blocks=len(blocks),
            num_heads=attention_module(model, 0).num_heads,
            num_prefix_tokens=num_prefix_tokens(model),
            patch_size=_pair(patch_size),
            grid_size=_pair(grid_size),
            image_size=image_size,
            mixing_blocks=tuple(index for index, kind in mixing.items() if kind),
            head_mixing=kinds.pop() if kinds else None,
        )

    @property
    def num_patches(self) -> int:
        return self.grid_size[0] * self.grid_size[1]

    @property
    def num_tokens(self) -> int:
        return self.num_prefix_tokens + self.num_patches

    def to_dict(self) -> dict[str, Any]:
        return {name: list(value) if isinstance(value, tuple) else value for name, value in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Geometry:
        try:
            # "reattention_blocks": the name before analyses of CaiT's talking heads were read
            mixing = tuple(int(block) for block in values.get("mixing_blocks", values.get("reattention_blocks", ())))
            return cls(
                num_blocks=int(values["num_blocks"]),
                num_heads=int(values["num_heads"]),
                num_prefix_tokens=int(values["num_prefix_tokens"]),
                patch_size=_pair(values["patch_size"]),
                grid_size=_pair(values["grid_size"]),
                image_size=_pair(values["image_size"]),
                mixing_blocks=mixing,
                # Files written before said "re-attention" also for models that mix no heads.
                head_mixing=str(values.get("head_mixing") or REATTENTION) if mixing else None,
            )
        except (KeyError, TypeError, ValueError, IndexError) as err:
            raise DiagError(f"a saved model geometry is malformed ({type(err).__name__}: {err})") from None
