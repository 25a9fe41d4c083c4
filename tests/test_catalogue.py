"""The catalogue: every entry's arrays are in results, every figure exists and has a caption,
and the report draws exactly the catalogue's figures with the catalogue's captions (the app
side is in test_app.py)."""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

from deepvit_diag import catalogue
from deepvit_diag.analysis import analyze, compare, run
from deepvit_diag.capture import AttentionRecorder, extract_attention
from deepvit_diag.catalogue import METRICS, SECTIONS, Batch
from deepvit_diag.errors import DiagError
from deepvit_diag.example_images import describe_examples
from deepvit_diag.figures import drawing
from deepvit_diag.figures import similarity as similarity_figures
from deepvit_diag.figures.registry import FIGURE_FUNCTIONS
from deepvit_diag.introspection import Geometry
from deepvit_diag.metrics import token_distances
from deepvit_diag.report import report_figures
from deepvit_diag.results import FORMAT_VERSION, ComparisonResult
from deepvit_diag.settings import GRID_RHO_STEPS, GRID_TAU_STEPS, Settings
from deepvit_diag.shard_checks import check_arrays
from deepvit_diag.shards import merge_shards, save_shard

LABELS = ["vit (A)", "deepvit (B)"]
TINY = dict(depth=3, embed_dim=32, num_heads=4, img_size=32, patch_size=8, num_classes=10)


def tiny(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, **TINY).eval()


@pytest.fixture(scope="module")
def comparison() -> ComparisonResult:
    images = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    return compare(tiny("vit16"), tiny("deepvit16"), images, device="cpu", num_examples=2, progress=False)


def test_every_entry_has_its_arrays_in_results(comparison):
    for metric in METRICS:
        for result in (comparison.a, comparison.b):
            missing = set(metric.arrays) - result.arrays.keys()
            assert not missing, f"{metric.name}: {missing}"
        # The DeepViT (Conv2d Theta, BatchNorm) has every optional array too, but CaiT's talking-heads matrices.
        talking_heads = {"theta_pre_softmax", "theta_pre_softmax_bias"}
        assert set(metric.optional_arrays) - talking_heads <= comparison.b.arrays.keys(), metric.name
    declared = {name for metric in METRICS for name in (*metric.arrays, *metric.optional_arrays)}
    assert set(comparison.b.arrays) == declared - talking_heads  # nothing in a result the catalogue does not name


def test_measures_return_exactly_their_arrays():
    model = tiny("deepvit16")
    with torch.no_grad(), AttentionRecorder(model, maps=False) as recorder:
        model.eval()(torch.rand(2, 3, 32, 32))
        capture = recorder.take()
    geometry = Geometry(3, 4, 1, (8, 8), (4, 4), (32, 32), (0, 1, 2))
    batch = Batch(capture, geometry, Settings(), token_distances((4, 4), 8))
    for metric in (m for m in METRICS if m.measure):
        values = metric.measure(batch)
        assert set(values) == set(metric.arrays), metric.name
        assert all(isinstance(value, torch.Tensor) for value in values.values())


def test_every_figure_is_a_function_with_a_caption_and_a_section():
    keys = [spec.key for metric in METRICS for spec in metric.figures]
    assert len(keys) == len(set(keys))
    for metric in METRICS:
        assert metric.figures, metric.name
        for spec in metric.figures:
            assert inspect.isfunction(spec.function), spec.name
            assert set(spec.arguments) <= set(inspect.signature(spec.function).parameters), spec.key
            assert spec.caption and spec.section in SECTIONS
    assert [section for section in SECTIONS if catalogue.figures_in(section)] == list(SECTIONS)


def test_every_registered_figure_is_in_the_catalogue_and_only_those():
    """The ``@figure`` registry and the catalogue's specs (analyses, sweeps and ablations) name the
    same functions, so no figure function is dead and no spec points at an unregistered one."""
    specs = [spec for metric in METRICS for spec in metric.figures]
    specs += [*catalogue.SWEEP_FIGURES, *catalogue.ABLATION_FIGURES]
    assert {spec.function for spec in specs} == set(FIGURE_FUNCTIONS.values())
    assert all(spec.section == catalogue.SWEEP_SECTION for spec in catalogue.SWEEP_FIGURES)
    assert all(spec.section == catalogue.ABLATION_SECTION for spec in catalogue.ABLATION_FIGURES)
    with pytest.raises(ValueError, match="not a registered @figure function"):
        catalogue.Figure(len, SECTIONS[0], "caption")


