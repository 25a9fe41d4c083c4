"""The trainer end to end at tiny size, and the bundled demo weights' model cards."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from deepvit_diag import compare, load_model
from deepvit_diag.checkpoints.native import read_native_metadata
from deepvit_diag.cli import main
from deepvit_diag.datasets import cluttered_digits, digits_split
from deepvit_diag.images import default_image_set
from deepvit_diag.models import PRESETS, build_model, with_overrides
from deepvit_diag.train import (
    TrainConfig,
    clutter_epoch,
    evaluate_accuracy,
    lr_at,
    random_affine,
    scale_query_key_init,
    train_model,
)

TINY = dict(depth=2, embed_dim=32, num_heads=4, img_size=16, patch_size=4)


def test_warmup_then_cosine_schedule():
    lrs = [lr_at(s, total_steps=100, warmup_steps=10, base_lr=1.0) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))  # monotone decay after warm-up
    assert lrs[-1] < 0.001


def test_random_affine_keeps_shape_and_is_seeded():
    x = torch.randn(5, 3, 16, 16)
    a = random_affine(x, torch.Generator().manual_seed(1))
    b = random_affine(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, x)


def test_train_cli_end_to_end_saves_card_and_loads_back(tmp_path, capsys):
    out = tmp_path / "tiny.safetensors"
    argv = [
        "train",
        "deepvit16",
        "--depth",
        "2",
        "--embed-dim",
        "32",
        "--num-heads",
        "4",
        "--img-size",
        "16",
        "--patch-size",
        "4",
        "--epochs",
        "1",
        "--reattention-last",
        "1",
        "--quiet",
        "--fp16",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    assert "test accuracy" in capsys.readouterr().out
    meta = read_native_metadata(out)
    card, arch = meta["card"], meta["arch"]
    assert arch["kwargs"]["depth"] == 2 and arch["kwargs"]["num_classes"] == 10
    assert arch["kwargs"]["apply_transform"] == [False, True]  # --reattention-last 1
    assert arch["pretrained_cfg"]["input_size"] == [3, 16, 16]
    assert card["epochs"] == 1 and card["seed"] == 0 and card["image_set"] == "digits-test"
    assert card["train_images"] + card["test_images"] == 1797
    assert {"torch", "timm", "deepvit_diag"} <= set(card["versions"])
    assert card["train_seconds"] > 0 and "AdamW" in json.dumps(card["recipe"])

    model = load_model(str(out))
    assert [block.attn.apply_transform for block in model.blocks] == [False, True]
    assert not model.training and model.provenance["card"]["test_accuracy"] == card["test_accuracy"]
    test = digits_split("test")
    # the card was measured on the fp16-rounded weights, exactly what the file holds
    assert evaluate_accuracy(model, test.images, test.labels) == card["test_accuracy"]


def test_clutter_training_draws_fresh_canvases_every_epoch_and_names_its_held_out_set(tmp_path, capsys):
    config = TrainConfig(images_per_epoch=20, seed=3)
    first, again, second = clutter_epoch(config, 0), clutter_epoch(config, 0), clutter_epoch(config, 1)
    assert len(first.images) == 20 and [i.tobytes() for i in first.images] == [i.tobytes() for i in again.images]
    assert [i.tobytes() for i in first.images] != [i.tobytes() for i in second.images]

    out = tmp_path / "clutter.safetensors"
    argv = ["train", "vit16", "--data", "digits-clutter", "--images-per-epoch", "64", "--warmup-epochs", "1",
            "--depth", "1", "--embed-dim", "16", "--num-heads", "2", "--img-size", "32", "--patch-size", "8",
            "--epochs", "2", "--quiet", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    card = read_native_metadata(out)["card"]
    assert card["dataset"] == "digits-clutter" and card["image_set"] == "digits-clutter-test"
    assert card["train_images"] == 64 and card["test_images"] == 360
    assert card["recipe"]["images_per_epoch"] == 64 and card["recipe"]["warmup_epochs"] == 1
    test = cluttered_digits("test")
    assert evaluate_accuracy(load_model(str(out)), test.images, test.labels) == card["test_accuracy"]


@pytest.mark.parametrize("preset", ["vit16", "deepvit16"])
def test_scale_query_key_init_scales_queries_and_keys_only(preset):
    model = build_model(with_overrides(PRESETS[preset], **TINY))
    before = [block.attn.qkv.weight.detach().clone() for block in model.blocks]
    scale_query_key_init(model, 5.0)
    for block, weight in zip(model.blocks, before):
        after = block.attn.qkv.weight.detach()
        width = weight.shape[0] // 3
        assert torch.allclose(after[: 2 * width], 5.0 * weight[: 2 * width])
        assert torch.equal(after[2 * width :], weight[2 * width :])


@pytest.mark.parametrize("preset", ["vit16", "deepvit16"])
def test_drop_path_rises_linearly_to_the_last_block_and_is_recorded(preset):
    arch = with_overrides(PRESETS[preset], **{**TINY, "depth": 3})
    model, card = train_model(arch, config=TrainConfig(epochs=1, drop_path_rate=0.3), progress=False)
    rates = [
        getattr(block.drop_path1 if hasattr(block, "drop_path1") else block.drop_path, "drop_prob", 0.0)
        for block in model.blocks
    ]
    assert rates == pytest.approx([0.0, 0.15, 0.3])
    assert card["recipe"]["drop_path_rate"] == 0.3


def test_train_records_the_query_key_init_scale():
    arch = with_overrides(PRESETS["deepvit16"], **TINY)
    _, card = train_model(arch, config=TrainConfig(epochs=1, qk_init_scale=5.0), progress=False)
    assert card["recipe"]["qk_init_scale"] == 5.0


@pytest.mark.parametrize(
    "extra,status,message",
    [
        (["--images-per-epoch", "100"], 1, "--images-per-epoch applies to --data digits-clutter only"),
        (["--data", "digits-clutter", "--images-per-epoch", "0"], 2, "must be at least 1"),
        (["--warmup-epochs", "-1"], 2, "must be at least 0"),
        (["--qk-init-scale", "0"], 2, "must be a number above 0"),
        (["--qk-init-scale", "big"], 2, "expected a number"),
        (["--drop-path", "1"], 2, "must be between 0 and 0.9"),
        (["--reattention-last", "1"], 1, "--reattention-last applies to DeepViT presets only"),
        (["--reattention-last", "-1"], 2, "must be at least 0"),
    ],
)
def test_train_rejects_bad_recipe_options(extra, status, message, tmp_path, capsys):
    try:
        returned = main(["train", "vit16", "--epochs", "1", "--out", str(tmp_path / "x.safetensors"), *extra])
    except SystemExit as exit_:  # argparse's usage errors
        returned = exit_.code
    assert returned == status
    err = capsys.readouterr().err
    assert "Traceback" not in err and message in err
    assert not (tmp_path / "x.safetensors").exists()


def test_train_refuses_more_reattention_blocks_than_blocks(tmp_path, capsys):
    out = tmp_path / "x.safetensors"
    argv = ["train", "deepvit16", "--depth", "2", "--reattention-last", "3", "--epochs", "1", "--out", str(out)]
    assert main(argv) == 1
    assert "--reattention-last 3 exceeds the 2 blocks of the model" in capsys.readouterr().err
    assert not out.exists()


def test_training_learns_something():
    """Fifteen epochs of a 2-block model (about 8 s) beat chance (10%) clearly on the held-out digits."""
    arch = with_overrides(PRESETS["vit16"], **TINY)
    model, card = train_model(arch, config=TrainConfig(epochs=15, lr=2e-3, warmup_epochs=1), progress=False)
    assert card["test_accuracy"] > 0.5


@pytest.fixture(scope="module")
def demo_pair(tmp_path_factory):
    """The bundled demo pair (an empty weight store, so the bundled files are used) and the
    bundled set their model cards name."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DEEPVIT_DIAG_HOME", str(tmp_path_factory.mktemp("empty-store")))
        models = {preset: load_model(preset) for preset in ("vit32", "deepvit32")}
    return models, default_image_set(list(models.values()))


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["vit32", "deepvit32"])
def test_bundled_demo_weights_match_their_cards(preset, demo_pair):
    models, image_set = demo_pair
    model = models[preset]
    prov = model.provenance
    assert prov["source"] == "bundled" and "bundled demo weights" in prov["description"]
    card = prov["card"]
    assert card["preset"] == preset and card["dataset"] == "digits-clutter"
    assert image_set == card["image_set"] == "digits-clutter-test"
    assert len(model.blocks) == 32
    test = cluttered_digits("test")
    assert evaluate_accuracy(model, test.images, test.labels) == card["test_accuracy"]


