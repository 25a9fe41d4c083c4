"""Checkpoints of other projects, saved as those projects save them, load without hints (or with the one
announced guess) as the equivalent timm model: logits and attention maps equal to the original model's own
within 1e-5, and ``analyze`` runs (``checkpoints.torchvision_vit``, ``checkpoints.clip``, ``layouts``).

The originals are built with the projects' own code where it is installed (torchvision, open_clip,
transformers: the dev extras); the DINOv2 hub and DeiT III files are key-for-key fixtures from the
documented mapping (their repositories are not packages).
"""

from __future__ import annotations

import functools
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from conftest import check_readme_table, sharp_timm_model
from torch import nn

from deepvit_diag import analyze, convert, extract_attention, load_model
from deepvit_diag.checkpoints import GuessWarning

SIZE, PATCH, WIDTH, HEADS, DEPTH = 32, 8, 64, 1, 2


def images(count: int = 2) -> torch.Tensor:
    return torch.randn(count, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))


def sharpen(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights of a size that makes maps far from uniform, norms included."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point() and "position_ids" not in name:
                scale = 0.3 if tensor.ndim > 1 else 0.1
                base = 1.0 if name.endswith(("ln_1.weight", "ln_2.weight", "norm1.weight", "norm2.weight")) else 0.0
                tensor.copy_(base + scale * torch.randn(tensor.shape, generator=generator))
    return model.eval()


def mha_maps(attention: nn.MultiheadAttention, recorded: list[torch.Tensor]) -> Callable:
    """A forward hook on a block's input norm that records torch's own maps of ``attention`` (batch first)."""

    def hook(module, args, output):
        x = output if attention.batch_first else output.transpose(0, 1)
        _, maps = attention(x, x, x, need_weights=True, average_attn_weights=False)
        recorded.append(maps)

    return hook


@dataclass
class Original:
    """The original model: its output (logits or image embedding) and its own maps (L, B, H, T, T)."""

    output: torch.Tensor
    maps: torch.Tensor


# ----------------------------------------------------------------------------- the originals


def torchvision_vit(path):
    from torchvision.models.vision_transformer import VisionTransformer

    model = sharpen(VisionTransformer(SIZE, PATCH, DEPTH, HEADS, WIDTH, 2 * WIDTH, num_classes=5))
    torch.save(model.state_dict(), path)
    recorded: list[torch.Tensor] = []
    for layer in model.encoder.layers:
        layer.ln_1.register_forward_hook(mha_maps(layer.self_attention, recorded))
    with torch.no_grad():
        return Original(model(images()), torch.stack(recorded))


def open_clip_model(quick_gelu: bool):
    import open_clip

    vision = open_clip.CLIPVisionCfg(
        layers=DEPTH, width=WIDTH, head_width=WIDTH // HEADS, image_size=SIZE, patch_size=PATCH
    )
    text = open_clip.CLIPTextCfg(context_length=8, vocab_size=50, width=32, heads=2, layers=1)
    return sharpen(open_clip.CLIP(16, vision, text, quick_gelu=quick_gelu))


def clip_original(model) -> Original:
    recorded: list[torch.Tensor] = []
    for block in model.visual.transformer.resblocks:
        block.ln_1.register_forward_hook(mha_maps(block.attn, recorded))
    with torch.no_grad():
        return Original(model.encode_image(images()), torch.stack(recorded))


def openai_clip(path):
    """OpenAI's CLIP (QuickGELU): the full model's state dict, text tower included."""
    model = open_clip_model(quick_gelu=True)
    torch.save(model.state_dict(), path)
    return clip_original(model)


def open_clip_training(path):
    """An open_clip training checkpoint (GELU): ``{'epoch', 'name', 'state_dict': {'module.visual.*', ...}}``."""
    model = open_clip_model(quick_gelu=False)
    state = {"module." + k: v for k, v in model.state_dict().items()}
    torch.save({"epoch": 4, "name": "run", "state_dict": state, "optimizer": {}}, path)
    return clip_original(model)


def hf_clip_vision(path):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    config = CLIPVisionConfig(
        hidden_size=WIDTH,
        intermediate_size=2 * WIDTH,
        num_hidden_layers=DEPTH,
        num_attention_heads=HEADS,
        image_size=SIZE,
        patch_size=PATCH,
        projection_dim=16,
        attn_implementation="eager",
    )
    model = sharpen(CLIPVisionModelWithProjection(config))
    path.mkdir()
    model.save_pretrained(path)
    with torch.no_grad():
        out = model(pixel_values=images(), output_attentions=True)
    return Original(out.image_embeds, torch.stack(out.attentions))


def hf_siglip_vision(path):
    from transformers import SiglipVisionConfig, SiglipVisionModel

    config = SiglipVisionConfig(
        hidden_size=WIDTH,
        intermediate_size=2 * WIDTH,
        num_hidden_layers=DEPTH,
        num_attention_heads=HEADS,
        image_size=SIZE,
        patch_size=PATCH,
        attn_implementation="eager",
    )
    model = sharpen(SiglipVisionModel(config))
    path.mkdir()
    model.save_pretrained(path)
    with torch.no_grad():
        out = model(pixel_values=images(), output_attentions=True)
    return Original(out.pooler_output, torch.stack(out.attentions))


def timm_fixture(name: str, **kwargs):
    return sharp_timm_model(
        name, img_size=SIZE, patch_size=PATCH, embed_dim=WIDTH, depth=DEPTH, num_heads=HEADS, num_classes=5, **kwargs
    )


def timm_original(model) -> Original:
    from timm.utils import AttentionExtract

    reference = sharpen(model)
    for block in reference.blocks:
        block.attn.fused_attn = False
    with torch.no_grad():
        out = AttentionExtract(reference, method="fx")(images())
        return Original(reference(images()), torch.stack(list(out.values())))


def dinov2_hub(path):
    """facebookresearch/dinov2's hub file with registers: ``register_tokens``, ``mask_token``, and a
    ``pos_embed`` holding the class token's position (the timm model's class token has it added)."""
    model = timm_fixture("vit_small_patch14_reg4_dinov2", init_values=1.0)
    original = timm_original(model)
    sd = dict(model.state_dict())
    cls_position = 0.1 * torch.randn(1, 1, WIDTH, generator=torch.Generator().manual_seed(9))
    sd["cls_token"] = sd["cls_token"] - cls_position
    sd["pos_embed"] = torch.cat([cls_position, sd["pos_embed"]], dim=1)
    sd["register_tokens"] = sd.pop("reg_token")
    sd["mask_token"] = torch.zeros(1, WIDTH)
    torch.save(sd, path)
    return original


def deit3_official(path):
    """facebookresearch/deit's DeiT III (``models_v2``): layer scale as ``blocks.N.gamma_1`` / ``gamma_2``."""
    model = timm_fixture("deit3_small_patch16_224")
    original = timm_original(model)
    sd = {
        k.replace(".ls1.gamma", ".gamma_1").replace(".ls2.gamma", ".gamma_2"): v for k, v in model.state_dict().items()
    }
    torch.save({"model": sd, "epoch": 799}, path)
    return original


@dataclass(frozen=True, eq=False)  # hashed by identity: each layout is measured once
class Layout:
    """One project's checkpoint: its row in the README, how it is saved, what a load needs and announces."""

    project: str
    save: Callable  # save(path) -> Original
    file: str = "model.pth"
    hints: dict = field(default_factory=dict)  # load_model arguments the file needs (none where it suffices)
    announced: tuple[str, ...] = ()  # fragments of the one warning


LAYOUTS = [
    Layout("torchvision `VisionTransformer`", torchvision_vit, announced=("num_heads",)),
    Layout(
        "OpenAI CLIP (full model, QuickGELU)",
        openai_clip,
        announced=("act_layer='quick_gelu'", "transformer", "--act-layer"),
    ),
    Layout(
        "open_clip training checkpoint (GELU)",
        open_clip_training,
        hints={"act_layer": "gelu"},
        announced=("dropped what is not the image tower",),
    ),
    Layout("Hugging Face `CLIPVisionModelWithProjection` folder", hf_clip_vision, file="hf"),
    Layout("Hugging Face `SiglipVisionModel` folder (attention pooling)", hf_siglip_vision, file="hf"),
    Layout("DINOv2 hub file with registers", dinov2_hub, announced=("mask_token",)),
    Layout("DeiT III official (`gamma_1`, `gamma_2`)", deit3_official, announced=("no_embed_class=True",)),
]


@dataclass
class Measurement:
    logit_error: float  # against the original's output
    map_error: float  # against the original's own maps
    warning: str  # the load's one warning
    analyzed: bool


@functools.cache
def measure(layout: Layout, root: Path) -> Measurement:
    folder = root / str(LAYOUTS.index(layout))
    folder.mkdir()
    original = layout.save(folder / layout.file)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = load_model(folder / layout.file, **layout.hints)
    notes = [str(w.message) for w in caught if issubclass(w.category, GuessWarning)]
    assert len(notes) <= 1, notes
    x = images()
    capture = extract_attention(model, x)
    return Measurement(
        logit_error=(capture.logits - original.output).abs().max().item(),
        map_error=(capture.pre - original.maps).abs().max().item(),
        warning=" ".join(notes),
        analyzed=analyze(model, x, progress=False, num_examples=1) is not None,
    )


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("layouts")


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda layout: layout.project)
def test_a_foreign_checkpoint_loads_as_its_original(layout, root):
    measured = measure(layout, root)
    assert measured.logit_error <= 1e-5 and measured.map_error <= 1e-5 and measured.analyzed
    assert all(fragment in measured.warning for fragment in layout.announced), measured.warning


