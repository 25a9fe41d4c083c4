"""ablate against brute-force references: models rebuilt without blocks, a hand-written forward
with heads or maps replaced, a model with Theta = I and no Norm; exact at any batch size."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import TINY_KWARGS, randomize_norms, sharp_timm_model
from test_report import assert_one_of_the_two_scales
from torch import nn

from deepvit_diag.ablation import STUDIES, VariantSums, ablate, removal
from deepvit_diag.ablation_result import AblationResult
from deepvit_diag.errors import DiagError
from deepvit_diag.figures.drawing import draw_ablation
from deepvit_diag.interventions import BlockRunner, Variant
from deepvit_diag.metrics import similar_blocks
from deepvit_diag.models import build_model

DEPTH = 4
OPTIONS = dict(device="cpu", progress=False)


def tiny_deepvit(seed: int = 0, theta: str = "conv") -> nn.Module:
    """4 blocks, Re-attention in the last 3, sharp maps and non-trivial norms."""
    torch.manual_seed(seed)
    kwargs = {**TINY_KWARGS, "depth": DEPTH, "apply_transform": [False, True, True, True], "theta": theta}
    model = build_model({"family": "deepvit", "kwargs": kwargs})
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear):
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * 0.3)
    return randomize_norms(model).eval()


def labelled(count: int = 11, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(count, 3, 32, 32, generator=generator), torch.randint(0, 5, (count,), generator=generator)


# ----------------------------------------------------------------------------- references


def numpy_effect(intact: torch.Tensor, ablated: torch.Tensor, intact_features, features, labels) -> dict[str, float]:
    """Mean KL, top-1 agreement, feature cosine and top-1 accuracy, in float64 numpy."""
    p, q = intact.double().numpy(), ablated.double().numpy()
    log_p = p - np.log(np.exp(p - p.max(1, keepdims=True)).sum(1, keepdims=True)) - p.max(1, keepdims=True)
    log_q = q - np.log(np.exp(q - q.max(1, keepdims=True)).sum(1, keepdims=True)) - q.max(1, keepdims=True)
    f, g = intact_features.double().numpy(), features.double().numpy()
    return {
        "kl": float((np.exp(log_p) * (log_p - log_q)).sum(1).mean()),
        "agreement": float((p.argmax(1) == q.argmax(1)).mean()),
        "cosine": float(((f * g).sum(1) / np.linalg.norm(f, axis=1) / np.linalg.norm(g, axis=1)).mean()),
        "accuracy": float((q.argmax(1) == labels.numpy()).mean()),
    }


def features_and_logits(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        features = model.forward_head(model.forward_features(x), pre_logits=True)
        return features, model.head(features)


def effect_of(ablated_model: nn.Module, model: nn.Module, x: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    intact_features, intact = features_and_logits(model, x)
    features, logits = features_and_logits(ablated_model, x)
    return numpy_effect(intact, logits, intact_features, features, labels)


def without_blocks(model: nn.Module, blocks) -> nn.Module:
    pruned = copy.deepcopy(model)
    kept = [block for index, block in enumerate(pruned.blocks) if index not in set(blocks)]
    pruned.blocks = nn.Sequential(*kept) if isinstance(model.blocks, nn.Sequential) else nn.ModuleList(kept)
    return pruned


class ZeroAttention(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)


def hand_forward(model: nn.Module, x: torch.Tensor, transplant: int | None = None, head=None) -> tuple:
    """DeepVisionTransformer's forward written out, block by block: ``transplant=p`` multiplies
    block p's V by block p-1's maps; ``head=(p, h, value)`` puts ``value`` (T, head_dim) in place
    of head h's output in block p. Returns features, logits and every block's head outputs."""
    with torch.no_grad():
        tokens = model.patch_embed(x)
        tokens = torch.cat([model.cls_token.expand(len(x), -1, -1), tokens], dim=1) + model.pos_embed
        previous_maps, head_outputs = None, []
        for index, block in enumerate(model.blocks):
            attn = block.attn
            batch, count, _ = tokens.shape
            qkv = attn.qkv(block.norm1(tokens)).reshape(batch, count, 3, attn.num_heads, attn.head_dim)
            q, k, v = qkv.permute(2, 0, 3, 1, 4)
            maps = ((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
            if attn.apply_transform:
                maps = attn.mix_heads(maps)
            used = previous_maps if transplant == index else maps
            per_head = used @ v  # (B, H, T, head_dim)
            if head is not None and head[0] == index:
                per_head = per_head.clone()
                per_head[:, head[1]] = head[2]
            head_outputs.append(per_head)
            tokens = tokens + attn.proj(per_head.transpose(1, 2).reshape(batch, count, -1))
            tokens = tokens + block.mlp(block.norm2(tokens))
            previous_maps = maps
        features = model.forward_head(model.norm(tokens), pre_logits=True)
        return features, model.head(features), head_outputs


def reference_effect(model, x, labels, **change) -> dict[str, float]:
    intact_features, intact, _ = hand_forward(model, x)
    features, logits, _ = hand_forward(model, x, **change)
    return numpy_effect(intact, logits, intact_features, features, labels)


def assert_effect(result: AblationResult, family: str, index, expected: dict[str, float]) -> None:
    for measure in ("kl", "agreement", "cosine"):
        got = float(result.values(family, measure)[index])
        assert got == pytest.approx(expected[measure], rel=2e-4, abs=2e-6), (family, index, measure)
    assert float(result.arrays[f"{family}_accuracy"][index][0]) == pytest.approx(expected["accuracy"], abs=1e-6)


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return tiny_deepvit()


@pytest.fixture(scope="module")
def result(model) -> AblationResult:
    return ablate(model, labelled(), batch_size=4, **OPTIONS)


# ----------------------------------------------------------------------------- each study against its reference


def test_block_removal_is_the_model_rebuilt_without_the_block(model, result):
    x, labels = labelled()
    for block in range(DEPTH):
        assert_effect(result, "block", block, effect_of(without_blocks(model, [block]), model, x, labels))


def test_attention_removal_zeroes_only_the_attention_branch(model, result):
    x, labels = labelled()
    for block in range(DEPTH):
        ablated = copy.deepcopy(model)
        ablated.blocks[block].attn = ZeroAttention()
        assert_effect(result, "attention", block, effect_of(ablated, model, x, labels))


def test_transplant_multiplies_v_by_the_previous_blocks_maps(model, result):
    x, labels = labelled()
    assert np.isnan(result.values("transplant", "kl")[0])  # block 0 has no previous block
    for block in range(1, DEPTH):
        assert_effect(result, "transplant", block, reference_effect(model, x, labels, transplant=block))


def test_mean_head_ablation_replaces_the_head_by_its_mean_over_the_images(model, result):
    x, labels = labelled()
    _, _, head_outputs = hand_forward(model, x)
    for block in range(DEPTH):
        for head in range(model.blocks[0].attn.num_heads):
            mean = head_outputs[block][:, head].mean(dim=0)  # (T, head_dim), over all 11 images
            assert_effect(result, "head", (block, head), reference_effect(model, x, labels, head=(block, head, mean)))


def test_zero_head_ablation(model):
    x, labels = labelled(6)
    calls = []
    options = {**OPTIONS, "progress": lambda done, total: calls.append((done, total))}
    zeroed = ablate(model, (x, labels), studies=["head"], heads="zero", batch_size=4, **options)
    assert calls == [(4, 12), (6, 12), (10, 12), (12, 12)]  # two passes (no pruning) of 6 images, batches of 4
    assert_effect(zeroed, "head", (2, 1), reference_effect(model, x, labels, head=(2, 1, 0.0)))


@pytest.mark.parametrize("theta", ["conv", "param"])
def test_reattention_removed_is_theta_identity_without_norm(theta):
    model = tiny_deepvit(1, theta)
    x, labels = labelled(7)
    result = ablate(model, (x, labels), studies=["reattention"], batch_size=3, **OPTIONS)
    assert np.isnan(result.values("reattention", "kl")[0])  # block 0 has plain attention

    def plain(blocks) -> nn.Module:
        ablated = copy.deepcopy(model)
        for block in blocks:
            attn = ablated.blocks[block].attn
            with torch.no_grad():
                if theta == "conv":
                    attn.reatten_matrix.weight.copy_(torch.eye(4)[:, :, None, None])
                    attn.reatten_matrix.bias.zero_()
                    attn.var_norm = nn.Identity()
                else:
                    attn.reattn_weights.copy_(torch.eye(4))
                    attn.reattn_norm = nn.Identity()
        return ablated

    for block in (1, 2, 3):
        assert_effect(result, "reattention", block, effect_of(plain([block]), model, x, labels))
    assert_effect(result, "reattention_all", 0, effect_of(plain([1, 2, 3]), model, x, labels))


def test_pruning_curves_remove_the_k_first_blocks_of_each_ordering(model, result):
    x, labels = labelled()
    measured = np.argsort(result.values("block", "kl"), kind="stable")
    np.testing.assert_array_equal(result.arrays["pruning_measured_order"], measured)
    influence = np.argsort(result.arrays["block_influence"], kind="stable")
    np.testing.assert_array_equal(result.arrays["pruning_influence_order"], influence)
    for ordering in ("measured", "similarity", "influence"):
        order = result.arrays[f"pruning_{ordering}_order"]
        assert sorted(order.tolist()) == list(range(DEPTH))
        for k in (1, 2, DEPTH):
            expected = effect_of(without_blocks(model, order[:k].tolist()), model, x, labels)
            assert_effect(result, f"pruning_{ordering}", k - 1, expected)


def test_block_influence_and_similarity_match_the_analysis(model, result):
    from deepvit_diag.analysis import analyze

    analysed = analyze(model, labelled(), batch_size=5, **OPTIONS)
    np.testing.assert_allclose(result.arrays["block_influence"], analysed.arrays["block_influence"], atol=1e-6)
    np.testing.assert_allclose(result.arrays["ratio"], analysed.ratio(), atol=1e-6)
    np.testing.assert_allclose(result.arrays["cross_head"], analysed.cross_head(), atol=1e-6)
    assert result.accuracy == analysed.accuracy
    assert result.similar_blocks == similar_blocks(analysed.ratio(), result.settings.rho).indices


def test_the_similar_blocks_removed_together(model, result):
    x, labels = labelled()
    ratio = result.arrays["ratio"]
    low, high = np.sort(ratio)[1:3]
    assert high > low
    rho = float(low + high) / 2  # the two blocks of highest ratio count as similar
    similar = ablate(model, (x, labels), studies=["block"], rho=rho, batch_size=5, **OPTIONS)
    assert similar.similar_blocks == [int(b) for b in np.nonzero(ratio > rho)[0]] and similar.similar_blocks
    assert_effect(similar, "similar", 0, effect_of(without_blocks(model, similar.similar_blocks), model, x, labels))


# ----------------------------------------------------------------------------- sanity


def test_ablating_nothing_changes_nothing(model):
    x, labels = labelled(9)
    runner = BlockRunner(model)
    with torch.no_grad():
        intact = runner.intact(x)
        sums = VariantSums(2, (1,), torch.device("cpu"))
        for slot, start in enumerate((0, 2)):  # nothing changed, from the first block or from a later one
            sums.add(slot, intact.outputs, runner.run_variants(intact, [Variant(start, start)]), labels)
    host = sums.host()
    np.testing.assert_allclose(host["kl"], 0, atol=1e-9)
    np.testing.assert_array_equal(host["agreement"], 9)
    np.testing.assert_allclose(host["cosine"], 9, rtol=1e-6)
    correct = int((intact.outputs.logits.argmax(1) == labels).sum())
    np.testing.assert_array_equal(host["correct"], [[correct], [correct]])


def test_an_identity_block_costs_nothing_and_only_it(model):
    identity = copy.deepcopy(model)
    with torch.no_grad():  # both residual branches add zero: the block's output is its input
        for linear in (identity.blocks[2].attn.proj, identity.blocks[2].mlp.fc2):
            linear.weight.zero_()
            linear.bias.zero_()
    result = ablate(identity, labelled(8), studies=["block", "attention", "head"], heads="zero", **OPTIONS)
    kl = result.values("block", "kl")  # 0 up to the rounding of a batch of other shape (about 1e-8)
    assert kl[2] == pytest.approx(0, abs=1e-7) and result.values("block", "agreement")[2] == 1
    assert (np.delete(kl, 2) > 1e-5).all()
    assert result.values("attention", "kl")[2] == pytest.approx(0, abs=1e-7)
    np.testing.assert_allclose(result.values("head", "kl")[2], 0, atol=1e-7)
    assert result.arrays["block_influence"][2] == pytest.approx(0, abs=1e-6)
    assert (np.delete(result.arrays["block_influence"], 2) > 1e-4).all()


@pytest.mark.parametrize("batch_size", [1, 3, 16])
def test_exact_at_any_batch_size(model, result, batch_size):
    again = ablate(model, labelled(), batch_size=batch_size, **OPTIONS)
    assert again.num_images == result.num_images and again.accuracy == result.accuracy
    assert set(again.arrays) == set(result.arrays)
    for name, expected in result.arrays.items():
        np.testing.assert_allclose(again.arrays[name], expected, rtol=1e-5, atol=1e-7, err_msg=name)


def test_save_and_load_round_trip(result, tmp_path):
    loaded = AblationResult.load(result.save(tmp_path / "ablation"))
    assert loaded.summary() == result.summary()
    assert set(loaded.arrays) == set(result.arrays)
    for name, values in result.arrays.items():
        np.testing.assert_array_equal(loaded.arrays[name], values)


def test_summary_relates_similarity_to_cost(result):
    summary = result.summary()
    kl = result.values("block", "kl")
    assert summary["block_cheapest"] == int(np.argmin(kl)) and summary["block_costliest"] == int(np.argmax(kl))
    for ordering, found in summary["pruning"].items():
        agreement = result.values(f"pruning_{ordering}", "agreement")
        assert all(agreement[: found["k"]] >= 0.99)
        assert found["k"] == DEPTH or agreement[found["k"]] < 0.99


def test_a_timm_vit_block_removal_and_transplant():
    model = sharp_timm_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=3, num_classes=5)
    x, labels = labelled(6)
    fused = [block.attn.fused_attn for block in model.blocks]
    result = ablate(model, (x, labels), studies=["block", "transplant"], batch_size=4, **OPTIONS)
    for block in range(3):
        assert_effect(result, "block", block, effect_of(without_blocks(model, [block]), model, x, labels))
    assert [block.attn.fused_attn for block in model.blocks] == fused  # switched off only during the pass
    # Block 2 with block 1's maps: timm's non-fused path, its attn_drop output replaced.
    with torch.no_grad():
        kept = {}
        model.blocks[1].attn.fused_attn = model.blocks[2].attn.fused_attn = False
        keep = model.blocks[1].attn.attn_drop.register_forward_hook(lambda m, a, out: kept.update(maps=out))
        swap = model.blocks[2].attn.attn_drop.register_forward_hook(lambda m, a, out: kept["maps"])
        try:
            features, logits = features_and_logits(model, x)
        finally:
            keep.remove(), swap.remove()
            for block, flag in zip(model.blocks, fused):
                block.attn.fused_attn = flag
    intact_features, intact = features_and_logits(model, x)
    assert_effect(result, "transplant", 2, numpy_effect(intact, logits, intact_features, features, labels))


def test_removal_plans_one_start_after_the_first_removed_block():
    variant = removal([3, 1, 2])
    assert (variant.input_block, variant.start) == (1, 2)
    assert [action.block for action in variant.actions] == [2, 3]


def test_bad_requests_are_one_line_errors(model):
    with pytest.raises(DiagError, match="unknown ablation studies"):
        ablate(model, labelled(2), studies=["blocks"], **OPTIONS)
    with pytest.raises(DiagError, match="heads must be one of"):
        ablate(model, labelled(2), heads="max", **OPTIONS)
    headless = copy.deepcopy(model)
    headless.reset_classifier(0)
    with pytest.raises(DiagError, match="no classifier head"):
        ablate(headless, labelled(2), **OPTIONS)


def test_models_whose_blocks_need_more_than_tokens_are_refused():
    model = sharp_timm_model("eva02_tiny_patch14_224", img_size=28, depth=2, num_classes=5)
    with pytest.raises(DiagError, match="do not run one after another"):
        ablate(model, torch.randn(2, 3, 28, 28), studies=["block"], **OPTIONS)


def test_every_study_is_known():
    assert STUDIES == ("block", "attention", "transplant", "head", "reattention", "pruning")


# ----------------------------------------------------------------------------- a process group


def _ablate_in_group(rank: int, world: int, init: str, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        # 11 images over 2 processes; the means of the head ablation and the pruning orders need all of them.
        result = ablate(tiny_deepvit(), labelled(), batch_size=4, **OPTIONS)
        result.save(f"{out}/rank{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_processes_give_the_single_process_result(result, tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_ablate_in_group, args=(2, f"file://{tmp_path / 'rendezvous'}", str(tmp_path)), nprocs=2)
    for rank in range(2):  # every process ends with the numbers of all images
        together = AblationResult.load(tmp_path / f"rank{rank}")
        assert together.num_images == 11 and together.accuracy == result.accuracy
        assert together.computation["processes"] == 2
        assert set(together.arrays) == set(result.arrays)
        for name, expected in result.arrays.items():
            np.testing.assert_allclose(together.arrays[name], expected, rtol=1e-5, atol=1e-7, err_msg=name)


def test_every_ablation_figure_uses_the_one_sequential_or_the_one_diverging_scale(result):
    """The catalogue's ablation figures by the rules of the analysis figures (``test_report``)."""
    drawn = draw_ablation(result)
    assert {figure.element_id for figure in drawn} >= {"fig-head-importance"}
    assert sum(assert_one_of_the_two_scales(figure.figure, figure.element_id) for figure in drawn) >= 2
