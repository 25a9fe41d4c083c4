"""The fault matrix: bad files, interrupts, full disks and hostile metadata, through the CLI, the API and the app.

Each case ends the way the project's rules say: exit status 1 (130 for Ctrl-C, 2 for a bad option) with
ONE line on stderr that names the file and the real cause, no traceback, nothing half-written or
changed in the output folder (and no staging or lock left next to it), and no file read that the user
did not name. Sections follow the kinds of failure; every fixture is a tiny file made here.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import pickle
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file
from test_cli import run  # main(argv) in-process: (status, stdout, stderr)

from deepvit_diag import DiagError, analyze, extract_attention, load_model
from deepvit_diag.checkpoints import GuessWarning, loader
from deepvit_diag.checkpoints.native import ARCH_KEY, CARD_KEY, FORMAT_KEY, FORMAT_VERSION, save_native
from deepvit_diag.manifest import MARKER
from deepvit_diag.models import build_model
from deepvit_diag.results import ComparisonResult
from deepvit_diag.summary import comparison_findings, model_findings

TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, mlp_ratio=2.0, num_classes=5)
PAPER_NOTE = "the paper finds below"
ROOT = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------- helpers


def assert_one_line(status: int, stderr: str, expected_status: int, *fragments: str) -> str:
    """Exactly one line on stderr, with the status and words expected, and never a traceback or torch's
    advice to load unsafely."""
    assert status == expected_status, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr and "weights_only" not in stderr, stderr
    for fragment in fragments:
        assert fragment in lines[0], stderr
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones too) and its bytes; a missing folder is empty."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def leftovers(target: Path) -> list[str]:
    """Staging folders or locks of ``target`` left next to it or inside it."""
    places = [target.parent, target] if target.is_dir() else [target.parent]
    return sorted(p.name for place in places for p in place.iterdir() if ".deepvit-diag-" in p.name)


def tiny_state(family: str = "vit", seed: int = 0, **kwargs) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return {
        k: v.contiguous() for k, v in build_model({"family": family, "kwargs": {**TINY, **kwargs}}).state_dict().items()
    }


def native_file(path: Path, arch: object, tensors: dict | None = None, card: object = None, **metadata: str) -> Path:
    """A safetensors file with deepvit-diag metadata as given (``arch`` and ``card`` as JSON)."""
    meta = {FORMAT_KEY: FORMAT_VERSION, ARCH_KEY: json.dumps(arch), **metadata}
    if card is not None:
        meta[CARD_KEY] = json.dumps(card)
    save_file(tensors if tensors is not None else tiny_state(), str(path), metadata=meta)
    return path


def vit_arch(**kwargs) -> dict:
    return {"family": "vit", "kwargs": {**TINY, **kwargs}}


def write_png(path: Path, seed: int, size: int = 40) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    """Tiny checkpoints and images, and one complete earlier output of ``analyze`` to damage copies of."""
    root = tmp_path_factory.mktemp("faults")
    torch.manual_seed(0)
    save_native(build_model(vit_arch()), root / "vit.safetensors")
    torch.manual_seed(1)
    save_native(build_model({"family": "deepvit", "kwargs": TINY}), root / "deepvit.safetensors")
    for index in range(2):
        write_png(root / "images" / f"{index}.png", index)
    (root / "notes.txt").write_text("a text file\n")
    status, _, stderr = run(["analyze", *analyze_options(root, root / "good-out"), "--quiet"])
    assert status == 0, stderr
    return root


def analyze_options(root: Path, out: Path, checkpoint: str = "vit.safetensors") -> list[str]:
    return ["--ckpt", str(root / checkpoint), "--images", str(root / "images"), "--out", str(out), "--device", "cpu"]


@pytest.fixture
def earlier_output(files, tmp_path) -> Path:
    """A copy of a complete earlier output, in a folder of its own."""
    out = tmp_path / "out"
    out.mkdir()
    for name, data in snapshot(files / "good-out").items():
        (out / name).write_bytes(data)
    return out


@pytest.fixture
def loads_refused_before_building(monkeypatch):
    """Fail the test if a model is built for real (not on the meta device) while loading."""
    calls = []
    real = loader.build_arch

    def watched(arch):
        calls.append(torch.get_default_device().type)
        if calls[-1] != "meta":
            pytest.fail(f"a {arch['family']} model was built before the checkpoint was refused")
        return real(arch)

    monkeypatch.setattr(loader, "build_arch", watched)
    return calls


# ----------------------------------------------------------------------------- 1-3: tracebacks from odd files


def _saver_dict(state: dict, args: object, arch: object) -> dict:
    return {"state_dict": state, "args": args, "arch": arch, "epoch": 3}


ODD_PICKLES = {
    "int key": lambda: {0: torch.zeros(1)},
    "int key in state_dict entry": lambda: {"state_dict": {0: torch.zeros(1)}},
    "tuple key": lambda: {(1, 2): torch.zeros(1)},
    "None key": lambda: {None: torch.zeros(1)},
}


@pytest.mark.parametrize("case", ODD_PICKLES)
def test_1_non_string_keys_are_not_a_state_dict(case, tmp_path):
    path = tmp_path / "odd.pth"
    torch.save(ODD_PICKLES[case](), path)
    status, stdout, stderr = run(["import", str(path), "--as", "odd"])
    assert_one_line(status, stderr, 1, "odd.pth", "not a state dict", "not a tensor name")
    assert stdout == ""


@pytest.mark.parametrize(
    "args",
    [argparse.Namespace(model=torch.zeros(2)), {"model": [1, 2]}, argparse.Namespace(model=None), torch.ones(3)],
    ids=["tensor model", "list model", "no model", "tensor args"],
)
def test_2_a_training_script_record_that_is_not_a_name_is_ignored(args, tmp_path, weight_store):
    path = tmp_path / "run.pth.tar"
    torch.save(_saver_dict({"module." + k: v for k, v in tiny_state().items()}, args, torch.ones(1)), path)
    status, _, stderr = run(["import", str(path), "--as", "run", "--num-heads", "4"])
    assert status == 0, stderr  # the architecture is read off the weights instead
    assert "Traceback" not in stderr and (weight_store.store / "run.safetensors").is_file()


BAD_METADATA = {
    "arch null": (dict(arch=None), "architecture metadata is null"),
    "arch list": (dict(arch=[1, 2]), "architecture metadata is a list"),
    "arch without kwargs": (dict(arch={"family": "vit"}), "kwargs are null"),
    "kwargs a string": (dict(arch={"family": "vit", "kwargs": "depth=2"}), "kwargs are a string"),
    "unknown family": (dict(arch={"family": "resnet", "kwargs": {}}), "family 'resnet'"),
    "card a list": (dict(arch=vit_arch(), card=[1, 2]), "model card"),
    "card a number": (dict(arch=vit_arch(), card=3), "model card"),
}


@pytest.mark.parametrize("case", BAD_METADATA)
def test_3_malformed_deepvit_diag_metadata(case, tmp_path):
    kwargs, fragment = BAD_METADATA[case]
    path = native_file(tmp_path / "meta.safetensors", **kwargs)
    status, _, stderr = run(["import", str(path), "--as", "meta"])
    assert_one_line(status, stderr, 1, "meta.safetensors", fragment)
    with pytest.raises(DiagError, match=fragment):
        load_model(path)


@pytest.mark.parametrize(
    ("metadata", "fragment"),
    [({ARCH_KEY: "{not json"}, "not valid JSON"), ({FORMAT_KEY: "7"}, "format '7'")],
    ids=["arch not JSON", "newer format"],
)
def test_3_unreadable_metadata_entries(metadata, fragment, tmp_path):
    path = tmp_path / "meta.safetensors"
    save_file(
        tiny_state(), str(path), metadata={FORMAT_KEY: FORMAT_VERSION, ARCH_KEY: json.dumps(vit_arch()), **metadata}
    )
    status, _, stderr = run(["import", str(path), "--as", "meta"])
    assert_one_line(status, stderr, 1, "meta.safetensors", fragment)


def test_3_a_broken_store_entry_does_not_break_the_listing(weight_store):
    weight_store.store.mkdir(parents=True)
    native_file(weight_store.store / "broken.safetensors", arch=[1], card=None)
    status, stdout, stderr = run(["models"])
    assert status == 0 and "broken" in stdout and "Traceback" not in stderr


# ----------------------------------------------------------------------------- 4: Ctrl-C, also while importing


# What the installed ``deepvit-diag`` script runs.
LAUNCH = "import sys, _deepvit_diag_launcher as launcher; sys.exit(launcher.main())"


def _cli_process(*argv: str, preexec_fn=None, **popen) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}

    def prepare_child():
        # Ctrl-C as a terminal delivers it: a shell starts background jobs with SIGINT ignored, and
        # Python then never turns SIGINT into KeyboardInterrupt, so a test run in the background
        # (a CI runner, nohup) would send a signal the command line never sees.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        if preexec_fn is not None:
            preexec_fn()

    return subprocess.Popen(
        [sys.executable, "-c", LAUNCH, *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=prepare_child,
        **popen,
    )


def _wait_until_importing_torch(process: subprocess.Popen) -> None:
    """Until torch's library is loaded into the process (Linux: its memory maps), i.e. the command line is
    being imported; elsewhere a second, by when Python runs and imports."""
    maps = Path(f"/proc/{process.pid}/maps")
    if not maps.exists():
        time.sleep(1.0)
        return
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:
        try:
            if "libtorch" in maps.read_text():
                return
        except OSError:
            pass
        time.sleep(0.02)


def _interrupt(process: subprocess.Popen) -> tuple[int, str]:
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    return process.returncode, stderr


def test_4_the_entry_point_imports_nothing_heavy():
    """What the console script imports before its Ctrl-C handler is in place."""
    script = "import sys, _deepvit_diag_launcher; print(sorted({'torch', 'timm', 'numpy'} & set(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=60,
    )
    assert done.stdout.strip() == "[]", done.stderr
    text = (ROOT / "pyproject.toml").read_text()
    assert 'deepvit-diag = "_deepvit_diag_launcher:main"' in text


def test_4_ctrl_c_during_start_up(files, tmp_path):
    out = tmp_path / "out"
    process = _cli_process("analyze", *analyze_options(files, out))
    _wait_until_importing_torch(process)
    status, stderr = _interrupt(process)
    assert status == 130 and stderr.strip() == "interrupted", stderr
    assert not out.exists() and not leftovers(out)


@pytest.mark.slow
def test_4_ctrl_c_during_the_analysis(files, tmp_path):
    out = tmp_path / "out"
    process = _cli_process(
        "analyze",
        "--ckpt",
        str(files / "vit.safetensors"),
        "--images",
        "digits-test",
        "--batch-size",
        "1",
        "--out",
        str(out),
        "--device",
        "cpu",
        "--quiet",
    )
    lock = out / ".out.deepvit-diag-lock"
    deadline = time.monotonic() + 120
    while not lock.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.5)  # past loading the model: reading digits and analysing them one at a time
    assert process.poll() is None, "the analysis ended before it could be interrupted"
    status, stderr = _interrupt(process)
    assert status == 130 and stderr.strip() == "interrupted", stderr
    assert not out.exists() and not leftovers(out)


def test_4_ctrl_c_in_process_keeps_the_earlier_output(files, earlier_output, monkeypatch):
    before = snapshot(earlier_output)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("deepvit_diag.analysis.run", interrupted)
    status, _, stderr = run(["analyze", *analyze_options(files, earlier_output)])
    assert status == 130 and stderr == "interrupted\n"
    assert snapshot(earlier_output) == before and not leftovers(earlier_output)


# ----------------------------------------------------------------------------- 5: the weight store is unusable


def test_5_weight_store_under_a_file(files, tmp_path, monkeypatch):
    home = tmp_path / "home-is-a-file"
    home.write_text("not a folder")
    monkeypatch.setenv("DEEPVIT_DIAG_HOME", str(home))
    status, _, stderr = run(["import", str(files / "vit.safetensors"), "--as", "mine"])
    assert_one_line(status, stderr, 1, "weights", "Not a directory")
    assert home.read_text() == "not a folder"
    status, stdout, stderr = run(["models"])
    assert status == 0 and "vit32" in stdout and stderr == ""


def test_5_interrupted_import_leaves_no_store_file(files, weight_store, monkeypatch):
    def interrupted(model, path, **kwargs):
        Path(path).write_bytes(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(loader, "save_native", interrupted)
    status, _, stderr = run(["import", str(files / "vit.safetensors"), "--as", "mine"])
    assert status == 130 and stderr == "interrupted\n"
    assert not weight_store.store.exists() or list(weight_store.store.iterdir()) == []


# ----------------------------------------------------------------------------- 6: train's options are checked


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        (["--batch-size", "0"], "--batch-size: must be at least 1"),
        (["--epochs", "0"], "--epochs: must be at least 1"),
        (["--lr", "0"], "--lr: must be a number above 0"),
        (["--lr", "nan"], "--lr: must be a number above 0"),
        (["--depth", "-1"], "--depth: must be at least 1"),
        (["--num-heads", "0"], "--num-heads: must be at least 1"),
    ],
)
def test_6_train_options_out_of_range_are_usage_errors(options, fragment, tmp_path, monkeypatch):
    monkeypatch.setattr("deepvit_diag.train.train_model", lambda *a, **k: pytest.fail("training started"))
    out = tmp_path / "model.safetensors"
    status, stdout, stderr = run(["train", "vit16", "--out", str(out), "--quiet", *options])
    assert status == 2 and "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and f"deepvit-diag train: error: argument {fragment}" in errors[0], stderr
    assert not out.exists() and stdout == ""


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        (["--embed-dim", "16", "--num-heads", "3"], "--embed-dim 16 is not divisible by --num-heads 3"),
        (["--img-size", "30", "--patch-size", "8"], "--img-size 30 is not a multiple of --patch-size 8"),
    ],
)
def test_6_train_options_that_do_not_go_together(options, fragment, tmp_path, monkeypatch):
    monkeypatch.setattr("deepvit_diag.train.train_model", lambda *a, **k: pytest.fail("training started"))
    out = tmp_path / "model.safetensors"
    status, stdout, stderr = run(["train", "vit16", "--out", str(out), "--quiet", *options])
    assert_one_line(status, stderr, 1, fragment)
    assert not out.exists() and stdout == ""


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        (["--num-heads", "0"], "--num-heads: must be at least 1"),
        (["--mlp-ratio", "-2"], "--mlp-ratio: must be a number above 0"),
        (["--num-classes", "-1"], "--num-classes: must be at least 0"),
    ],
)
def test_6_import_overrides_are_range_checked(options, fragment, files):
    status, _, stderr = run(["import", str(files / "vit.safetensors"), "--as", "x", *options])
    errors = [line for line in stderr.splitlines() if "error:" in line]
    assert status == 2 and len(errors) == 1 and fragment in errors[0] and "Traceback" not in stderr


def test_6_api_overrides_are_checked(tmp_path):
    torch.save(tiny_state(), tmp_path / "vit.pth")
    with pytest.raises(DiagError, match="num_heads must be a whole number of at least 1, got 0"):
        load_model(tmp_path / "vit.pth", num_heads=0)


# ----------------------------------------------------------------------------- 7: the API's bad input


def test_7_extract_attention_checks_the_image_size():
    model = build_model(vit_arch())
    with pytest.raises(DiagError, match=r"images have shape \(C, H, W\) = \(3, 7, 7\).*expects \(3, 32, 32\)"):
        extract_attention(model, torch.zeros(2, 3, 7, 7))


def _damage(folder: Path, name: str, change) -> None:
    path = folder / name
    if name == "result.json":
        path.write_text(json.dumps(change(json.loads(path.read_text()))))
    else:
        change(path)


def _without_cka(path: Path) -> None:
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files if k != "cka_ab"}
    np.savez(path, **arrays)


DAMAGE = {
    "npz garbage": ("arrays.npz", lambda p: p.write_bytes(b"PK\x03\x04 not really a zip")),
    "npz truncated": ("arrays.npz", lambda p: p.write_bytes(p.read_bytes()[:500])),
    "npz lacks cka_ab": ("arrays.npz", _without_cka),
    "json lacks a side": ("result.json", lambda d: {k: v for k, v in d.items() if k != "a"}),
    "json side is a list": ("result.json", lambda d: {**d, "b": [1, 2]}),
    "geometry is a string": ("result.json", lambda d: {**d, "a": {**d["a"], "geometry": "wide"}}),
    "settings unknown": ("result.json", lambda d: {**d, "a": {**d["a"], "settings": {"colour": 1}}}),
    "json is a list": ("result.json", lambda d: [d]),
    "json not utf-8": ("result.json", None),
}


@pytest.fixture(scope="module")
def saved_comparison(files, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("comparison") / "out"
    status, _, stderr = run(
        [
            "compare",
            "--ckpt-a",
            str(files / "vit.safetensors"),
            "--ckpt-b",
            str(files / "deepvit.safetensors"),
            "--images",
            str(files / "images"),
            "--out",
            str(out),
            "--device",
            "cpu",
            "--quiet",
        ]
    )
    assert status == 0, stderr
    return out


@pytest.mark.parametrize("case", DAMAGE)
def test_7_loading_a_damaged_comparison(case, saved_comparison, tmp_path):
    folder = tmp_path / "damaged"
    folder.mkdir()
    for name, data in snapshot(saved_comparison).items():
        (folder / name).write_bytes(data)
    assert ComparisonResult.load(folder) is not None  # the copy itself is fine
    name, change = DAMAGE[case]
    if change is None:
        (folder / name).write_bytes(b"\xff\xfe{")
    else:
        _damage(folder, name, change)
    with pytest.raises(DiagError) as err:
        ComparisonResult.load(folder)
    assert "\n" not in str(err.value) and str(folder) in str(err.value)


# ----------------------------------------------------------------------------- 8: what a small file can claim


def test_8_a_stray_block_key_builds_nothing(tmp_path, loads_refused_before_building):
    state = tiny_state()
    state["blocks.100000000.norm1.weight"] = torch.ones(32)
    path = tmp_path / "stray.pth"
    torch.save(state, path)
    status, _, stderr = run(["import", str(path), "--as", "stray"])
    assert_one_line(status, stderr, 1, "stray.pth", "blocks.100000000 but no blocks.2")
    assert loads_refused_before_building == []


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        (dict(depth=100_000_000), "does not fit the architecture (100000000 blocks): the file holds 2"),
        (dict(depth="2"), "depth '2' is not a whole number >= 1"),
        (dict(embed_dim=100_000), "shape mismatch"),
        (dict(img_size=10_000_000), "img_size 10000000 is not a whole number from 1 to"),
        (dict(num_classes=10**12), "head.weight"),
        (dict(num_heads=10**9, embed_dim=32), "cannot build"),
    ],
    ids=["depth", "depth a string", "width", "image size", "classes", "heads"],
)
def test_8_metadata_sizes_are_bounded_by_the_tensors(kwargs, fragment, tmp_path, loads_refused_before_building):
    path = native_file(tmp_path / "big.safetensors", arch=vit_arch(**kwargs))
    with pytest.raises(DiagError) as err:
        load_model(path)
    assert fragment in str(err.value) and "big.safetensors" in str(err.value)
    assert set(loads_refused_before_building) <= {"meta"}


def test_8_a_recorded_model_name_cannot_build_a_giant(tmp_path):
    """The weights decide the sizes; the recorded name only fills in what they cannot say, and its sizes are
    compared on the meta device (no memory)."""
    path = tmp_path / "saver.pth.tar"
    torch.save({"state_dict": tiny_state(), "arch": "vit_giant_patch14_224"}, path)
    with pytest.warns(GuessWarning, match=r"model name 'vit_giant_patch14_224' in embed_dim 1408 -> 32, depth 40 -> 2"):
        model = load_model(path)
    assert (len(model.blocks), model.embed_dim) == (2, 32)


def test_8_tensors_repeating_one_value_are_refused(tmp_path):
    state = tiny_state()
    state["pos_embed"] = torch.zeros(1, 1, 1).expand(1, 10**7, 32)  # 1.3 GB of floats from 4 stored bytes
    path = tmp_path / "expanded.pth"
    torch.save(state, path)
    status, _, stderr = run(["import", str(path), "--as", "expanded"])
    assert_one_line(status, stderr, 1, "refused to load", "expanded.pth", "1.3 GB")


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        ({"crop_pct": 1e-6}, "crop_pct"),
        ({"mean": [0.5] * 1000}, "mean"),
        ({"std": [0.0, 0.5, 0.5]}, "std"),
        ({"interpolation": "magic"}, "interpolation"),
        ({"input_size": [3, "224", 224]}, "input_size"),
        ({"file": "/etc/passwd"}, "file"),
        ({"hf_hub_id": "someone/model"}, "hf_hub_id"),
    ],
)
def test_8_data_config_from_metadata_is_bounded(config, fragment, tmp_path):
    path = native_file(tmp_path / "cfg.safetensors", arch={**vit_arch(), "pretrained_cfg": config})
    status, _, stderr = run(["import", str(path), "--as", "cfg"])
    assert_one_line(status, stderr, 1, "cfg.safetensors", fragment)


# ----------------------------------------------------------------------------- 9: metadata never chooses what is read


@pytest.fixture
def reads(monkeypatch):
    """Every path opened through Python, torch.load or timm.create_model's keyword arguments, while a test runs."""
    seen: dict[str, list] = {"opened": [], "create_model": []}
    hook_active = [True]

    def audit(event, args):
        if hook_active[0] and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
            seen["opened"].append(os.fsdecode(args[0]))

    sys.addaudithook(audit)  # hooks cannot be removed: it is switched off after the test
    real_create = timm.create_model

    def create(name, *args, **kwargs):
        seen["create_model"].append((name, kwargs))
        return real_create(name, *args, **kwargs)

    monkeypatch.setattr(timm, "create_model", create)
    yield seen
    hook_active[0] = False


