"""Read attention maps and block outputs out of a ViT/DeepViT forward pass.

Works on deepvit-diag's ``DeepVisionTransformer`` (``ReAttention``) and on timm models
whose blocks use ``timm.layers.Attention`` (``vit_*``, ``deit_*``) **with fused attention
left on**: nothing global is switched (no ``timm.layers.set_fused_attn``), no module is
replaced, and the logits are those of the untouched model. Only forward hooks are
added, and they are removed again when the recorder closes, also on exceptions.

How each block's softmax maps ("pre", docs/metrics.md) are read:

* a block that materialises its maps (every Re-attention block, and any attention with
  ``fused_attn`` off): a hook on the module the maps pass through - ``hook_pre`` /
  ``hook_post`` on ``ReAttention``, the input of ``attn_drop`` on timm's ``Attention``;
* a fused block (``F.scaled_dot_product_attention`` never builds the map): a hook on
  ``attn.qkv`` recomputes ``softmax(q_norm(q) k_norm(k)^T * scale)`` from the projection
  output, the same operations as the module's own non-fused path. Attention masks are
  not seen by that hook; ViT classification never passes one.

"post" maps (what multiplies V) differ from "pre" only in Re-attention blocks, where
they are read from ``hook_post`` (after Theta, Norm and scale). When no captured block
is a Re-attention block, ``post`` *is* ``pre`` (the same tensor, no copy).

Each forward writes straight into per-forward buffers of shape (L, B, H, T, T) and
(L, B, T, D) (or, with ``reuse_buffers``, into the previous forward's), so no per-block
list is stacked afterwards and nothing leaves the device.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch
from PIL import Image
from torch import nn
from torch.utils.hooks import RemovableHandle

from .errors import DiagError
from .introspection import attention_module, is_reattention, model_device, resolve_blocks, transformer_blocks
from .models.attention import ReAttention
from .preprocessing import as_batch, check_input_size


@dataclass
class AttentionCapture:
    """Everything one forward pass recorded, stacked over the captured blocks.

    Attributes:
        pre: (L, B, H, T, T) softmax maps, ``pre[l, b, h, i, j]`` = weight of query i on key j.
        post: (L, B, H, T, T) maps that multiply V (after Theta, Norm and scale in
            Re-attention blocks, equal to ``pre`` elsewhere; the same tensor as ``pre``
            when no captured block is a Re-attention block).
        hidden: (L, B, T, D) output tokens of every captured block, or None if not recorded.
        logits: the model's output, or None when the caller ran the forward itself.
        blocks: 0-based block index of each of the L entries.
        reattention_blocks: the captured blocks that apply Re-attention (0-based).
    """

    pre: torch.Tensor
    post: torch.Tensor
    hidden: torch.Tensor | None
    logits: torch.Tensor | None
    blocks: list[int]
    reattention_blocks: list[int]


def _softmax_from_qkv(attn: nn.Module, qkv: torch.Tensor) -> torch.Tensor:
    """The maps a fused block never builds, from its qkv projection output (B, T, 3 * H * d).

    Same operations, in the same order, as the non-fused path of timm's Attention.
    """
    batch, num_tokens, _ = qkv.shape
    q, k, _ = qkv.reshape(batch, num_tokens, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    return ((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)


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
    """

    def __init__(
        self,
        model: nn.Module,
        blocks: Sequence[int] | None = None,
        hidden: bool = True,
        store_dtype: torch.dtype | None = None,
        reuse_buffers: bool = False,
    ):
        self.model = model
        self.blocks = resolve_blocks(model, blocks)
        # Resolved here so an unreadable model fails before any hook is attached.
        self._attns = [attention_module(model, index) for index in self.blocks]
        self.reattention_blocks = [b for b, attn in zip(self.blocks, self._attns) if is_reattention(attn)]
        self.record_hidden = hidden
        layout = {"blocks": self.blocks, "dtype": store_dtype, "reuse": reuse_buffers}
        self._pre = _StackedBuffer("attention maps", **layout)
        self._post = _StackedBuffer("Re-attention maps", **layout) if self.reattention_blocks else None
        self._hidden = _StackedBuffer("block outputs", **layout) if hidden else None
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
        capture = AttentionCapture(
            pre=pre,
            post=self._post.collect() if self._post is not None else pre,
            hidden=self._hidden.collect() if self._hidden is not None else None,
            logits=None,
            blocks=list(self.blocks),
            reattention_blocks=list(self.reattention_blocks),
        )
        self._reset()
        return capture

    def _reset(self, *_: object) -> None:
        for buffer in (self._pre, self._post, self._hidden):
            if buffer is not None:
                buffer.reset()

    def _attach(self) -> None:
        self._handles.append(self.model.register_forward_pre_hook(self._reset))
        model_blocks = transformer_blocks(self.model)
        for slot, (index, attn) in enumerate(zip(self.blocks, self._attns)):
            self._attach_maps(slot, attn)
            if self._hidden is not None:
                self._handles.append(model_blocks[index].register_forward_hook(self._on_block_output(slot)))

    def _attach_maps(self, slot: int, attn: nn.Module) -> None:
        post_differs = self._post is not None
        if isinstance(attn, ReAttention) and (attn.apply_transform or not attn.fused_attn):
            self._handles.append(
                attn.hook_pre.register_forward_hook(
                    self._on_output(slot, also_post=post_differs and not attn.apply_transform)
                )
            )
            if attn.apply_transform:
                self._handles.append(attn.hook_post.register_forward_hook(self._on_output(slot, post=True)))
        elif not attn.fused_attn:  # timm Attention, non-fused: softmax maps enter attn_drop
            self._handles.append(attn.attn_drop.register_forward_hook(self._on_input(slot, also_post=post_differs)))
        else:
            self._handles.append(attn.qkv.register_forward_hook(self._on_qkv(slot, attn, also_post=post_differs)))

    def _detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for buffer in (self._pre, self._post, self._hidden):
            if buffer is not None:
                buffer.release()

    def _store(self, slot: int, maps: torch.Tensor, post: bool, also_post: bool) -> None:
        if post:
            self._post.write(slot, maps)
            return
        self._pre.write(slot, maps)
        if also_post:  # plain block in a model that also has Re-attention blocks
            self._post.write(slot, maps)

    def _on_output(self, slot: int, post: bool = False, also_post: bool = False) -> Callable:
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            self._store(slot, output, post, also_post)

        return hook

    def _on_input(self, slot: int, also_post: bool) -> Callable:
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            self._store(slot, args[0], False, also_post)

        return hook

    def _on_qkv(self, slot: int, attn: nn.Module, also_post: bool) -> Callable:
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            with torch.no_grad():
                self._store(slot, _softmax_from_qkv(attn, output), False, also_post)

        return hook

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
