"""The terminal tables: they fit the console's width, as a table when it fits unfolded and
as ``field: value`` lines when it does not (80 columns when piped), and no cell is cut."""

from __future__ import annotations

import io

import pytest
import torch
from rich.console import Console

from deepvit_diag.analysis import analyze
from deepvit_diag.models import build_model
from deepvit_diag.summary import print_summary, print_sweep, summary_rows, sweep_rows
from deepvit_diag.sweep_runner import sweep

TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=4, mlp_ratio=2.0, num_classes=5)
OPTIONS = dict(batch_size=4, cka_chunk=4, device="cpu", progress=False)
LONG_LABEL = "checkpoints/a-rather-long-file-name-epoch120.safetensors"


@pytest.fixture(scope="module")
def models() -> list[torch.nn.Module]:
    torch.manual_seed(0)
    vit = build_model({"family": "vit", "kwargs": TINY}).eval()
    deepvit = build_model({"family": "deepvit", "kwargs": TINY}).eval()
    return [vit, deepvit]


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def printed(draw, width: int) -> list[str]:
    out = io.StringIO()
    draw(Console(file=out, width=width))
    return out.getvalue().splitlines()


def test_a_narrow_console_gets_whole_cells_one_per_line(models, images):
    result = analyze(models[0], images, **OPTIONS)
    results = {LONG_LABEL: result, "b": result}
    lines = printed(lambda console: print_summary(console, results, []), 80)
    body = lines[lines.index(next(line for line in lines if line.startswith("Attention-collapse summary"))) :]
    assert all(len(line) <= 80 for line in body)
    text = " ".join(" ".join(body).split())
    for label, cells in summary_rows(results):
        assert f"{label}: {cells[0]}" in text  # every cell whole, beside its row's name
    assert LONG_LABEL in lines


def test_a_wide_console_gets_the_table_with_one_line_of_headers(models, images):
    series = sweep(models, images, labels=["vit", "deepvit"], **OPTIONS)
    header, rows = sweep_rows(series)
    lines = printed(lambda console: print_sweep(console, series, []), 150)
    header_lines = [line for line in lines if "checkpoint" in line and "group" in line]
    assert len(header_lines) == 1 and all(title in header_lines[0] for title in header)
    for row in rows:
        assert any(all(cell in line for cell in row) for line in lines)  # a whole row on one line
    narrow = printed(lambda console: print_sweep(console, series, []), 60)
    assert f"  {header[-1]}: {rows[0][-1]}" in narrow and "…" not in "".join(narrow)
    assert all(len(line) <= 60 for line in narrow[narrow.index("vit") :])


def test_block_lists_are_compact():
    from deepvit_diag.summary import block_list

    assert block_list(range(32), 32) == "all 32"
    assert block_list([0, 1, 2, 3, 4, 5, 6, 7, 11], 32) == "1-8, 12"
    assert block_list([4], 1 + 4) == "5" and block_list([0], 1) == "1"


def test_a_plain_vit_summary_names_no_theta(models, images):
    from deepvit_diag.summary import summary_title

    plain = analyze(models[0], images, **OPTIONS)
    assert plain.geometry.head_mixing is None and "Θ" not in summary_title({"vit": plain})
    deep = analyze(models[1], images, **OPTIONS)
    assert deep.geometry.head_mixing == "re-attention" and "post-Θ" in summary_title({"vit": plain, "deepvit": deep})


def test_figures_of_plain_vits_name_no_theta(models, images):
    from deepvit_diag.figures.similarity import cross_head_curves, similarity_ratio

    plain = {"vit": analyze(models[0], images, **OPTIONS)}
    both = {**plain, "deepvit": analyze(models[1], images, **OPTIONS)}
    for draw in (cross_head_curves, similarity_ratio):
        assert "Θ" not in draw(plain).layout.title.text and "attention maps" in draw(plain).layout.title.text
        assert "post-Θ" in draw(both).layout.title.text
