"""Attention capture: parity with timm's AttentionExtract and with hand-computed maps,
while fused attention stays on and the model is left exactly as it was."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import sharp_timm_model
from PIL import Image
from timm.data import create_transform, resolve_data_config
from timm.utils import AttentionExtract
from torch import nn

import deepvit_diag.models  # noqa: F401  (registers the presets)
from deepvit_diag.capture import AttentionRecorder, extract_attention
from deepvit_diag.errors import DiagError

TINY = dict(embed_dim=32, num_heads=4, img_size=32, patch_size=8, num_classes=10)


def tiny_timm_vit(**overrides) -> nn.Module:
    model = sharp_timm_model("vit_tiny_patch16_224", **{"depth": 3, **TINY, **overrides})
    assert all(block.attn.fused_attn for block in model.blocks), "precondition: fused attention on"
    return model


def tiny_deepvit(**overrides) -> nn.Module:
    model = sharp_timm_model("deepvit16", **{"depth": 3, **TINY, **overrides})
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # non-trivial BatchNorm statistics and affine parameters
        for block in model.blocks:
            if block.attn.apply_transform:
                norm = block.attn.var_norm
                norm.running_mean.copy_(torch.randn(4, generator=generator) * 0.1)
                norm.running_var.copy_(torch.rand(4, generator=generator) + 0.5)
                norm.weight.copy_(torch.rand(4, generator=generator) + 0.5)
                norm.bias.copy_(torch.randn(4, generator=generator) * 0.1)
    return model


def images(n: int = 5, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def module_snapshot(model: nn.Module) -> list[tuple[str, int, bool]]:
    return [(name, id(module), module.training) for name, module in model.named_modules()]


def unfused_copy(model: nn.Module) -> nn.Module:
    twin = copy.deepcopy(model)
    for block in twin.blocks:
        block.attn.fused_attn = False
    return twin


def test_timm_vit_pre_maps_equal_attention_extract_with_fused_attention_on():
    model, x = tiny_timm_vit(), images()
    with torch.no_grad():
        plain_logits = model(x)
    before = module_snapshot(model)

    capture = extract_attention(model, x)

    reference = AttentionExtract(unfused_copy(model), method="fx")(x)
    assert list(reference) == [f"blocks.{i}.attn.softmax" for i in range(3)]
    expected = torch.stack(list(reference.values()))
    assert capture.pre.shape == (3, 5, 4, 17, 17)
    torch.testing.assert_close(capture.pre, expected, rtol=1e-5, atol=1e-6)
    assert capture.post is capture.pre
    assert torch.equal(capture.logits, plain_logits)
    assert capture.blocks == [0, 1, 2] and capture.mixing_blocks == []
    assert all(block.attn.fused_attn for block in model.blocks)
    assert module_snapshot(model) == before
    assert hook_count(model) == 0


def test_hidden_is_every_block_output():
    model, x = tiny_timm_vit(), images(2)
    capture = extract_attention(model, x)
    with torch.no_grad():
        tokens = model.patch_embed(x)
        tokens = model.norm_pre(model.patch_drop(model._pos_embed(tokens)))
        for index, block in enumerate(model.blocks):
            tokens = block(tokens)
            torch.testing.assert_close(capture.hidden[index], tokens)


def test_prefix_tokens_are_captured():
    model = tiny_timm_vit(reg_tokens=2)
    capture = extract_attention(model, images(2))
    expected = torch.stack(list(AttentionExtract(unfused_copy(model), method="fx")(images(2)).values()))
    assert capture.pre.shape[-1] == 3 + 16
    torch.testing.assert_close(capture.pre, expected, rtol=1e-5, atol=1e-6)


def test_non_fused_timm_attention_reads_the_same_maps():
    model, x = tiny_timm_vit(), images()
    fused = extract_attention(model, x)
    unfused = extract_attention(unfused_copy(model), x)
    torch.testing.assert_close(unfused.pre, fused.pre, rtol=1e-5, atol=1e-6)


def _mix_by_hand(attn, pre: torch.Tensor) -> torch.Tensor:
    """Theta (1x1 conv with bias), BatchNorm in eval mode and the scale, written out."""
    weight = attn.reatten_matrix.weight[:, :, 0, 0]  # (out head g, in head h)
    mixed = torch.einsum("gh,bhij->bgij", weight, pre) + attn.reatten_matrix.bias.view(1, -1, 1, 1)
    norm = attn.var_norm
    shape = (1, -1, 1, 1)
    normalised = (mixed - norm.running_mean.view(shape)) / torch.sqrt(norm.running_var.view(shape) + norm.eps)
    return (normalised * norm.weight.view(shape) + norm.bias.view(shape)) * attn.reatten_scale


def _softmax_by_hand(block, tokens: torch.Tensor) -> torch.Tensor:
    """Block input tokens -> softmax maps, without touching the attention module's forward."""
    attn, s = block.attn, block.scale_adjustment
    qkv = block.attn.qkv(block.norm1(tokens * s))
    batch, num_tokens, _ = qkv.shape
    q, k, _ = qkv.reshape(batch, num_tokens, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    return torch.softmax(q @ k.transpose(-1, -2) / attn.head_dim**0.5, dim=-1)


@pytest.mark.parametrize("transform_scale", [False, True])
def test_deepvit_post_equals_theta_norm_scale_applied_to_pre(transform_scale):
    model, x = tiny_deepvit(transform_scale=transform_scale), images()
    with torch.no_grad():
        plain_logits = model(x)
    capture = extract_attention(model, x)
    assert capture.mixing_blocks == [0, 1, 2]
    assert torch.equal(capture.logits, plain_logits)
    with torch.no_grad():
        for index, block in enumerate(model.blocks):
            torch.testing.assert_close(capture.post[index], _mix_by_hand(block.attn, capture.pre[index]))
            if index:  # pre itself, recomputed from the previous block's output
                torch.testing.assert_close(capture.pre[index], _softmax_by_hand(block, capture.hidden[index - 1]))
    torch.testing.assert_close(capture.pre.sum(-1), torch.ones(3, 5, 4, 17))
    assert not torch.allclose(capture.post, capture.pre)


def test_mixed_deepvit_plain_blocks_stay_fused_and_post_equals_pre_there():
    model, x = tiny_deepvit(apply_transform=[False, True, False]), images()
    assert model.blocks[0].attn.fused_attn and model.blocks[2].attn.fused_attn
    capture = extract_attention(model, x)
    reference = extract_attention(unfused_copy(model), x)  # plain blocks through hook_pre instead
    assert capture.mixing_blocks == [1]
    torch.testing.assert_close(capture.pre, reference.pre, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(capture.post[[0, 2]], capture.pre[[0, 2]])
    with torch.no_grad():
        torch.testing.assert_close(capture.post[1], _mix_by_hand(model.blocks[1].attn, capture.pre[1]))
    assert model.blocks[0].attn.fused_attn and model.blocks[2].attn.fused_attn


def test_block_subset():
    model, x = tiny_deepvit(), images(3)
    full = extract_attention(model, x)
    subset = extract_attention(model, x, blocks=[-1, 0])
    assert subset.blocks == [0, 2]
    assert subset.pre.shape[0] == subset.post.shape[0] == subset.hidden.shape[0] == 2
    for tensor in ("pre", "post", "hidden"):
        torch.testing.assert_close(getattr(subset, tensor), getattr(full, tensor)[[0, 2]])
    with pytest.raises(DiagError, match="out of range"):
        extract_attention(model, x, blocks=[3])


def test_training_mode_is_restored_and_batchnorm_statistics_untouched():
    model = tiny_deepvit().train()
    model.blocks[1].attn.var_norm.eval()  # a mixed state must come back as it was
    before = module_snapshot(model)
    running_mean = model.blocks[0].attn.var_norm.running_mean.clone()
    extract_attention(model, images())
    assert module_snapshot(model) == before
    assert torch.equal(model.blocks[0].attn.var_norm.running_mean, running_mean)


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(32, 4, batch_first=True)


class _ForeignModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([_Block()])


def test_uncapturable_models_get_a_diag_error_naming_the_module():
    with pytest.raises(DiagError, match="MultiheadAttention"):
        extract_attention(_ForeignModel(), images(1))
    with pytest.raises(DiagError, match="Linear"):
        extract_attention(nn.Linear(3, 3), images(1))
    assert hook_count(_ForeignModel()) == 0


def test_hooks_are_removed_when_the_forward_fails(monkeypatch):
    model = tiny_timm_vit()
    with pytest.raises(DiagError, match=r"images have shape \(C, H, W\) = \(3, 64, 64\)"):  # checked, not asserted
        extract_attention(model, torch.randn(1, 3, 64, 64))
    assert hook_count(model) == 0

    def broken(x):
        raise RuntimeError("the second block fails")

    monkeypatch.setattr(model.blocks[1].mlp, "forward", broken)  # fails after the first block's hooks ran
    with pytest.raises(RuntimeError, match="the second block fails"):
        extract_attention(model, images(1))
    assert hook_count(model) == 0
    with pytest.raises(RuntimeError, match="boom"), AttentionRecorder(model):
        raise RuntimeError("boom")
    assert hook_count(model) == 0


def test_recorder_starts_fresh_for_every_forward():
    model = tiny_deepvit()
    with torch.no_grad(), AttentionRecorder(model, hidden=False) as recorder:
        model(images(4))
        first = recorder.take()
        model(images(2, seed=1))
        second = recorder.take()
        with pytest.raises(DiagError, match="no attention maps"):
            recorder.take()
    assert first.pre.shape[1] == 4 and second.pre.shape[1] == 2 and second.hidden is None
    torch.testing.assert_close(second.pre, extract_attention(model, images(2, seed=1)).pre)


def test_reused_buffers_are_overwritten_by_the_next_forward_and_released_on_exit():
    model = tiny_deepvit()
    with torch.no_grad(), AttentionRecorder(model, reuse_buffers=True) as recorder:
        model(images(4))
        first = recorder.take()
        first_pointers = [first.pre.data_ptr(), first.post.data_ptr(), first.hidden.data_ptr()]
        model(images(4, seed=1))
        second = recorder.take()
        assert [second.pre.data_ptr(), second.post.data_ptr(), second.hidden.data_ptr()] == first_pointers
        model(images(2, seed=2))  # another batch size: fresh tensors of the new shape
        third = recorder.take()
        buffers = [recorder._pre, recorder._post, recorder._hidden]
    expected = extract_attention(model, images(4, seed=1))
    for kind in ("pre", "post", "hidden"):
        torch.testing.assert_close(getattr(second, kind), getattr(expected, kind))
    assert third.pre.shape[1] == 2
    torch.testing.assert_close(third.post, extract_attention(model, images(2, seed=2)).post)
    assert all(buffer.tensor is None for buffer in buffers) and hook_count(model) == 0


def test_store_dtype_keeps_maps_in_bfloat16():
    model = tiny_timm_vit()
    with torch.no_grad(), AttentionRecorder(model, store_dtype=torch.bfloat16) as recorder:
        model(images(2))
        capture = recorder.take()
    assert capture.pre.dtype == capture.hidden.dtype == torch.bfloat16
    torch.testing.assert_close(capture.pre.float(), extract_attention(model, images(2)).pre, rtol=1e-2, atol=4e-3)


def test_pil_images_are_preprocessed_with_the_model_config():
    model = tiny_deepvit()
    rng = np.random.default_rng(0)
    pictures = [
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)),
        Image.fromarray(rng.integers(0, 255, (30, 30), dtype=np.uint8), mode="L"),
    ]
    from_pil = extract_attention(model, pictures)
    transform = create_transform(**resolve_data_config({}, model=model))  # timm's eval transform, written out
    from_tensor = extract_attention(model, torch.stack([transform(picture.convert("RGB")) for picture in pictures]))
    torch.testing.assert_close(from_pil.pre, from_tensor.pre)
    with pytest.raises(DiagError, match="tensor or a non-empty list"):
        extract_attention(model, [])
