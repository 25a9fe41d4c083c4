"""Checkpoint loading: every layout round-trips with identical logits, vit-pytorch weights
reproduce vit-pytorch, the architecture is inferred (guesses announced), bad input is refused in one line
(library and CLI), and names resolve through the weight store. No test touches the network."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import random
import subprocess
import sys
import threading
import warnings

import huggingface_hub.constants
import pytest
import timm
import torch
from safetensors.torch import save_file
from vit_pytorch import ViT
from vit_pytorch.deepvit import DeepViT

from deepvit_diag import load_model, save_native
from deepvit_diag.checkpoints import GuessWarning, import_checkpoint, list_models, list_store, loader
from deepvit_diag.checkpoints.provenance import card_summary
from deepvit_diag.cli import main
from deepvit_diag.errors import DiagError
from deepvit_diag.models import PRESETS

TINY_TIMM = dict(depth=2, embed_dim=32, num_heads=4, img_size=32, patch_size=8, num_classes=5)
OFFICIAL_S_LIKE = dict(embed_layer="cnn", apply_transform=[False, True, True], scale_adjustment=0.5)


def logits(model, x):
    with torch.no_grad():
        return model(x)


@contextlib.contextmanager
def no_guesses():
    """A context in which any warning (e.g. a guessed architecture value) fails the test."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def prefixed(model, prefix="module."):
    return {prefix + k: v for k, v in model.state_dict().items()}


# ------------------------------------------------------------------ round trips


def test_official_checkpoint_saver_dict_prefers_ema_and_uses_args_model(tiny_model, images, tmp_path):
    model = tiny_model(transform_scale=True, **OFFICIAL_S_LIKE)
    raw_weights = tiny_model(seed=1, transform_scale=True, **OFFICIAL_S_LIKE)
    path = tmp_path / "model_best.pth.tar"
    torch.save(
        {
            "epoch": 299,
            "arch": "deepvit_S",
            "state_dict": prefixed(raw_weights),
            "version": 2,
            "optimizer": {"state": {}, "param_groups": [{"lr": 5e-4}]},
            "metric": 82.3,
            "args": argparse.Namespace(model="deepvit_S", lr=5e-4, epochs=300, drop_path=0.2, mixup=0.8),
            "state_dict_ema": prefixed(model),
        },
        path,
    )
    # transform_scale comes from args.model = deepvit_S, so nothing is guessed; the sizes come from the weights,
    # and where they differ from deepvit_S's, one warning lists each difference.
    with pytest.warns(GuessWarning) as caught:
        loaded = load_model(path)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "differ from the checkpoint's model name 'deepvit_S' in embed_dim 396 -> 32, depth 16 -> 3" in message
    assert "guessed" not in message
    assert torch.equal(logits(loaded, images), logits(model, images))
    assert not loaded.training
    prov = loaded.provenance
    assert (prov["source"], prov["format"], prov["entry"], prov["warnings"]) == (
        "file",
        "official",
        "state_dict_ema",
        [message.split(": ", 1)[1]],
    )
    assert prov["sha256"] == sha256(path) and prov["path"] == str(path)
    assert prov["epoch"] == 299  # what CheckpointSaver recorded: a sweep's training-series axis
    assert loaded.arch["kwargs"]["transform_scale"] is True
    assert "\n" not in prov["description"] and prov["description"].startswith("model_best.pth.tar: official DeepViT")


