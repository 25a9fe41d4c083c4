"""Read attention maps and block outputs out of a ViT/DeepViT forward pass.

Works on every model whose blocks' attention modules have a map reader
(``deepvit_diag.readers``: timm's ``Attention`` in ``vit_*``/``deit_*``/DINOv2/CLIP/FlexiViT
models, deepvit-diag's ``ReAttention``, EVA/EVA-02 rotary attention, BEiT, timm's relative-position
ViTs and CaiT's talking-heads and class attention) **with fused attention left on**: nothing global
is switched (no ``timm.layers.set_fused_attn``), no module is replaced, and the logits are those
of the untouched model. Only forward hooks are added, and they are removed again when the
recorder closes, also on exceptions. Each reader reads or recomputes a block's softmax maps
("pre", docs/metrics.md) the way the module's own non-fused path computes them.

"post" maps (what multiplies V) differ from "pre" only in blocks that mix heads after the
softmax: Re-attention (after Θ, Norm and scale) and CaiT's talking heads (after ``proj_w``).
When no captured block mixes heads, ``post`` *is* ``pre`` (the same tensor, no copy).

Each forward writes straight into per-forward buffers of shape (L, B, H, T, T) and
(L, B, T, D) (or, with ``reuse_buffers``, into the previous forward's), so no per-block
list is stacked afterwards and nothing leaves the device. With ``maps=False`` the maps are
not built at all: each block's queries and keys go into (L, B, H, T, d) buffers, with the
rest of its ``AttentionScores`` (biases, head mixing), and ``metrics.score_statistics``
recomputes the maps from them a chunk at a time (what the analysis does: O(T) memory per
head and block instead of O(T^2)).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch
from PIL import Image
from torch import nn
from torch.utils.hooks import RemovableHandle

from .attention_scores import AttentionScores
from .errors import DiagError
from .introspection import (
    attention_module,
    class_attention_modules,
    head_mixing,
    model_device,
    resolve_blocks,
    transformer_blocks,
)
from .preprocessing import as_batch, check_input_size
from .readers import CLASS_ATTENTION_READERS, reader_for


@dataclass
class AttentionCapture:
    """Everything one forward pass recorded, stacked over the captured blocks.

    Attributes:
        pre: (L, B, H, T, T) softmax maps, ``pre[l, b, h, i, j]`` = weight of query i on key j;
            None when recorded without maps (``AttentionRecorder(maps=False)``).
        post: (L, B, H, T, T) maps that multiply V (after Theta, Norm and scale in
            Re-attention blocks, after ``proj_w`` in talking-heads blocks, equal to ``pre``
            elsewhere; the same tensor as ``pre`` when no captured block mixes heads);
            None when recorded without maps.
        hidden: (L, B, T, D) output tokens of every captured block, or None if not recorded.
        logits: the model's output, or None when the caller ran the forward itself.
        blocks: 0-based block index of each of the L entries.
        mixing_blocks: the captured blocks that mix heads after the softmax (0-based).
        class_attention: (C, B, H, 1 + T) maps of the class token's query in the C blocks that
            update only the class token (CaiT's ``blocks_token_only``; key 0 is the class token
            itself), or None for models without them.
        scores: what each captured block's maps are computed from (queries, keys, biases,
            head mixing; ``deepvit_diag.metrics.scores``), or None when the maps were kept.
    """

    pre: torch.Tensor | None
    post: torch.Tensor | None
    hidden: torch.Tensor | None
    logits: torch.Tensor | None
    blocks: list[int]
    mixing_blocks: list[int]
    class_attention: torch.Tensor | None = None
    scores: list[AttentionScores] | None = None


class _StackedBuffer:
    """A (L, ...) tensor allocated at the first write of a forward and filled slot by slot.

    With ``reuse``, the next forward writes into the same tensor when shape, dtype and
    device still fit (no fresh allocation: on the CPU each one costs page faults).
    """

    def __init__(self, name: str, blocks: list[int], dtype: torch.dtype | None, reuse: bool = False):
        self.name = name
        self.blocks = blocks
        self.dtype = dtype
        self.reuse = reuse
        self.tensor: torch.Tensor | None = None
        self.reset()

    def reset(self) -> None:
        if not self.reuse:
            self.tensor = None
        self.started = False
        self.written = [False] * len(self.blocks)

    def release(self) -> None:
        self.tensor = None
        self.reset()

    def write(self, slot: int, value: torch.Tensor) -> None:
        value = value.detach()
        if not self.started:
            shape, dtype = (len(self.blocks), *value.shape), self.dtype or value.dtype
            tensor = self.tensor
            if tensor is None or tensor.shape != shape or tensor.dtype != dtype or tensor.device != value.device:
                self.tensor = torch.empty(shape, dtype=dtype, device=value.device)
            self.started = True
        elif value.shape != self.tensor.shape[1:]:
            raise DiagError(
                f"block {self.blocks[slot]} produced {self.name} of shape {tuple(value.shape)}, "
                f"other blocks {tuple(self.tensor.shape[1:])}; blocks must agree to be stacked"
            )
        self.tensor[slot].copy_(value)
        self.written[slot] = True

    def collect(self) -> torch.Tensor:
        missing = [block for block, done in zip(self.blocks, self.written) if not done]
        if not self.started or missing:
            raise DiagError(
                f"no {self.name} were recorded for block(s) {missing or self.blocks}; "
                "run one forward pass of the model inside the recorder before take()"
            )
        return self.tensor


class _BlockSink:
    """Where a block's reader puts its scores: the maps computed from them, in slot ``slot`` of the pre
    buffer and of the post buffer (when one is kept: some block of the model mixes heads)."""

    def __init__(self, pre: _StackedBuffer, post: _StackedBuffer | None, slot: int):
        self._pre, self._post, self._slot = pre, post, slot

    def scores(self, scores: AttentionScores) -> None:
        pre = scores.pre()
        self._pre.write(self._slot, pre)
        if self._post is not None:
            self._post.write(self._slot, scores.post(pre))

    def pre(self, maps: torch.Tensor) -> None:
        raise AssertionError("block readers hand over scores")


class _ScoresSink:
    """Where a block's reader puts its scores when no map is kept: queries and keys in slot ``slot`` of
    the stacked (L, B, H, T, d) buffers, the rest (biases, head mixing) in ``rest[slot]``."""

    def __init__(self, queries: _StackedBuffer, keys: _StackedBuffer, rest: list, slot: int):
        self._queries, self._keys, self._rest, self._slot = queries, keys, rest, slot

    def scores(self, scores: AttentionScores) -> None:
        self._queries.write(self._slot, scores.q)
        self._keys.write(self._slot, scores.k)
        # Without q and k, so that the projections' outputs they view are not kept alive.
        self._rest[self._slot] = replace(scores, q=None, k=None)

    def pre(self, maps: torch.Tensor) -> None:
        raise AssertionError("block readers hand over scores")


class _ClassSink:
    """Where a class-attention reader puts its (B, H, 1, T) maps, stored as (B, H, T)."""

    def __init__(self, buffer: _StackedBuffer, slot: int):
        self._buffer, self._slot = buffer, slot

    def scores(self, scores: AttentionScores) -> None:
        raise AssertionError("class attention readers hand over maps")

    def pre(self, maps: torch.Tensor) -> None:
        self._buffer.write(self._slot, maps[:, :, 0])


class AttentionRecorder:
    """Context manager recording attention maps (and block outputs) of every forward.

    ::

        with AttentionRecorder(model) as recorder:
            logits = model(x)
            capture = recorder.take()      # AttentionCapture, logits=None

    Call ``take()`` after each forward: the next forward starts fresh buffers (with
    ``reuse_buffers``, it writes into the tensors of the last capture instead, so a capture
    is valid only until the next forward; for streaming loops). Maps keep the dtype they
    are computed in unless ``store_dtype`` is given (bf16 halves their memory under
    autocast). Use it under ``torch.no_grad()``/``inference_mode``: the recorded tensors
    are detached.

    Args:
        model: a ViT/DeepViT (see the module docstring for what can be read).
        blocks: 0-based block indices to record (default all); restricting saves memory.
        hidden: also record each captured block's output tokens.
        store_dtype: dtype of the recorded tensors (default: as computed).
        reuse_buffers: let every forward overwrite the previous capture's tensors.
        maps: record the maps (L, B, H, T, T); with False, record each block's scores
            (queries and keys, O(T) memory per head instead of O(T^2)) and leave pre and
            post None.
    """

    def __init__(
        self,
        model: nn.Module,
        blocks: Sequence[int] | None = None,
        hidden: bool = True,
        store_dtype: torch.dtype | None = None,
        reuse_buffers: bool = False,
        maps: bool = True,
    ):
        self.model = model
        self.blocks = resolve_blocks(model, blocks)
        # Resolved here so an unreadable model fails before any hook is attached.
        self._attns = [attention_module(model, index) for index in self.blocks]
        self._class_attns = class_attention_modules(model)
        self.mixing_blocks = [b for b, attn in zip(self.blocks, self._attns) if head_mixing(attn)]
        self.record_hidden = hidden
        layout = {"blocks": self.blocks, "dtype": store_dtype, "reuse": reuse_buffers}
        self.record_maps = maps
        if maps:
            self._pre = _StackedBuffer("attention maps", **layout)
            self._post = _StackedBuffer("head-mixed maps", **layout) if self.mixing_blocks else None
        else:
            self._pre = _StackedBuffer("queries", **layout)
            self._post = _StackedBuffer("keys", **layout)
        self._scores: list[AttentionScores | None] = [None] * len(self.blocks)
        self._hidden = _StackedBuffer("block outputs", **layout) if hidden else None
        self._class = None
        if self._class_attns:
            class_blocks = list(range(len(self._class_attns)))
            self._class = _StackedBuffer("class-attention maps", class_blocks, store_dtype, reuse_buffers)
        self._handles: list[RemovableHandle] = []

    def __enter__(self) -> AttentionRecorder:
        try:
            self._attach()
        except BaseException:
            self._detach()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._detach()

    def take(self) -> AttentionCapture:
        """The last forward's recordings (logits=None); the recorder starts afresh."""
        pre = self._pre.collect()
        post = self._post.collect() if self._post is not None else pre
        scores = None
        if not self.record_maps:
            scores = [replace(rest, q=q, k=k) for rest, q, k in zip(self._scores, pre, post)]
            pre = post = None
        capture = AttentionCapture(
            pre=pre,
            post=post,
            scores=scores,
            hidden=self._hidden.collect() if self._hidden is not None else None,
            logits=None,
            blocks=list(self.blocks),
            mixing_blocks=list(self.mixing_blocks),
            class_attention=self._class.collect() if self._class is not None else None,
        )
        self._reset()
        return capture

    @property
    def _buffers(self) -> tuple[_StackedBuffer, ...]:
        return tuple(buffer for buffer in (self._pre, self._post, self._hidden, self._class) if buffer is not None)

    def _reset(self, *_: object) -> None:
        for buffer in self._buffers:
            buffer.reset()

    def _attach(self) -> None:
        self._handles.append(self.model.register_forward_pre_hook(self._reset))
        model_blocks = transformer_blocks(self.model)
        for slot, (index, attn) in enumerate(zip(self.blocks, self._attns)):
            if self.record_maps:
                sink = _BlockSink(self._pre, self._post, slot)
            else:
                sink = _ScoresSink(self._pre, self._post, self._scores, slot)
            self._handles.extend(reader_for(attn).attach(attn, sink))
            if self._hidden is not None:
                self._handles.append(model_blocks[index].register_forward_hook(self._on_block_output(slot)))
        for slot, attn in enumerate(self._class_attns):
            sink = _ClassSink(self._class, slot)
            self._handles.extend(reader_for(attn, CLASS_ATTENTION_READERS).attach(attn, sink))

    def _detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for buffer in self._buffers:
            buffer.release()

    def _on_block_output(self, slot: int) -> Callable:
        def hook(module: nn.Module, args: tuple, output: object) -> None:
            if not isinstance(output, torch.Tensor):
                raise DiagError(
                    f"block {self.blocks[slot]} returned {type(output).__name__}, expected a token tensor (B, T, D)"
                )
            self._hidden.write(slot, output)

        return hook


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Evaluation mode (dropout off, BatchNorm running stats) restored module by module."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def extract_attention(
    model: nn.Module,
    images: torch.Tensor | Sequence[Image.Image],
    *,
    blocks: Sequence[int] | None = None,
) -> AttentionCapture:
    """One forward pass in eval mode with every map recorded.

    Args:
        model: a ViT/DeepViT; fused attention may stay on, the model is left unchanged.
        images: a preprocessed (B, C, H, W) tensor or PIL images (preprocessed with the
            model's own timm data config).
        blocks: 0-based block indices to capture (default all).
    Returns:
        ``AttentionCapture`` on the model's device, with the logits of the forward pass.
    """
    x = as_batch(model, images)
    with eval_mode(model), torch.no_grad(), AttentionRecorder(model, blocks=blocks) as recorder:
        check_input_size(model, x)  # a one-line error, where timm would assert inside the forward
        logits = model(x.to(model_device(model)))
        capture = recorder.take()
    return replace(capture, logits=logits)
