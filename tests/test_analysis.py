"""Streaming analysis: batch-by-batch results equal the metrics of all images at once,
for every kind of image input; results save and load back equal."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from conftest import sharp_timm_model
from PIL import Image
from timm.data import create_transform, resolve_data_config
from torch import nn

import deepvit_diag.models  # noqa: F401  (registers the presets)
from deepvit_diag import analysis as analysis_module
from deepvit_diag.analysis import analyze, compare
from deepvit_diag.budget import Plan, plan
from deepvit_diag.capture import extract_attention
from deepvit_diag.errors import DiagError
from deepvit_diag.introspection import Geometry, num_prefix_tokens
from deepvit_diag.metrics import (
    MinibatchCKA,
    attention_entropy,
    cross_head_similarity,
    cross_layer_similarity,
    head_mixing_matrices,
    mean_attention_distance,
    rank_collapse,
    similarity_ratio,
    token_similarity,
)
from deepvit_diag.preprocessing import to_rgb
from deepvit_diag.results import AnalysisResult, ComparisonResult
from deepvit_diag.settings import Settings

TINY = dict(embed_dim=32, num_heads=4, img_size=32, patch_size=8, num_classes=10)
NUM_IMAGES = 7
QUIET = dict(progress=False, cka_chunk=4)


@pytest.fixture(scope="module")
def deepvit() -> nn.Module:
    """Re-attention in blocks 1 and 2 only, so post differs from pre in part of the model."""
    return sharp_timm_model("deepvit16", depth=3, apply_transform=[False, True, True], **TINY)


@pytest.fixture(scope="module")
def vit() -> nn.Module:
    return sharp_timm_model("vit16", seed=1, depth=2, **TINY)


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.randn(NUM_IMAGES, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def pictures() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    sizes = [(40, 50), (32, 32), (60, 36), (33, 47), (32, 40)]
    modes = ["RGB", "L", "RGBA", "RGB", "L"]
    made = []
    for (height, width), mode in zip(sizes, modes):
        channels = {"RGB": (3,), "L": (), "RGBA": (4,)}[mode]
        made.append(Image.fromarray(rng.integers(0, 255, (height, width, *channels), dtype=np.uint8), mode=mode))
    return made


def reference_tensor(model: nn.Module, pictures: list[Image.Image]) -> torch.Tensor:
    """timm's eval transform for the model's data config, written out here, after the
    project's RGB conversion (alpha on white)."""
    transform = create_transform(**resolve_data_config({}, model=model))
    return torch.stack([transform(to_rgb(picture)) for picture in pictures])


def expected_arrays(model: nn.Module, x: torch.Tensor, k: int = 2, tau: float = 0.5, axis: str = "columns") -> dict:
    """All images in one capture, metrics from the literal reference functions."""
    capture = extract_attention(model, x)
    prefix = num_prefix_tokens(model)
    arrays = {}
    for kind in ("pre", "post"):
        maps = getattr(capture, kind)
        arrays[f"similarity_{kind}"] = cross_layer_similarity(maps, axis)
        arrays[f"ratio_{kind}"] = similarity_ratio(maps, k, tau, axis)
        arrays[f"cross_head_{kind}"] = cross_head_similarity(maps, axis)
    arrays["entropy"] = attention_entropy(capture.pre)
    arrays["attention_distance"] = mean_attention_distance(capture.pre, 8, prefix, (4, 4))
    arrays["token_similarity"] = token_similarity(capture.hidden, prefix)
    arrays["rank_residual"] = rank_collapse(capture.hidden)
    cka = MinibatchCKA(chunk_size=4)
    cka.update(capture.hidden.flatten(2))
    arrays["cka"] = cka.result()["a"]
    return {name: value.numpy() for name, value in arrays.items()}


def assert_matches(result: AnalysisResult, expected: dict, num_images: int) -> None:
    assert result.num_images == num_images
    # A ratio is a share of the H * T vectors of every image: allow one vector to flip at tau.
    one_vector = 1.01 / (result.geometry.num_heads * result.geometry.num_tokens * num_images)
    for name, value in expected.items():
        atol = one_vector if name.startswith("ratio") else 2e-6
        np.testing.assert_allclose(result.arrays[name], value, rtol=1e-5, atol=atol, err_msg=name)