def test_official_arch_inferred_from_weights_and_guess_announced(tiny_model, images, tmp_path):
    model = tiny_model(**OFFICIAL_S_LIKE)
    path = tmp_path / "deepvit.pth"
    torch.save({"state_dict": model.state_dict()}, path)
    with pytest.warns(GuessWarning, match=r"transform_scale=False"):
        loaded = load_model(path)
    assert torch.equal(logits(loaded, images), logits(model, images))
    kwargs = loaded.arch["kwargs"]
    assert loaded.arch["family"] == "deepvit"
    assert {
        k: kwargs[k]
        for k in (
            "depth",
            "embed_dim",
            "num_heads",
            "mlp_ratio",
            "patch_size",
            "img_size",
            "qkv_bias",
            "num_classes",
            "embed_layer",
            "apply_transform",
            "scale_adjustment",
            "in_chans",
        )
    } == {
        "depth": 3,
        "embed_dim": 32,
        "num_heads": 4,
        "mlp_ratio": 2.0,
        "patch_size": 8,
        "img_size": 32,
        "qkv_bias": True,
        "num_classes": 5,
        "embed_layer": "cnn",
        "apply_transform": [False, True, True],
        "scale_adjustment": 0.5,
        "in_chans": 3,
    }
    assert len(loaded.provenance["warnings"]) == 1 and "transform_scale=False" in loaded.provenance["warnings"][0]
    assert loaded.pretrained_cfg["input_size"] == (3, 32, 32)


@pytest.mark.parametrize("suffix", [".pth", ".pt", ".bin"])
def test_plain_timm_state_dict_round_trip(suffix, tiny_model, images, tmp_path):
    model = tiny_model("vit")
    path = tmp_path / f"vit{suffix}"
    torch.save(model.state_dict(), path)
    with no_guesses():
        loaded = load_model(path, num_heads=4, global_pool="token")
    assert torch.equal(logits(loaded, images), logits(model, images))
    assert loaded.provenance["format"] == "timm" and loaded.arch["family"] == "vit"
    with no_guesses():
        from_dict = load_model(path, arch={"family": "vit", "kwargs": {"num_heads": 4, "global_pool": "token"}})
    assert torch.equal(logits(from_dict, images), logits(model, images))


def test_plain_vit_heads_follow_the_documented_rule(tiny_model, images, tmp_path):
    paper_shaped = tiny_model("vit", depth=1, embed_dim=384, num_heads=12, mlp_ratio=3.0, patch_size=16)
    torch.save(paper_shaped.state_dict(), tmp_path / "paper.pth")
    with no_guesses():  # width 384, MLP ratio 3, patch 16: an official ViT-NB, 12 heads is the rule
        assert load_model(tmp_path / "paper.pth").arch["kwargs"]["num_heads"] == 12

    other = tiny_model("vit", embed_dim=48, num_heads=12)
    torch.save(other.state_dict(), tmp_path / "other.pth")
    with pytest.warns(GuessWarning, match=r"num_heads=12"):
        loaded = load_model(tmp_path / "other.pth")
    assert torch.equal(logits(loaded, images), logits(other, images))

    torch.save(tiny_model("vit").state_dict(), tmp_path / "width32.pth")  # 32 is not a multiple of 12
    with pytest.raises(DiagError, match=r"number of attention heads .* num_heads=\.\.\. \(--num-heads\)"):
        load_model(tmp_path / "width32.pth")


def test_plain_safetensors_round_trip(tiny_model, images, tmp_path):
    model = tiny_model(apply_transform=[True, False, True])
    path = tmp_path / "deepvit.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    with no_guesses():  # heads from Theta, everything else from the weights
        loaded = load_model(path)
    assert torch.equal(logits(loaded, images), logits(model, images))
    assert loaded.provenance["format"] == "official" and loaded.arch["kwargs"]["num_heads"] == 4


@pytest.mark.parametrize(
    "family, extra",
    [
        ("vit", {}),
        ("deepvit", dict(transform_scale=True, **OFFICIAL_S_LIKE)),
        (
            "deepvit",
            dict(
                embed_layer="linear",
                theta="param",
                qkv_bias=False,
                norm_eps=1e-5,
                fc_norm=True,
                final_norm=False,
                global_pool="avg",
                apply_transform=[True, True, False],
            ),
        ),
    ],
)
def test_native_round_trip_keeps_arch_and_card(family, extra, tiny_model, images, tmp_path):
    model = tiny_model(family, **extra)
    path = save_native(model, tmp_path / "model.safetensors", card={"dataset": "digits", "test_accuracy": 0.5})
    with no_guesses():
        loaded = load_model(path)
    assert torch.equal(logits(loaded, images), logits(model, images))
    assert loaded.arch == model.arch
    assert loaded.provenance["format"] == "native" and loaded.provenance["card"]["test_accuracy"] == 0.5
    assert loaded.provenance["description"].endswith("trained on scikit-learn digits, test accuracy 50.0%")


