"""The fault matrix, second round: compressed-size bombs, huge images, SIGTERM, hidden folders, odd pixels,
store names and shards whose numbers were changed.

Same rules as ``test_faults.py``: exit status 1 (143 for SIGTERM) with one stderr line naming the file and
the cause, no traceback, the earlier output byte-identical, nothing left behind; bombs are refused from
their headers, with the peak memory of the process measured in a subprocess.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from numpy.lib import format as npy_format
from PIL import Image
from test_cli import run
from test_faults import LAUNCH, ROOT, assert_one_line, leftovers, snapshot, write_png

from deepvit_diag import DiagError
from deepvit_diag.checkpoints.native import save_native
from deepvit_diag.images import open_images
from deepvit_diag.manifest import MARKER
from deepvit_diag.models import build_model
from deepvit_diag.preprocessing import to_rgb, wide_to_uint8
from deepvit_diag.results import load_result

TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, mlp_ratio=2.0, num_classes=5)
BOMB_BYTES = 600 << 20  # above archives.ENTRY_LIMIT


# The command line in a process that notes its peak resident memory once torch and the package are
# imported (the bulk of it, and what varies most between runs) and again when the command has ended.
MEASURED = (
    "import resource, sys; import deepvit_diag.cli as cli; "
    "peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; before = peak(); "
    "status = cli.main(sys.argv[2:]); open(sys.argv[1], 'w').write(str(peak() - before)); sys.exit(status)"
)


def measured(*argv: str) -> tuple[int, str, float]:
    """``deepvit-diag *argv`` in a subprocess: exit status, stderr and how far the command raised the process's
    peak resident memory above what importing took (MB)."""
    with tempfile.TemporaryDirectory() as folder:
        growth = Path(folder) / "growth"
        done = subprocess.run(
            [sys.executable, "-c", MEASURED, str(growth), *argv],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
            timeout=600,
        )
        return done.returncode, done.stderr, int(growth.read_text()) / 1024


def zip_bomb(path: Path, entry: str, size: int = BOMB_BYTES) -> Path:
    """An .npz whose one entry is a float64 .npy of ``size`` bytes of zeros, deflated to a few MB."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        with archive.open(entry, "w", force_zip64=True) as f:
            npy_format.write_array_header_1_0(f, {"descr": "<f8", "fortran_order": False, "shape": (size // 8,)})
            chunk = bytes(16 << 20)
            for _ in range(size // len(chunk)):
                f.write(chunk)
    return path


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A tiny DeepViT, 8 images, its two shards (4 images each), an analysis output and a zip bomb."""
    root = tmp_path_factory.mktemp("hostile")
    torch.manual_seed(0)
    save_native(build_model({"family": "deepvit", "kwargs": TINY}), root / "deepvit.safetensors")
    for index in range(8):
        write_png(root / "images" / f"{index}.png", index)
    common = ["--ckpt", str(root / "deepvit.safetensors"), "--images", str(root / "images"), "--device", "cpu"]
    for index in range(2):
        shard = [
            "--shard",
            f"{index + 1}/2",
            "--batch-size",
            "2",
            "--cka-chunk",
            "4",
            "--out",
            str(root / f"s{index}"),
            "--quiet",
        ]
        status, _, stderr = run(["analyze", *common, *shard])
        assert status == 0, stderr
    status, _, stderr = run(["analyze", *common, "--out", str(root / "out"), "--quiet"])
    assert status == 0, stderr
    zip_bomb(root / "bomb.npz", "hsic/a.npy")
    return root


@pytest.fixture(scope="module")
def failing_peak(work, tmp_path_factory) -> float:
    """The memory growth (MB) of an ``analyze`` that loads its model and finds no usable image: the baseline
    that a refused bomb may not exceed by much."""
    folder = tmp_path_factory.mktemp("no-images")
    (folder / "notes.txt").write_text("not an image")
    argv = ["analyze", "--ckpt", str(work / "deepvit.safetensors"), "--images", str(folder), "--out", str(folder / "o")]
    status, _, peak = measured(*argv)
    assert status == 1
    return peak


def _copy(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def _unmarked(source: Path, target: Path) -> Path:
    """A copy without the marker, as ``save`` from Python writes it: its files are read without the
    manifest's check, so the checks of what they hold are what refuses them."""
    _copy(source, target)
    (target / MARKER).unlink()
    return target


# ----------------------------------------------------------------------------- 2: compressed-size bombs


@pytest.mark.slow
def test_2_a_tally_bomb_is_refused_from_its_headers(work, tmp_path):
    good_status, _, good_peak = measured("merge", str(work / "s0"), str(work / "s1"), "--out", str(tmp_path / "good"))
    assert good_status == 0
    shard = _unmarked(work / "s0", tmp_path / "s0")
    shutil.copy(work / "bomb.npz", shard / "tally.npz")
    out = tmp_path / "merged"
    status, stderr, peak = measured("merge", str(shard), str(work / "s1"), "--out", str(out))
    assert_one_line(status, stderr, 1, "tally.npz", "entry hsic/a.npy", "would expand to")
    assert peak < good_peak + 100, (peak, good_peak)  # the entry alone would take 620 MB
    assert not out.exists() and not leftovers(out)


def test_2_an_arrays_bomb_is_refused_before_loading(work, tmp_path):
    folder = _unmarked(work / "out", tmp_path / "out")
    shutil.copy(work / "bomb.npz", folder / "arrays.npz")
    with pytest.raises(DiagError, match=r"arrays\.npz: entry hsic/a\.npy would expand to 620\.8 MB"):
        load_result(folder)


@pytest.mark.slow
def test_2_a_deflated_pth_is_refused_before_inflating(work, tmp_path, failing_peak):
    plain = tmp_path / "plain.pth"
    torch.save({"big": torch.zeros(64 << 20)}, plain)  # 256 MB of zeros
    bomb = tmp_path / "bomb.pth"
    with zipfile.ZipFile(plain) as source, zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as target:
        for info in source.infolist():
            target.writestr(info.filename, source.read(info.filename))
    assert bomb.stat().st_size < 1 << 20
    status, stderr, peak = measured("analyze", "--ckpt", str(bomb), "--out", str(tmp_path / "out"))
    assert_one_line(status, stderr, 1, str(bomb), "would expand to 268.4 MB", "entry")
    assert not (tmp_path / "out").exists()
    assert peak < failing_peak + 100, (peak, failing_peak)  # inflated, the tensor alone takes 268 MB


# ----------------------------------------------------------------------------- 3: huge images


@pytest.mark.slow
def test_3_a_huge_png_is_refused_from_its_header(work, tmp_path, failing_peak):
    images = tmp_path / "images"
    images.mkdir()
    Image.new("1", (12000, 12000)).save(images / "huge.png")
    assert (images / "huge.png").stat().st_size < 100_000
    out = tmp_path / "out"
    status, stderr, peak = measured(
        "analyze", "--ckpt", str(work / "deepvit.safetensors"), "--images", str(images), "--out", str(out)
    )
    assert_one_line(status, stderr, 1, "no usable image", "144,000,000 pixels")
    assert peak < failing_peak + 100, (peak, failing_peak)  # decoded as RGB it would take 432 MB
    assert not out.exists()


def test_3_the_pixel_cap_is_configurable(work, tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPVIT_DIAG_MAX_PIXELS", "1000")
    with pytest.raises(DiagError, match="1,600 pixels, more than 1,000"):
        open_images(str(work / "images"))
    monkeypatch.setenv("DEEPVIT_DIAG_MAX_PIXELS", "lots")
    with pytest.raises(DiagError, match="DEEPVIT_DIAG_MAX_PIXELS must be a positive whole number"):
        open_images(str(work / "images"))


def test_3_large_jpegs_decode_at_a_reduced_scale(tmp_path):
    from deepvit_diag.images import _load_path

    path = tmp_path / "big.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (4200, 4300, 3), dtype=np.uint8)).save(path)
    loaded = _load_path(path)
    assert loaded.mode == "RGB" and 2048 <= min(loaded.size) < 4200  # JPEG's draft scale, at least 2048 px


# ----------------------------------------------------------------------------- 5: SIGTERM


def test_5_sigterm_in_process_ends_like_ctrl_c(work, tmp_path, monkeypatch):
    earlier = _copy(work / "out", tmp_path / "out")
    before = snapshot(earlier)

    def terminated(*args, **kwargs):
        raise KeyboardInterrupt(signal.SIGTERM)

    monkeypatch.setattr("deepvit_diag.analysis.run", terminated)
    status, _, stderr = run(["analyze", "--ckpt", str(work / "deepvit.safetensors"), "--out", str(earlier)])
    assert status == 143 and stderr == "terminated\n"
    assert snapshot(earlier) == before and not leftovers(earlier)


@pytest.mark.slow
def test_5_sigterm_during_the_analysis(work, tmp_path):
    earlier = _copy(work / "out", tmp_path / "out")
    before = snapshot(earlier)
    argv = ["analyze", "--ckpt", str(work / "deepvit.safetensors"), "--images", "digits-test", "--batch-size", "1"]
    process = subprocess.Popen(
        [sys.executable, "-c", LAUNCH, *argv, "--out", str(earlier), "--device", "cpu", "--quiet"],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
    )
    lock = earlier / ".out.deepvit-diag-lock"
    deadline = time.monotonic() + 120
    while not lock.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.5)
    assert process.poll() is None, "the analysis ended before it could be terminated"
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143 and stderr.strip() == "terminated", stderr
    assert snapshot(earlier) == before and not leftovers(earlier)


# ----------------------------------------------------------------------------- 8: merge checks every number


def _edit_counts(change):
    def edit(folder: Path) -> None:
        path = folder / "shard.json"
        document = json.loads(path.read_text())
        change(document)
        path.write_text(json.dumps(document))

    return edit


def _edit_arrays(change):
    def edit(folder: Path) -> None:
        path = folder / "tally.npz"
        with np.load(path) as npz:
            arrays = {name: npz[name] for name in npz.files}
        change(arrays)
        np.savez_compressed(path, **arrays)

    return edit


SHARD_DAMAGE = {
    "count 4 -> 40": (_edit_counts(lambda d: d["tally"].update(count=40)), "does not count 40 images"),
    "a (1,)-shaped sum": (
        _edit_arrays(lambda a: a.update({"0/sums/ratio_pre": np.ones(1)})),
        "0/sums/ratio_pre has shape (1,)",
    ),
    "a missing sum": (_edit_arrays(lambda a: a.pop("0/sums/entropy")), "lacks the sums entropy"),
    "NaN sums": (
        _edit_arrays(lambda a: a["0/sums/token_similarity"].__setitem__(0, np.nan)),
        "0/sums/token_similarity holds NaN",
    ),
    "accuracy of 1667%": (
        _edit_counts(lambda d: d["tally"]["models"][0]["correct"].update({"1": 50})),
        "models[0].correct['1'] must be a whole number from 0 to the 4 images",
    ),
    "skipped = -100": (_edit_counts(lambda d: d["tally"].update(skipped=-100)), "'skipped' must be a whole number"),
    "format version 99": (_edit_counts(lambda d: d.update(version=99)), "format version 99"),
    "ratio above 1 per image": (
        _edit_arrays(lambda a: a["0/sums/ratio_pre"].__setitem__(0, 9.0)),
        "0/sums/ratio_pre is outside what 4 images",
    ),
}


@pytest.mark.parametrize("case", SHARD_DAMAGE, ids=list(SHARD_DAMAGE))
def test_8_merge_refuses_changed_numbers(case, work, tmp_path):
    edit, fragment = SHARD_DAMAGE[case]
    shard = _unmarked(work / "s0", tmp_path / "s0")
    edit(shard)
    out = tmp_path / "merged"
    status, _, stderr = run(["merge", str(shard), str(work / "s1"), "--out", str(out)])
    assert_one_line(status, stderr, 1, str(shard), fragment)
    assert not out.exists() and not leftovers(out)


def test_8_untouched_shards_merge(work, tmp_path):
    status, _, stderr = run(["merge", str(work / "s0"), str(work / "s1"), "--out", str(tmp_path / "m"), "--quiet"])
    assert status == 0, stderr


# ----------------------------------------------------------------------------- 11: hidden folders


def test_11_a_folder_under_a_hidden_folder_is_scanned(tmp_path):
    images = tmp_path / ".cache" / "imgs"
    write_png(images / "a.png", 0)
    write_png(images / ".thumbs" / "b.png", 1)  # hidden inside the scanned folder: skipped
    write_png(images / "sub" / ".c.png", 2)
    assert open_images(str(images)).names == [str(images / "a.png")]
    relative = os.path.relpath(images, Path.cwd())  # "../..": dotted parts above the folder
    assert len(open_images(relative)) == 1


# ----------------------------------------------------------------------------- 14: pixels


def test_14_an_infinite_pixel_does_not_blacken_a_float_image():
    data = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    data[0, 0] = np.inf
    data[0, 1] = np.nan
    rgb = np.asarray(to_rgb(Image.fromarray(data, mode="F")))
    finite = data[np.isfinite(data)]
    low, high = finite.min(), finite.max()
    expected = np.round((np.clip(np.nan_to_num(data, nan=low, posinf=high), low, high) - low) / (high - low) * 255)
    expected[0, 1] = 0  # NaN
    assert np.array_equal(rgb[..., 0], expected.astype(np.uint8))


@pytest.mark.parametrize(
    "low, high, scaled",
    [(0, 1_000_000, "stretch"), (-5000, 5000, "stretch"), (0, 40_000, "16-bit"), (3, 200, "kept")],
)
def test_14_wide_integer_images_are_rescaled(low, high, scaled):
    data = np.linspace(low, high, 100).round().reshape(10, 10)
    converted = np.asarray(to_rgb(Image.fromarray(data.astype(np.int32), mode="I")))[..., 0]
    if scaled == "stretch":
        expected = (data - low) / (high - low) * 255
    elif scaled == "16-bit":
        expected = data / 65535 * 255
    else:
        expected = data
    assert np.array_equal(converted, np.round(expected).astype(np.uint8))
    assert len(np.unique(converted)) > 2


def test_14_an_image_with_no_finite_pixel_is_black():
    assert not wide_to_uint8(np.full((2, 2), np.nan), floating=True).any()


# ----------------------------------------------------------------------------- 15: store names


@pytest.mark.parametrize("name", ["name\n", "na\x1bme", "name/", " name"])
def test_15_store_names_must_be_printable(name, work, weight_store):
    status, _, stderr = run(["import", str(work / "deepvit.safetensors"), "--as", name])
    assert_one_line(status, stderr, 1, "invalid weight-store name")
    assert not weight_store.store.exists() or not list(weight_store.store.iterdir())


# ----------------------------------------------------------------------------- 4: outputs as one unit


def test_4_a_folder_mixing_two_runs_is_refused(work, tmp_path):
    """A kill between the renames: arrays.npz of a new run next to the old result.json and marker."""
    other = tmp_path / "other"
    status, _, stderr = run(
        ["analyze", "--ckpt", str(work / "deepvit.safetensors"), "--images", str(work / "images"), "--num-images",
         "3", "--out", str(other), "--device", "cpu", "--quiet"]
    )  # fmt: skip
    assert status == 0, stderr
    mixed = _copy(work / "out", tmp_path / "mixed")
    shutil.copy(other / "arrays.npz", mixed / "arrays.npz")
    with pytest.raises(DiagError, match=r"mixes files of different runs: arrays\.npz"):
        load_result(mixed)
    assert load_result(work / "out").num_images == 8


def test_4_array_shapes_must_match_result_json_without_a_marker(work, tmp_path):
    folder = _unmarked(work / "out", tmp_path / "out")  # as AnalysisResult.save writes it
    document = json.loads((folder / "result.json").read_text())
    document["array_shapes"]["ratio_pre"] = [7]
    (folder / "result.json").write_text(json.dumps(document))
    with pytest.raises(DiagError, match=r"array ratio_pre has shape \[2\], but result.json records \[7\]"):
        load_result(folder)


def test_4_the_marker_is_renamed_last(work, tmp_path, monkeypatch):
    """An interrupt after the first rename: the folder's files are refused as a mix, never loaded."""
    earlier = _copy(work / "out", tmp_path / "out")
    renames = []
    real = os.replace

    def replace_then_die(source, target):
        renames.append(Path(target).name)
        real(source, target)
        if len(renames) == 1:
            raise OSError(28, "No space left on device")

    monkeypatch.setattr("deepvit_diag.outputs.os.replace", replace_then_die)
    status, _, stderr = run(
        ["analyze", "--ckpt", str(work / "deepvit.safetensors"), "--images", str(work / "images"), "--num-images",
         "3", "--out", str(earlier), "--device", "cpu", "--quiet"]
    )  # fmt: skip
    assert_one_line(status, stderr, 1, "No space left on device")
    assert renames == ["arrays.npz"]
    with pytest.raises(DiagError, match="mixes files of different runs"):
        load_result(earlier)


# ----------------------------------------------------------------------------- 6: locks


def test_6_a_lock_left_by_a_killed_run_on_another_host_is_taken_over(work, tmp_path):
    earlier = _copy(work / "out", tmp_path / "out")
    (earlier / ".out.deepvit-diag-lock").write_text(json.dumps({"pid": 1, "host": "another-host"}))
    (earlier / ".out.deepvit-diag-abcd1234").mkdir()
    (earlier / ".out.deepvit-diag-abcd1234" / "arrays.npz").write_bytes(b"half")
    status, _, stderr = run(
        ["analyze", "--ckpt", str(work / "deepvit.safetensors"), "--images", str(work / "images"), "--out",
         str(earlier), "--device", "cpu", "--quiet"]
    )  # fmt: skip
    assert status == 0, stderr
    assert not leftovers(earlier)


def test_6_a_takeover_never_removes_a_live_runs_lock(tmp_path):
    """Two runs racing for a free lock: exactly one holds it, and leaving removes only the holder's file."""
    from deepvit_diag.outputs import OutputTarget

    out = tmp_path / "out"
    first = OutputTarget(out, folder=True, owned=lambda path: True).__enter__()
    lock = out / ".out.deepvit-diag-lock"
    with pytest.raises(DiagError, match=f"pid {os.getpid()} on "):
        OutputTarget(out, folder=True, owned=lambda path: True).__enter__()
    assert lock.exists()  # the refused run removed nothing
    first.write(lambda folder: (folder / "result.json").write_text("{}"))
    first.__exit__(None, None, None)
    assert not lock.exists()
    with OutputTarget(out, folder=True, owned=lambda path: True):  # free again
        assert lock.exists()


# ----------------------------------------------------------------------------- 7: a folder is ours by its marker


def test_7_a_users_zip_named_like_ours_is_not_replaced(work, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    for name in ("arrays.npz", "tally.npz"):
        with zipfile.ZipFile(out / name, "w") as archive:
            archive.writestr("mine.txt", "my data")
    before = snapshot(out)
    status, _, stderr = run(
        ["analyze", "--ckpt", str(work / "deepvit.safetensors"), "--images", str(work / "images"), "--out", str(out)]
    )
    assert_one_line(status, stderr, 1, "did not write (arrays.npz, tally.npz)", "--force")
    assert snapshot(out) == before and not leftovers(out)


# ----------------------------------------------------------------------------- 16: the metric API


MAPS = torch.softmax(torch.randn(3, 1, 2, 5, 5, generator=torch.Generator().manual_seed(0)), dim=-1)


@pytest.mark.parametrize("tau", [2, -0.1, float("nan"), "0.5", None, True])
def test_16_similarity_ratio_checks_tau(tau):
    from deepvit_diag import similarity_ratio

    with pytest.raises(DiagError, match="tau must be a number from 0 to 1"):
        similarity_ratio(MAPS, tau=tau)


@pytest.mark.parametrize("rho", [float("nan"), 1.5, "0.9"])
def test_16_similar_blocks_checks_rho(rho):
    from deepvit_diag import similar_blocks

    with pytest.raises(DiagError, match="rho must be a number from 0 to 1"):
        similar_blocks(torch.tensor([0.95, 0.2]), rho=rho)


@pytest.mark.parametrize(
    "ratio, fragment",
    [(None, "ratio must be"), ([[0.5]], "shape|ratio must be"), (torch.empty(3, device="meta"), "with values")],
)
def test_16_similar_blocks_checks_the_ratios(ratio, fragment):
    from deepvit_diag import similar_blocks

    with pytest.raises(DiagError, match=fragment):
        similar_blocks(ratio)


def test_16_meta_tensors_are_refused():
    from deepvit_diag import cross_layer_similarity

    with pytest.raises(DiagError, match="meta device"):
        cross_layer_similarity(torch.empty(3, 1, 2, 5, 5, device="meta"))


def test_16_valid_thresholds_still_give_the_independent_answer():
    from deepvit_diag import similar_blocks

    assert similar_blocks([0.95, 0.2, 0.91], rho=0.9).indices == [0, 2]
    assert similar_blocks(np.array([0.95, 0.2]), rho=1).count == 0


# ----------------------------------------------------------------------------- 9: typed fields, deep JSON

DEEP = "[" * 100_000 + "]" * 100_000


def _native(path: Path, arch: dict | None = None, card: object = None, raw_card: str | None = None) -> Path:
    from safetensors.torch import save_file

    from deepvit_diag.checkpoints.native import ARCH_KEY, CARD_KEY, FORMAT_KEY, FORMAT_VERSION

    torch.manual_seed(0)
    model = build_model({"family": "deepvit", "kwargs": TINY})
    meta = {FORMAT_KEY: FORMAT_VERSION, ARCH_KEY: json.dumps(arch or model.arch)}
    if card is not None or raw_card is not None:
        meta[CARD_KEY] = raw_card if raw_card is not None else json.dumps(card)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path), metadata=meta)
    return path


@pytest.mark.parametrize(
    "make, fragment",
    [
        (lambda p: _native(p, card={"epoch": "two"}), "field 'epoch' must be a whole number >= 0, got 'two'"),
        (lambda p: _native(p, card={"test_accuracy": 16.67}), "field 'test_accuracy' must be a number from 0 to 1"),
        (lambda p: _native(p, raw_card=DEEP), "nested 100000 levels deep"),
        (
            lambda p: _native(p, arch={"family": "deepvit", "kwargs": {**TINY, "num_heads": -4}}),
            "num_heads",
        ),
    ],
    ids=["card epoch text", "card accuracy 1667%", "deep card", "num_heads -4"],
)
def test_9_checkpoint_metadata_fields_are_typed(make, fragment, tmp_path):
    path = make(tmp_path / "model.safetensors")
    status, _, stderr = run(["analyze", "--ckpt", str(path), "--out", str(tmp_path / "out")])
    line = assert_one_line(status, stderr, 1, fragment)
    assert "Unexpected" not in line and str(path) in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "config, fragment",
    [({"hidden_act": ["gelu"]}, "hidden_act ['gelu'] is not one of"), (DEEP, "nested 100000 levels deep")],
    ids=["hidden_act list", "deep config"],
)
def test_9_hugging_face_configs_are_typed(config, fragment, tmp_path):
    from deepvit_diag.checkpoints.huggingface import read_config

    path = tmp_path / "config.json"
    path.write_text(config if isinstance(config, str) else json.dumps(config))
    with pytest.raises(DiagError, match=re_escape(fragment)) as err:
        read_config(path)
    assert str(path) in str(err.value)


def re_escape(text: str) -> str:
    import re

    return re.escape(text)


def test_9_a_deep_class_map_is_refused(work, tmp_path):
    class_map = tmp_path / "classes.json"
    class_map.write_text('{"a": ' + DEEP + "}")
    status, _, stderr = run(
        ["analyze", "--ckpt", str(work / "deepvit.safetensors"), "--images", str(work / "images"), "--class-map",
         str(class_map), "--out", str(tmp_path / "out")]
    )  # fmt: skip
    assert_one_line(status, stderr, 1, f"class map {class_map}: JSON nested")


def test_9_a_deep_shard_record_is_refused(work, tmp_path):
    shard = _unmarked(work / "s0", tmp_path / "s0")
    (shard / "shard.json").write_text(DEEP)
    status, _, stderr = run(["merge", str(shard), str(work / "s1"), "--out", str(tmp_path / "m")])
    assert_one_line(status, stderr, 1, f"{shard / 'shard.json'}: JSON nested")


# ----------------------------------------------------------------------------- 10: monitor files


@pytest.fixture(scope="module")
def monitor_lines(work, tmp_path_factory) -> list[dict]:
    from deepvit_diag import CollapseMonitor, load_model

    path = tmp_path_factory.mktemp("monitor") / "run.jsonl"
    monitor = CollapseMonitor(load_model(str(work / "deepvit.safetensors")), str(work / "images"), path=path)
    for step in (0, 5):
        monitor.measure(step)
    return [json.loads(line) for line in path.read_text().splitlines()]


MONITOR_DAMAGE = {
    "step text": (lambda r: r.update(step="abc"), "field 'step' must be a whole number >= 0"),
    "collapse_start 99": (lambda r: r["summary"].update(collapse_start=99), "'collapse_start' is 99"),
    "accuracy 500%": (lambda r: r["summary"].update(accuracy_top1=5.0), "'accuracy_top1' must be a number from 0"),
    "-5 images": (lambda r: r["summary"].update(num_images=-5), "'num_images' must be a whole number >= 1"),
    "curve too long": (lambda r: r["curves"]["ratio"].append(0.5), "curve 'ratio' has 3 values"),
    "version 99": (lambda r: r.update(version=99), "format version 99"),
    "mixed settings": (lambda r: r["settings"].update(tau=0.7), "other settings than the first"),
    "deep line": (None, "JSON nested"),
}


@pytest.mark.parametrize("case", MONITOR_DAMAGE, ids=list(MONITOR_DAMAGE))
def test_10_impossible_monitor_values_are_refused(case, monitor_lines, tmp_path):
    change, fragment = MONITOR_DAMAGE[case]
    first, second = (json.loads(json.dumps(line)) for line in monitor_lines)
    if change is not None:
        change(second)
    path = tmp_path / "run.jsonl"
    path.write_text(json.dumps(first) + "\n" + (DEEP if change is None else json.dumps(second)) + "\n")
    out = tmp_path / "out"
    status, _, stderr = run(["sweep", "--monitor", str(path), "--out", str(out)])
    assert_one_line(status, stderr, 1, str(path), fragment)
    assert not out.exists() and not leftovers(out)


# ----------------------------------------------------------------------------- 13: sweep checks its inputs first


@pytest.mark.parametrize("bad", ["notes.txt", "missing.safetensors"], ids=["broken file", "path typo"])
def test_13_sweep_refuses_a_bad_checkpoint_before_the_first_analysis(bad, work, tmp_path, monkeypatch):
    (tmp_path / "notes.txt").write_text("not weights")
    monkeypatch.setattr("deepvit_diag.sweep_runner.analyze", lambda *a, **k: pytest.fail("an analysis started"))
    good = str(work / "deepvit.safetensors")
    out = tmp_path / "out"
    argv = ["sweep", "--ckpt", good, good, str(tmp_path / bad), "--images", str(work / "images"), "--out", str(out)]
    status, _, stderr = run([*argv, "--device", "cpu", "--quiet"])
    assert_one_line(status, stderr, 1, bad)
    assert not out.exists() and not leftovers(out)


def test_13_a_later_failure_keeps_the_finished_checkpoints(work, tmp_path, monkeypatch):
    from deepvit_diag import sweep_runner
    from deepvit_diag.sweeps import SweepResult

    real, calls = sweep_runner.analyze, []

    def fails_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise DiagError("out of memory on the second model")
        return real(*args, **kwargs)

    monkeypatch.setattr(sweep_runner, "analyze", fails_second)
    good = str(work / "deepvit.safetensors")
    out = tmp_path / "out"
    argv = ["sweep", "--ckpt", good, good, "--images", str(work / "images"), "--out", str(out), "--device", "cpu"]
    status, _, stderr = run([*argv, "--quiet"])
    assert_one_line(
        status, stderr, 1, "failed (out of memory on the second model)", "1 checkpoint(s) before it", str(out)
    )
    kept = SweepResult.load(out)
    assert len(kept.entries) == 1 and not leftovers(out)


# ----------------------------------------------------------------------------- 12: names that are not UTF-8


def test_12_names_that_are_not_utf8_are_analysed_and_shown_replaced(work, tmp_path):
    root = os.fsencode(tmp_path)
    checkpoint = os.fsdecode(root + b"/m\xff.safetensors")
    shutil.copy(work / "deepvit.safetensors", checkpoint)
    images = tmp_path / "imgs"
    images.mkdir()
    shutil.copy(work / "images" / "0.png", os.fsdecode(os.fsencode(images) + b"/a\xfe.png"))
    shutil.copy(work / "images" / "1.png", images / "b.png")
    common = ["--ckpt", checkpoint, "--images", str(images), "--device", "cpu"]
    status, stdout, stderr = run(["analyze", *common, "--out", str(tmp_path / "out")])
    assert status == 0, stderr
    assert "m\ufffd.safetensors" in stdout and "\udcff" not in stdout
    assert "m\udcff.safetensors" in load_result(tmp_path / "out").model["description"]  # the name as given
    status, _, stderr = run(["analyze", *common, "--shard", "1/1", "--out", str(tmp_path / "shard"), "--quiet"])
    assert status == 0, stderr


def test_9_a_meta_tensor_in_a_checkpoint_is_refused_by_name(tmp_path):
    state = build_model({"family": "vit", "kwargs": TINY}).state_dict()
    state["blocks.1.attn.qkv.weight"] = torch.empty(state["blocks.1.attn.qkv.weight"].shape, device="meta")
    torch.save(state, tmp_path / "m.pth")
    status, _, stderr = run(["analyze", "--ckpt", str(tmp_path / "m.pth"), "--num-heads", "4"])
    assert_one_line(status, stderr, 1, "blocks.1.attn.qkv.weight is on the meta device")
