"""The paper's models: parameter counts, timm registration, and DeepViT blocks against a brute-force
re-implementation of the official formula (zhoudaquan/dvit_repo, models/layers.py), written here
from the state dict alone."""

from __future__ import annotations

import math

import pytest
import timm
import torch
import torch.nn.functional as F

from deepvit_diag.models import PRESETS, DeepVisionTransformer

HEADS = 12


@pytest.fixture(scope="module")
def deepvit32():
    return timm.create_model("deepvit32")


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("depth, millions", [(16, 24.4), (24, 36.3), (32, 48.1)])
def test_parameter_counts_at_1000_classes(depth, millions, deepvit32):
    with torch.device("meta"):  # timm's VisionTransformer builds without memory
        vit = timm.create_model(f"vit{depth}")
    deepvit = deepvit32 if depth == 32 else timm.create_model(f"deepvit{depth}")
    assert round(n_params(vit) / 1e6, 1) == millions
    assert round(n_params(deepvit) / 1e6, 1) == millions
    # Re-attention adds exactly Conv2d(H, H, 1) with bias and BatchNorm2d(H)'s affine pair per block.
    assert n_params(deepvit) - n_params(vit) == depth * (HEADS * HEADS + HEADS + 2 * HEADS)


def test_timm_create_model_builds_the_presets(deepvit32, images):
    assert isinstance(deepvit32, DeepVisionTransformer)
    assert len(deepvit32.blocks) == 32 and all(b.attn.apply_transform for b in deepvit32.blocks)
    assert deepvit32.arch == PRESETS["deepvit32"] | {"pretrained_cfg": deepvit32.arch["pretrained_cfg"]}
    small = timm.create_model("deepvit_s", depth=6, embed_dim=32, num_heads=4, img_size=32, patch_size=8, num_classes=3)
    assert [b.attn.apply_transform for b in small.blocks] == [False] + [True] * 5  # still the last 5 blocks
    assert small.eval()(images).shape == (2, 3)


# ---------------------------------------------------------------- brute-force reference


def layer_norm(x, weight, bias, eps):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def batch_norm_eval(x, p, prefix, eps=1e-5):
    """Eval-mode BatchNorm over axis 1 with the stored running statistics."""
    shape = [1, -1] + [1] * (x.ndim - 2)
    mean, var = p[prefix + "running_mean"].view(shape), p[prefix + "running_var"].view(shape)
    return (x - mean) / torch.sqrt(var + eps) * p[prefix + "weight"].view(shape) + p[prefix + "bias"].view(shape)


def softmax(x):
    e = torch.exp(x - x.max(-1, keepdim=True).values)
    return e / e.sum(-1, keepdim=True)


def gelu(x):
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def linear(x, p, prefix):
    out = x @ p[prefix + "weight"].T
    return out + p[prefix + "bias"] if prefix + "bias" in p else out


def reference_attention(x, p, pre, cfg, reattention):
    """softmax(q k^T / sqrt(d)) per head; in Re-attention blocks Theta mixes the maps across heads
    (Conv 1x1 with bias, or the vit-pytorch H x H parameter), then Norm, then the optional scale."""
    heads = cfg["num_heads"]
    width = x.shape[-1]
    head_dim = width // heads
    qkv = linear(x, p, pre + "qkv.")
    q, k, v = qkv[..., :width], qkv[..., width : 2 * width], qkv[..., 2 * width :]
    cols = [slice(h * head_dim, (h + 1) * head_dim) for h in range(heads)]
    maps = [softmax(q[..., c] @ k[..., c].transpose(-1, -2) * head_dim**-0.5) for c in cols]
    if reattention:
        if cfg.get("theta", "conv") == "conv":
            w, b = p[pre + "reatten_matrix.weight"][:, :, 0, 0], p[pre + "reatten_matrix.bias"]  # (out, in)
            mixed = torch.stack([sum(w[g, h] * maps[h] for h in range(heads)) + b[g] for g in range(heads)], 1)
            mixed = batch_norm_eval(mixed, p, pre + "var_norm.")
        else:
            theta = p[pre + "reattn_weights"]  # (in, out)
            mixed = torch.stack([sum(theta[h, g] * maps[h] for h in range(heads)) for g in range(heads)], -1)
            ln = pre + "reattn_norm.norm."
            mixed = layer_norm(mixed, p[ln + "weight"], p[ln + "bias"], 1e-5).permute(0, 3, 1, 2)
        scale = head_dim**-0.5 if cfg.get("transform_scale") else 1.0
        maps = [mixed[:, g] * scale for g in range(heads)]
    out = torch.cat([maps[h] @ v[..., c] for h, c in enumerate(cols)], -1)
    return linear(out, p, pre + "proj.")