@pytest.mark.parametrize("batch_size", [1, 3, NUM_IMAGES])
def test_streaming_equals_all_at_once(deepvit, x, batch_size):
    result = analyze(deepvit, x, batch_size=batch_size, **QUIET)
    assert_matches(result, expected_arrays(deepvit, x), NUM_IMAGES)
    assert result.geometry.mixing_blocks == (1, 2)
    assert result.settings.batch_size == batch_size and result.settings.dtype == "float32"
    infos = head_mixing_matrices(deepvit)
    np.testing.assert_array_equal(result.arrays["theta_blocks"], [1, 2])
    np.testing.assert_array_equal(result.arrays["theta"], np.stack([info.matrix for info in infos.values()]))
    np.testing.assert_array_equal(
        result.arrays["theta_running_var"], np.stack([info.running_var for info in infos.values()])
    )
    assert sorted(result.head_mixing()) == [1, 2]
    np.testing.assert_array_equal(result.head_mixing()[2].matrix, infos[2].matrix)


@pytest.mark.parametrize(
    ("batch_size", "chunk", "axis"), [(1, 1, "columns"), (3, 5, "columns"), (2, 16, "rows"), (3, 7, "rows")]
)
def test_any_batch_and_chunk_of_vectors_gives_the_reference_numbers(deepvit, x, monkeypatch, batch_size, chunk, axis):
    """Maps rebuilt from queries and keys a chunk at a time (``score_statistics``), with Re-attention
    in part of the model, equal the literal reference functions on the whole maps."""
    monkeypatch.setattr(analysis_module, "plan", lambda shapes, budget, requested, device: Plan(batch_size, (chunk,)))
    result = analyze(deepvit, x, batch_size=4, axis=axis, **QUIET)
    assert result.computation["final_batch_size"] == batch_size
    assert_matches(result, expected_arrays(deepvit, x, axis=axis), NUM_IMAGES)


def test_talking_heads_numbers_equal_the_reference():
    model = sharp_timm_model("cait_xxs24_224", depth=2, depth_token_only=1, **TINY)
    x = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    result = analyze(model, x, batch_size=2, num_examples=2, **QUIET)
    assert result.geometry.head_mixing == "talking-heads" and result.geometry.num_prefix_tokens == 0
    assert_matches(result, expected_arrays(model, x), 5)
    capture = extract_attention(model, x[:2])
    for kind in ("pre", "post"):  # no class token among the patches: the mean weight of all queries
        expected = getattr(capture, kind).mean(dim=-2).transpose(0, 1).reshape(2, 2, 4, 4, 4)
        np.testing.assert_allclose(result.arrays[f"example_cls_{kind}"], expected.numpy(), rtol=1e-5, atol=1e-6)


def test_memory_budget_chooses_the_batch_and_the_chunk(deepvit, x, monkeypatch):
    chosen = []
    monkeypatch.setattr(analysis_module, "plan", lambda *args: chosen.append(plan(*args)) or chosen[-1])
    result = analyze(deepvit, x, batch_size=4, memory_budget=1, **QUIET)
    (made,) = chosen
    assert made.batch_size == result.computation["final_batch_size"] <= 4 and made.chunks[0] <= 17
    assert result.computation["rows_per_chunk"] == [made.chunks[0]]
    assert_matches(result, expected_arrays(deepvit, x), NUM_IMAGES)
    assert result.settings.memory_budget == 1


def test_rows_axis_and_other_neighbourhood(vit, x):
    result = analyze(vit, x, batch_size=2, k=1, tau=0.3, axis="rows", **QUIET)
    assert_matches(result, expected_arrays(vit, x, k=1, tau=0.3, axis="rows"), NUM_IMAGES)


def test_plain_vit_post_is_pre(vit, x):
    result = analyze(vit, x, batch_size=4, **QUIET)
    for name in ("similarity", "ratio", "cross_head"):
        np.testing.assert_array_equal(result.arrays[f"{name}_post"], result.arrays[f"{name}_pre"])
    assert result.geometry.mixing_blocks == () and result.head_mixing() == {}
    assert result.geometry.head_mixing is None and result.to_document()["geometry"]["head_mixing"] is None
    assert result.arrays["theta"].shape == (0, 4, 4) and result.arrays["theta_blocks"].shape == (0,)


