"""``deepvit-diag compare`` / ``analyze`` on tiny checkpoints written to a temporary folder:
every image source, every output file, the bad-input cases and the option conflicts."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from deepvit_diag.checkpoints.native import save_native
from deepvit_diag.cli import build_parser, main

TINY = dict(depth=2, embed_dim=32, num_heads=4, img_size=32, patch_size=8, num_classes=10)
# The report's figure divs for a comparison of a ViT with a DeepViT (2 blocks each) and 2 example images.
COMPARISON_FIGURES = [
    "fig-layer-similarity",
    "fig-layer-similarity-other-kind",
    "fig-similarity-ratio",
    "fig-similarity-ratio-other-kind",
    "fig-attention-regimes",
    "fig-robustness-grid",
    "fig-cross-head-curves",
    "fig-cross-head-matrices",
    "fig-theta-heatmaps-1",
    "fig-theta-distances",
    "fig-norm-gains",
    "fig-entropy-curves",
    "fig-attention-distance-curves",
    "fig-token-similarity-curves",
    "fig-rank-residual-curves",
    "fig-block-influence-curves",
    "fig-cka-within",
    "fig-cka-across",
    "fig-cls-attention-0-0",
    "fig-cls-attention-0-1",
    "fig-cls-attention-1-0",
    "fig-cls-attention-1-1",
]


def run(argv: list[str]) -> tuple[int, str, str]:
    """``main(argv)`` in-process: (exit status, stdout, stderr); argparse's exits become statuses."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            status = main(argv)
        except SystemExit as exit_:
            status = exit_.code
    return status, out.getvalue(), err.getvalue()


def assert_clean_error(status: int, err: str, expected_status: int, *fragments: str) -> None:
    assert status == expected_status, err
    assert "Traceback" not in err
    error_lines = [line for line in err.splitlines() if "error:" in line]
    assert len(error_lines) == 1, err
    for fragment in fragments:
        assert fragment in error_lines[0], err