def test_card_summary_names_the_bundled_training_data_in_words():
    assert card_summary({"dataset": "digits-clutter", "test_accuracy": 0.975}) == (
        "trained on scikit-learn digits on cluttered canvases, test accuracy 97.5%"
    )
    assert card_summary({"dataset": "/data/pets"}) == "trained on /data/pets"


# ------------------------------------------------------------------ vit-pytorch


def assert_reproduces(ours, theirs, images):
    """Relative logit difference < 1e-5, also on low-contrast images where LayerNorm's eps matters."""
    for x in (images, images * 1e-3):
        a, b = logits(ours, x), logits(theirs, x)
        assert ((a - b).norm() / b.norm()).item() < 1e-5


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_vit_pytorch_vit_reproduces_its_logits(pool, randomize, images, tmp_path):
    torch.manual_seed(0)
    theirs = randomize(
        ViT(image_size=32, patch_size=8, num_classes=5, dim=32, depth=2, heads=4, mlp_dim=64, dim_head=16, pool=pool)
    ).eval()
    torch.save(theirs.state_dict(), tmp_path / "vit.pth")
    with no_guesses():
        ours = load_model(tmp_path / "vit.pth", num_heads=4)
    assert_reproduces(ours, theirs, images)
    assert ours.provenance["format"] == "lucidrains-vit"
    assert ours.arch["kwargs"]["global_pool"] == ("token" if pool == "cls" else "avg")


def test_vit_pytorch_vit_heads_guessed_from_default_dim_head(randomize, images, tmp_path):
    torch.manual_seed(0)
    theirs = randomize(ViT(image_size=32, patch_size=8, num_classes=5, dim=32, depth=2, heads=2, mlp_dim=64)).eval()
    torch.save(theirs.state_dict(), tmp_path / "vit.pth")
    with pytest.warns(GuessWarning, match=r"num_heads=2 .*dim_head=64"):
        ours = load_model(tmp_path / "vit.pth")
    assert_reproduces(ours, theirs, images)


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_vit_pytorch_deepvit_reproduces_its_logits(pool, randomize, images, tmp_path):
    torch.manual_seed(0)
    theirs = randomize(
        DeepViT(
            image_size=32, patch_size=8, num_classes=5, dim=32, depth=2, heads=4, mlp_dim=64, dim_head=16, pool=pool
        )
    ).eval()
    torch.save(theirs.state_dict(), tmp_path / "deepvit.pth")
    if pool == "cls":
        with pytest.warns(GuessWarning, match=r"global_pool='token'"):  # the pool is not in the weights
            ours = load_model(tmp_path / "deepvit.pth")
    else:
        with no_guesses():
            ours = load_model(tmp_path / "deepvit.pth", global_pool="avg")
    assert_reproduces(ours, theirs, images)
    assert ours.provenance["format"] == "lucidrains-deepvit"
    assert torch.equal(ours.blocks[1].attn.theta, theirs.transformer.layers[1][0].reattn_weights)


def test_cli_import_prints_guesses_and_takes_their_values(randomize, tmp_path, capsys):
    torch.manual_seed(0)
    torch.save(
        DeepViT(image_size=32, patch_size=8, num_classes=5, dim=32, depth=2, heads=4, mlp_dim=64).state_dict(),
        tmp_path / "deepvit.pth",
    )
    assert main(["import", str(tmp_path / "deepvit.pth"), "--as", "lucid"]) == 0
    captured = capsys.readouterr()
    assert captured.err.startswith("warning: ") and "guessed global_pool='token'" in captured.err
    assert captured.out.splitlines()[-1].startswith(
        "lucid: weight store - 2 blocks, width 32, 4 heads, Re-attention in 2/2"
    )
    assert main(["import", str(tmp_path / "deepvit.pth"), "--as", "lucid", "--force", "--global-pool", "avg"]) == 0
    assert capsys.readouterr().err == ""
    assert load_model("lucid").arch["kwargs"]["global_pool"] == "avg"


