"""head_mixing_matrices (docs/metrics.md): Theta, bias and Norm read from tiny models, checked by
recomputing each block's head mixing in numpy; distances against exhaustive search."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import timm
import torch
from conftest import sharp_timm_model
from torch import nn

from deepvit_diag.errors import DiagError
from deepvit_diag.metrics import HeadMixing, head_mixing_matrices
from deepvit_diag.models import build_model

HEADS = 4


def tiny_deepvit(theta: str, apply_transform, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    kwargs = dict(
        img_size=16,
        patch_size=4,
        embed_dim=16,
        depth=len(apply_transform),
        num_heads=HEADS,
        num_classes=3,
        apply_transform=apply_transform,
        theta=theta,
    )
    model = build_model({"family": "deepvit", "kwargs": kwargs})
    with torch.no_grad():  # non-trivial Norm parameters and statistics, so each field matters
        for block in model.blocks:
            attn = block.attn
            if not attn.apply_transform:
                continue
            norm = attn.var_norm if theta == "conv" else attn.reattn_norm.norm
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.5, 0.5)
            if theta == "conv":
                norm.running_mean.uniform_(-0.2, 0.2)
                norm.running_var.uniform_(0.5, 2.0)
    return model.eval()


def numpy_mix_heads(attn: np.ndarray, info: HeadMixing, scale: float, eps: float) -> np.ndarray:
    """Head mixing of one block from the HeadMixing fields alone, as loops over heads."""
    mixed = np.zeros_like(attn)
    for g in range(HEADS):
        for h in range(HEADS):
            mixed[:, g] += info.matrix[h, g] * attn[:, h]
        if info.bias is not None:
            mixed[:, g] += info.bias[g]
    if info.norm == "batch-norm":  # eval-mode BatchNorm2d over heads
        shape = (1, HEADS, 1, 1)
        normed = (mixed - info.running_mean.reshape(shape)) / np.sqrt(info.running_var.reshape(shape) + eps)
        return (normed * info.norm_weight.reshape(shape) + info.norm_bias.reshape(shape)) * scale
    mean = mixed.mean(axis=1, keepdims=True)  # LayerNorm over the head axis
    var = mixed.var(axis=1, keepdims=True)
    shape = (1, HEADS, 1, 1)
    normed = (mixed - mean) / np.sqrt(var + eps)
    return (normed * info.norm_weight.reshape(shape) + info.norm_bias.reshape(shape)) * scale


@pytest.mark.parametrize("kind", ["conv", "param"])
def test_head_mixing_reproduces_the_blocks_head_mixing(kind):
    model = tiny_deepvit(kind, [False, True, True])
    infos = head_mixing_matrices(model)
    assert sorted(infos) == [1, 2]
    attn_maps = torch.rand(2, HEADS, 5, 5, generator=torch.Generator().manual_seed(1)).softmax(dim=-1)
    for index, info in infos.items():
        attn = model.blocks[index].attn
        assert info.kind == "re-attention" and info.norm == {"conv": "batch-norm", "param": "layer-norm"}[kind]
        assert info.matrix.shape == (HEADS, HEADS) and info.matrix.dtype == np.float32
        eps = attn.var_norm.eps if kind == "conv" else attn.reattn_norm.norm.eps
        with torch.no_grad():
            expected = attn.mix_heads(attn_maps).numpy()
        actual = numpy_mix_heads(attn_maps.double().numpy(), info, attn.reatten_scale, eps)
        np.testing.assert_allclose(actual, expected, atol=1e-5)
        if kind == "conv":
            assert info.bias.shape == (HEADS,) and info.running_var.shape == (HEADS,)
        else:
            assert info.bias is None and info.running_mean is None and info.running_var is None


def test_timm_created_deepvit_reports_every_block():
    model = timm.create_model("deepvit16", depth=2, embed_dim=32, num_heads=4, img_size=16, patch_size=4)
    infos = head_mixing_matrices(model)
    assert sorted(infos) == [0, 1]
    for index, info in infos.items():
        expected = model.blocks[index].attn.reatten_matrix.weight[:, :, 0, 0].detach().numpy().T
        np.testing.assert_array_equal(info.matrix, expected)


def test_models_without_reattention_give_empty_dict():
    assert (
        head_mixing_matrices(timm.create_model("vit16", depth=2, embed_dim=32, num_heads=4, img_size=16, patch_size=4))
        == {}
    )
    assert head_mixing_matrices(tiny_deepvit("conv", [False, False])) == {}
    with pytest.raises(DiagError):
        head_mixing_matrices(nn.Linear(2, 2))


def test_arrays_are_float32_copies():
    model = tiny_deepvit("conv", [True]).bfloat16()
    info = head_mixing_matrices(model)[0]
    for array in (info.matrix, info.bias, info.norm_weight, info.norm_bias, info.running_mean, info.running_var):
        assert isinstance(array, np.ndarray) and array.dtype == np.float32
    before = info.matrix.copy()
    with torch.no_grad():
        model.blocks[0].attn.reatten_matrix.weight.add_(1.0)
    np.testing.assert_array_equal(info.matrix, before)


# ---- distances ----


def brute_distances(theta: np.ndarray) -> tuple[float, float]:
    """Columns scaled to unit max-abs by loops; nearest signed permutation by trying all."""
    size = theta.shape[0]
    scaled = theta.astype(np.float64).copy()
    for g in range(size):
        largest = max(abs(theta[h, g]) for h in range(size))
        if largest > 0:
            scaled[:, g] /= largest
    identity_distance = np.sqrt(sum((scaled[h, g] - (h == g)) ** 2 for h in range(size) for g in range(size)))
    best = np.inf
    for permutation in itertools.permutations(range(size)):
        for signs in itertools.product((-1.0, 1.0), repeat=size):
            candidate = np.zeros((size, size))
            for row, (col, sign) in enumerate(zip(permutation, signs)):
                candidate[row, col] = sign
            best = min(best, np.linalg.norm(scaled - candidate))
    return identity_distance / np.sqrt(size), best / np.sqrt(size)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_distances_match_exhaustive_search(seed):
    theta = np.random.default_rng(seed).normal(size=(HEADS, HEADS)).astype(np.float32)
    info = HeadMixing(kind="re-attention", matrix=theta)
    identity_distance, permutation_distance = brute_distances(theta)
    assert info.distance_from_identity == pytest.approx(identity_distance, abs=1e-6)
    assert info.distance_from_permutation == pytest.approx(permutation_distance, abs=1e-6)
    assert 0 < info.distance_from_permutation <= info.distance_from_identity


def test_distances_read_through_a_model():
    model = tiny_deepvit("param", [True], seed=3)
    info = head_mixing_matrices(model)[0]
    identity_distance, permutation_distance = brute_distances(info.matrix)
    assert info.distance_from_identity == pytest.approx(identity_distance, abs=1e-6)
    assert info.distance_from_permutation == pytest.approx(permutation_distance, abs=1e-6)


def test_distances_of_non_mixing_thetas():
    scales = np.array([0.3, 2.0, 0.7, 1.1], dtype=np.float32)
    signed_permutation = np.zeros((HEADS, HEADS), dtype=np.float32)
    signed_permutation[[0, 1, 2, 3], [2, 0, 3, 1]] = [1, -1, -1, 1]

    per_head_scale = HeadMixing(kind="re-attention", matrix=np.diag(scales))
    assert per_head_scale.distance_from_identity == pytest.approx(0.0, abs=1e-7)
    assert per_head_scale.distance_from_permutation == pytest.approx(0.0, abs=1e-7)

    reordered = HeadMixing(kind="re-attention", matrix=signed_permutation * scales)
    assert reordered.distance_from_permutation == pytest.approx(0.0, abs=1e-7)
    assert reordered.distance_from_identity == pytest.approx(brute_distances(signed_permutation)[0], abs=1e-6)

    flipped = HeadMixing(kind="re-attention", matrix=-np.eye(HEADS, dtype=np.float32))
    assert flipped.distance_from_identity == pytest.approx(2.0)
    assert flipped.distance_from_permutation == pytest.approx(0.0, abs=1e-7)


def test_distances_do_not_depend_on_where_the_matrix_lies_in_memory():
    """A saved and loaded result recomputes the distances from a copy of Θ at another address;
    a vectorised norm gave values a last digit apart (the matrix of this block did so)."""
    model = sharp_timm_model(
        "deepvit16", depth=3, apply_transform=[False, True, True], embed_dim=32, num_heads=4, img_size=32, patch_size=8
    )
    for info in head_mixing_matrices(model).values():
        distances = set()
        for offset in range(16):
            copy = np.empty(info.matrix.size + offset, np.float32)[offset:]
            copy[:] = info.matrix.ravel()
            moved = HeadMixing(kind=info.kind, matrix=copy.reshape(info.matrix.shape))
            distances.add((moved.distance_from_identity, moved.distance_from_permutation))
        assert distances == {(info.distance_from_identity, info.distance_from_permutation)}