def test_timm_vit_with_register_tokens_uses_its_prefix():
    model = sharp_timm_model("vit_tiny_patch16_224", depth=2, reg_tokens=2, **TINY)
    x = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    result = analyze(model, x, batch_size=2, num_examples=2, **QUIET)
    assert result.geometry.num_prefix_tokens == 3 and result.geometry.num_tokens == 19
    assert_matches(result, expected_arrays(model, x), 5)
    pre = extract_attention(model, x).pre
    expected_cls = pre[:, :2, :, 0, 3:].transpose(0, 1).reshape(2, 2, 4, 4, 4)
    np.testing.assert_allclose(result.arrays["example_cls_pre"], expected_cls.numpy(), atol=1e-7)


def test_examples_are_the_first_images_with_their_cls_attention(deepvit, x):
    result = analyze(deepvit, x, batch_size=2, num_examples=3, **QUIET)
    capture = extract_attention(deepvit, x[:3])
    pixels = ((x[:3] * 0.5 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1)
    np.testing.assert_array_equal(result.arrays["example_images"], pixels.numpy())
    assert result.arrays["example_images"].dtype == np.uint8
    for kind in ("pre", "post"):
        cls_rows = getattr(capture, kind)[:, :, :, 0, 1:]  # (L, E, H, 16)
        expected = cls_rows.transpose(0, 1).reshape(3, 3, 4, 4, 4).numpy()
        np.testing.assert_allclose(result.arrays[f"example_cls_{kind}"], expected, rtol=1e-5, atol=1e-7)


def test_num_images_limits_every_input(deepvit, x):
    result = analyze(deepvit, x, batch_size=3, num_images=5, **QUIET)
    assert_matches(result, expected_arrays(deepvit, x[:5]), 5)
    batches = (x[i : i + 2] for i in range(0, NUM_IMAGES, 2))
    assert analyze(deepvit, batches, num_images=3, **QUIET).num_images == 3


def test_iterable_of_batches_of_any_size(deepvit, x):
    # Uneven batches, one of them an (images, labels) pair as a DataLoader yields it.
    batches = iter([x[:2], (x[2:6], torch.zeros(4)), x[6:]])
    result = analyze(deepvit, batches, batch_size=3, **QUIET)
    assert_matches(result, expected_arrays(deepvit, x), NUM_IMAGES)
    assert "batches" in result.images["description"]


def test_pil_images_use_the_model_data_config(deepvit, pictures):
    result = analyze(deepvit, pictures, batch_size=2, **QUIET)
    assert_matches(result, expected_arrays(deepvit, reference_tensor(deepvit, pictures)), len(pictures))
    assert result.images == {"description": "5 PIL images", "count": 5, "skipped": 0}


@pytest.mark.parametrize("num_workers", [None, 2])
def test_folder_of_images(deepvit, pictures, tmp_path, num_workers):
    for index, picture in enumerate(pictures):
        picture.save(tmp_path / f"{index}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.warns(UserWarning, match="skipped 1 file"):
        result = analyze(deepvit, str(tmp_path), batch_size=3, num_workers=num_workers, **QUIET)
    assert_matches(result, expected_arrays(deepvit, reference_tensor(deepvit, pictures)), len(pictures))
    assert result.images["count"] == 5 and result.images["skipped"] == 1
    assert str(tmp_path) in result.images["description"]
    assert result.settings.num_workers == (num_workers or 0)  # no workers by default on the CPU


def brute_force_accuracy(model: nn.Module, x: torch.Tensor, labels: torch.Tensor) -> dict[int, int]:
    """Top-1 and top-5 correct counts, image by image, from the full-batch logits."""
    with torch.no_grad():
        logits = model.eval()(x)
    top1 = sum(int(row.argmax()) == int(label) for row, label in zip(logits, labels))
    top5 = sum(int(label) in row.argsort(descending=True)[:5].tolist() for row, label in zip(logits, labels))
    return {1: top1, 5: top5}


@pytest.fixture(scope="module")
def labels(vit, x) -> torch.Tensor:
    """Class indices of ``x``: the first three as the ViT predicts them, the rest arbitrary."""
    labels = torch.arange(NUM_IMAGES) % 10
    with torch.no_grad():
        labels[:3] = vit(x[:3]).argmax(dim=1)
    return labels


@pytest.mark.parametrize("batch_size", [1, 3, NUM_IMAGES])
def test_accuracy_equals_a_brute_force_argmax_count(vit, x, labels, batch_size):
    expected = brute_force_accuracy(vit, x, labels)
    assert expected[1] >= 3
    result = analyze(vit, (x, labels), batch_size=batch_size, **QUIET)
    assert result.accuracy.correct == expected and result.accuracy.images == NUM_IMAGES
    assert result.summary()["accuracy_top1"] == expected[1] / NUM_IMAGES
    assert result.accuracy.labels == "class indices from the (images, labels) batches"
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, labels), batch_size=2)
    assert analyze(vit, loader, batch_size=batch_size, **QUIET).accuracy == result.accuracy
    limited = analyze(vit, loader, batch_size=batch_size, num_images=4, **QUIET).accuracy
    assert limited.correct == brute_force_accuracy(vit, x[:4], labels[:4]) and limited.images == 4


