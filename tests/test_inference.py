"""Architecture from the weights: names and configs fill in only what the tensors cannot say, a contradiction
is one warning listing each difference, every guess is announced and kept in the provenance, the family's
convention is the guess (64-wide heads for timm files, eps 1e-5 for CLIP-style pre-norm), other image sizes
(resampled on request, any size for dynamic models), and what an arch from a file may set."""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import pytest
import timm
import torch
from conftest import randomize_norms, sharp_timm_model
from safetensors.torch import save_file
from timm.models import beit, vision_transformer

from deepvit_diag import analyze, extract_attention, load_model, save_native
from deepvit_diag.checkpoints import GuessWarning
from deepvit_diag.checkpoints.native import ARCH_KEY, FORMAT_KEY, FORMAT_VERSION
from deepvit_diag.cli import ARCH_HINTS
from deepvit_diag.errors import DiagError
from deepvit_diag.hints import HINTS

SMALL = dict(depth=2, img_size=32, num_classes=5)


def tiny(name: str, **kwargs) -> torch.nn.Module:
    return randomize_norms(sharp_timm_model(name, **{**SMALL, **kwargs}))


def images(size: int = 32, n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))


def logits(model, x):
    with torch.no_grad():
        return model(x)


def load_announced(path, **kwargs) -> tuple[torch.nn.Module, str]:
    """``load_model`` and the text of its warnings (one GuessWarning at most)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = load_model(path, **kwargs)
    guesses = [str(w.message) for w in caught if issubclass(w.category, GuessWarning)]
    assert len(guesses) <= 1, guesses
    return model, guesses[0] if guesses else ""


# ----------------------------------------------------------------------------- names and weights


def test_a_name_that_contradicts_the_weights_is_one_warning_listing_each_difference(tmp_path):
    model = randomize_norms(
        timm.create_model("vit_base_patch16_224", depth=6, embed_dim=96, mlp_ratio=3, img_size=32, num_classes=5)
    ).eval()
    path = tmp_path / "run.pth.tar"
    torch.save({"arch": "vit_base_patch16_224", "state_dict": model.state_dict()}, path)
    loaded, warning = load_announced(path)
    x = images()
    torch.testing.assert_close(logits(loaded, x), logits(model, x), rtol=0, atol=1e-5)
    assert "differ from the checkpoint's model name 'vit_base_patch16_224' in " in warning
    for difference in ("embed_dim 768 -> 96", "depth 12 -> 6", "mlp_ratio 4.0 -> 3.0", "img_size 224 -> 32"):
        assert difference in warning
    assert "guessed num_heads=12" in warning  # the name's head count: its width is not the weights'
    assert "; ".join(loaded.provenance["warnings"]) == warning.split(": ", 1)[1]
    assert (loaded.arch["family"], loaded.arch["name"]) == ("timm", "vit_base_patch16_224")

    # A head count from the caller: depth, width and MLP width still come from the weights, nothing is guessed.
    loaded, warning = load_announced(path, num_heads=12)
    torch.testing.assert_close(logits(loaded, x), logits(model, x), rtol=0, atol=1e-5)
    assert "guessed" not in warning and "mlp_ratio 4.0 -> 3.0" in warning


def test_arch_names_fill_in_what_the_weights_cannot_say(tmp_path):
    model = tiny("vit_base_patch16_clip_quickgelu_224", embed_dim=128, num_heads=4, patch_size=8)
    torch.save(model.state_dict(), tmp_path / "clip.pth")
    loaded, warning = load_announced(tmp_path / "clip.pth", arch="vit_base_patch16_clip_quickgelu_224")
    assert "guessed num_heads=2" in warning  # the name's 64-wide heads: a guess at another width (wrong here)
    loaded, warning = load_announced(tmp_path / "clip.pth", arch="vit_base_patch16_clip_quickgelu_224", num_heads=4)
    torch.testing.assert_close(logits(loaded, images()), logits(model, images()), rtol=0, atol=1e-6)
    assert "guessed" not in warning


@pytest.mark.parametrize(("name", "heads"), [("deit_tiny_patch16_224", 3), ("vit_small_patch16_224", 6)])
def test_timm_files_get_64_wide_heads(name, heads, tmp_path):
    model = tiny(name, depth=1)
    torch.save(model.state_dict(), tmp_path / "model.pth")
    loaded, warning = load_announced(tmp_path / "model.pth")
    assert loaded.blocks[0].attn.num_heads == heads
    assert f"guessed num_heads={heads} (timm's convention of 64-wide heads)" in warning
    torch.testing.assert_close(logits(loaded, images()), logits(model, images()), rtol=0, atol=1e-5)
    assert "; ".join(loaded.provenance["warnings"]) == warning.split(": ", 1)[1]


def test_clip_style_pre_norm_files_get_eps_1e_5_and_say_so(tmp_path):
    model = tiny("vit_base_patch16_clip_224", embed_dim=64, num_heads=1, patch_size=8)
    torch.save(model.state_dict(), tmp_path / "clip.pth")
    loaded, warning = load_announced(tmp_path / "clip.pth")
    assert loaded.norm_pre.eps == 1e-5 and loaded.arch["kwargs"]["pre_norm"] is True
    assert "guessed norm_eps=1e-05 (CLIP's convention for pre-norm ViTs)" in warning
    assert "act_layer='gelu'" in warning and "quick_gelu" in warning
    torch.testing.assert_close(logits(loaded, images() * 1e-3), logits(model, images() * 1e-3), rtol=0, atol=1e-6)


def test_distilled_deit_counts_its_distillation_token(tmp_path):
    model = tiny("deit_tiny_distilled_patch16_224", embed_dim=64, num_heads=1, patch_size=8)
    torch.save(model.state_dict(), tmp_path / "deit.pth")
    loaded, _ = load_announced(tmp_path / "deit.pth")
    assert type(loaded).__name__ == "VisionTransformerDistilled" and loaded.num_prefix_tokens == 2
    torch.testing.assert_close(logits(loaded, images()), logits(model, images()), rtol=0, atol=1e-6)
    assert extract_attention(loaded, images()).pre.shape[-1] == 2 + 16


def test_register_and_qk_norm_files_read_their_tokens_and_head_width(tmp_path):
    registers = tiny("vit_small_patch14_reg4_dinov2", embed_dim=64, num_heads=1, patch_size=8)
    torch.save(registers.state_dict(), tmp_path / "reg.pth")
    loaded, _ = load_announced(tmp_path / "reg.pth")
    kwargs = loaded.arch["kwargs"]
    assert (kwargs["reg_tokens"], kwargs["no_embed_class"], kwargs["init_values"]) == (4, True, 1.0)
    torch.testing.assert_close(logits(loaded, images()), logits(registers, images()), rtol=0, atol=1e-6)

    qk_norm = tiny("vit_tiny_patch16_224", embed_dim=48, num_heads=4, patch_size=8, qk_norm=True)
    torch.save(qk_norm.state_dict(), tmp_path / "qk.pth")
    loaded, warning = load_announced(tmp_path / "qk.pth")  # 48 fits neither 64-wide heads nor 12: q_norm says 4
    assert loaded.blocks[0].attn.num_heads == 4 and "num_heads" not in warning
    torch.testing.assert_close(logits(loaded, images()), logits(qk_norm, images()), rtol=0, atol=1e-6)


def test_families_with_a_per_head_tensor_need_no_head_hint(tmp_path):
    for name in ("beit_base_patch16_224", "cait_xxs24_224", "vit_relpos_base_patch16_rpn_224"):
        model = tiny(name, embed_dim=48, num_heads=3, patch_size=8)
        torch.save(model.state_dict(), tmp_path / "model.pth")
        loaded, warning = load_announced(tmp_path / "model.pth", arch=name if "rpn" in name else None)
        assert loaded.blocks[0].attn.num_heads == 3 and "num_heads" not in warning


def test_eva_02_with_separate_projections_captures_and_reloads(tmp_path):
    model = tiny("eva02_tiny_patch14_224", embed_dim=64, num_heads=1, patch_size=8, qkv_fused=False)
    capture = extract_attention(model, images())
    twin = copy.deepcopy(model)
    for block in twin.blocks:
        block.attn.fused_attn = False
    reference = timm.utils.AttentionExtract(twin, method="fx")(images())
    torch.testing.assert_close(capture.pre, torch.stack(list(reference.values())), rtol=0, atol=1e-5)
    torch.save(model.state_dict(), tmp_path / "eva.pth")
    loaded, warning = load_announced(tmp_path / "eva.pth")
    assert loaded.blocks[0].attn.qkv is None and "use_rot_pos_emb=True" in warning
    torch.testing.assert_close(logits(loaded, images()), logits(model, images()), rtol=0, atol=1e-5)


def test_beit_with_a_shared_relative_position_bias(tmp_path):
    model = tiny(
        "beit_base_patch16_224",
        embed_dim=64,
        num_heads=2,
        patch_size=8,
        use_rel_pos_bias=False,
        use_shared_rel_pos_bias=True,
        use_abs_pos_emb=True,
    )
    torch.save(model.state_dict(), tmp_path / "beit.pth")
    loaded, warning = load_announced(tmp_path / "beit.pth")
    assert "num_heads" not in warning and loaded.rel_pos_bias is not None
    torch.testing.assert_close(logits(loaded, images()), logits(model, images()), rtol=0, atol=1e-5)


def test_unreadable_attention_is_refused_in_one_line_also_by_name():
    with pytest.raises(DiagError) as err:
        load_model("swin_tiny_patch4_window7_224", pretrained=False)
    message = str(err.value)
    assert message.startswith("cannot read attention maps of swin_tiny_patch4_window7_224: layers.0.blocks.0.attn")
    assert "\n" not in message and "windows" in message


# ----------------------------------------------------------------------------- other image sizes


def test_positions_are_resampled_the_timm_way_only_when_asked(tmp_path):
    model = tiny("vit_tiny_patch16_224", embed_dim=64, num_heads=1, patch_size=8)
    torch.save(model.state_dict(), tmp_path / "vit.pth")
    with pytest.raises(DiagError) as err:
        load_model(tmp_path / "vit.pth", img_size=48)
    assert "pos_embed (1, 17, 64) vs model (1, 37, 64)" in str(err.value)
    assert "resample_pos_embed=True (--resample-pos-embed)" in str(err.value) and "\n" not in str(err.value)

    ours, _ = load_announced(tmp_path / "vit.pth", img_size=48, resample_pos_embed=True)
    theirs = timm.create_model("vit_tiny_patch16_224", **{**SMALL, "embed_dim": 64, "num_heads": 1, "patch_size": 8})
    theirs = theirs.eval().requires_grad_(False)
    theirs48 = timm.create_model(
        "vit_tiny_patch16_224", **{**SMALL, "embed_dim": 64, "num_heads": 1, "patch_size": 8, "img_size": 48}
    ).eval()
    theirs48.load_state_dict(vision_transformer.checkpoint_filter_fn(model.state_dict(), theirs48))
    x = images(48)
    torch.testing.assert_close(logits(ours, x), logits(theirs48, x), rtol=0, atol=1e-6)
    assert ours.pretrained_cfg["input_size"] == (3, 48, 48)
    with pytest.raises(DiagError, match="resample_pos_embed=True needs img_size=N"):
        load_model(tmp_path / "vit.pth", resample_pos_embed=True)


@pytest.mark.filterwarnings("ignore:Using a non-tuple sequence")  # timm's own resampling, the reference
def test_beit_relative_position_tables_are_resampled_too(tmp_path):
    model = tiny("beit_base_patch16_224", embed_dim=64, num_heads=2, patch_size=8)
    torch.save(model.state_dict(), tmp_path / "beit.pth")
    ours, _ = load_announced(tmp_path / "beit.pth", img_size=48, resample_pos_embed=True)
    theirs = timm.create_model(
        "beit_base_patch16_224", **{**SMALL, "embed_dim": 64, "num_heads": 2, "patch_size": 8, "img_size": 48}
    ).eval()
    theirs.load_state_dict(beit.checkpoint_filter_fn(model.state_dict(), theirs))
    torch.testing.assert_close(logits(ours, images(48)), logits(theirs, images(48)), rtol=0, atol=1e-5)


def test_a_dynamic_size_model_is_analysed_at_the_size_it_is_given():
    model = tiny("vit_small_patch14_dinov2", embed_dim=64, num_heads=2, patch_size=8, dynamic_img_size=True)
    x = images(48, n=3)
    capture = extract_attention(model, x)
    assert capture.pre.shape[-1] == 1 + 36
    result = analyze(model, x, progress=False, num_examples=2, batch_size=2)
    assert result.geometry.grid_size == (6, 6) and result.geometry.image_size == (48, 48)
    assert result.arrays["example_cls_pre"].shape == (2, 2, 2, 6, 6)
    with pytest.raises(DiagError, match="one analysis needs one image size"):
        analyze(model, [images(48, 2), images(32, 2)], progress=False, num_examples=1)


# ----------------------------------------------------------------------------- what a file may set


def native(tmp_path, arch: dict, tensors: dict) -> str:
    path = tmp_path / "model.safetensors"
    save_file(
        {k: v.contiguous() for k, v in tensors.items()},
        str(path),
        metadata={FORMAT_KEY: FORMAT_VERSION, ARCH_KEY: json.dumps(arch)},
    )
    return path


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        (dict(act_layer="os.system"), "act_layer 'os.system' is not one of gelu"),
        (dict(norm_eps=0), "norm_eps 0 is not a number between 0 and 1"),
        (dict(norm_layer="layernorm"), "sets norm_layer: not an architecture argument"),
        (dict(img_size=10**6), "img_size 1000000 is not a whole number from 1 to 8192"),
    ],
)
def test_an_arch_from_a_file_sets_architecture_values_within_their_rules(kwargs, fragment, tmp_path):
    model = tiny("vit_tiny_patch16_224", embed_dim=64, num_heads=1, patch_size=8)
    arch = {"family": "vit", "kwargs": {**SMALL, "embed_dim": 64, "num_heads": 1, "patch_size": 8, **kwargs}}
    with pytest.raises(DiagError) as err:
        load_model(native(tmp_path, arch, model.state_dict()))
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_cait_class_attention_blocks_are_counted_before_building(tmp_path):
    model = tiny("cait_xxs24_224", embed_dim=64, num_heads=2, patch_size=8)
    arch = {"family": "timm", "name": "cait_xxs24_224", "kwargs": {"embed_dim": 64, "depth": 2, "depth_token_only": 9}}
    with pytest.raises(DiagError, match=r"\(9 blocks_token_only\): the file holds 2"):
        load_model(native(tmp_path, arch, model.state_dict()))


def test_every_hint_the_loader_names_is_a_cli_option():
    assert set(ARCH_HINTS) == set(HINTS)


def test_every_family_round_trips_through_deepvit_diags_own_format(tmp_path):
    from test_families import CASES, model_of

    for case in CASES:
        path = tmp_path / f"{case.family}.pth"
        torch.save(model_of(case).state_dict(), path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", GuessWarning)
            loaded = load_model(path, **case.hints)
        again = load_model(save_native(loaded, tmp_path / "native.safetensors"))
        assert again.arch == json.loads(json.dumps(loaded.arch)), case.family
        torch.testing.assert_close(logits(again, images()), logits(loaded, images()), rtol=0, atol=0)


def test_pooling_the_weights_cannot_show_comes_from_the_base(tmp_path):
    # A class token with average pooling and the final norm before it: the keys of class-token pooling.
    model = tiny("vit_tiny_patch16_224", embed_dim=64, num_heads=1, patch_size=8, global_pool="avg", fc_norm=False)
    torch.save(model.state_dict(), tmp_path / "avg.pth")
    assert load_announced(tmp_path / "avg.pth")[0].global_pool == "token"  # timm's rule, for want of anything else
    loaded, _ = load_announced(tmp_path / "avg.pth", arch={"family": "vit", "kwargs": {"global_pool": "avg"}})
    assert loaded.global_pool == "avg"
    torch.testing.assert_close(logits(loaded, images()), logits(model, images()), rtol=0, atol=1e-6)


def test_every_familys_attention_has_a_map_reader():
    from deepvit_diag.checkpoints.families import FAMILIES
    from deepvit_diag.readers import CLASS_ATTENTION_READERS, READERS

    for family in FAMILIES:
        for cls in family.attention:
            assert cls in READERS or cls in CLASS_ATTENTION_READERS, (family.name, cls)


def test_inference_asks_the_families_instead_of_naming_them():
    from deepvit_diag.checkpoints import inference
    from deepvit_diag.checkpoints.families import FAMILIES

    source = Path(inference.__file__).read_text()
    named = [family.name for family in FAMILIES if f'"{family.name}"' in source]
    assert named == []


def test_a_hint_renders_for_the_api_and_per_model_for_the_cli():
    from deepvit_diag.hints import Hint, HintedError, Message, rendered

    err = HintedError("cannot tell the heads; pass ", Hint("num_heads"), " or ", Hint("arch", "NAME", "NAME"))
    assert str(err) == "cannot tell the heads; pass num_heads=... (--num-heads) or arch=NAME (--arch NAME)"
    assert (
        rendered(err, "-b") == "cannot tell the heads; pass num_heads=... (--num-heads-b) or arch=NAME (--arch-b NAME)"
    )
    assert (
        Message("a ", Message("b ", Hint("img_size", "(H, W)", "HxW"))).render("-a")
        == "a b img_size=(H, W) (--img-size-a HxW)"
    )


# ----------------------------------------------------------------------------- no silent wrong model


def test_a_non_square_grid_is_announced_and_settled_by_img_size_hxw(tmp_path):
    model = tiny("vit_tiny_patch16_224", img_size=(32, 48), patch_size=8, embed_dim=64, num_heads=1)
    path = tmp_path / "wide.pth"
    torch.save(model.state_dict(), path)
    x = torch.randn(2, 3, 32, 48, generator=torch.Generator().manual_seed(1))
    _, note = load_announced(path)  # 1 + 24 positions also fit a 5 x 5 grid without the class token's
    assert "5 x 5 patch grid" in note and "24 = 4 x 6 patches would also fit" in note
    assert "img_size=(H, W) (--img-size HxW)" in note
    reloaded, _ = load_announced(path, img_size=(32, 48))
    torch.testing.assert_close(logits(reloaded, x), logits(model, x), atol=1e-5, rtol=0)
    assert tuple(reloaded.arch["pretrained_cfg"]["input_size"]) == (3, 32, 48)


def test_a_grid_no_square_fits_is_refused_naming_img_size_hxw(tmp_path):
    model = tiny(
        "vit_tiny_patch16_224",
        img_size=(32, 56),
        patch_size=8,
        embed_dim=64,
        num_heads=1,
        class_token=False,
        global_pool="avg",
    )
    path = tmp_path / "wide.pth"
    torch.save(model.state_dict(), path)
    with pytest.raises(DiagError, match=r"28 positions: not a square patch grid.*img_size=HxW \(--img-size HxW\)"):
        load_model(path)


@pytest.mark.parametrize(
    ("kwargs", "announced"),
    [
        ({"global_pool": "token"}, "global_pool='token' (timm's rule for a class token without fc_norm)"),
        ({"global_pool": "avg", "fc_norm": True}, "global_pool='avg' (timm's rule for a norm after pooling (fc_norm))"),
    ],
)
def test_pooling_guesses_are_announced(kwargs, announced, tmp_path):
    model = tiny("vit_tiny_patch16_224", patch_size=8, embed_dim=64, num_heads=1, **kwargs)
    path = tmp_path / "pool.pth"
    torch.save(model.state_dict(), path)
    reloaded, note = load_announced(path)
    assert announced in note and "(--global-pool)" in note
    torch.testing.assert_close(logits(reloaded, images()), logits(model, images()), atol=1e-5, rtol=0)


def test_vit_huge_widths_get_timm_s_16_heads(tmp_path):
    model = tiny("vit_huge_patch14_224", patch_size=8, depth=1, num_classes=0)
    path = tmp_path / "huge.pth"
    torch.save(model.state_dict(), path)
    reloaded, note = load_announced(path)
    assert reloaded.blocks[0].attn.num_heads == 16 and "timm's ViT of width 1280 has 16 heads" in note


def test_a_refusal_at_another_image_size_names_dynamic_img_size(tmp_path):
    model = tiny("vit_tiny_patch16_224", patch_size=8, embed_dim=64, num_heads=1)
    with pytest.raises(DiagError, match=r"expects \(3, 32, 32\); .*dynamic_img_size=True \(--dynamic-img-size\)"):
        analyze(model, images(size=48), progress=False, num_examples=1)
