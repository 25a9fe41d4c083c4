"""Analyses split across processes (a gloo process group) and across runs (--shard + merge)
give the result of one run over all images."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image

from deepvit_diag.analysis import analyze, compare
from deepvit_diag.checkpoints import save_native
from deepvit_diag.cli import main
from deepvit_diag.distributed import Shard
from deepvit_diag.errors import DiagError
from deepvit_diag.models import build_model
from deepvit_diag.monitor import CollapseMonitor
from deepvit_diag.results import AnalysisResult, ComparisonResult, load_result
from deepvit_diag.tally import combined_computation

TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=4, mlp_ratio=2.0, num_classes=3)
OPTIONS = dict(batch_size=8, cka_chunk=4, num_examples=5, device="cpu", progress=False)


def tiny(family: str, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    kwargs = {**TINY, "apply_transform": [False, True, True]} if family == "deepvit" else TINY
    return build_model({"family": family, "kwargs": kwargs}).eval()


def labelled_images(count: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(count, 3, 32, 32, generator=generator), torch.randint(0, 3, (count,), generator=generator)


def write_image_folder(root: Path) -> Path:
    """Three class folders of PNGs, one file that is no image (refused when the folder is
    opened) and one truncated PNG (fails while streaming, in the last shard)."""
    rng = np.random.default_rng(0)
    for label in range(3):
        (root / str(label)).mkdir(parents=True)
        for index in range(4):
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(root / str(label) / f"{index}.png")
    (root / "0" / "notes.txt").write_text("not an image")
    whole = (root / "2" / "3.png").read_bytes()
    (root / "2" / "3.png").write_bytes(whole[: len(whole) // 2])
    return root


def assert_same_result(got: AnalysisResult, want: AnalysisResult) -> None:
    """Every array within 1e-6 of the array's largest value (text arrays, the examples' names,
    labels and predictions, equal); counts and accuracy equal."""
    assert got.num_images == want.num_images and got.accuracy == want.accuracy
    assert got.images["count"] == want.images["count"] and got.images["skipped"] == want.images["skipped"]
    assert set(got.arrays) == set(want.arrays)
    for name, expected in want.arrays.items():
        actual = got.arrays[name]
        assert actual.shape == expected.shape, name
        if expected.dtype.kind == "U":
            np.testing.assert_array_equal(actual, expected, err_msg=name)
            continue
        scale = float(np.nanmax(np.abs(expected))) if expected.size and np.isfinite(expected).any() else 1.0
        np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=1e-6 * scale, err_msg=name)


def assert_same_comparison(got: ComparisonResult, want: ComparisonResult) -> None:
    assert_same_result(got.a, want.a)
    assert_same_result(got.b, want.b)
    np.testing.assert_allclose(got.cka_ab, want.cka_ab, rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------- shards


@pytest.mark.parametrize("num_images", [1, 4, 5, 7, 8, 9, 33, 100])
@pytest.mark.parametrize("count", [1, 2, 3, 5])
@pytest.mark.parametrize("chunk", [4, 32])
def test_shards_cover_every_image_once_at_minibatch_boundaries(num_images, count, chunk):
    bounds = [Shard(index, count).bounds(num_images, chunk) for index in range(count)]
    assert bounds[0][0] == 0 and bounds[-1][1] == num_images
    for (_, stop), (start, _) in zip(bounds, bounds[1:]):
        assert stop == start  # contiguous, no image twice, none dropped
    for start, stop in bounds:
        assert start <= stop and start % chunk == 0
        assert stop % chunk == 0 or stop == num_images


def test_shards_are_counted_from_one_in_text_and_from_zero_inside():
    first, last = Shard.parse("1/4"), Shard.parse(" 4 / 4 ")
    assert (first.index, first.count, str(first)) == (0, 4, "1/4")
    assert (last.index, str(last)) == (3, "4/4")
    assert first.bounds(16, 4) == (0, 4) and last.bounds(16, 4) == (12, 16)
    assert Shard.parse(str(Shard(2, 5))) == Shard(2, 5)


@pytest.mark.parametrize("text", ["4/3", "0/3", "1", "a/b", "-1/2", "0/0"])
def test_bad_shards_are_one_line_errors(text):
    with pytest.raises(DiagError, match="shard"):
        Shard.parse(text)


def test_an_iterable_of_batches_cannot_be_sharded():
    with pytest.raises(DiagError, match="cannot be cut into shards"):
        analyze(tiny("vit", 0), iter([torch.randn(2, 3, 32, 32)]), shard="1/2", **OPTIONS)


def test_an_empty_shard_is_a_clear_error_from_analyze_and_compare():
    """Shard 1/4 of 2 images in one CKA minibatch holds none: one line, not IndexError/TypeError."""
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with pytest.raises(DiagError, match="shard 1/4 holds none of the images"):
        analyze(tiny("vit", 0), images, shard="1/4", **OPTIONS)
    with pytest.raises(DiagError, match="shard 1/4 holds none of the images"):
        compare(tiny("vit", 0), tiny("deepvit", 1), images, shard="1/4", **OPTIONS)


# ----------------------------------------------------------------------------- a process group


def _analyse_in_group(rank: int, world: int, init: str, folder: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        # 7 labelled images: not divisible by 2; the batch size (8) is larger than either shard.
        compared = compare(tiny("vit", 0), tiny("deepvit", 1), labelled_images(7), **OPTIONS)
        with pytest.warns(UserWarning):
            analysed = analyze(tiny("deepvit", 1), folder, **OPTIONS)
        monitor = CollapseMonitor(tiny("vit", 0), labelled_images(7), path=Path(out) / "monitor.jsonl", cka_chunk=4)
        entries = [monitor.step(step) for step in (0, 1)]
        assert entries[0].summary["num_images"] == 7  # every process gets the numbers of all probe images
        if rank == 0:
            compared.save(Path(out) / "compared")
            analysed.save(Path(out) / "analysed")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_processes_give_the_single_process_result(tmp_path):
    folder = write_image_folder(tmp_path / "images")
    with pytest.warns(UserWarning):
        single = analyze(tiny("deepvit", 1), str(folder), **OPTIONS)
    assert single.images["skipped"] == 2  # the text file, and the truncated PNG
    out = tmp_path / "out"
    mp.spawn(_analyse_in_group, args=(2, f"file://{tmp_path / 'rendezvous'}", str(folder), str(out)), nprocs=2)
    together = ComparisonResult.load(out / "compared")
    assert_same_comparison(together, compare(tiny("vit", 0), tiny("deepvit", 1), labelled_images(7), **OPTIONS))
    assert together.a.computation["processes"] == 2 and together.a.computation["devices"] == ["cpu", "cpu"]
    assert together.a.accuracy.images == 7 and "shard" not in together.a.images["description"]
    assert_same_result(AnalysisResult.load(out / "analysed"), single)
    assert len((out / "monitor.jsonl").read_text().splitlines()) == 2  # one line per step, from rank 0 only


# ----------------------------------------------------------------------------- --shard and merge


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shards")
    save_native(tiny("vit", 0), root / "vit.safetensors")
    save_native(tiny("deepvit", 1), root / "deepvit.safetensors")
    write_image_folder(root / "images")
    return root


def cli(*argv: str) -> int:
    return main([*argv, "--quiet"])


def common(workspace: Path, *extra: str) -> list[str]:
    return [
        "--images", str(workspace / "images"), "--device", "cpu", "--cka-chunk", "4", "--batch-size", "3",
        "--examples", "5", *extra,
    ]  # fmt: skip


def test_three_shards_merge_into_the_single_run(workspace):
    pair = [
        "compare",
        "--ckpt-a",
        str(workspace / "vit.safetensors"),
        "--ckpt-b",
        str(workspace / "deepvit.safetensors"),
    ]
    assert cli(*pair, *common(workspace), "--out", str(workspace / "single")) == 0
    for index in range(3):
        assert cli(*pair, *common(workspace, "--shard", f"{index + 1}/3"), "--out", str(workspace / f"s{index}")) == 0
    shard = json.loads((workspace / "s1" / "shard.json").read_text())
    assert shard["shard"] == "2/3" and shard["images"]["total"] == 12 and len(shard["weights"]) == 2
    assert load_result(workspace / "s1").a.images["description"].endswith("shard 2/3: images 5-8 of 12")
    merged_folder = workspace / "merged"
    assert (
        cli("merge", str(workspace / "s2"), str(workspace / "s0"), str(workspace / "s1"), "--out", str(merged_folder))
        == 0
    )
    merged, single = ComparisonResult.load(merged_folder), ComparisonResult.load(workspace / "single")
    assert_same_comparison(merged, single)
    assert merged.a.computation["shards"] == 3 and (merged_folder / "report.html").is_file()
    assert merged.a.computation["rows_per_chunk"] == single.a.computation["rows_per_chunk"]
    assert len(single.a.computation["rows_per_chunk"]) == 2  # one per model of the pair
    assert merged.a.images["description"] == single.a.images["description"]


def test_more_shards_than_minibatches_leave_some_empty(workspace):
    analysis = ["analyze", "--ckpt", str(workspace / "vit.safetensors")]
    assert cli(*analysis, *common(workspace, "--num-images", "5"), "--out", str(workspace / "few")) == 0
    for index in range(3):  # 5 images are 2 minibatches of 4: one shard has none
        folder = workspace / f"few{index}"
        assert (
            cli(*analysis, *common(workspace, "--num-images", "5", "--shard", f"{index + 1}/3"), "--out", str(folder))
            == 0
        )
    assert cli("merge", *(str(workspace / f"few{index}") for index in range(3)), "--out", str(workspace / "few-m")) == 0
    assert_same_result(AnalysisResult.load(workspace / "few-m"), AnalysisResult.load(workspace / "few"))


@pytest.fixture(scope="module")
def shards(workspace) -> Path:
    analysis = ["analyze", "--ckpt", str(workspace / "vit.safetensors")]
    for index in range(2):
        assert (
            cli(*analysis, *common(workspace, "--shard", f"{index + 1}/2"), "--out", str(workspace / f"h{index}")) == 0
        )
    other = ["analyze", "--ckpt", str(workspace / "deepvit.safetensors")]
    assert cli(*other, *common(workspace, "--shard", "2/2"), "--out", str(workspace / "other-model")) == 0
    assert cli(*analysis, *common(workspace, "--shard", "2/2", "--k", "1"), "--out", str(workspace / "other-k")) == 0
    assert (
        cli(
            *analysis,
            *common(workspace, "--shard", "2/2", "--num-images", "8"),
            "--out",
            str(workspace / "other-images"),
        )
        == 0
    )
    assert cli(*analysis, *common(workspace, "--shard", "1/3"), "--out", str(workspace / "other-count")) == 0
    return workspace


@pytest.mark.parametrize(
    ("folders", "message"),
    [
        (["h0"], "shards 2/2 are missing"),
        (["h0", "h1", "h1"], "shard 2/2 is given twice"),
        (["h0", "other-model"], "different models"),
        (["h0", "other-k"], r"different settings \(k\)"),
        (["h0", "other-images"], "different image lists"),
        (["h0", "other-count"], "shards of 3 and of 2"),
        (["h0", "images"], "not a shard of an analysis"),
    ],
)
def test_merge_refuses_what_is_not_one_analysis(shards, folders, message, capsys):
    out = shards / "refused"
    status = main(["merge", *(str(shards / folder) for folder in folders), "--out", str(out)])
    stderr = capsys.readouterr().err
    assert status == 1 and len(stderr.strip().splitlines()) == 1 and "Traceback" not in stderr
    assert stderr.startswith("error: ") and re.search(message, stderr), stderr
    assert not out.exists()  # refused before anything is written


def test_combined_computation_keeps_each_models_largest_chunk_and_reads_old_shards():
    parts = [
        {"final_batch_size": 4, "rows_per_chunk": [65, None], "processes": 1, "devices": ["cpu"]},
        {"final_batch_size": 2, "rows_per_chunk": [33, 17], "processes": 1, "devices": ["cuda:0"]},
    ]
    combined = combined_computation(parts)
    assert combined == {"final_batch_size": 2, "processes": 2, "devices": ["cpu", "cuda:0"], "rows_per_chunk": [65, 17]}
    old = {"final_batch_size": 4, "processes": 1, "devices": ["cpu"]}
    assert "rows_per_chunk" not in combined_computation([old, parts[0]])