# ------------------------------------------------------------------ overrides and strict loading


def test_overrides_fill_and_contradictions_fail_strictly(tiny_model, tmp_path):
    torch.save(tiny_model("vit").state_dict(), tmp_path / "vit.pth")
    with pytest.raises(DiagError) as err:
        load_model(tmp_path / "vit.pth", num_heads=4, num_classes=7)
    assert "shape mismatch: head.weight (5, 32) vs model (7, 32), head.bias (5,) vs model (7,)" in str(err.value)
    with pytest.raises(DiagError, match=r"pos_embed \(1, 17, 32\) vs model \(1, 65, 32\)"):
        load_model(tmp_path / "vit.pth", num_heads=4, img_size=64)


def test_mismatched_state_dict_names_first_offending_keys(tiny_model, tmp_path):
    state = tiny_model(apply_transform=True).state_dict()
    del state["blocks.1.norm2.weight"]
    state["blocks.0.attn.extra"] = torch.zeros(3)
    state["head.bias"] = torch.zeros(6)
    torch.save(state, tmp_path / "broken.pth")
    with pytest.raises(DiagError) as err:
        load_model(tmp_path / "broken.pth")
    message = str(err.value)
    assert "\n" not in message
    for part in (
        "does not fit",
        "shape mismatch: head.bias (6,) vs model (5,)",
        "missing: blocks.1.norm2.weight",
        "unexpected: blocks.0.attn.extra",
    ):
        assert part in message


def test_arch_by_timm_name_for_a_local_file(images, tmp_path, randomize):
    theirs = randomize(timm.create_model("vit_tiny_patch16_224", **TINY_TIMM)).eval()
    torch.save(theirs.state_dict(), tmp_path / "tiny.pth")
    overrides = {k: v for k, v in TINY_TIMM.items() if k != "num_classes"}  # the head says 5 classes
    with no_guesses():
        ours = load_model(tmp_path / "tiny.pth", arch="vit_tiny_patch16_224", **overrides)
    assert torch.equal(logits(ours, images), logits(theirs, images))
    assert ours.arch["family"] == "timm" and ours.arch["kwargs"]["num_classes"] == 5
    with pytest.raises(DiagError, match=r"unknown architecture 'no_such_arch'"):
        load_model(tmp_path / "tiny.pth", arch="no_such_arch")


# ------------------------------------------------------------------ bad input


