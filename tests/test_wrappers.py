"""Training checkpoints: the model inside wrappers and training dicts loads with the original's logits, and
what was chosen or dropped is announced in one line (``deepvit_diag.checkpoints.wrappers``, ``safe_load``).

Each file is built the way its project saves it, key for key, around a tiny timm ViT: DINO / iBOT
(``{'student', 'teacher', ...}`` with ``module.backbone.`` and a ``head.mlp`` / ``head.last_layer``
projection head), MoCo v3 (``module.base_encoder.``, ``module.momentum_encoder.``, ``module.predictor.``,
a ``head.N.`` projection MLP), PyTorch Lightning (``state_dict`` with ``model.``), ``AveragedModel``
(``n_averaged``), MAE pre-training (``mask_token``, ``decoder_*``) and a nested ``{'model': {'state_dict'}}``.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import sharp_timm_model

from deepvit_diag.checkpoints import GuessWarning, load_model
from deepvit_diag.errors import DiagError

TINY = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=1, num_classes=0)


@pytest.fixture(scope="module")
def pair():
    """Two different tiny ViTs: a teacher and a student."""
    return sharp_timm_model("vit_tiny_patch16_224", seed=1, **TINY), sharp_timm_model(
        "vit_tiny_patch16_224", seed=2, **TINY
    )


def prefixed(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in sd.items()}


def dino_head(prefix: str) -> dict[str, torch.Tensor]:
    """DINO's DINOHead: an MLP and a weight-normalised last layer."""
    return {
        prefix + "head.mlp.0.weight": torch.randn(32, 64),
        prefix + "head.mlp.0.bias": torch.randn(32),
        prefix + "head.last_layer.weight_g": torch.randn(16, 1),
        prefix + "head.last_layer.weight_v": torch.randn(16, 32),
    }


def load(tmp_path, checkpoint, **kwargs):
    path = tmp_path / "checkpoint.pth"
    torch.save(checkpoint, path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = load_model(path, **kwargs)
    notes = [str(w.message) for w in caught if issubclass(w.category, GuessWarning)]
    assert len(notes) <= 1
    return model, notes[0] if notes else ""


def same_logits(model, reference):
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), atol=1e-5, rtol=0)


def dino_checkpoint(teacher, student):
    return {
        "student": {**prefixed(student.state_dict(), "module.backbone."), **dino_head("module.")},
        "teacher": {**prefixed(teacher.state_dict(), "backbone."), **dino_head("")},
        "epoch": 100,
        "dino_loss": {"center": torch.zeros(1, 16)},
    }


def test_dino_takes_the_teacher_and_says_so(tmp_path, pair):
    teacher, student = pair
    model, note = load(tmp_path, dino_checkpoint(teacher, student))
    same_logits(model, teacher)
    assert "teacher" in note and "key='student' (--key student)" in note
    assert "head. (training networks beside 'backbone.')" in note
    assert model.provenance["entry"] == "teacher" and model.provenance["epoch"] == 100


def test_key_student_takes_the_student(tmp_path, pair):
    teacher, student = pair
    model, note = load(tmp_path, dino_checkpoint(teacher, student), key="student")
    same_logits(model, student)
    assert "teacher" not in note and model.provenance["entry"] == "student"


def test_key_names_a_missing_entry_in_one_line(tmp_path, pair):
    with pytest.raises(DiagError, match=r"no entry 'pupil' \('pupil' is not among: student, teacher, epoch"):
        load(tmp_path, dino_checkpoint(*pair), key="pupil")


def test_moco_v3_takes_the_base_encoder(tmp_path, pair):
    teacher, student = pair
    moco_head = {
        "head.0.weight": torch.randn(32, 64),
        "head.1.weight": torch.randn(32),
        "head.3.weight": torch.randn(8, 32),
    }
    state = {
        **prefixed({**teacher.state_dict(), **moco_head}, "module.base_encoder."),
        **prefixed({**student.state_dict(), **moco_head}, "module.momentum_encoder."),
        "module.predictor.0.weight": torch.randn(32, 8),
    }
    model, note = load(tmp_path, {"state_dict": state, "epoch": 3, "arch": "vit_small"})
    same_logits(model, teacher)
    assert "momentum_encoder." in note and "predictor." in note and "head.0.weight" in note


def test_lightning_model_prefix(tmp_path, pair):
    teacher, _ = pair
    model, note = load(tmp_path, {"state_dict": prefixed(teacher.state_dict(), "model."), "global_step": 7})
    same_logits(model, teacher)


def test_averaged_model_drops_its_count(tmp_path, pair):
    teacher, _ = pair
    averaged = {"n_averaged": torch.tensor(5), **prefixed(teacher.state_dict(), "module.")}
    model, note = load(tmp_path, {"model_ema": averaged})
    same_logits(model, teacher)
    assert "n_averaged (AveragedModel's count of averaged models)" in note


def test_mae_pretraining_keeps_the_encoder(tmp_path, pair):
    teacher, _ = pair
    decoder = {
        "mask_token": torch.zeros(1, 1, 32),
        "decoder_embed.weight": torch.randn(32, 64),
        "decoder_blocks.0.norm1.weight": torch.ones(32),
        "decoder_pred.weight": torch.randn(192, 32),
    }
    model, note = load(tmp_path, {"model": {**teacher.state_dict(), **decoder}})
    same_logits(model, teacher)
    assert "mask_token (the mask token of masked image modelling)" in note and "MAE's decoder" in note


def test_nested_entries(tmp_path, pair):
    teacher, _ = pair
    model, _ = load(tmp_path, {"model": {"state_dict": teacher.state_dict()}, "optimizer": {}})
    same_logits(model, teacher)
    assert model.provenance["entry"] == "model.state_dict"


def test_unilm_beit_index_buffers_are_dropped(tmp_path):
    """microsoft/unilm's BEiT files hold timm's keys plus each block's relative_position_index buffer."""
    beit = sharp_timm_model(
        "beit_base_patch16_224", img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2, num_classes=5
    )
    state = dict(beit.state_dict())
    for index, block in enumerate(beit.blocks):
        state[f"blocks.{index}.attn.relative_position_index"] = block.attn.relative_position_index
    model, note = load(tmp_path, {"model": state})
    same_logits(model, beit)
    assert "relative-position index buffers (timm computes them)" in note