@pytest.mark.parametrize(
    ("arch", "fragment"),
    [
        ({"family": "timm", "name": "vit_tiny_patch16_224", "kwargs": {"checkpoint_path": "OTHER"}}, "checkpoint_path"),
        ({"family": "timm", "name": "vit_tiny_patch16_224", "kwargs": {"pretrained": True}}, "pretrained"),
        (
            {"family": "timm", "name": "vit_tiny_patch16_224", "kwargs": {"pretrained_cfg_overlay": {"file": "OTHER"}}},
            "pretrained_cfg_overlay",
        ),
        ({"family": "timm", "name": "vit_tiny_patch16_224", "kwargs": {"cache_dir": "OTHER"}}, "cache_dir"),
        ({"family": "timm", "name": "hf-hub:someone/vit", "kwargs": {}}, "not a timm model"),
        ({"family": "vit", "kwargs": {**TINY, "checkpoint_path": "OTHER"}}, "checkpoint_path"),
        ({"family": "vit", "kwargs": TINY, "pretrained_cfg": {"file": "OTHER"}}, "file"),
        ({"family": "vit", "kwargs": TINY, "url": "https://example.com/w.pth"}, "url"),
    ],
    ids=[
        "checkpoint_path",
        "pretrained",
        "overlay file",
        "cache_dir",
        "hub name",
        "vit checkpoint_path",
        "data config file",
        "url",
    ],
)
def test_9_metadata_cannot_name_other_files_downloads_or_pretrained_weights(arch, fragment, tmp_path, reads):
    other = tmp_path / "other.pth"
    torch.save(tiny_state(seed=5), other)
    arch = json.loads(json.dumps(arch).replace("OTHER", str(other)))
    path = native_file(tmp_path / "named.safetensors", arch=arch)
    status, _, stderr = run(["import", str(path), "--as", "named"])
    assert_one_line(status, stderr, 1, "named.safetensors", fragment)
    assert str(other) not in reads["opened"]
    assert all(
        kwargs.get("pretrained") is not True and "checkpoint_path" not in kwargs for _, kwargs in reads["create_model"]
    )