class CodeOnUnpickle:
    """Unpickling this would create ``marker`` (a harmless stand-in for arbitrary code)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    from torchvision.models import resnet18

    root = tmp_path_factory.mktemp("bad")
    state = {"pos_embed": torch.zeros(1, 5, 8), "blocks.0.attn.qkv.weight": torch.zeros(24, 8)}
    torch.save(state, root / "good.pth")
    save_file(state, str(root / "good.safetensors"))
    files = {
        "missing": root / "missing.pth",
        "empty": root / "empty.pth",
        "truncated": root / "truncated.pth",
        "truncated safetensors": root / "truncated.safetensors",
        "random bytes": root / "random.bin",
        "text": root / "notes.pt",
        "resnet18": root / "resnet18.pth",
        "code on unpickle": root / "evil.pth",
    }
    files["empty"].write_bytes(b"")
    files["truncated"].write_bytes((root / "good.pth").read_bytes()[:300])
    files["truncated safetensors"].write_bytes((root / "good.safetensors").read_bytes()[:100])
    files["random bytes"].write_bytes(random.Random(0).randbytes(4096))
    files["text"].write_text("epoch 1: loss 2.3\nepoch 2: loss 1.9\n")
    torch.save(resnet18(num_classes=10).state_dict(), files["resnet18"])
    torch.save({"state_dict": state, "payload": CodeOnUnpickle(root / "MARKER")}, files["code on unpickle"])
    torch.save({"state_dict": state, "payload": CodeOnUnpickle(root / "CONTROL")}, root / "control.pth")
    return root, files


BAD_INPUT_MESSAGES = {
    "missing": "no such file",
    "empty": "is empty",
    "truncated": "not a readable PyTorch",
    "truncated safetensors": "not a readable safetensors file",
    "random bytes": "not a readable PyTorch",
    "text": "not a readable PyTorch",
    "resnet18": "not a ViT/DeepViT checkpoint",
    "code on unpickle": "refused to load",
}


@pytest.mark.parametrize("case", BAD_INPUT_MESSAGES)
def test_bad_input_is_a_one_line_diag_error(case, bad_files):
    root, files = bad_files
    with pytest.raises(DiagError) as err:
        load_model(files[case])
    assert BAD_INPUT_MESSAGES[case] in str(err.value) and "\n" not in str(err.value)
    assert not (root / "MARKER").exists()


@pytest.mark.parametrize("case", BAD_INPUT_MESSAGES)
def test_bad_input_through_the_cli(case, bad_files, capsys):
    root, files = bad_files
    assert main(["import", str(files[case]), "--as", "bad"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and BAD_INPUT_MESSAGES[case] in err
    assert not (root / "MARKER").exists()


def test_pickled_code_never_runs_in_a_real_process(bad_files):
    root, files = bad_files
    done = subprocess.run(
        [sys.executable, "-m", "deepvit_diag.cli", "import", str(files["code on unpickle"]), "--as", "x"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1
    assert (
        done.stderr.startswith("error: refused to load")
        and done.stderr.count("\n") == 1
        and "Traceback" not in done.stderr
    )
    assert "io.open" in done.stderr and not (root / "MARKER").exists()
    torch.load(root / "control.pth", weights_only=False)  # the same payload, unpickled unsafely, does run
    assert (root / "CONTROL").exists()


# ------------------------------------------------------------------ store, presets, timm names


def test_import_and_list_the_store(weight_store, tiny_model, images, tmp_path, capsys):
    model = tiny_model(apply_transform=True)
    source = tmp_path / "run.pth.tar"
    torch.save({"state_dict": prefixed(model)}, source)
    path = import_checkpoint(source, "mine")
    assert path == weight_store.store / "mine.safetensors"
    assert [e["name"] for e in list_store()] == ["mine"]
    loaded = load_model("mine")
    assert torch.equal(logits(loaded, images), logits(model, images))
    assert loaded.provenance["source"] == "store" and loaded.provenance["format"] == "native"
    card = loaded.provenance["card"]
    assert (card["imported_from"], card["sha256"], card["format"]) == (str(source), sha256(source), "official")
    assert (
        loaded.provenance["description"]
        == f"mine: weight store - 3 blocks, width 32, 4 heads, Re-attention in 3/3 blocks, imported from {source}"
    )
    with pytest.raises(DiagError, match="already has 'mine'"):
        import_checkpoint(source, "mine")

    vit = tiny_model("vit")
    torch.save(vit.state_dict(), tmp_path / "vit.pth")
    assert main(["import", str(tmp_path / "vit.pth"), "--as", "mine", "--num-heads", "4", "--force"]) == 0
    assert "imported" in capsys.readouterr().out
    assert torch.equal(logits(load_model("mine"), images), logits(vit, images))
    assert main(["import", str(tmp_path / "vit.pth"), "--as", "bad/name"]) == 1
    assert "invalid weight-store name" in capsys.readouterr().err

    assert main(["models"]) == 0
    table = capsys.readouterr().out
    assert "mine" in table and "deepvit_s" in table and "import FILE --as vit16" in table


def test_preset_names_resolve_store_then_bundled_then_error(weight_store, tiny_model, images, tmp_path):
    with pytest.raises(
        DiagError,
        match=r"no weights for preset 'vit16': import a checkpoint with `deepvit-diag import FILE --as vit16`",
    ):
        load_model("vit16")

    bundled = tiny_model("vit", seed=1)
    save_native(
        bundled, weight_store.bundled / "vit16-digits.safetensors", card={"dataset": "digits", "test_accuracy": 0.971}
    )
    loaded = load_model("vit16")
    assert torch.equal(logits(loaded, images), logits(bundled, images))
    assert loaded.provenance["source"] == "bundled"
    assert loaded.provenance["description"] == (
        "vit16: bundled demo weights - 3 blocks, width 32, 4 heads, trained on scikit-learn digits, test accuracy 97.1%"
    )
    assert {r["name"]: r["weights"] for r in list_models()}["vit16"] == "bundled"

    stored = tiny_model("vit", seed=2)
    save_native(stored, tmp_path / "stored.safetensors")
    import_checkpoint(tmp_path / "stored.safetensors", "vit16")
    loaded = load_model("vit16")
    assert torch.equal(logits(loaded, images), logits(stored, images))
    assert loaded.provenance["source"] == "store"
    assert {r["name"]: r["weights"] for r in list_models()}["vit16"] == "store"


def test_import_as_a_preset_name_refuses_another_architecture_without_force(weight_store, tiny_model, tmp_path):
    save_native(tiny_model("vit", seed=1), weight_store.bundled / "vit32-digits.safetensors")
    shallower = tiny_model("vit", seed=2, depth=2)
    save_native(shallower, tmp_path / "shallow.safetensors")
    with pytest.raises(
        DiagError,
        match=r"'vit32' loads the bundled weights \(3 blocks, width 32, 4 heads\), but these "
        r"weights have depth 2 instead of 3: import them under another name, or pass --force",
    ):
        import_checkpoint(tmp_path / "shallow.safetensors", "vit32")
    assert load_model("vit32").provenance["source"] == "bundled"
    wider = tiny_model("vit", seed=2, embed_dim=64, num_heads=8)
    save_native(wider, tmp_path / "wide.safetensors")
    with pytest.raises(DiagError, match="width 64 instead of 32, heads 8 instead of 4"):
        import_checkpoint(tmp_path / "wide.safetensors", "vit32")
    same = tiny_model("vit", seed=3)
    save_native(same, tmp_path / "same.safetensors")
    import_checkpoint(tmp_path / "same.safetensors", "vit32")  # the same architecture is accepted
    import_checkpoint(tmp_path / "shallow.safetensors", "vit32", overwrite=True)
    assert load_model("vit32").arch["kwargs"]["depth"] == 2


def test_random_weights_only_when_asked_and_loudly(weight_store):
    with pytest.warns(UserWarning, match="RANDOM"):
        model = load_model("deepvit_l", pretrained=False, depth=4, embed_dim=32, num_heads=4, img_size=32, patch_size=8)
    prov = model.provenance
    assert prov["source"] == "random" and prov["description"].startswith("deepvit_l: RANDOM WEIGHTS, untrained")
    assert model.arch["kwargs"]["apply_transform"] == [True] * 4 and model.arch["kwargs"]["scale_adjustment"] == 0.5
    assert model.arch["family"] == PRESETS["deepvit_l"]["family"] and not model.training
    with pytest.raises(DiagError, match="unknown model 'no_such_model'"):
        load_model("no_such_model")


@pytest.fixture
def offline_hub(monkeypatch, tmp_path):
    """The Hugging Face hub in offline mode with an empty cache: any download attempt fails at once."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))