def readme_table(root: Path) -> str:
    """The "Checkpoints of other projects" table, from the measurements."""
    rows = [
        "| checkpoint | logits and maps (equal to the original's within 1e-5) | loads with | guessed and announced |",
        "|---|---|---|---|",
    ]
    for layout in LAYOUTS:
        measured = measure(layout, root)
        equal = "equal" if max(measured.logit_error, measured.map_error) <= 1e-5 else "NOT EQUAL"
        load = "the file + " + ", ".join(f"`--{k.replace('_', '-')} {v}`" for k, v in layout.hints.items())
        guessed = re.findall(r"guessed (\w+)", measured.warning) + (
            ["dropped"] if "dropped" in measured.warning else []
        )
        load = load if layout.hints else "the file alone"
        rows.append(f"| {layout.project} | {equal} | {load} | {', '.join(guessed) or '-'} |")
    return "\n".join(rows)


@pytest.mark.slow
def test_readme_layouts_table_is_what_the_tests_measure(root):
    check_readme_table("layouts", readme_table(root), "tests/test_foreign_layouts.py")


# ----------------------------------------------------------------------------- model objects


def torchvision_object():
    from torchvision.models.vision_transformer import VisionTransformer

    return sharpen(VisionTransformer(SIZE, PATCH, DEPTH, 2, WIDTH, 2 * WIDTH, num_classes=5)), lambda m, x: m(x)