def test_9_a_timm_architecture_from_metadata_builds_without_pretrained_weights(tmp_path, reads, weight_store):
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, **{**TINY, "embed_dim": 192, "num_heads": 3})
    model.arch = loader.timm_arch("vit_tiny_patch16_224", **{**TINY, "embed_dim": 192, "num_heads": 3})
    path = save_native(model, tmp_path / "timm.safetensors")
    loaded = load_model(path)
    assert loaded.provenance["format"] == "native"
    assert reads["create_model"] and all(kwargs.get("pretrained") is False for _, kwargs in reads["create_model"])
    assert not any("huggingface" in opened or ".cache/torch" in opened for opened in reads["opened"])


# ----------------------------------------------------------------------------- 10-11: wrong answers presented as right


def test_10_integer_weights_are_refused_with_the_tensors_name(tmp_path):
    state = {k: (v * 100).to(torch.int8) if v.is_floating_point() else v for k, v in tiny_state().items()}
    path = native_file(tmp_path / "int8.safetensors", arch=vit_arch(), tensors=state)
    status, _, stderr = run(["import", str(path), "--as", "int8"])
    assert_one_line(status, stderr, 1, "int8.safetensors", "tensor ", "int8 numbers, not floating point")
    torch.save(state, tmp_path / "int8.pth")
    with pytest.raises(DiagError, match="int8.pth.*holds int8 numbers"):
        load_model(tmp_path / "int8.pth", num_heads=4)


