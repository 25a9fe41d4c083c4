"""Every attention family deepvit-diag reads, on tiny random timm models (2 blocks, 32 px, width 128 in two
heads of timm's usual width 64):

* the maps captured with fused attention on equal those of timm's own non-fused path (``fused_attn=False``
  on a copy, read with ``timm.utils.AttentionExtract``): softmax maps, the maps after head mixing
  (Re-attention, talking heads) and CaiT's class attention, within 1e-5;
* capture leaves the logits exactly as they are, and ``analyze`` runs;
* a plain state dict saved from the model loads back without ``arch=`` with the same logits wherever the
  weights determine the architecture; where they cannot, the one warning names each guess, and the hints
  it names (``load_model(..., **case.hints)``) give the same logits;
* architectures without one global T x T map per head are refused in one line.

The README's "Which models work" table is made from these measurements
(``test_readme_table_is_what_the_tests_measure``; ``DEEPVIT_DIAG_WRITE_README=1`` rewrites it).
"""

from __future__ import annotations

import copy
import functools
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import timm
import torch
from conftest import check_readme_table, randomize_norms, sharp_timm_model
from timm.utils import AttentionExtract

from deepvit_diag import analyze, extract_attention, load_model
from deepvit_diag.capture import AttentionRecorder
from deepvit_diag.checkpoints import GuessWarning
from deepvit_diag.errors import DiagError

TINY = dict(img_size=32, patch_size=8, embed_dim=128, depth=2, num_heads=2, num_classes=5)


@dataclass(frozen=True, eq=False)  # hashed by identity: each case is measured once
class Case:
    """One architecture: a timm name built tiny, and what a reload needs beyond the file.

    Attributes:
        family: the row's name in the README.
        name: the timm model (deepvit-diag's presets are registered with timm too).
        kwargs: constructor arguments beyond ``TINY``.
        hints: ``load_model`` arguments a saved state dict needs to give the same logits (what the weights
            cannot say and the family's convention gets wrong for this model); empty where the file alone does.
        announced: fragments the reload's warning must hold even where the guesses are right.
    """

    family: str
    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    hints: dict[str, Any] = field(default_factory=dict)
    announced: tuple[str, ...] = ()


CASES = [
    Case("ViT (AugReg, DeiT)", "vit_tiny_patch16_224"),
    Case("DeiT, distilled", "deit_tiny_distilled_patch16_224"),
    Case("DeiT III (layer scale)", "deit3_small_patch16_224"),
    Case("ViT with registers", "vit_small_patch14_reg4_dinov2"),
    Case("DINOv2 (any input size)", "vit_small_patch14_dinov2", dict(dynamic_img_size=True)),
    Case("CLIP image tower (pre-norm)", "vit_base_patch16_clip_224", announced=("norm_eps=1e-05",)),
    Case("OpenAI CLIP (QuickGELU)", "vit_base_patch16_clip_quickgelu_224", hints={"act_layer": "quick_gelu"}),
    Case("ViT with qk-norm", "vit_tiny_patch16_224", dict(qk_norm=True, num_heads=4)),
    Case("ViT, average pooling", "vit_base_patch16_gap_224"),
    Case("FlexiViT", "flexivit_small"),
    Case("EVA", "eva_giant_patch14_224", announced=("use_rot_pos_emb=False", "pre-norm blocks")),
    Case("EVA-02 (rotary)", "eva02_tiny_patch14_224", announced=("use_rot_pos_emb=True",)),
    Case("RoPE-ViT (rotary, no pos_embed)", "vit_small_patch16_rope_224", hints={"img_size": 32}),
    Case("RoPE-ViT, mixed (learned frequencies)", "vit_small_patch16_rope_mixed_ape_224"),
    Case("SigLIP image tower (attention pooling)", "vit_base_patch16_siglip_224"),
    Case("BEiT", "beit_base_patch16_224", dict(num_heads=4)),
    Case("BEiT v2", "beitv2_base_patch16_224", dict(num_heads=4)),
    Case("CaiT (talking heads)", "cait_xxs24_224", dict(num_heads=4)),
    Case("relative-position ViT", "vit_relpos_small_patch16_224", dict(num_heads=4), hints={"img_size": 32}),
    Case("relative-position ViT, shared", "vit_srelpos_small_patch16_224", hints={"img_size": 32}),
    Case(
        "relative-position ViT, post-norm",
        "vit_relpos_medium_patch16_rpn_224",
        hints={"img_size": 32, "arch": "vit_relpos_medium_patch16_rpn_224"},
    ),
    Case("DeepViT (Re-attention)", "deepvit16", dict(num_heads=4, mlp_ratio=3.0)),
    Case("DeepViT-S (CNN stem)", "deepvit_s", dict(num_heads=4, mlp_ratio=3.0), hints={"transform_scale": True}),
    # The paper's ViTs have heads of width 32 (384 / 12), so only its exact shape gets 12 heads without a hint.
    Case("ViT-NB (the paper's baselines)", "vit16", dict(num_heads=4, mlp_ratio=3.0), hints={"num_heads": 4}),
]
REFUSED = {
    "Swin": "swin_tiny_patch4_window7_224",
    "XCiT": "xcit_tiny_12_p16_224",
    "LeViT": "levit_128s",
    "PiT": "pit_ti_224",
    "MViTv2": "mvitv2_tiny",
    "CrossViT": "crossvit_tiny_240",
}


