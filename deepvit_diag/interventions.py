"""Ablated forward passes of a ViT: blocks skipped, branches zeroed, heads replaced, maps swapped.

A ``Variant`` is one ablated model: the intact tokens entering block ``input_block`` run
through blocks ``start``, ``start + 1``, ... to the end, then the final norm and the head,
with ``Action``\\ s changing some of those blocks. Every block before ``start`` is the intact
model's, so an ablation of block p costs only the blocks from p on: the runner records
every block's input in one intact pass (``BlockRunner.intact``) and starts each variant there.

Variants that start at the same block run together: their inputs are stacked along the
batch (V variants x B images) and one forward hook per touched module changes only the rows
of the variants that ask for it, so V ablations cost one batched pass of the remaining
blocks. Nothing global is switched and every hook is removed when the pass ends.

Supported models run their blocks one after another on the tokens alone and end in
``norm`` and ``forward_head`` (timm's ``VisionTransformer`` family, deepvit-diag's
``DeepVisionTransformer``); ``BlockRunner.check`` refuses any other in one line, by
comparing the logits this path gives with the model's own.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from timm.models.vision_transformer import Attention
from torch import nn
from torch.utils.hooks import RemovableHandle

from .errors import DiagError
from .introspection import model_name, transformer_blocks
from .models.attention import ReAttention

SKIP_BLOCK = "skip block"  # the block's output is its input (both residual branches zeroed)
ZERO_ATTENTION = "zero attention"  # the attention branch adds nothing; the MLP branch stays
ZERO_HEAD = "zero head"  # one head's output (its share of the input of attn.proj) set to 0
MEAN_HEAD = "mean head"  # ... set to its mean over the image set, per token position
RECORD_MAPS = "record maps"  # keep the maps that multiply V, for TRANSPLANT_MAPS in a later block
TRANSPLANT_MAPS = "transplant maps"  # multiply V by the maps RECORD_MAPS kept, not the block's own
PLAIN_ATTENTION = "plain attention"  # Re-attention off: the softmax maps multiply V (Theta = I, no Norm)
KINDS = (SKIP_BLOCK, ZERO_ATTENTION, ZERO_HEAD, MEAN_HEAD, RECORD_MAPS, TRANSPLANT_MAPS, PLAIN_ATTENTION)


@dataclass(frozen=True)
class Action:
    """Change ``kind`` (``KINDS``) in block ``block``; ``head`` for the head actions."""

    block: int
    kind: str
    head: int = -1

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown intervention {self.kind!r}")


@dataclass(frozen=True)
class Variant:
    """One ablated model (see the module docstring); ``Variant(0, 0)`` is the intact model."""

    input_block: int
    start: int
    actions: tuple[Action, ...] = ()


@dataclass
class Outputs:
    """What the classifier reads (``features`` (B, F), ``forward_head(..., pre_logits=True)``) and ``logits`` (B, C)."""

    features: torch.Tensor
    logits: torch.Tensor


@dataclass
class IntactPass:
    """The intact model on a batch: ``inputs[l]`` (B, T, D) enters block l, ``inputs[L]`` leaves the last."""

    inputs: torch.Tensor
    outputs: Outputs


def maps_module(attn: nn.Module) -> nn.Module | None:
    """The module whose output is the maps that multiply V (with fused attention off), or None
    for attention this module cannot swap maps in."""
    if isinstance(attn, ReAttention):
        return attn.hook_post
    if type(attn) is Attention:
        return attn.attn_drop
    return None


def mixes_with_theta(attn: nn.Module) -> bool:
    """Whether ``attn`` is a Re-attention block (Theta and Norm after the softmax) PLAIN_ATTENTION switches off."""
    return isinstance(attn, ReAttention) and attn.apply_transform


def head_width(attn: nn.Module) -> int:
    """Channels of one head in the input of ``attn.proj``."""
    width = getattr(attn, "head_dim", None)
    if not isinstance(getattr(attn, "proj", None), nn.Linear) or not isinstance(width, int):
        raise DiagError(f"cannot ablate heads of {type(attn).__name__}: it has no proj Linear and head_dim")
    return width


class BlockRunner:
    """Runs a model from any block's input to the logits (see the module docstring)."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.blocks = transformer_blocks(model)
        missing = [name for name in ("forward_features", "forward_head", "norm") if not hasattr(model, name)]
        if missing or getattr(model, "num_classes", 0) in (0, None):
            what = f"it has no {', '.join(missing)}" if missing else "it has no classifier head"
            raise DiagError(f"cannot ablate {model_name(model)}: {what}")
        self.classifier = model.get_classifier()
        self.attns = [getattr(block, "attn", None) for block in self.blocks]

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    def intact(self, x: torch.Tensor) -> IntactPass:
        """One intact forward with every block's input recorded."""
        inputs: list[torch.Tensor | None] = [None] * (self.num_blocks + 1)

        def keep_input(index: int):
            def hook(module: nn.Module, args: tuple) -> None:
                inputs[index] = args[0]

            return hook

        def keep_output(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            inputs[-1] = output

        handles = [block.register_forward_pre_hook(keep_input(index)) for index, block in enumerate(self.blocks)]
        handles.append(self.blocks[-1].register_forward_hook(keep_output))
        try:
            features = self.model.forward_head(self.model.forward_features(x), pre_logits=True)
        finally:
            for handle in handles:
                handle.remove()
        if any(tensor is None for tensor in inputs):
            raise DiagError(f"cannot ablate {model_name(self.model)}: forward_features does not run every block")
        return IntactPass(torch.stack(inputs), Outputs(features, self.classifier(features)))

    def check(self, x: torch.Tensor, intact: IntactPass) -> None:
        """A one-line DiagError unless running the blocks from block 0's input gives the model's own logits."""
        rerun = self.run(intact.inputs[0], 0)
        logits = self.model(x)
        scale = float(logits.abs().max()) or 1.0
        if rerun.logits.shape != logits.shape or not torch.allclose(rerun.logits, logits, atol=1e-4 * scale, rtol=0):
            raise DiagError(
                f"cannot ablate {model_name(self.model)}: its blocks do not run one after another on the tokens alone "
                "(they need more than the tokens, e.g. rotary or relative position biases), so a block cannot be "
                "removed by skipping it"
            )

    def run(self, tokens: torch.Tensor, start: int) -> Outputs:
        """Blocks ``start``.. on ``tokens`` (B, T, D), then the final norm and the head."""
        for block in self.blocks[start:]:
            tokens = block(tokens)
        features = self.model.forward_head(self.model.norm(tokens), pre_logits=True)
        return Outputs(features, self.classifier(features))

    def run_variants(
        self, intact: IntactPass, variants: Sequence[Variant], head_means: torch.Tensor | None = None
    ) -> Outputs:
        """Variants that share their ``start``, stacked: features (V, B, F) and logits (V, B, C).

        ``head_means``: (L, T, H * head_dim) mean input of each block's ``attn.proj`` over the
        image set, needed by MEAN_HEAD.
        """
        starts = {variant.start for variant in variants}
        if len(starts) != 1:
            raise ValueError(f"variants run together must share their start block, got {sorted(starts)}")
        size = intact.inputs.shape[1]
        tokens = torch.cat([intact.inputs[variant.input_block] for variant in variants])
        with self._intervening(variants, size, head_means):
            out = self.run(tokens, starts.pop())
        return Outputs(out.features.unflatten(0, (len(variants), size)), out.logits.unflatten(0, (len(variants), size)))

    @contextmanager
    def _intervening(self, variants: Sequence[Variant], size: int, head_means: torch.Tensor | None) -> Iterator[None]:
        """Hooks that apply each variant's actions to its rows ``[v * size, (v + 1) * size)``."""
        by_block: dict[int, list[tuple[slice, Action]]] = defaultdict(list)
        for slot, variant in enumerate(variants):
            for action in variant.actions:
                by_block[action.block].append((slice(slot * size, (slot + 1) * size), action))
        handles: list[RemovableHandle] = []
        fused: list[tuple[nn.Module, bool]] = []
        kept_maps: dict[int, torch.Tensor] = {}  # first row of a variant -> the maps it recorded
        try:
            for block, items in by_block.items():
                handles.extend(self._attach(block, items, kept_maps, head_means, fused))
            yield
        finally:
            for handle in handles:
                handle.remove()
            for attn, flag in fused:
                attn.fused_attn = flag

    def _attach(
        self,
        block: int,
        items: list[tuple[slice, Action]],
        kept_maps: dict[int, torch.Tensor],
        head_means: torch.Tensor | None,
        fused: list[tuple[nn.Module, bool]],
    ) -> list[RemovableHandle]:
        attn = self.attns[block]
        kinds: dict[str, list[tuple[slice, Action]]] = defaultdict(list)
        for rows, action in items:
            kinds[action.kind].append((rows, action))
        handles = []
        if SKIP_BLOCK in kinds:
            rows_skipped = [rows for rows, _ in kinds[SKIP_BLOCK]]
            handles.append(self.blocks[block].register_forward_hook(_rows_from_input(rows_skipped)))
        if ZERO_ATTENTION in kinds:
            handles.append(attn.register_forward_hook(_rows_zeroed([rows for rows, _ in kinds[ZERO_ATTENTION]])))
        heads = kinds.get(ZERO_HEAD, []) + kinds.get(MEAN_HEAD, [])
        if heads:
            if any(action.kind == MEAN_HEAD for _, action in heads) and head_means is None:
                raise ValueError("MEAN_HEAD needs head_means")
            means = head_means[block] if head_means is not None else None
            handles.append(attn.proj.register_forward_pre_hook(_heads_replaced(heads, head_width(attn), means)))
        swaps = kinds.get(RECORD_MAPS, []) + kinds.get(TRANSPLANT_MAPS, [])
        if swaps:
            module = maps_module(attn)
            if module is None:
                raise DiagError(f"cannot swap the maps of block {block}: {type(attn).__name__} has no maps point")
            if getattr(attn, "fused_attn", False):
                fused.append((attn, attn.fused_attn))
                attn.fused_attn = False  # the fused kernel never materialises the maps
            handles.append(module.register_forward_hook(_maps_swapped(swaps, kept_maps)))
        if PLAIN_ATTENTION in kinds:
            if not mixes_with_theta(attn):
                raise DiagError(f"block {block} has no Re-attention to switch off")
            handles.extend(_plain_attention(attn, [rows for rows, _ in kinds[PLAIN_ATTENTION]]))
        return handles


def _rows_from_input(rows: list[slice]):
    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        output = output.clone()
        for part in rows:
            output[part] = args[0][part]
        return output

    return hook


def _rows_zeroed(rows: list[slice]):
    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        output = output.clone()
        for part in rows:
            output[part] = 0
        return output

    return hook


def _heads_replaced(items: list[tuple[slice, Action]], width: int, means: torch.Tensor | None):
    """Pre-hook of ``attn.proj``: head h's channels ``[h * width, (h + 1) * width)`` replaced in the variant's rows."""

    def hook(module: nn.Module, args: tuple) -> tuple:
        x = args[0].clone()
        for part, action in items:
            channels = slice(action.head * width, (action.head + 1) * width)
            x[part, :, channels] = 0 if action.kind == ZERO_HEAD else means[:, channels].to(x.dtype)
        return (x, *args[1:])

    return hook


def _maps_swapped(items: list[tuple[slice, Action]], kept_maps: dict[int, torch.Tensor]):
    """Forward hook of a maps module: keep the maps of RECORD_MAPS rows, put them in TRANSPLANT_MAPS rows."""

    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        replaced = output
        for part, action in items:
            if action.kind == RECORD_MAPS:
                kept_maps[part.start] = output[part].clone()
            else:
                if replaced is output:
                    replaced = output.clone()
                replaced[part] = kept_maps.pop(part.start)
        return replaced

    return hook


def _plain_attention(attn: ReAttention, rows: list[slice]) -> list[RemovableHandle]:
    """Hooks on ``hook_pre`` and ``hook_post`` of a Re-attention block: in ``rows`` the softmax maps
    (after attention dropout, which is off in eval mode) multiply V instead of the mixed maps."""
    softmax: dict[int, torch.Tensor] = {}

    def keep(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        for part in rows:
            softmax[part.start] = output[part]

    def put(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        output = output.clone()
        for part in rows:
            output[part] = attn.attn_drop(softmax.pop(part.start))
        return output

    return [attn.hook_pre.register_forward_hook(keep), attn.hook_post.register_forward_hook(put)]