def blocks_with_entropy_at_most(result, share: float) -> int:
    """Blocks whose softmax entropy, averaged over heads, is at most ``share`` of ln T (counted
    here from the entropy array, independently of the summary's own count)."""
    per_block = result.entropy().mean(axis=1)
    return int(np.sum(per_block <= share * math.log(result.geometry.num_tokens)))


@pytest.mark.slow
def test_demo_pair_meets_the_targets_it_was_trained_for(demo_pair):
    """Issue 12's targets that the shipped pair meets, measured as the README's first command
    measures them: ``compare`` with default parameters on the cards' image set. The ones it
    misses (MODEL_CARDS.md says which and why) are not asserted."""
    models, image_set = demo_pair
    comparison = compare(models["vit32"], models["deepvit32"], image_set, progress=False, device="cpu")
    vit, deepvit = comparison.a.summary(), comparison.b.summary()
    for preset, summary in (("vit32", vit), ("deepvit32", deepvit)):
        assert summary["accuracy_top1"] == pytest.approx(
            models[preset].provenance["card"]["test_accuracy"], abs=1 / 360
        )
    assert vit["accuracy_top1"] >= 0.95
    # The ViT attends: entropy at most 0.8 ln T in at least half its blocks.
    assert blocks_with_entropy_at_most(comparison.a, 0.8) == vit["blocks_entropy_at_most_0.8"] >= 16
    # Some of its blocks, not all, are similar.
    assert 0 < vit["similar_blocks"] < 32
    # The DeepViT has fewer similar blocks (post-Θ maps), and its softmax maps are not uniform everywhere
    # (the target, at most 0.9 ln T in a third of the blocks, is missed: 8 of 32).
    assert deepvit["maps"] == "post" and deepvit["similar_blocks"] < vit["similar_blocks"]
    assert blocks_with_entropy_at_most(comparison.b, 0.9) == deepvit["blocks_entropy_at_most_0.9"] > 0