def test_folder_labels_give_the_accuracy_of_the_images_as_the_model_sees_them(vit, pictures, tmp_path):
    """Class sub-folders named by digits are class indices for a model that names no classes."""
    classes = [3, 3, 7, 1, 0]
    for index, (picture, label) in enumerate(zip(pictures, classes)):
        (tmp_path / str(label)).mkdir(exist_ok=True)
        picture.save(tmp_path / str(label) / f"{index}.png")
    result = analyze(vit, str(tmp_path), batch_size=2, **QUIET)
    # The order the folder is read in: round-robin over the class folders.
    from deepvit_diag.images import open_images

    image_set = open_images(tmp_path)
    expected = brute_force_accuracy(
        vit, reference_tensor(vit, list(image_set)), torch.tensor([int(label) for label in image_set.labels])
    )
    assert result.accuracy.correct == expected and result.accuracy.images == len(pictures)
    assert "as class indices" in result.accuracy.labels


def test_no_labels_no_accuracy_and_the_result_says_why(vit, x, labels, tmp_path):
    plain = analyze(vit, x, **QUIET)
    assert not plain.accuracy.available and plain.summary()["accuracy_top1"] is None
    assert "carry no labels" in plain.summary()["accuracy_labels"]
    soft_targets = analyze(vit, [(x, torch.rand(NUM_IMAGES, 10))], **QUIET)
    assert "not a (B,) tensor of class indices" in soft_targets.accuracy.labels
    with pytest.raises(DiagError, match="some batches carry"):
        analyze(vit, [(x[:3], labels[:3]), x[3:]], **QUIET)
    with pytest.raises(DiagError, match="class indices from 0 to 9"):
        analyze(vit, (x, labels + 10), **QUIET)
    # Saved and loaded with the result; results saved before accuracy existed say so.
    labelled = analyze(vit, (x, labels), **QUIET)
    labelled.write_files(tmp_path / "run")  # as older versions wrote them: no output marker
    assert AnalysisResult.load(tmp_path / "run").accuracy == labelled.accuracy
    document = json.loads((tmp_path / "run" / "result.json").read_text())
    assert document["accuracy"]["correct"] == {str(k): v for k, v in labelled.accuracy.correct.items()}
    del document["accuracy"]
    (tmp_path / "run" / "result.json").write_text(json.dumps(document))
    assert "not recorded" in AnalysisResult.load(tmp_path / "run").accuracy.labels


def test_compare_counts_each_models_accuracy(deepvit, vit, x, labels):
    comparison = compare(vit, deepvit, (x, labels), batch_size=3, **QUIET)
    assert comparison.a.accuracy.correct == brute_force_accuracy(vit, x, labels)
    assert comparison.b.accuracy.correct == brute_force_accuracy(deepvit, x, labels)


def test_default_num_workers_leave_a_core_to_the_model(monkeypatch):
    from deepvit_diag.settings import default_num_workers

    assert default_num_workers(torch.device("cpu")) == 0
    for cores, workers in [(1, 1), (2, 1), (4, 3), (64, 8)]:
        monkeypatch.setattr("os.sched_getaffinity", lambda _, cores=cores: set(range(cores)), raising=False)
        assert default_num_workers(torch.device("cuda")) == workers