def reference_patch_embed(x, p, cfg):
    if cfg.get("embed_layer") == "cnn":
        x = torch.relu(
            batch_norm_eval(F.conv2d(x, p["patch_embed.conv1.weight"], stride=2, padding=3), p, "patch_embed.bn1.")
        )
        x = torch.relu(batch_norm_eval(F.conv2d(x, p["patch_embed.conv2.weight"], padding=1), p, "patch_embed.bn2."))
        x = F.conv2d(x, p["patch_embed.proj.weight"], p["patch_embed.proj.bias"], stride=cfg["patch_size"] // 2)
        return x.flatten(2).transpose(1, 2)
    patch, grid = cfg["patch_size"], cfg["img_size"] // cfg["patch_size"]
    w, b = p["patch_embed.proj.weight"], p["patch_embed.proj.bias"]
    tokens = [
        torch.einsum("bcij,dcij->bd", x[:, :, gy * patch : (gy + 1) * patch, gx * patch : (gx + 1) * patch], w) + b
        for gy in range(grid)
        for gx in range(grid)
    ]
    return torch.stack(tokens, 1)


def reference_forward(p, cfg, x):
    """Logits and every block's output, from the state dict ``p`` and the constructor arguments ``cfg``."""
    eps, s = 1e-6, cfg.get("scale_adjustment", 1.0)
    x = reference_patch_embed(x, p, cfg)
    x = torch.cat([p["cls_token"].expand(x.shape[0], -1, -1), x], 1) + p["pos_embed"]
    outputs = []
    for i, reattention in enumerate(cfg["apply_transform"]):
        pre = f"blocks.{i}."
        x = (
            x
            + reference_attention(
                layer_norm(x * s, p[pre + "norm1.weight"], p[pre + "norm1.bias"], eps),
                p,
                pre + "attn.",
                cfg,
                reattention,
            )
            / s
        )
        h = layer_norm(x * s, p[pre + "norm2.weight"], p[pre + "norm2.bias"], eps)
        x = x + linear(gelu(linear(h, p, pre + "mlp.fc1.")), p, pre + "mlp.fc2.") / s
        outputs.append(x)
    x = layer_norm(x, p["norm.weight"], p["norm.bias"], eps)
    return linear(x[:, 0], p, "head."), outputs


CONFIGS = {
    "deepvit-nb: conv patches, Re-attention everywhere": dict(apply_transform=[True] * 3),
    "deepvit-s: CNN stem, partial, transform_scale, scale 0.5": dict(
        depth=4,
        apply_transform=[False, False, True, True],
        embed_layer="cnn",
        transform_scale=True,
        scale_adjustment=0.5,
    ),
    "deepvit-l: CNN stem, partial, scale 0.5": dict(
        apply_transform=[False, True, True], embed_layer="cnn", scale_adjustment=0.5
    ),
    "vit-pytorch variant: Theta parameter + LayerNorm": dict(
        apply_transform=[True, False, True], theta="param", qkv_bias=False
    ),
}


@pytest.mark.parametrize("extra", CONFIGS.values(), ids=CONFIGS.keys())
def test_blocks_match_brute_force_formula(extra, tiny_model, images):
    model = tiny_model("deepvit", **extra).double()
    cfg = model.arch["kwargs"]
    p = {k: v.detach() for k, v in model.state_dict().items()}
    x = images.double()
    captured = []
    hooks = [b.register_forward_hook(lambda m, i, o: captured.append(o)) for b in model.blocks]
    with torch.no_grad():
        logits = model(x)
    for hook in hooks:
        hook.remove()
    expected_logits, expected_blocks = reference_forward(p, cfg, x)
    for i, (got, want) in enumerate(zip(captured, expected_blocks)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10, msg=f"block {i}")
    torch.testing.assert_close(logits, expected_logits, rtol=1e-10, atol=1e-10)
    if cfg.get("scale_adjustment", 1.0) != 1.0:  # the comparison is sensitive to the official extras
        plain_logits, _ = reference_forward(p, {**cfg, "scale_adjustment": 1.0}, x)
        assert (plain_logits - logits).abs().max() > 1e-3


def test_theta_rows_are_input_heads(tiny_model):
    """``attn.theta[h, g]`` is the weight of input head h in output head g (docs/metrics.md, Theta)."""
    attn = tiny_model("deepvit", apply_transform=True).blocks[0].attn
    maps = torch.rand(1, 4, 5, 5)
    mixed = torch.einsum("bhij,hg->bgij", maps, attn.theta) + attn.reatten_matrix.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(mixed, attn.reatten_matrix(maps))