def test_10_integer_buffers_are_fine(tiny_model, tmp_path, weight_store):
    model = tiny_model("deepvit", depth=2)  # BatchNorm's num_batches_tracked is an int64 buffer
    assert any(not v.is_floating_point() for v in model.state_dict().values())
    torch.save(model.state_dict(), tmp_path / "deepvit.pth")
    assert load_model(tmp_path / "deepvit.pth").provenance["format"] == "official"


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_11_nan_or_infinite_weights_are_refused_with_the_tensors_name(value, tmp_path):
    state = tiny_state()
    state["blocks.1.attn.qkv.weight"][3, 4] = value
    path = tmp_path / "diverged.pth"
    torch.save(state, path)
    status, _, stderr = run(["import", str(path), "--as", "diverged", "--num-heads", "4"])
    assert_one_line(status, stderr, 1, "diverged.pth", "tensor blocks.1.attn.qkv.weight holds 1 NaN or infinite")


# ----------------------------------------------------------------------------- 12: outputs are whole or untouched


def _fail_mid_write(code: int):
    """A writer that writes half a file, then fails as a full disk (ENOSPC) or a size limit (EFBIG) would."""

    def writer(path, *args, **kwargs):
        Path(path).write_bytes(b"half")
        raise OSError(code, os.strerror(code))

    return writer