def test_save_and_load_round_trip(deepvit, x, tmp_path):
    deepvit.provenance = {"description": "tiny DeepViT for tests", "source": tmp_path / "weights.safetensors"}
    try:
        result = analyze(deepvit, x, batch_size=4, **QUIET)
    finally:
        del deepvit.provenance
    result.save(tmp_path / "run")
    loaded = AnalysisResult.load(tmp_path / "run")
    assert loaded == result
    assert loaded.summary() == result.summary()
    document = json.loads((tmp_path / "run" / "result.json").read_text())
    assert document["model"]["description"] == "tiny DeepViT for tests"
    assert document["model"]["arch"]["family"] == "deepvit"
    assert set(document["versions"]) >= {"deepvit_diag", "torch", "timm", "numpy"}
    assert document["summary"]["similar_blocks_post"] == result.similar_blocks("post").count
    assert document["settings"]["k"] == 2 and document["geometry"]["mixing_blocks"] == [1, 2]
    assert loaded != dataclasses.replace(result, settings=dataclasses.replace(result.settings, k=3))
    with pytest.raises(DiagError, match="not a saved deepvit-diag result"):
        AnalysisResult.load(tmp_path)


def test_results_saved_in_format_1_still_load(deepvit, x, tmp_path):
    """Format 1 kept the geometry in ``model``, the settings as ``params`` and one
    ``theta_<i>`` array per Re-attention block."""
    result = analyze(deepvit, x, batch_size=4, **QUIET)
    document = result.to_document()
    geometry = {key: value for key, value in document.pop("geometry").items() if key != "head_mixing"}  # new in 2
    geometry["reattention_blocks"] = geometry.pop("mixing_blocks")
    model = {**document.pop("model"), **geometry, "num_tokens": result.geometry.num_tokens}
    params = {**document.pop("settings"), "final_batch_size": document.pop("computation")["final_batch_size"]}
    del params["num_images"]
    arrays = {name: value for name, value in result.arrays.items() if not name.startswith("theta")}
    for row, block in enumerate(result.arrays["theta_blocks"].tolist()):
        arrays[f"theta_{block}"] = result.arrays["theta"][row]
        for name in ("bias", "norm_weight", "norm_bias", "running_mean", "running_var"):
            arrays[f"theta_{block}_{name}"] = result.arrays[f"theta_{name}"][row]
    folder = tmp_path / "format1"
    folder.mkdir()
    (folder / "result.json").write_text(json.dumps({**document, "version": 1, "model": model, "params": params}))
    np.savez(folder / "arrays.npz", **arrays)
    loaded = AnalysisResult.load(folder)
    assert loaded.computation == {"final_batch_size": result.computation["final_batch_size"]}
    assert dataclasses.replace(loaded, computation=result.computation) == result
    np.savez(folder / "arrays.npz", **{name: value for name, value in arrays.items() if name != "entropy"})
    with pytest.raises(DiagError, match="lacks the arrays entropy"):
        AnalysisResult.load(folder)


def test_results_saved_with_reattention_blocks_still_load(deepvit, x, tmp_path):
    """Format-2 files written before head mixing was named for what it is call the mixing
    blocks ``reattention_blocks``; they load with the same geometry."""
    result = analyze(deepvit, x, batch_size=4, **QUIET)
    result.write_files(tmp_path / "run")  # as older versions wrote them: no output marker
    path = tmp_path / "run" / "result.json"
    document = json.loads(path.read_text())
    document["geometry"]["reattention_blocks"] = document["geometry"].pop("mixing_blocks")
    path.write_text(json.dumps(document))
    loaded = AnalysisResult.load(tmp_path / "run")
    assert loaded.geometry.mixing_blocks == (1, 2)
    assert loaded == result


def test_compare_two_depths(deepvit, vit, x, tmp_path):
    result = compare(deepvit, vit, x, batch_size=3, **QUIET)
    assert result.cka_ab.shape == (3, 2)
    assert result.a.cka().shape == (3, 3) and result.b.cka().shape == (2, 2)
    assert_matches(result.a, expected_arrays(deepvit, x), NUM_IMAGES)
    assert_matches(result.b, expected_arrays(vit, x), NUM_IMAGES)
    cka = MinibatchCKA(chunk_size=4)
    cka.update(extract_attention(deepvit, x).hidden.flatten(2), extract_attention(vit, x).hidden.flatten(2))
    np.testing.assert_allclose(result.cka_ab, cka.result()["ab"].numpy(), rtol=1e-5, atol=1e-6)
    summary = result.summary()
    assert summary["differences"]["num_blocks"] == -1
    assert len(summary["cka_ab_best_match"]) == 3
    result.save(tmp_path / "cmp")
    assert ComparisonResult.load(tmp_path / "cmp") == result