def open_clip_object():
    return open_clip_model(quick_gelu=True), lambda m, x: m.encode_image(x)


def hf_vit_object():
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(
        hidden_size=WIDTH,
        intermediate_size=2 * WIDTH,
        num_hidden_layers=DEPTH,
        num_attention_heads=4,
        image_size=SIZE,
        patch_size=PATCH,
        num_labels=5,
        hidden_act="gelu_pytorch_tanh",
    )
    return sharpen(ViTForImageClassification(config)), lambda m, x: m(pixel_values=x).logits


def hf_clip_object():
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    config = CLIPVisionConfig(
        hidden_size=WIDTH,
        intermediate_size=2 * WIDTH,
        num_hidden_layers=DEPTH,
        num_attention_heads=2,
        image_size=SIZE,
        patch_size=PATCH,
        projection_dim=16,
        hidden_act="gelu",
    )
    return sharpen(CLIPVisionModelWithProjection(config)), lambda m, x: m(pixel_values=x).image_embeds


@pytest.mark.parametrize("make", [torchvision_object, open_clip_object, hf_vit_object, hf_clip_object])
def test_convert_takes_model_objects_without_guessing(make):
    """Heads (2 and 4: not timm's 64-wide guess), activation and eps come from the object itself."""
    original, forward = make()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = convert(original)
    assert not [w for w in caught if "guessed" in str(w.message)]
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(model(x), forward(original, x), atol=1e-5, rtol=0)
    assert model.provenance["source"] == "object"


def test_convert_returns_a_timm_model_as_it_is():
    model = timm_fixture("vit_tiny_patch16_224")
    assert convert(model) is model


def test_an_open_clip_tower_with_attention_pooling_is_refused_not_built_as_a_class_token_tower():
    from deepvit_diag.checkpoints import clip
    from deepvit_diag.errors import DiagError

    sd = {
        "visual.conv1.weight": torch.zeros(8, 3, 4, 4),
        "visual.class_embedding": torch.zeros(8),
        "visual.positional_embedding": torch.zeros(5, 8),
        "visual.attn_pool.query": torch.zeros(4, 8),
    }
    assert clip.detect(sd) == clip.OPENAI
    with pytest.raises(DiagError, match=r"pools its tokens with attention \(attn_pool"):
        clip.convert(sd, clip.OPENAI)