WRITERS = {
    "arrays.npz": lambda monkeypatch, fail: monkeypatch.setattr(np, "savez_compressed", fail),
    "report.html": lambda monkeypatch, fail: monkeypatch.setattr("deepvit_diag.report.write_report", fail),
}


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EFBIG], ids=["full disk", "file-size limit"])
@pytest.mark.parametrize("writer", WRITERS)
def test_12_a_failed_write_keeps_the_earlier_output(writer, code, files, earlier_output, monkeypatch):
    before = snapshot(earlier_output)
    WRITERS[writer](monkeypatch, _fail_mid_write(code))
    status, _, stderr = run(["analyze", *analyze_options(files, earlier_output), "--quiet"])
    assert_one_line(status, stderr, 1, str(earlier_output), os.strerror(code))
    assert snapshot(earlier_output) == before
    assert not leftovers(earlier_output)


def test_12_interrupt_while_writing_keeps_the_earlier_output(files, earlier_output, monkeypatch):
    before = snapshot(earlier_output)

    def interrupted(path, *args, **kwargs):
        Path(path).write_text("<html>half")
        raise KeyboardInterrupt

    monkeypatch.setattr("deepvit_diag.report.write_report", interrupted)
    status, _, stderr = run(["analyze", *analyze_options(files, earlier_output), "--quiet"])
    assert status == 130 and stderr == "interrupted\n"
    assert snapshot(earlier_output) == before and not leftovers(earlier_output)