def test_report_draws_the_catalogue_figures_with_their_captions(comparison):
    results = dict(zip(LABELS, (comparison.a, comparison.b)))
    expected = [
        (drawn.element_id, drawn.caption)
        for section in SECTIONS
        for spec in catalogue.figures_in(section)
        for drawn in drawing.draw(spec, results, comparison)
    ]
    assert [(item.div_id, item.caption) for item in report_figures(comparison, LABELS)] == expected
    drawn_names = {element.removeprefix("fig-") for element, _ in expected}
    for metric in METRICS:
        for spec in metric.figures:
            assert any(name.startswith(spec.key.replace("_", "-")) for name in drawn_names), spec.key
    for _, caption in expected:
        assert "{" not in caption and "}" not in caption, caption


def test_captions_fill_in_the_settings_and_labels(comparison):
    results = dict(zip(LABELS, (comparison.a, comparison.b)))
    (ratio,) = drawing.draw(catalogue.figure_named("similarity_ratio"), results)
    assert "k = 2" in ratio.caption and "tau = 0.5" in ratio.caption and "rho = 0.9" in ratio.caption
    (theta,) = drawing.draw(catalogue.figure_named("theta_heatmaps"), results)  # the plain ViT has none
    assert theta.caption.startswith("deepvit (B):") and theta.element_id == "fig-theta-heatmaps-1"
    assert drawing.draw(catalogue.figure_named("cka_across"), results) == []  # needs a comparison
    examples = drawing.draw(catalogue.figure_named("cls_attention"), results, examples=[1])
    assert [item.element_id for item in examples] == ["fig-cls-attention-0-1", "fig-cls-attention-1-1"]
    # Named as the picker names it: the file, the bundled entry or "image N" (here a tensor's).
    name = describe_examples(comparison.a.arrays)[1].short_name
    assert examples[0].caption.startswith(f"{LABELS[0]}, {name}: how much the CLS token"), examples[0].caption


def test_theta_arrays_are_stacked_over_the_reattention_blocks(comparison):
    arrays = comparison.b.arrays
    assert arrays["theta"].shape == (3, 4, 4) and arrays["theta_blocks"].tolist() == [0, 1, 2]
    assert arrays["theta_running_var"].shape == (3, 4)
    infos = comparison.b.head_mixing()
    np.testing.assert_array_equal(infos[1].matrix, arrays["theta"][1])
    assert infos[1].kind == "re-attention" and infos[1].norm == "batch-norm"
    assert comparison.a.arrays["theta"].shape == (0, 4, 4) and comparison.a.head_mixing() == {}


def prefix_attention(maps: torch.Tensor, num_prefix_tokens: int = 1) -> torch.Tensor:
    """docs/adding-a-metric.md, step 1 (written here, not shipped)."""
    maps = maps.float()
    return maps[..., :num_prefix_tokens].sum(dim=-1).mean(dim=(1, 3))


def test_adding_a_metric_is_one_function_and_one_entry(monkeypatch, tmp_path):
    """docs/adding-a-metric.md, step 2: with one more entry, the analysis streams the new
    array exactly, a saved result must hold it, the report draws it with its caption and
    merge adds its shards up."""
    entry = catalogue.Metric(
        "prefix attention",
        ("prefix_attention",),
        (
            catalogue.Figure(
                similarity_figures.head_curves,
                "Attention statistics per block",
                "Share of each query's softmax attention that goes to the prefix tokens; dots are single heads.",
                arguments={"array": "prefix_attention", "y_title": "share of attention", "title": "Prefix attention"},
                key="prefix_attention_curves",
            ),
        ),
        measure=lambda batch: {
            "prefix_attention": prefix_attention(batch.maps("pre"), batch.geometry.num_prefix_tokens)
        },
        sums={"prefix_attention": catalogue.Sum("LH", 0.0, 1.0)},
    )
    monkeypatch.setattr(catalogue, "METRICS", (*METRICS, entry))
    model = tiny("deepvit16")
    images = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    result = analyze(model, images, batch_size=2, device="cpu", progress=False)
    expected = prefix_attention(extract_attention(model, images).pre)
    np.testing.assert_allclose(result.arrays["prefix_attention"], expected.numpy(), rtol=1e-5, atol=1e-7)
    assert "prefix_attention" in catalogue.required_arrays()
    figures_drawn = {item.div_id: item.caption for item in report_figures(result, ["deepvit"])}
    assert figures_drawn["fig-prefix-attention-curves"] == entry.figures[0].caption
    # merge adds the new sums up from the shards, checked against the entry's Sum, with no other change.
    for index in range(2):
        folder = tmp_path / f"shard{index}"
        folder.mkdir()
        done = run([model], images, Settings(batch_size=2, cka_chunk=4, device="cpu"), shard=f"{index + 1}/2")
        save_shard(folder, done.tally, done.shard, ["deepvit"])
    merged, _ = merge_shards([tmp_path / "shard1", tmp_path / "shard0"])
    np.testing.assert_allclose(merged.arrays["prefix_attention"], expected.numpy(), rtol=1e-5, atol=1e-7)