def test_compare_a_model_with_itself_gives_identical_sides(vit, x):
    result = compare(vit, vit, x, batch_size=4, **QUIET)
    assert result.a == result.b
    np.testing.assert_allclose(np.diagonal(result.cka_ab), 1.0, rtol=1e-5)


def test_bfloat16_close_to_float32(deepvit):
    # CKA from one minibatch of 4 images is ill-conditioned: bfloat16 rounding moved it by
    # up to 0.06 on some random models. With 2 minibatches of 16 every metric of 12 random
    # models stayed within 0.0014.
    x = torch.randn(32, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    options = {**QUIET, "cka_chunk": 16}
    exact = analyze(deepvit, x, batch_size=8, **options)
    approx = analyze(deepvit, x, batch_size=8, dtype="bfloat16", **options)
    assert approx.settings.dtype == "bfloat16"
    for name in (
        "similarity_pre",
        "similarity_post",
        "cross_head_pre",
        "cross_head_post",
        "token_similarity",
        "rank_residual",
        "cka",
    ):
        np.testing.assert_allclose(approx.arrays[name], exact.arrays[name], atol=0.03, err_msg=name)
    for name in ("entropy", "attention_distance"):
        np.testing.assert_allclose(approx.arrays[name], exact.arrays[name], rtol=0.03, err_msg=name)


def test_out_of_memory_halves_the_batch_and_retries(deepvit, x, monkeypatch):
    measure = analysis_module.StreamingAnalysis._measure
    attempts = []

    def fail_once(self, parts, recorders):
        attempts.append(len(parts))
        if len(attempts) == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return measure(self, parts, recorders)

    monkeypatch.setattr(analysis_module.StreamingAnalysis, "_measure", fail_once)
    result = analyze(deepvit, x, batch_size=4, **QUIET)
    assert attempts[:3] == [4, 2, 2]
    assert result.settings.batch_size == 4 and result.computation["final_batch_size"] == 2
    assert_matches(result, expected_arrays(deepvit, x), NUM_IMAGES)


def test_out_of_memory_with_one_image_is_a_diag_error(deepvit, x, monkeypatch):
    def always_fail(self, parts, recorders):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(analysis_module.StreamingAnalysis, "_measure", always_fail)
    with pytest.raises(DiagError, match="single image"):
        analyze(deepvit, x, batch_size=2, **QUIET)


def test_model_is_left_as_it_was(deepvit, x):
    deepvit.train()
    try:
        analyze(deepvit, x, batch_size=4, **QUIET)
        assert deepvit.training and all(module.training for module in deepvit.modules())
        assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in deepvit.modules()) == 0
        assert next(deepvit.parameters()).device.type == "cpu"
    finally:
        deepvit.eval()


def test_progress_bar_over_an_unknown_number_of_images(vit, x, capsys):
    analyze(vit, (x[i : i + 3] for i in range(0, NUM_IMAGES, 3)), cka_chunk=4, progress=True)
    printed = capsys.readouterr()
    assert "analysing images" in printed.err and printed.out == ""  # stdout stays free for results


def test_no_progress_unless_asked(vit, x, capsys):
    analyze(vit, x, cka_chunk=4)
    assert capsys.readouterr() == ("", "")


def test_progress_callback_hears_every_batch(vit, x):
    calls = []
    analyze(vit, x, batch_size=3, progress=lambda done, total: calls.append((done, total)), cka_chunk=4)
    assert calls == [(3, NUM_IMAGES), (6, NUM_IMAGES), (7, NUM_IMAGES)]


def test_settings_object_and_overrides_give_the_same_result(vit, x):
    settings = Settings(k=1, batch_size=3, cka_chunk=4)
    assert analyze(vit, x, settings, progress=False) == analyze(vit, x, k=1, batch_size=3, **QUIET)
    assert analyze(vit, x, settings, progress=False, k=2).settings.k == 2
    with pytest.raises(DiagError, match="unknown analysis settings: kk"):
        analyze(vit, x, kk=1)