def test_12_a_new_output_replaces_all_three_files(files, earlier_output):
    before = snapshot(earlier_output)
    status, _, stderr = run(["analyze", *analyze_options(files, earlier_output, "deepvit.safetensors"), "--quiet"])
    assert status == 0, stderr
    after = snapshot(earlier_output)
    assert set(after) == {"result.json", "arrays.npz", "report.html", MARKER} and not leftovers(earlier_output)
    assert all(after[name] != before[name] for name in after)


@pytest.mark.slow
def test_12_file_size_limit_in_a_real_process(files, earlier_output):
    before = snapshot(earlier_output)
    limit = 1 << 20  # result.json and arrays.npz fit, report.html (plotly.js inlined) does not

    def limited():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    process = _cli_process("analyze", *analyze_options(files, earlier_output), "--quiet", preexec_fn=limited)
    _, stderr = process.communicate(timeout=600)
    assert_one_line(process.returncode, stderr, 1, "File too large")
    assert snapshot(earlier_output) == before and not leftovers(earlier_output)


# ----------------------------------------------------------------------------- 13: files the tool did not write


@pytest.mark.parametrize(
    ("name", "content"),
    [("notes.txt", b"my notes"), ("result.json", b'{"mine": true}'), ("report.html", b"<html>my page</html>")],
)
def test_13_out_holding_other_files_is_refused(name, content, files, tmp_path, monkeypatch):
    monkeypatch.setattr("deepvit_diag.checkpoints.load_model", lambda *a, **k: pytest.fail("work started"))
    out = tmp_path / "out"
    out.mkdir()
    (out / name).write_bytes(content)
    status, _, stderr = run(["analyze", *analyze_options(files, out)])
    assert_one_line(status, stderr, 1, str(out), f"did not write ({name})", "--force")
    assert snapshot(out) == {name: content} and not leftovers(out)


