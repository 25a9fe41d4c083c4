"""Shared fixtures: tiny models (2-4 blocks, width 32, 4 heads, 32 px images) and an isolated weight store."""

from __future__ import annotations

import os
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import timm
import torch
from torch import nn

from deepvit_diag.models import build_model

if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest -n N runs one worker per core: more torch threads than that make every small op of the tiny
    # test models wait for the others (about ten times slower on a busy machine).
    torch.set_num_threads(1)

TINY_KWARGS = dict(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=4, mlp_ratio=2.0, num_classes=5)


def randomize_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm/LayerNorm non-trivial running statistics and affine parameters, so that a
    comparison would notice a norm that is skipped, applied in training mode or applied to the wrong axis."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)):
                m.weight.copy_(1 + 0.3 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.3 * torch.randn(m.bias.shape, generator=g))
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.2 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
                m.num_batches_tracked.fill_(7)
    return model


def sharp_timm_model(name: str, seed: int = 0, **kwargs) -> nn.Module:
    """``timm.create_model(name, **kwargs)`` in eval mode with larger random Linear weights,
    so maps are far from uniform and differ between blocks. timm draws the other initial
    weights (patch and position embeddings, Theta) from the global generator, which is
    seeded first: the model is the same whichever tests ran before it in the process."""
    torch.manual_seed(seed)
    model = timm.create_model(name, **kwargs)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear):
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * 0.15)
    return model.eval()


@pytest.fixture
def randomize():
    """``randomize(model, seed=0)``: ``randomize_norms`` for models built inside a test (e.g. vit-pytorch's)."""
    return randomize_norms


@pytest.fixture
def tiny_model():
    """Factory ``tiny_model(family="deepvit", seed=0, **kwargs)``: an eval-mode tiny model with ``.arch``."""

    def make(family: str = "deepvit", seed: int = 0, **kwargs) -> nn.Module:
        torch.manual_seed(seed)
        model = build_model({"family": family, "kwargs": {**TINY_KWARGS, **kwargs}})
        return randomize_norms(model, seed).eval()

    return make


@pytest.fixture
def images() -> torch.Tensor:
    """Two random 3 x 32 x 32 images."""
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.fixture(autouse=True)
def _private_weight_store(tmp_path_factory, monkeypatch):
    """No test reads or writes the user's real weight store."""
    monkeypatch.setenv("DEEPVIT_DIAG_HOME", str(tmp_path_factory.mktemp("deepvit_diag_home")))


@pytest.fixture
def weight_store(tmp_path, monkeypatch):
    """An empty weight store and an empty bundled-weights directory: ``.store`` and ``.bundled`` paths."""
    home = tmp_path / "home"
    bundled = tmp_path / "bundled"
    bundled.mkdir()
    monkeypatch.setenv("DEEPVIT_DIAG_HOME", str(home))
    monkeypatch.setattr("deepvit_diag.checkpoints.store.BUNDLED_DIR", bundled)
    return SimpleNamespace(store=home / "weights", bundled=bundled)


README = Path(__file__).resolve().parent.parent / "README.md"


def check_readme_table(name: str, table: str, test_file: str) -> None:
    """README.md's table between ``<!-- NAME-table:start -->`` and ``<!-- NAME-table:end -->`` must be ``table``
    (what the tests measured); ``DEEPVIT_DIAG_WRITE_README=1`` rewrites it instead."""
    start, end = f"<!-- {name}-table:start -->", f"<!-- {name}-table:end -->"
    text = README.read_text()
    match = re.compile(re.escape(start) + r"\n(.*?)" + re.escape(end), re.S).search(text)
    assert match, f"README.md lacks the {start} ... {end} markers"
    if os.environ.get("DEEPVIT_DIAG_WRITE_README") == "1":
        README.write_text(text[: match.start(1)] + table + "\n" + text[match.end(1) :])
        return
    assert match.group(1) == table + "\n", (
        f"README.md's {name} table differs from what the tests measure; rewrite it with "
        f"DEEPVIT_DIAG_WRITE_README=1 python -m pytest {test_file} -k readme"
    )
