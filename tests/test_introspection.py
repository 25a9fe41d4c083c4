"""Models refused or unwrapped before an analysis starts (``introspection.usable_model``):
each refusal is a one-line DiagError that says what is wrong and what to do."""

from __future__ import annotations

import pytest
import timm
import torch
from conftest import TINY_KWARGS

import deepvit_diag as dd
from deepvit_diag.introspection import usable_model
from deepvit_diag.models import build_model


def test_a_model_on_the_meta_device_is_refused_with_what_to_do(images):
    with torch.device("meta"):
        model = build_model({"family": "vit", "kwargs": TINY_KWARGS})
    with pytest.raises(dd.DiagError, match=r"weights on the meta device .*to_empty\(device='cpu'\).*load_state_dict"):
        dd.analyze(model, images)


def test_a_compiled_model_is_analysed_through_its_original_module(tiny_model, images):
    model = tiny_model("vit")
    compiled = torch.compile(model)
    assert usable_model(compiled) is model
    assert dd.analyze(compiled, images).ratio().tolist() == dd.analyze(model, images).ratio().tolist()


def test_a_model_that_is_not_a_vision_transformer_is_named_as_such(images):
    resnet = timm.create_model("resnet18", num_classes=5)
    with pytest.raises(dd.DiagError, match="^resnet18 is not a vision transformer: "):
        dd.analyze(resnet, images)
    with pytest.raises(dd.DiagError, match=r"model must be a torch.nn.Module .*got str"):
        dd.analyze("vit_tiny_patch16_224", images)