def test_13_force_writes_next_to_other_files(files, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("kept")
    status, _, stderr = run(["analyze", *analyze_options(files, out), "--quiet", "--force"])
    assert status == 0, stderr
    assert set(snapshot(out)) == {"notes.txt", "result.json", "arrays.npz", "report.html", MARKER}
    assert (out / "notes.txt").read_text() == "kept" and not leftovers(out)


def test_13_a_running_writer_locks_the_output(files, earlier_output, monkeypatch):
    lock = earlier_output / ".out.deepvit-diag-lock"
    holds = (  # what a run does: holds an flock on the lock file, its pid and host written in it
        "import fcntl, json, os, socket, sys, time; f = open(sys.argv[1], 'a+'); fcntl.flock(f, fcntl.LOCK_EX); "
        "f.truncate(0); f.write(json.dumps({'pid': os.getpid(), 'host': socket.gethostname()})); f.flush(); "
        "print('locked', flush=True); time.sleep(60)"
    )
    runner = subprocess.Popen([sys.executable, "-c", holds, str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert runner.stdout.readline().strip() == "locked"
        before = snapshot(earlier_output)
        status, _, stderr = run(["analyze", *analyze_options(files, earlier_output)])
        assert_one_line(status, stderr, 1, f"another deepvit-diag run (pid {runner.pid} on ")
        assert snapshot(earlier_output) == before
    finally:
        runner.kill()
        runner.wait()
    status, _, stderr = run(["analyze", *analyze_options(files, earlier_output), "--quiet"])  # now a stale lock
    assert status == 0, stderr
    assert not leftovers(earlier_output)


@pytest.mark.parametrize("existing", ["text", "checkpoint"])
def test_13_train_out_never_replaces_a_file_it_did_not_write(existing, tmp_path, monkeypatch):
    monkeypatch.setattr("deepvit_diag.train.train_model", lambda *a, **k: pytest.fail("training started"))
    out = tmp_path / "model.safetensors"
    if existing == "text":
        out.write_text("my thesis")
    else:
        torch.save(tiny_state(), out)
    before = out.read_bytes()
    status, _, stderr = run(["train", "vit16", "--out", str(out), "--quiet"])
    assert_one_line(status, stderr, 1, str(out), "not written by deepvit-diag", "--force")
    assert out.read_bytes() == before and not leftovers(out)


def test_13_import_may_not_change_what_a_preset_name_loads(files, weight_store):
    status, _, stderr = run(["import", str(files / "deepvit.safetensors"), "--as", "vit32"])
    assert_one_line(status, stderr, 1, "'vit32' loads the preset", "family deepvit instead of vit", "--force")
    assert not weight_store.store.exists() or list(weight_store.store.iterdir()) == []
    status, _, stderr = run(["import", str(files / "deepvit.safetensors"), "--as", "vit32", "--force"])
    assert status == 0, stderr
    status, _, stderr = run(["import", str(files / "vit.safetensors"), "--as", "vit32"])
    assert_one_line(status, stderr, 1, "already has 'vit32'")


# ----------------------------------------------------------------------------- 14: unusable --out, found at once


@pytest.mark.parametrize("where", ["under a file", "in /proc"])
def test_14_unusable_out_is_refused_before_the_work(where, files, monkeypatch):
    monkeypatch.setattr("deepvit_diag.checkpoints.load_model", lambda *a, **k: pytest.fail("work started"))
    out = files / "notes.txt" / "out" if where == "under a file" else Path("/proc/deepvit-diag-test/out")
    status, _, stderr = run(["analyze", *analyze_options(files, out)])
    assert_one_line(status, stderr, 1, f"cannot write --out {out}")
    assert (files / "notes.txt").read_text() == "a text file\n"


def test_14_unusable_train_out_is_refused_before_training(files, monkeypatch):
    monkeypatch.setattr("deepvit_diag.train.train_model", lambda *a, **k: pytest.fail("training started"))
    status, _, stderr = run(["train", "vit16", "--out", str(files / "notes.txt" / "m.safetensors"), "--quiet"])
    assert_one_line(status, stderr, 1, "cannot write --out", "Not a directory")


# ----------------------------------------------------------------------------- 15: messages that say the real cause


class RunsCommand:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class CallsEval:
    def __reduce__(self):
        return (eval, ("1 + 1",))


@pytest.mark.parametrize(
    ("payload", "legacy", "called"),
    [("system", False, "posix.system"), ("system", True, "posix.system"), ("eval", False, "eval")],
    ids=["os.system", "os.system old format", "eval"],
)
def test_15_refused_pickles_name_what_they_would_call(payload, legacy, called, tmp_path):
    marker = tmp_path / "MARKER"
    path = tmp_path / "evil.pth"
    torch.save(
        {"state_dict": tiny_state(), "x": RunsCommand(marker) if payload == "system" else CallsEval()},
        path,
        _use_new_zipfile_serialization=not legacy,
    )
    status, _, stderr = run(["import", str(path), "--as", "evil"])
    assert_one_line(status, stderr, 1, f"refused to load {path}: unpickling would call {called}")
    assert not marker.exists()


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (bytes(range(256)) * 16, "first bytes are none of"),
        (b"epoch 1: loss 2.3\nepoch 2: loss 1.9\n", "holds text, not weights"),
        (pickle.dumps({"a": 1}, protocol=4), "a Python pickle"),
    ],
    ids=["random bytes", "text", "plain pickle"],
)
def test_15_unreadable_files_say_what_they_are(content, fragment, tmp_path):
    path = tmp_path / "weights.pt"
    path.write_bytes(content)
    status, _, stderr = run(["import", str(path), "--as", "w"])
    assert_one_line(status, stderr, 1, str(path), fragment)


def test_15_truncated_zip_is_named_truncated(tmp_path):
    torch.save(tiny_state(), tmp_path / "full.pth")
    path = tmp_path / "cut.pth"
    path.write_bytes((tmp_path / "full.pth").read_bytes()[:3000])
    status, _, stderr = run(["import", str(path), "--as", "cut"])
    assert_one_line(status, stderr, 1, "cut.pth", "truncated or damaged")


def test_15_symlink_loop_is_not_a_missing_file(tmp_path):
    (tmp_path / "a.pth").symlink_to(tmp_path / "b.pth")
    (tmp_path / "b.pth").symlink_to(tmp_path / "a.pth")
    status, _, stderr = run(["import", str(tmp_path / "a.pth"), "--as", "loop"])
    assert_one_line(status, stderr, 1, "a.pth", "Too many levels of symbolic links")


def test_15_a_truncated_jpeg_alone_says_why(files, tmp_path):
    full = tmp_path / "full.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(full, quality=95)
    cut = tmp_path / "photo.jpg"
    cut.write_bytes(full.read_bytes()[: len(full.read_bytes()) // 2])
    status, _, stderr = run(
        [
            "analyze",
            "--ckpt",
            str(files / "vit.safetensors"),
            "--images",
            str(cut),
            "--out",
            str(tmp_path / "o"),
            "--device",
            "cpu",
            "--quiet",
        ]
    )
    assert_one_line(status, stderr, 1, "photo.jpg", "truncated")
    assert not (tmp_path / "o").exists()


def test_15_a_decompression_bomb_says_why(files, tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # the 40 x 40 test image is then "too large"
    bomb = write_png(tmp_path / "bomb.png", 0)
    status, _, stderr = run(
        ["analyze", "--ckpt", str(files / "vit.safetensors"), "--images", str(bomb), "--out", str(tmp_path / "o")]
    )
    assert_one_line(status, stderr, 1, "bomb.png", "decompression bomb")


def test_15_offline_hub_names_fail_at_once(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError(errno.ENETUNREACH, "Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    started = time.monotonic()
    status, _, stderr = run(["import", "vit_tiny_patch16_224", "--as", "hub"])
    assert_one_line(status, stderr, 1, "vit_tiny_patch16_224", "cannot be reached")
    assert time.monotonic() - started < 60  # not a minute of retries (a generous bound for a loaded machine)


# ----------------------------------------------------------------------------- 16: the app


@pytest.fixture
def app_files(tmp_path_factory, monkeypatch):
    import streamlit as st
    from test_app import app_environment, write_app_files

    root = write_app_files(tmp_path_factory.mktemp("fault_app"))
    for name, value in app_environment(root).items():
        monkeypatch.setenv(name, value)
    st.cache_data.clear()
    st.cache_resource.clear()
    yield root
    st.cache_data.clear()
    st.cache_resource.clear()


def _app():
    from streamlit.testing.v1 import AppTest

    return AppTest.from_file(str(ROOT / "app" / "main.py"), default_timeout=180).run()


@pytest.mark.slow
def test_16_app_names_the_uploaded_file_and_shows_one_error_per_bad_input(app_files):
    at = _app()
    at.selectbox(key="a_source").set_value("upload").run()
    at.file_uploader(key="a_upload").upload("my notes.pth", b"these are my notes, not weights\n" * 10)
    at.button(key="run").click().run()
    errors = [error.value for error in at.error]
    assert errors == ["my notes.pth is not a readable PyTorch or safetensors checkpoint: it holds text, not weights"]
    at = _app()
    at.selectbox(key="images_source").set_value("upload").run()
    at.file_uploader(key="images_upload").set_value([("cat.png", b"\x89PNG\r\n\x1a\n" + bytes(100), "image/png")])
    at.button(key="run").click().run()
    assert not at.exception
    assert [error.value for error in at.error] == [
        "cat.png cannot be decoded as an image (not an image format PIL reads)"
    ]


@pytest.mark.slow
def test_16_overview_opens_with_the_similarity_ratio_of_both_models(app_files):
    at = _app()
    assert not at.exception and not at.error
    charts = at.get("plotly_chart")
    assert len(charts) == 1
    spec = charts[0].proto.spec
    assert "Similarity ratio per block" in spec and "vit.safetensors (A)" in spec and "deepvit.safetensors (B)" in spec


def test_16_paper_vit_figure_is_not_attached_to_post_theta_maps():
    torch.manual_seed(0)
    vit, deepvit = build_model(vit_arch()), build_model({"family": "deepvit", "kwargs": TINY})
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    results = {maps: analyze(deepvit, images, maps=maps, progress=False) for maps in ("pre", "post")}
    assert not any(PAPER_NOTE in sentence for sentence in model_findings("D", results["post"]))
    assert any(PAPER_NOTE in sentence for sentence in model_findings("D", results["pre"]))
    assert any(PAPER_NOTE in sentence for sentence in model_findings("V", analyze(vit, images, progress=False)))
    from deepvit_diag import compare

    for maps, attached in (("post", False), ("pre", True)):
        comparison = compare(vit, deepvit, images, maps=maps, progress=False)
        cross_head = next(s for s in comparison_findings("V", "D", comparison) if s.startswith("Mean cross-head"))
        assert (PAPER_NOTE in cross_head) is attached, cross_head


@pytest.mark.parametrize(("umask", "expected"), [(0o022, 0o644), (0o027, 0o640)])
def test_outputs_get_the_mode_of_a_new_file_under_the_umask(tmp_path, umask, expected):
    """safetensors creates its files 0o600; a checkpoint gets the same mode as a report."""
    from deepvit_diag.outputs import OutputTarget

    before = os.umask(umask)
    try:
        model = build_model(vit_arch())
        with OutputTarget(tmp_path / "m.safetensors", folder=False, owned=lambda path: True) as target:
            target.write(lambda path: save_native(model, path))
        with OutputTarget(tmp_path / "folder", folder=True, owned=lambda path: True) as target:
            target.write(lambda path: (path / "report.html").write_text("x"))
    finally:
        os.umask(before)
    assert (tmp_path / "m.safetensors").stat().st_mode & 0o777 == expected
    assert (tmp_path / "folder" / "report.html").stat().st_mode & 0o777 == expected