def test_timm_name_loads_pretrained_weights_through_timm(offline_hub, randomize, images, tmp_path):
    theirs = randomize(timm.create_model("vit_tiny_patch16_224", **TINY_TIMM)).eval()
    weights = tmp_path / "vit_tiny.pth"
    torch.save(theirs.state_dict(), weights)
    ours = load_model(
        "vit_tiny_patch16_224", pretrained_cfg_overlay=dict(file=str(weights), num_classes=5), **TINY_TIMM
    )
    assert torch.equal(logits(ours, images), logits(theirs, images))
    prov = ours.provenance
    assert (prov["source"], prov["format"], prov["sha256"]) == ("timm-hub", "timm-name", sha256(weights))
    assert ours.pretrained_cfg["input_size"] == (3, 32, 32) and ours.arch["family"] == "timm"
    assert prov["description"] == (
        f"vit_tiny_patch16_224: timm pretrained weights ({weights}) - "
        "timm vit_tiny_patch16_224, 2 blocks, width 32, 4 heads"
    )
    again = load_model(save_native(ours, tmp_path / "tiny.safetensors"))
    assert torch.equal(logits(again, images), logits(theirs, images))

    with pytest.warns(UserWarning, match="RANDOM"):
        random_model = load_model("vit_tiny_patch16_224", pretrained=False, **TINY_TIMM)
    assert random_model.provenance["source"] == "random"