def test_fewer_images_than_cka_needs_give_nan_cka(vit, x):
    result = analyze(vit, x[:2], **QUIET)
    assert np.isnan(result.cka()).all() and result.summary()["cka_adjacent_mean"] is None


@pytest.mark.parametrize(
    ("images", "options", "message"),
    [
        (torch.randn(2, 3, 48, 48), {}, "expects"),
        ([], {}, "no images"),
        (42, {}, "images must be"),
        (iter([]), {}, "no images"),
        (iter([torch.zeros(2, 3, 32, 32, dtype=torch.uint8)]), {}, "floating-point tensor, got dtype torch.uint8"),
        (torch.randn(2, 3, 32, 32), {"k": 0}, "k must be"),
        (torch.randn(2, 3, 32, 32), {"axis": "diagonal"}, "axis"),
        (torch.randn(2, 3, 32, 32), {"dtype": "float16"}, "dtype"),
        (torch.randn(2, 3, 32, 32), {"maps": "mixed"}, "maps"),
        (torch.randn(2, 3, 32, 32), {"batch_size": 0}, "batch_size"),
        (torch.randn(2, 3, 32, 32), {"num_workers": -1}, "num_workers"),
        (torch.randn(2, 3, 32, 32), {"device": "tpu"}, "device"),
    ],
)
def test_bad_input_is_a_diag_error(vit, images, options, message):
    with pytest.raises(DiagError, match=message):
        analyze(vit, images, **{**QUIET, **options})


def test_nan_in_the_images_is_a_diag_error_naming_the_batch(deepvit, x):
    bad = x.clone()
    bad[5, 0, 3, 3] = float("nan")
    with pytest.raises(DiagError, match=r"maps contains NaN or Inf values \(first in the batch starting at image 4"):
        analyze(deepvit, bad, batch_size=2, **QUIET)


@pytest.mark.parametrize("labelled", [False, True])
def test_streaming_loop_never_reads_a_device_value_back(deepvit, x, monkeypatch, labelled):
    """On a GPU, bool()/item()/tolist() of a device tensor makes the host wait: none may
    happen while batches are measured and committed (checks and accuracy counts are read
    once, at the end)."""
    labels = torch.arange(NUM_IMAGES) % 10
    inside = []

    def forbidden(original):
        def guarded(self, *args):
            if inside:
                raise AssertionError(f"{original.__name__} of a tensor inside the streaming loop")
            return original(self, *args)

        return guarded

    for name in ("__bool__", "item", "tolist"):
        monkeypatch.setattr(torch.Tensor, name, forbidden(getattr(torch.Tensor, name)))
    for method in ("_measure", "_commit"):
        original = getattr(analysis_module.StreamingAnalysis, method)

        def watched(self, *args, _original=original):
            inside.append(True)
            try:
                return _original(self, *args)
            finally:
                inside.pop()

        monkeypatch.setattr(analysis_module.StreamingAnalysis, method, watched)
    result = analyze(deepvit, (x, labels) if labelled else x, batch_size=2, **QUIET)
    monkeypatch.undo()
    assert_matches(result, expected_arrays(deepvit, x), NUM_IMAGES)
    assert result.accuracy.available == labelled