def images(n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@functools.cache
def model_of(case: Case) -> torch.nn.Module:
    return randomize_norms(sharp_timm_model(case.name, **{**TINY, **case.kwargs}))


def unfused(model: torch.nn.Module) -> torch.nn.Module:
    twin = copy.deepcopy(model)
    for module in twin.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = False
    return twin


def reference_maps(model: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """timm's non-fused path, in one traced forward: softmax outputs (``pre``, class attention) and what
    leaves ``attn_drop`` or DeepViT's ``hook_post`` (``post``: after the head mixing where there is one)."""
    names = ["*attn.softmax", "*attn.attn_drop", "*attn.hook_post"]
    nodes = AttentionExtract(unfused(model), names=names, method="fx")(x)
    blocks = [f"blocks.{i}.attn" for i in range(len(model.blocks))]
    maps = {
        "pre": torch.stack([nodes[f"{b}.softmax"] for b in blocks]),
        "post": torch.stack([nodes.get(f"{b}.hook_post", nodes.get(f"{b}.attn_drop")) for b in blocks]),
    }
    class_blocks = sorted(k for k in nodes if k.startswith("blocks_token_only.") and k.endswith("softmax"))
    if class_blocks:
        maps["class_attention"] = torch.stack([nodes[k][:, :, 0] for k in class_blocks])
    return maps


@dataclass
class Measurement:
    captured: list[str]  # "pre", "post", "class_attention": what capture returned as distinct maps
    capture_error: float  # largest difference from the non-fused reference
    logits_unchanged: bool
    reload_error: float  # logits of the file loaded without arch=, against the model's
    warning: str  # the reload's one warning ("" for none)
    hinted_error: float  # logits of the file loaded with case.hints
    analyzed_blocks: int


@functools.cache
def measure(case: Case, root: Path) -> Measurement:
    model, x = model_of(case), images()
    with torch.no_grad():
        plain = model(x)
    capture = extract_attention(model, x)
    reference = reference_maps(model, x)
    captured = {"pre": capture.pre}
    if capture.post is not capture.pre:
        captured["post"] = capture.post
    if capture.class_attention is not None:
        captured["class_attention"] = capture.class_attention
    error = max((captured[kind] - reference[kind]).abs().max().item() for kind in captured)

    path = root / f"{case.name}-{len(case.kwargs)}.pth"
    torch.save(model.state_dict(), path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reloaded = load_model(path)
    guesses = [str(w.message) for w in caught if issubclass(w.category, GuessWarning)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GuessWarning)
        hinted = load_model(path, **case.hints)
    result = analyze(model, x, progress=False, num_examples=1)
    return Measurement(
        captured=list(captured),
        capture_error=error,
        logits_unchanged=torch.equal(capture.logits, plain),
        reload_error=_logit_error(reloaded, plain, x),
        warning=" ".join(guesses),
        hinted_error=_logit_error(hinted, plain, x),
        analyzed_blocks=result.geometry.num_blocks,
    )


def _logit_error(loaded: torch.nn.Module, logits: torch.Tensor, x: torch.Tensor) -> float:
    size = loaded.pretrained_cfg["input_size"][1:]
    if tuple(size) != tuple(x.shape[-2:]) and not getattr(loaded, "dynamic_img_size", False):
        return float("inf")  # built for another size: not the same model
    with torch.no_grad():
        return (loaded(x) - logits).abs().max().item()


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("families")


@pytest.mark.parametrize("case", CASES, ids=[case.family for case in CASES])
def test_capture_equals_the_non_fused_reference_and_leaves_logits_alone(case, root):
    model = model_of(case)
    assert any(getattr(m, "fused_attn", False) for m in model.modules()) or case.name.startswith("cait")
    measured = measure(case, root)
    assert measured.capture_error <= 1e-5, f"{case.family}: capture differs by {measured.capture_error:.2e}"
    assert measured.logits_unchanged
    assert measured.analyzed_blocks == 2


@pytest.mark.parametrize("case", CASES, ids=[case.family for case in CASES])
def test_a_saved_file_loads_back_without_arch(case, root):
    measured = measure(case, root)
    if case.hints:  # the weights cannot say everything: the warning names what settles it
        for key in case.hints:
            assert key in measured.warning or (key == "arch" and "arch=NAME" in measured.warning), measured.warning
    else:
        assert measured.reload_error <= 1e-5, f"{case.family}: {measured.reload_error:.2e}; {measured.warning}"
    for fragment in case.announced:
        assert fragment in measured.warning
    assert measured.hinted_error <= 1e-5, f"{case.family} with {case.hints}: {measured.hinted_error:.2e}"


def test_talking_heads_and_class_attention_are_captured():
    case = next(case for case in CASES if case.name.startswith("cait"))
    capture = extract_attention(model_of(case), images(2))
    assert capture.mixing_blocks == [0, 1] and not torch.allclose(capture.post, capture.pre)
    assert capture.pre.shape == (2, 2, 4, 16, 16)  # patches only: CaiT's class token joins later
    assert capture.class_attention.shape == (2, 2, 4, 17)  # the class token's query over itself and 16 patches
    torch.testing.assert_close(capture.class_attention.sum(-1), torch.ones(2, 2, 4))


def test_talking_heads_matrices_are_shown_where_theta_is_shown():
    case = next(case for case in CASES if case.name.startswith("cait"))
    model = model_of(case)
    result = analyze(model, images(), progress=False, num_examples=1)
    infos = result.head_mixing()
    assert list(infos) == [0, 1] and result.geometry.head_mixing == "talking-heads"
    attn = model.blocks[1].attn
    assert infos[1].kind == "talking-heads"
    torch.testing.assert_close(torch.from_numpy(infos[1].matrix), attn.proj_w.weight.T.detach())
    torch.testing.assert_close(torch.from_numpy(infos[1].pre_softmax), attn.proj_l.weight.T.detach())
    from deepvit_diag.figures.head_mixing import theta_heatmaps

    figure = theta_heatmaps(result)
    assert "Talking-heads matrices" in figure.layout.title.text
    titles = [annotation.text for annotation in figure.layout.annotations]
    assert "block 2, before softmax" in titles and "block 2, after softmax" in titles


@pytest.mark.parametrize("family", REFUSED)
def test_attention_that_is_not_one_global_map_is_refused_in_one_line(family):
    with torch.device("meta"):
        model = timm.create_model(REFUSED[family])
    with pytest.raises(DiagError) as err:
        AttentionRecorder(model)
    message = str(err.value)
    assert "\n" not in message and REFUSED[family] in message and ".attn is " in message, message


# ----------------------------------------------------------------------------- the README's table


def readme_table(root: Path) -> str:
    """The "Which models work" table, from the measurements."""
    rows = [
        "| family | example | captured (equal to timm's non-fused path) | a plain state dict loads with | "
        "guessed and announced |",
        "|---|---|---|---|---|",
    ]
    kinds = {"pre": "softmax maps", "post": "maps after head mixing", "class_attention": "class attention"}
    for case in CASES:
        measured = measure(case, root)
        ok = measured.capture_error <= 1e-5 and measured.logits_unchanged
        captured = ", ".join(kinds[kind] for kind in measured.captured) if ok else "NOT EQUAL"
        if measured.reload_error <= 1e-5:
            load = "the file alone"
        elif measured.hinted_error <= 1e-5:
            load = "the file + " + ", ".join(_option(key, value) for key, value in case.hints.items())
        else:
            load = "FAILS"
        guessed = re.findall(r"guessed (\w+(?:-\w+)*)", measured.warning)
        rows.append(f"| {case.family} | `{case.name}` | {captured} | {load} | {', '.join(guessed) or '-'} |")
    for family, name in REFUSED.items():
        with torch.device("meta"):
            model = timm.create_model(name)
        try:
            AttentionRecorder(model)
            reason = "NOT REFUSED"
        except DiagError as err:
            reason = "refused: " + str(err).rsplit("; ", 1)[-1]
        rows.append(f"| {family} | `{name}` | {reason} | | |")
    return "\n".join(rows)


def _option(key: str, value: Any) -> str:
    if isinstance(value, bool):
        return f"`--{key.replace('_', '-')}`" if value else f"`--no-{key.replace('_', '-')}`"
    return f"`--{key.replace('_', '-')} {value}`"


@pytest.mark.slow
def test_readme_table_is_what_the_tests_measure(root):
    check_readme_table("models", readme_table(root), "tests/test_families.py")