def test_timm_name_offline_is_one_line_with_the_local_alternative(offline_hub, capsys):
    with pytest.raises(DiagError) as err:
        load_model("vit_tiny_patch16_224")
    message = str(err.value)
    assert "\n" not in message and "HF_HUB_OFFLINE is set" in message
    assert "arch='vit_tiny_patch16_224'" in message and "--ckpt PATH" in message
    assert main(["import", "vit_tiny_patch16_224", "--as", "tiny"]) == 1
    assert capsys.readouterr().err.count("\n") == 1


def test_hf_hub_offline_set_after_import_is_respected(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # read before the variable was set
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(loader, "_reachable", lambda *args: pytest.fail("offline: no connection may be tried"))
    with pytest.raises(DiagError, match="HF_HUB_OFFLINE is set .*--ckpt PATH\\) with arch='vit_tiny"):
        load_model("vit_tiny_patch16_224")


def test_an_unreachable_hub_is_tried_once_briefly_then_offline(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    tries = []
    monkeypatch.setattr(loader, "_reachable", lambda host, port, timeout: tries.append((host, timeout)) and False)
    with pytest.raises(DiagError, match=r"huggingface.co cannot be reached \(no network\?\).*\(--ckpt PATH\)"):
        load_model("vit_tiny_patch16_224")
    assert tries == [("huggingface.co", loader.HUB_CONNECT_TIMEOUT)]
    assert huggingface_hub.constants.HF_HUB_OFFLINE is False  # offline mode only for that one load


def test_a_hanging_name_lookup_does_not_hold_the_connection_check(monkeypatch):
    release = threading.Event()

    def hang(*args, **kwargs):
        release.wait(30)
        raise OSError("name lookup timed out")

    monkeypatch.setattr(loader.socket, "create_connection", hang)
    assert loader._reachable("huggingface.co", 443, timeout=0.05) is False
    release.set()


def test_refusals_name_the_real_cause(tmp_path):
    simple = {
        "to_patch_embedding.2.weight": torch.zeros(64, 192),
        "transformer.layers.0.0.to_qkv.weight": torch.zeros(192, 64),
        "linear_head.weight": torch.zeros(5, 64),
    }
    torch.save(simple, tmp_path / "simple.pth")
    with pytest.raises(DiagError, match=r"simple.pth: a vit-pytorch SimpleViT: its 2-D sine-cosine position embedding"):
        load_model(tmp_path / "simple.pth")
    hybrid = {
        "vit.embeddings.patch_embeddings.backbone.bit.embedder.convolution.weight": torch.zeros(8, 3, 7, 7),
        "vit.embeddings.patch_embeddings.projection.weight": torch.zeros(32, 8, 1, 1),
        "vit.encoder.layer.0.layernorm_before.weight": torch.zeros(32),
    }
    torch.save(hybrid, tmp_path / "hybrid.pth")
    with pytest.raises(DiagError, match=r"hybrid.pth: a Hugging Face ViT-hybrid: a convolutional backbone"):
        load_model(tmp_path / "hybrid.pth")