@pytest.fixture
def exact_cuda(monkeypatch):
    """float32 convolutions on CUDA without TF32 (cuDNN's default), so that GPU and CPU
    results agree to float32 rounding: the patch embedding and Theta are convolutions."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_streaming_loop_never_synchronises(deepvit, x, monkeypatch, exact_cuda):
    """With CUDA's sync debug mode set to error inside the loop, any host wait raises."""
    for method in ("_measure", "_commit"):
        original = getattr(analysis_module.StreamingAnalysis, method)

        def strict(self, *args, _original=original):
            torch.cuda.set_sync_debug_mode("error")
            try:
                return _original(self, *args)
            finally:
                torch.cuda.set_sync_debug_mode("default")

        monkeypatch.setattr(analysis_module.StreamingAnalysis, method, strict)
    labels = torch.arange(NUM_IMAGES) % 10
    on_gpu = analyze(deepvit, (x, labels), batch_size=2, device="cuda", **QUIET)
    monkeypatch.undo()
    on_cpu = analyze(deepvit, (x, labels), batch_size=2, device="cpu", **QUIET)
    for name, value in on_cpu.arrays.items():
        np.testing.assert_allclose(on_gpu.arrays[name], value, rtol=1e-4, atol=1e-4, err_msg=name)
    assert on_gpu.accuracy == on_cpu.accuracy and on_gpu.accuracy.available
    bad = x.clone()
    bad[3] = float("inf")
    with pytest.raises(DiagError, match="starting at image 2"):
        analyze(deepvit, bad, batch_size=2, device="cuda", **QUIET)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_images_from_disk_through_workers_and_pinned_memory(deepvit, pictures, tmp_path, exact_cuda):
    for index, picture in enumerate(pictures):
        picture.save(tmp_path / f"{index}.png")
    on_gpu = analyze(deepvit, str(tmp_path), batch_size=2, device="cuda", num_workers=2, **QUIET)
    on_cpu = analyze(deepvit, str(tmp_path), batch_size=2, device="cpu", **QUIET)
    assert on_gpu.settings.num_workers == 2 and on_gpu.num_images == len(pictures)
    for name, value in on_cpu.arrays.items():
        np.testing.assert_allclose(on_gpu.arrays[name], value, rtol=1e-4, atol=1e-4, err_msg=name)


def _fabricated(ratio: list[float], adjacent: list[float]) -> AnalysisResult:
    """A result with hand-made arrays, to check the summary's definitions."""
    num_blocks = len(ratio)
    similarity = np.eye(num_blocks, dtype=np.float32)
    similarity[np.arange(num_blocks - 1), np.arange(1, num_blocks)] = adjacent
    similarity = np.maximum(similarity, similarity.T)
    cross_head = np.tile(np.array([[1.0, 0.2], [0.2, 1.0]], dtype=np.float32), (num_blocks, 1, 1))
    per_block = np.arange(num_blocks, dtype=np.float32)
    arrays = {
        **{f"similarity_{kind}": similarity for kind in ("pre", "post")},
        **{f"ratio_{kind}": np.array(ratio, dtype=np.float32) for kind in ("pre", "post")},
        **{f"cross_head_{kind}": cross_head for kind in ("pre", "post")},
        # Selective maps, and the same ratio at every (k, tau) of the robustness grid.
        **{f"uniformity_{kind}": np.full((num_blocks, 2), 0.3, np.float32) for kind in ("pre", "post")},
        **{f"ratio_grid_{kind}": np.tile(np.float32(ratio), (3, 5, 1)) for kind in ("pre", "post")},
        "entropy": np.stack([2.0 - 0.25 * per_block] * 2, axis=1),
        "attention_distance": np.stack([10.0 + 2.0 * per_block] * 2, axis=1),
        "token_similarity": per_block / 10,
        "rank_residual": 1 - per_block / 10,
        "cka": np.ones((num_blocks, num_blocks), dtype=np.float32),
        "theta": np.zeros((0, 2, 2), dtype=np.float32),
        "theta_blocks": np.zeros(0, dtype=np.int64),
    }
    geometry = Geometry(num_blocks, 2, 1, (8, 8), (2, 2), (16, 16))
    return AnalysisResult({}, geometry, Settings(), {}, 10, arrays)


def test_summary_definitions():
    result = _fabricated(ratio=[0.1, 0.95, 0.5, 0.95, 0.97, 0.99], adjacent=[0.2, 0.4, 0.6, 0.8, 1.0])
    summary = result.summary()
    assert summary["similar_blocks"] == 4 and summary["similar_block_indices"] == [1, 3, 4, 5]
    assert summary["collapse_start"] == 3
    assert summary["adjacent_similarity_first_third"] == pytest.approx(0.3)
    assert summary["adjacent_similarity_last_third"] == pytest.approx(0.9)
    assert summary["cross_head_similarity"] == pytest.approx(0.2)
    assert summary["entropy_trend"] == pytest.approx(-0.25)
    assert summary["attention_distance_first_block"] == 10.0 and summary["attention_distance_last_block"] == 20.0
    assert summary["theta_distance_from_identity_mean"] is None
    assert result.similar_blocks(rho=0.96).indices == [4, 5]
    assert _fabricated(ratio=[0.95, 0.5], adjacent=[0.5]).summary()["collapse_start"] is None