def write_image(path: Path, seed: int, mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, size=(40, 48, 3), dtype=np.uint8)
    Image.fromarray(pixels).convert(mode).save(path)
    return path


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two tiny checkpoints and image folders (ImageFolder layout, mixed, empty, junk-only)."""
    root = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    save_native(timm.create_model("vit16", **TINY), root / "vit.safetensors")
    save_native(timm.create_model("deepvit16", **TINY), root / "deepvit.safetensors")
    save_native(
        timm.create_model("deepvit16", **TINY), root / "digits_model.safetensors", card={"image_set": "digits-test"}
    )
    save_native(
        timm.create_model("vit16", **TINY),
        root / "clutter_model.safetensors",
        card={"image_set": "digits-clutter-test"},
    )
    write_image(root / "images" / "cat" / "a.png", 0)
    write_image(root / "images" / "cat" / "b.jpg", 1, mode="L")
    write_image(root / "images" / "dog" / "c.png", 2, mode="RGBA")
    write_image(root / "images" / "dog" / "d.png", 3, mode="P")
    write_image(root / "mixed" / "a.png", 4)
    write_image(root / "mixed" / "b.png", 5)
    (root / "mixed" / "notes.txt").write_text("not an image")
    (root / "mixed" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (root / "junk").mkdir()
    (root / "junk" / "readme.md").write_text("# no images here")
    (root / "empty").mkdir()
    (root / "notes.txt").write_text("a text file, not a checkpoint\n")
    (root / "truncated.safetensors").write_bytes((root / "vit.safetensors").read_bytes()[:200])
    return root


@pytest.fixture(scope="module")
def comparison_run(workspace: Path) -> tuple[int, str, str, Path]:
    """One full comparison on the ImageFolder layout, shared by the output checks."""
    out = workspace / "compare-out"
    status, stdout, stderr = run(
        [
            "compare",
            "--ckpt-a",
            str(workspace / "vit.safetensors"),
            "--ckpt-b",
            str(workspace / "deepvit.safetensors"),
            "--images",
            str(workspace / "images"),
            "--out",
            str(out),
            "--device",
            "cpu",
        ]
    )
    return status, stdout, stderr, out


# ----------------------------------------------------------------------------- compare: outputs


def test_compare_prints_provenance_table_and_findings(comparison_run) -> None:
    status, stdout, stderr, _ = comparison_run
    assert status == 0, stderr
    assert "vit.safetensors (A)" in stdout and "deepvit.safetensors (B)" in stdout
    assert "deepvit-diag file - 2 blocks, width 32, 4 heads" in stdout  # each model's provenance line
    assert "Re-attention in 2/2 blocks" in stdout
    assert "4 images from" in stdout
    for row in (
        "similar blocks (ratio > 0.9)",
        "collapse starts at block",
        "adjacent similarity, first third",
        "adjacent similarity, last third",
        "cross-head similarity",
        "entropy, first → last",
        "attention distance",
    ):
        assert row in stdout
    assert "similar blocks than" in stdout or "the same number of similar blocks" in stdout
    assert "Re-attention changes the maps" in stdout
    assert "analysing images" in stderr  # the progress bar, on stderr
    assert "Traceback" not in stderr


def test_compare_result_json_has_scalars_parameters_provenance_and_versions(comparison_run) -> None:
    status, _, _, out = comparison_run
    assert status == 0
    document = json.loads((out / "result.json").read_text())
    assert document["format"] == "deepvit-diag comparison"
    for side, description in (
        ("a", "vit.safetensors: deepvit-diag file"),
        ("b", "deepvit.safetensors: deepvit-diag file"),
    ):
        analysis = document[side]
        assert analysis["model"]["description"].startswith(description)
        assert analysis["model"]["provenance"]["source"] == "file"
        settings = analysis["settings"]
        assert settings["k"] == 2 and settings["tau"] == 0.5 and settings["rho"] == 0.9 and settings["cka_chunk"] == 32
        assert settings["axis"] == "columns" and settings["maps"] == "post" and settings["num_examples"] == 2
        assert analysis["images"]["count"] == 4 and analysis["images"]["skipped"] == 0
        assert "images from" in analysis["images"]["description"]
        summary = analysis["summary"]
        for key in (
            "similar_blocks",
            "similar_block_indices",
            "collapse_start",
            "adjacent_similarity_first_third",
            "adjacent_similarity_last_third",
            "cross_head_similarity",
            "entropy_trend",
            "attention_distance_trend",
        ):
            assert key in summary
    assert {"torch", "timm", "numpy", "deepvit_diag", "python"} <= set(document["versions"])
    assert "cka_ab_diagonal_mean" in document["summary"]


def test_compare_arrays_npz_has_every_matrix_and_curve(comparison_run) -> None:
    _, _, _, out = comparison_run
    with np.load(out / "arrays.npz") as npz:
        names = set(npz.files)
        assert npz["a/similarity_post"].shape == (2, 2)
        assert npz["b/cross_head_pre"].shape == (2, 4, 4)
        assert npz["cka_ab"].shape == (2, 2)
        assert npz["a/example_images"].shape == (2, 32, 32, 3)  # --examples 2 by default
    for side in ("a", "b"):
        for name in (
            "similarity_pre",
            "similarity_post",
            "ratio_pre",
            "ratio_post",
            "cross_head_post",
            "entropy",
            "attention_distance",
            "token_similarity",
            "rank_residual",
            "block_influence",
            "cka",
            "example_cls_pre",
            "example_cls_post",
        ):
            assert f"{side}/{name}" in names
    assert {"a/theta", "a/theta_blocks", "b/theta", "b/theta_blocks", "b/theta_bias"} <= names
    assert "a/theta_bias" not in names  # a plain ViT has no Re-attention block, so no Theta bias


def test_compare_report_has_every_figure_and_no_external_resource(comparison_run) -> None:
    _, _, _, out = comparison_run
    page = (out / "report.html").read_text()
    for div_id in COMPARISON_FIGURES:
        assert f'id="{div_id}"' in page
    assert page.count("Plotly.newPlot(") == len(COMPARISON_FIGURES)
    assert not re.search(r"<script[^>]*\bsrc\s*=", page, re.IGNORECASE)
    assert not re.search(r"<link[^>]*href\s*=\s*[\"']?(https?:)?//", page, re.IGNORECASE)
    assert not re.search(r"<link\b", page, re.IGNORECASE)
    assert "deepvit.safetensors: deepvit-diag file" in page and "4 images from" in page


# ----------------------------------------------------------------------------- image sources


def test_analyze_single_files(workspace: Path) -> None:
    out = workspace / "files-out"
    status, stdout, stderr = run(
        [
            "analyze",
            "--ckpt",
            str(workspace / "deepvit.safetensors"),
            "--images",
            str(workspace / "images" / "cat" / "a.png"),
            str(workspace / "images" / "dog" / "c.png"),
            "--out",
            str(out),
            "--examples",
            "1",
            "--maps",
            "pre",
            "--k",
            "1",
            "--device",
            "cpu",
        ]
    )
    assert status == 0, stderr
    document = json.loads((out / "result.json").read_text())
    assert document["format"] == "deepvit-diag analysis"
    assert document["num_images"] == 2 and document["settings"]["maps"] == "pre" and document["settings"]["k"] == 1
    page = (out / "report.html").read_text()
    assert 'id="fig-theta-heatmaps-0"' in page and 'id="fig-cls-attention-0-0"' in page
    assert 'id="fig-cka-across"' not in page and 'id="fig-cls-attention-0-1"' not in page
    assert "pre-Θ maps" in stdout


def test_analyze_glob_with_json_prints_only_the_summary_on_stdout(workspace: Path) -> None:
    out = workspace / "glob-out"
    status, stdout, stderr = run(
        [
            "analyze",
            "--ckpt",
            str(workspace / "vit.safetensors"),
            "--images",
            str(workspace / "images" / "**" / "*.png"),
            "--json",
            "--out",
            str(out),
            "--device",
            "cpu",
        ]
    )
    assert status == 0, stderr
    summary = json.loads(stdout)  # nothing else on stdout
    assert summary["num_images"] == 3  # a.png, c.png, d.png (b.jpg does not match)
    assert summary == json.loads((out / "result.json").read_text())["summary"]


def test_analyze_bundled_set_quiet_prints_nothing(workspace: Path) -> None:
    out = workspace / "bundled-out"
    status, stdout, stderr = run(
        [
            "analyze",
            "--ckpt",
            str(workspace / "vit.safetensors"),
            "--images",
            "photos",
            "--num-images",
            "2",
            "--quiet",
            "--out",
            str(out),
            "--device",
            "cpu",
        ]
    )
    assert (status, stdout, stderr) == (0, "", "")
    images = json.loads((out / "result.json").read_text())["images"]
    assert images["count"] == 2 and "bundled set 'photos'" in images["description"]
    assert (out / "arrays.npz").is_file() and (out / "report.html").is_file()


def test_images_mix_a_bundled_set_with_files(workspace: Path) -> None:
    out = workspace / "mixed-sources-out"
    status, _, stderr = run(
        [
            "analyze",
            "--ckpt",
            str(workspace / "vit.safetensors"),
            "--images",
            str(workspace / "images" / "cat" / "a.png"),
            "photos",
            "--num-images",
            "3",
            "--quiet",
            "--out",
            str(out),
            "--device",
            "cpu",
        ]
    )
    assert status == 0, stderr
    images = json.loads((out / "result.json").read_text())["images"]
    assert (
        images["count"] == 3
        and images["description"].startswith("3 images from ")
        and "photos" in images["description"]
    )


def test_default_image_set_is_the_one_the_model_cards_name(workspace: Path) -> None:
    out = workspace / "default-out"
    status, _, stderr = run(
        [
            "compare",
            "--ckpt-a",
            str(workspace / "digits_model.safetensors"),
            "--ckpt-b",
            str(workspace / "digits_model.safetensors"),
            "--num-images",
            "4",
            "--quiet",
            "--out",
            str(out),
            "--device",
            "cpu",
        ]
    )
    assert status == 0, stderr
    document = json.loads((out / "result.json").read_text())
    assert "bundled set 'digits-test'" in document["a"]["images"]["description"]
    assert document["a"]["model"]["provenance"]["card"]["image_set"] == "digits-test"


@pytest.mark.parametrize("command", ["compare", "sweep"])
def test_checkpoints_whose_cards_name_different_image_sets_need_images(workspace: Path, command: str) -> None:
    first, second = str(workspace / "digits_model.safetensors"), str(workspace / "clutter_model.safetensors")
    models = ["--ckpt-a", first, "--ckpt-b", second] if command == "compare" else ["--ckpt", first, second]
    out = workspace / f"mixed-{command}"
    common = [command, *models, "--num-images", "2", "--quiet", "--out", str(out), "--device", "cpu"]
    status, _, stderr = run(common)
    assert_clean_error(status, stderr, 1, "different image sets (digits-clutter-test, digits-test)", "--images")
    assert not out.exists()
    status, _, stderr = run([*common, "--images", str(workspace / "images")])
    assert status == 0, stderr


def test_default_image_set_falls_back_to_photos(workspace: Path) -> None:
    out = workspace / "photos-out"
    status, _, stderr = run(
        [
            "analyze",
            "--ckpt",
            str(workspace / "vit.safetensors"),
            "--num-images",
            "1",
            "--examples",
            "0",
            "--quiet",
            "--out",
            str(out),
            "--device",
            "cpu",
        ]
    )
    assert status == 0, stderr
    assert "bundled set 'photos'" in json.loads((out / "result.json").read_text())["images"]["description"]
    assert 'id="fig-cls-' not in (out / "report.html").read_text()


def test_images_mixed_with_other_files_are_skipped_and_counted(workspace: Path) -> None:
    out = workspace / "mixed-out"
    status, _, stderr = run(
        [
            "analyze",
            "--ckpt",
            str(workspace / "vit.safetensors"),
            "--images",
            str(workspace / "mixed"),
            "--out",
            str(out),
            "--device",
            "cpu",
            "--workers",
            "2",
        ]
    )
    assert status == 0, stderr
    assert re.search(r"^warning: skipped 2 file\(s\) that are not readable images", stderr, re.MULTILINE)
    assert "Traceback" not in stderr
    document = json.loads((out / "result.json").read_text())
    assert document["images"]["count"] == 2 and document["images"]["skipped"] == 2
    assert document["settings"]["num_workers"] == 2


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("checkpoint", "fragment"),
    [
        ("missing.safetensors", "missing.safetensors"),
        ("notes.txt", "notes.txt"),
        ("truncated.safetensors", "truncated.safetensors"),
    ],
)
def test_bad_checkpoints_fail_with_one_line(workspace: Path, checkpoint: str, fragment: str) -> None:
    status, stdout, stderr = run(["analyze", "--ckpt", str(workspace / checkpoint), "--out", str(workspace / "never")])
    assert_clean_error(status, stderr, 1, fragment)
    assert stdout == ""


def test_bad_second_checkpoint_fails_with_one_line(workspace: Path) -> None:
    status, _, stderr = run(
        [
            "compare",
            "--ckpt-a",
            str(workspace / "vit.safetensors"),
            "--ckpt-b",
            str(workspace / "notes.txt"),
            "--out",
            str(workspace / "never"),
        ]
    )
    assert_clean_error(status, stderr, 1, "notes.txt")


@pytest.mark.parametrize(
    ("images", "fragment"),
    [
        ("no-such-folder", "image source not found"),
        ("junk", "no usable image"),
        ("empty", "no usable image"),
    ],
)
def test_bad_image_sources_fail_with_one_line(workspace: Path, images: str, fragment: str) -> None:
    status, _, stderr = run(
        [
            "analyze",
            "--ckpt",
            str(workspace / "vit.safetensors"),
            "--images",
            str(workspace / images),
            "--out",
            str(workspace / "never"),
        ]
    )
    assert_clean_error(status, stderr, 1, fragment)


def test_out_that_is_a_file_fails_before_the_analysis(workspace: Path) -> None:
    status, _, stderr = run(
        ["analyze", "--ckpt", str(workspace / "vit.safetensors"), "--out", str(workspace / "notes.txt")]
    )
    assert_clean_error(status, stderr, 1, "not a folder")


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        (["--quiet", "--json"], "not allowed with argument"),
        (["--num-images", "0"], "--num-images: must be at least 1"),
        (["--k", "0"], "--k: must be at least 1"),
        (["--tau", "1.5"], "--tau: must be between 0 and 1"),
        (["--rho", "-0.1"], "--rho: must be between 0 and 1"),
        (["--rho", "high"], "--rho: expected a number"),
        (["--batch-size", "0"], "--batch-size: must be at least 1"),
        (["--examples", "-1"], "--examples: must be at least 0"),
        (["--workers", "-1"], "--workers: must be at least 0"),
        (["--axis", "diagonal"], "--axis: invalid choice"),
        (["--dtype", "float16"], "--dtype: invalid choice"),
    ],
)
def test_conflicting_or_invalid_options_are_usage_errors(workspace: Path, options: list[str], fragment: str) -> None:
    status, stdout, stderr = run(["analyze", "--ckpt", str(workspace / "vit.safetensors"), *options])
    assert_clean_error(status, stderr, 2, fragment)
    assert stdout == ""


def test_compare_needs_both_checkpoints() -> None:
    status, _, stderr = run(["compare", "--ckpt-a", "vit32"])
    assert_clean_error(status, stderr, 2, "--ckpt-b")


def test_help_explains_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    commands = next(action for action in build_parser()._actions if action.dest == "command").choices
    for command in ("compare", "analyze", "sweep"):
        for action in commands[command]._actions:
            assert action.help and len(action.help.split()) >= 3, f"{command} {action.option_strings} needs a sentence"
        with pytest.raises(SystemExit) as exit_:
            main([command, "--help"])
        assert exit_.value.code == 0
        text = capsys.readouterr().out
        for option in (
            "--images",
            "--num-images",
            "--batch-size",
            "--device",
            "--dtype",
            "--out",
            "--k",
            "--tau",
            "--rho",
            "--axis",
            "--maps",
            "--quiet",
            "--json",
            "--examples",
            "--workers",
            "--class-map",
        ):
            assert option in text


# ----------------------------------------------------------------------------- the real entry point


def _entry_point() -> list[str]:
    script = shutil.which("deepvit-diag")
    return [script] if script else [sys.executable, "-m", "deepvit_diag.cli"]


HEAVY_MODULES = ("torch", "timm", "plotly", "streamlit")


def _modules_loaded_by(code: str) -> list[str]:
    """The heavy modules a fresh interpreter has loaded after running ``code``."""
    loaded = f"','.join(m for m in {HEAVY_MODULES!r} if m in sys.modules)"
    probe = f"import sys\n{code}\nprint('loaded:' + {loaded}, file=sys.stderr)"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return [name for name in done.stderr.rpartition("loaded:")[2].strip().split(",") if name]


def test_importing_the_cli_and_the_package_loads_no_torch() -> None:
    assert _modules_loaded_by("import deepvit_diag.cli, deepvit_diag") == []
    # A public name loads what it needs on first use, and registers the presets with timm.
    assert "torch" in _modules_loaded_by(
        "import deepvit_diag, timm\ndeepvit_diag.analyze\ntimm.create_model('deepvit16', depth=2)"
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["analyze", "--help"],
        ["sweep", "--help"],
        ["train", "--help"],
        ["app", "--help"],
        ["analyze", "--tau", "2"],
    ],
)
def test_help_and_usage_errors_load_no_torch(argv: list[str]) -> None:
    code = f"from deepvit_diag.cli import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass"
    assert _modules_loaded_by(code) == []


def test_star_import_and_dir_list_every_public_name() -> None:
    import deepvit_diag

    names = deepvit_diag.__all__
    assert {"analyze", "load_model", "similarity_ratio", "models", "Settings"} <= set(names)
    assert all(hasattr(deepvit_diag, name) for name in names)
    assert set(names) <= set(dir(deepvit_diag))
    with pytest.raises(AttributeError):
        deepvit_diag.no_such_name  # noqa: B018


@pytest.mark.slow
def test_entry_point_compare_json_and_exit_codes(workspace: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = workspace / "subprocess-out"
    done = subprocess.run(
        [
            *_entry_point(),
            "compare",
            "--ckpt-a",
            str(workspace / "vit.safetensors"),
            "--ckpt-b",
            str(workspace / "deepvit.safetensors"),
            "--images",
            str(workspace / "mixed"),
            "--json",
            "--out",
            str(out),
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert set(summary) >= {"a", "b", "differences", "cka_ab_diagonal_mean"}
    assert "warning: skipped 2 file(s)" in done.stderr and "Traceback" not in done.stderr
    assert {path.name for path in out.iterdir()} == {"result.json", "arrays.npz", "report.html", ".deepvit-diag.json"}

    failed = subprocess.run(
        [*_entry_point(), "analyze", "--ckpt", str(workspace / "notes.txt"), "--out", str(workspace / "never")],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert failed.returncode == 1
    assert failed.stderr.startswith("error: ") and len(failed.stderr.strip().splitlines()) == 1
    assert failed.stdout == ""


# ----------------------------------------------------------------------------- architecture hints


def test_architecture_hints_are_options_per_model_and_messages_name_them(workspace: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    plain = tmp_path / "plain.pth"  # width 32: neither 64-wide heads nor 12 heads fit, the file cannot say
    torch.save(timm.create_model("vit16", **TINY).state_dict(), plain)
    common = ["--images", str(workspace / "mixed"), "--device", "cpu", "--quiet", "--num-images", "2"]
    status, _, err = run(["compare", "--ckpt-a", str(plain), "--ckpt-b", str(workspace / "vit.safetensors")] + common)
    assert_clean_error(status, err, 1, "plain.pth", "pass num_heads=... (--num-heads-a)", "(--arch-a NAME)")
    status, _, err = run(["compare", "--ckpt-a", str(workspace / "vit.safetensors"), "--ckpt-b", str(plain)] + common)
    assert_clean_error(status, err, 1, "(--num-heads-b)")
    out = tmp_path / "out"
    status, _, err = run(
        ["compare", "--ckpt-a", str(plain), "--num-heads-a", "4", "--ckpt-b", str(plain), "--num-heads-b", "4"]
        + common
        + ["--out", str(out)]
    )
    assert status == 0, err
    document = json.loads((out / "result.json").read_text())
    assert document["a"]["geometry"]["num_heads"] == 4

    status, _, err = run(
        ["analyze", "--ckpt", str(plain), "--num-heads", "4", "--img-size", "48"] + common + ["--out", str(out)]
    )
    assert_clean_error(status, err, 1, "resample_pos_embed=True (--resample-pos-embed)")
    status, _, err = run(
        ["analyze", "--ckpt", str(plain), "--num-heads", "4", "--img-size", "48", "--resample-pos-embed"]
        + common
        + ["--out", str(tmp_path / "out48"), "--force"]
    )
    assert status == 0, err
    assert json.loads((tmp_path / "out48" / "result.json").read_text())["geometry"]["grid_size"] == [6, 6]


def test_offline_hub_error_names_the_command_line_options(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    status, out, err = run(["analyze", "--ckpt", "deit_tiny_patch16_224", "--out", str(tmp_path / "never")])
    assert status == 1 and err.startswith("error: could not download the pretrained weights of deit_tiny_patch16_224")
    assert "(--ckpt PATH)" in err and "(--arch deit_tiny_patch16_224)" in err
    assert "load_model(" not in err and len(err.strip().splitlines()) == 1