def test_docs_metrics_names_every_array_and_states_the_verdicts_rules_as_the_code_has_them():
    """docs/metrics.md: every array of the catalogue, a section on the regimes, the robustness grid, pre- vs
    post-Θ maps and results saved before a metric existed, with the cut-off and grid steps the code uses."""
    doc = " ".join((Path(__file__).resolve().parents[1] / "docs" / "metrics.md").read_text().split())
    assert not [name for name in catalogue.required_arrays() if f"`{name}`" not in doc]
    headings = {part.split(" #")[0].strip() for part in doc.split(" ## ")[1:]}
    sections = (
        "Attention regimes",
        "Robustness grid",
        "Pre-Θ and post-Θ maps",
        "Results saved before a metric existed",
    )
    assert not [section for section in sections if not any(h.startswith(section + " ") for h in headings)]
    assert f"exceeds **{catalogue.NEAR_UNIFORM_CUTOFF:g}**" in doc
    for symbol, steps in (("τ", GRID_TAU_STEPS), ("ρ", GRID_RHO_STEPS)):
        step = steps[1] - steps[0]
        assert f"{symbol} − {-steps[0]:g} ... {symbol} + {steps[-1]:g} in steps of {step:g}" in doc, symbol
    assert f"Format {FORMAT_VERSION} (this version) holds every metric of the catalogue" in doc


def test_every_summed_array_declares_its_sum_and_merge_checks_it(tmp_path):
    """Each catalogue sum is checked against its entry's ``Sum`` (no table kept by hand): a
    valid sum passes, one outside the declared range or shape is refused."""
    geometry = Geometry(3, 4, 1, (8, 8), (4, 4), (32, 32), (0, 1, 2))
    sizes = {"L": 3, "H": 4, "K": 2, "U": 3}
    declared = catalogue.summed_arrays()
    measured = {name for metric in METRICS if metric.measure is not None for name in metric.arrays}
    assert set(declared) == measured
    count = 5
    for name, spec in declared.items():
        shape = tuple(sizes[letter] for letter in spec.shape)
        valid = {key: np.full(tuple(sizes[c] for c in s.shape), count * 0.5) for key, s in declared.items()}
        valid["similarity_pre"] = np.full((3, 3), float(count))
        check_arrays(tmp_path / "tally.npz", count, [geometry], [valid], [{}], {})
        if spec.high is not None:
            too_high = {**valid, name: np.full(shape, count * 10.0)}
            with pytest.raises(DiagError, match=f"{name} is outside what 5 images"):
                check_arrays(tmp_path / "tally.npz", count, [geometry], [too_high], [{}], {})
        wrong_shape = {**valid, name: np.zeros((*shape, 2))}
        with pytest.raises(DiagError, match=f"{name} has shape"):
            check_arrays(tmp_path / "tally.npz", count, [geometry], [wrong_shape], [{}], {})


def test_a_measured_metric_without_its_sums_is_refused():
    with pytest.raises(ValueError, match="needs a Sum for each of its arrays"):
        catalogue.Metric("x", ("x",), (), measure=lambda batch: {})
    with pytest.raises(ValueError, match="letters of LHKU"):
        catalogue.Sum("LT")
