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
from timm.layers import Attention as TimmAttention
from torch import nn

from .errors import DiagError
from .models.attention import ReAttention


def transformer_blocks(model: nn.Module) -> Sequence[nn.Module]:
    """The model's list of transformer blocks (``model.blocks``), or a DiagError."""
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, (nn.ModuleList, nn.Sequential)) or len(blocks) == 0:
        raise DiagError(
            f"cannot capture attention from {type(model).__name__}: it has no `blocks` list of transformer blocks"
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
    """The attention module of block ``index``, if deepvit-diag can read its maps."""
    block = transformer_blocks(model)[index]
    attn = getattr(block, "attn", None)
    if isinstance(attn, ReAttention):
        return attn
    # A subclass with its own forward may compute something else than softmax(q k^T).
    if isinstance(attn, TimmAttention) and type(attn).forward is TimmAttention.forward:
        return attn
    unreadable = type(attn).__name__ if attn is not None else f"{type(block).__name__} (no `attn` module)"
    raise DiagError(
        f"cannot read attention maps of block {index}: unsupported attention module {unreadable}; "
        "supported are timm's Attention and deepvit-diag's ReAttention"
    )


def is_reattention(attn: nn.Module) -> bool:
    return isinstance(attn, ReAttention) and attn.apply_transform


def num_prefix_tokens(model: nn.Module) -> int:
    """Class/register/distillation tokens in front of the patch tokens."""
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
    architecture = (getattr(model, "pretrained_cfg", None) or {}).get("architecture")
    return f"{architecture or type(model).__name__} ({len(transformer_blocks(model))} blocks, no provenance)"


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    return (int(value), int(value)) if isinstance(value, int) else (int(value[0]), int(value[1]))


@dataclass(frozen=True)
class Geometry:
    """The token layout of a model: what the metrics need to read its maps, and what a
    result needs to draw them. Sizes are (height, width) in pixels; blocks are 0-based.

    Attributes:
        num_blocks, num_heads: transformer blocks and attention heads per block.
        num_prefix_tokens: class/register/distillation tokens before the patches.
        patch_size, grid_size: one patch in pixels, the patch grid in patches.
        image_size: the input the model was built for.
        reattention_blocks: blocks whose maps are mixed by Theta (DeepViT).
    """

    num_blocks: int
    num_heads: int
    num_prefix_tokens: int
    patch_size: tuple[int, int]
    grid_size: tuple[int, int]
    image_size: tuple[int, int]
    reattention_blocks: tuple[int, ...] = ()

    @classmethod
    def of(cls, model: nn.Module, image_size: Sequence[int]) -> Geometry:
        """The geometry of ``model`` fed images of ``image_size`` (height, width)."""
        patch_embed = getattr(model, "patch_embed", None)
        patch_size, grid_size = getattr(patch_embed, "patch_size", None), getattr(patch_embed, "grid_size", None)
        if patch_size is None or grid_size is None:
            raise DiagError(
                f"cannot find the patch grid of {type(model).__name__}: it has no patch_embed.patch_size/grid_size"
            )
        blocks = transformer_blocks(model)
        return cls(
            num_blocks=len(blocks),
            num_heads=attention_module(model, 0).num_heads,
            num_prefix_tokens=num_prefix_tokens(model),
            patch_size=_pair(patch_size),
            grid_size=_pair(grid_size),
            image_size=_pair(tuple(image_size)),
            reattention_blocks=tuple(
                index for index in range(len(blocks)) if is_reattention(getattr(blocks[index], "attn", None))
            ),
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
            return cls(
                num_blocks=int(values["num_blocks"]),
                num_heads=int(values["num_heads"]),
                num_prefix_tokens=int(values["num_prefix_tokens"]),
                patch_size=_pair(values["patch_size"]),
                grid_size=_pair(values["grid_size"]),
                image_size=_pair(values["image_size"]),
                reattention_blocks=tuple(int(block) for block in values.get("reattention_blocks", ())),
            )
        except (KeyError, TypeError, ValueError, IndexError) as err:
            raise DiagError(f"a saved model geometry is malformed ({type(err).__name__}: {err})") from None
