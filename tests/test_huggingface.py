"""Hugging Face ``transformers`` checkpoints (ViT, DeiT, DINOv2, BEiT, Data2VecVision, ViTMAE, sharded) load
without ``transformers`` at run time: tiny random models saved with ``save_pretrained`` (folder, file,
``.bin``) give the logits ``transformers`` gives within 1e-5; their ``config.json`` says what the tensors
cannot, and without one the guesses are announced; what does not convert is refused or announced in one line."""

from __future__ import annotations

import json
import shutil
import warnings

import pytest
import safetensors.torch
import torch
import transformers

from deepvit_diag import extract_attention, load_model
from deepvit_diag.checkpoints import GuessWarning
from deepvit_diag.cli import main
from deepvit_diag.errors import DiagError

SIZES = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8, num_labels=5)


def images(n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def saved(model, folder):
    """``model`` with LayerNorms and layer scales away from their initial values, saved with
    ``save_pretrained`` (the names files on the hub have); eager attention, so that it returns its maps."""
    torch.manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" in name or "lambda" in name:
                parameter.add_(0.3 * torch.randn_like(parameter))
    model.set_attn_implementation("eager")
    model.eval().save_pretrained(folder)
    return model


def load_announced(path, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = load_model(path, **kwargs)
    return model, " ".join(str(w.message) for w in caught if issubclass(w.category, GuessWarning))


def vit(**extra):
    return transformers.ViTForImageClassification(transformers.ViTConfig(intermediate_size=64, **SIZES, **extra))


def deit(cls):
    return cls(transformers.DeiTConfig(intermediate_size=64, **SIZES))


def dinov2(cls=transformers.Dinov2Model):
    return cls(transformers.Dinov2Config(mlp_ratio=2, **SIZES))


CASES = {
    "ViTForImageClassification": (vit, lambda out: out.logits, "hf-vit"),
    "ViTModel": (
        lambda: transformers.ViTModel(transformers.ViTConfig(intermediate_size=64, **SIZES)),
        lambda out: out.last_hidden_state[:, 0],
        "hf-vit",
    ),
    "DeiTForImageClassificationWithTeacher": (
        lambda: deit(transformers.DeiTForImageClassificationWithTeacher),
        lambda out: out.logits,
        "hf-deit",
    ),
    "DeiTForImageClassification": (
        lambda: deit(transformers.DeiTForImageClassification),
        lambda out: out.logits,
        "hf-deit",
    ),
    "Dinov2Model": (dinov2, lambda out: out.pooler_output, "hf-dinov2"),
    "BeitForImageClassification": (
        lambda: transformers.BeitForImageClassification(
            transformers.BeitConfig(intermediate_size=64, use_relative_position_bias=True, **SIZES)
        ),
        lambda out: out.logits,
        "hf-beit",
    ),
    "Data2VecVisionForImageClassification": (
        lambda: transformers.Data2VecVisionForImageClassification(
            transformers.Data2VecVisionConfig(
                intermediate_size=64, use_shared_relative_position_bias=True, use_mean_pooling=False, **SIZES
            )
        ),
        lambda out: out.logits,
        "hf-beit",
    ),
    "Dinov2WithRegistersModel": (
        lambda: transformers.Dinov2WithRegistersModel(
            transformers.Dinov2WithRegistersConfig(mlp_ratio=2, num_register_tokens=4, **SIZES)
        ),
        lambda out: out.pooler_output,
        "hf-dinov2",
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_hugging_face_folders_give_the_logits_transformers_gives(case, tmp_path):
    make, output, layout = CASES[case]
    torch.manual_seed(0)
    theirs = saved(make(), tmp_path / "model")
    ours, warning = load_announced(tmp_path / "model")
    x = images()
    with torch.no_grad():
        expected = output(theirs(pixel_values=x))
        torch.testing.assert_close(ours(x), expected, rtol=0, atol=1e-5)
        torch.testing.assert_close(ours(x * 1e-3), output(theirs(pixel_values=x * 1e-3)), rtol=0, atol=1e-5)
    assert ours.provenance["format"] == layout and "guessed" not in warning
    assert ours.blocks[0].attn.num_heads == 4  # from config.json: width 32 says nothing about heads
    # The maps are transformers' own attention probabilities.
    with torch.no_grad():
        probabilities = theirs(pixel_values=x, output_attentions=True).attentions
    if probabilities and probabilities[0] is None:  # transformers' Data2VecVision returns none; BEiT is the same
        return
    torch.testing.assert_close(extract_attention(ours, x).pre, torch.stack(probabilities), rtol=0, atol=1e-5)


def test_a_file_without_config_announces_transformers_defaults(tmp_path):
    torch.manual_seed(0)
    theirs = saved(vit(), tmp_path / "model")
    shutil.copy(tmp_path / "model" / "model.safetensors", tmp_path / "lonely.safetensors")
    with pytest.raises(DiagError, match=r"number of attention heads .*--num-heads"):
        load_model(tmp_path / "lonely.safetensors")
    ours, warning = load_announced(tmp_path / "lonely.safetensors", num_heads=4)
    assert "guessed norm_eps=1e-12 (transformers' default for vit; no config.json" in warning
    with torch.no_grad():
        torch.testing.assert_close(ours(images()), theirs(pixel_values=images()).logits, rtol=0, atol=1e-5)


def test_a_pytorch_bin_file_in_transformers_5_names_reads_the_config_beside_it(tmp_path):
    torch.manual_seed(0)
    theirs = saved(vit(hidden_act="gelu_new", layer_norm_eps=1e-6), tmp_path / "model")
    (tmp_path / "model" / "model.safetensors").unlink()
    torch.save(theirs.state_dict(), tmp_path / "model" / "pytorch_model.bin")  # in-memory names: layers.N.*
    assert any(".layers.0.attention.q_proj." in key for key in theirs.state_dict())
    ours, warning = load_announced(tmp_path / "model" / "pytorch_model.bin")
    assert warning == "" and ours.arch["kwargs"]["act_layer"] == "gelu_tanh"
    with torch.no_grad():
        torch.testing.assert_close(ours(images()), theirs(pixel_values=images()).logits, rtol=0, atol=1e-5)


def test_what_does_not_convert_is_announced_or_refused(tmp_path):
    torch.manual_seed(0)
    saved(dinov2(transformers.Dinov2ForImageClassification), tmp_path / "dino")
    ours, warning = load_announced(tmp_path / "dino")
    assert "dropped the classifier" in warning and ours.num_classes == 0

    saved(transformers.Dinov2Model(transformers.Dinov2Config(use_swiglu_ffn=True, **SIZES)), tmp_path / "giant")
    with pytest.raises(DiagError, match="SwiGLU MLPs") as err:
        load_model(tmp_path / "giant")
    assert "\n" not in str(err.value)

    saved(vit(), tmp_path / "bad")
    config = json.loads((tmp_path / "bad" / "config.json").read_text())
    (tmp_path / "bad" / "config.json").write_text(json.dumps({**config, "hidden_act": "os.system"}))
    with pytest.raises(DiagError, match="hidden_act 'os.system' is not one of gelu"):
        load_model(tmp_path / "bad")

    (tmp_path / "empty").mkdir()
    with pytest.raises(DiagError, match="without model.safetensors or pytorch_model.bin"):
        load_model(tmp_path / "empty")


def test_a_config_that_contradicts_the_tensors_is_listed_and_the_tensors_win(tmp_path):
    torch.manual_seed(0)
    theirs = saved(vit(), tmp_path / "model")
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    (tmp_path / "model" / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 12}))
    ours, warning = load_announced(tmp_path / "model")
    assert "differ from its config.json in depth 12 -> 2" in warning
    with torch.no_grad():
        torch.testing.assert_close(ours(images()), theirs(pixel_values=images()).logits, rtol=0, atol=1e-5)


def test_the_cli_analyzes_a_hugging_face_folder(tmp_path, capsys):
    torch.manual_seed(0)
    saved(vit(), tmp_path / "model")
    images_dir = tmp_path / "images"
    images_dir.mkdir()
    from PIL import Image

    for index in range(2):
        Image.fromarray((torch.rand(40, 40, 3) * 255).byte().numpy()).save(images_dir / f"{index}.png")
    status = main(
        ["analyze", "--ckpt", str(tmp_path / "model"), "--images", str(images_dir), "--out", str(tmp_path / "out")]
        + ["--device", "cpu", "--quiet"]
    )
    assert status == 0, capsys.readouterr().err
    assert (tmp_path / "out" / "report.html").is_file()


def test_a_sharded_folder_is_read_shard_by_shard(tmp_path):
    """transformers 5 writes safetensors shards; transformers 4 wrote ``pytorch_model-0000i-of-0000n.bin`` and
    ``pytorch_model.bin.index.json`` (rebuilt here from the same shards)."""
    torch.manual_seed(0)
    theirs = vit()
    theirs.eval().save_pretrained(tmp_path / "model", max_shard_size="20KB")
    index = json.loads((tmp_path / "model" / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1
    (tmp_path / "bin").mkdir()
    shutil.copy(tmp_path / "model" / "config.json", tmp_path / "bin")
    for number, shard in enumerate(shards, 1):
        name = f"pytorch_model-{number:05d}-of-{len(shards):05d}.bin"
        torch.save(safetensors.torch.load_file(tmp_path / "model" / shard), tmp_path / "bin" / name)
        index["weight_map"] = {k: (name if v == shard else v) for k, v in index["weight_map"].items()}
    (tmp_path / "bin" / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    for folder in ("model", "bin"):
        ours, warning = load_announced(tmp_path / folder)
        assert "guessed" not in warning
        with torch.no_grad():
            torch.testing.assert_close(ours(images()), theirs(pixel_values=images()).logits, rtol=0, atol=1e-5)
    (tmp_path / "bin" / "pytorch_model.bin.index.json").write_text('{"weight_map": {"a": "../x.bin"}}')
    with pytest.raises(DiagError, match=r"names a shard '../x.bin' outside its folder"):
        load_model(tmp_path / "bin")


def test_mae_pretraining_loads_its_encoder_and_drops_the_decoder(tmp_path):
    config = transformers.ViTMAEConfig(
        intermediate_size=64,
        decoder_hidden_size=16,
        decoder_num_hidden_layers=1,
        decoder_num_attention_heads=2,
        decoder_intermediate_size=32,
        mask_ratio=0.0,
        **SIZES,
    )
    torch.manual_seed(0)
    theirs = saved(transformers.ViTMAEForPreTraining(config), tmp_path / "mae")
    ours, warning = load_announced(tmp_path / "mae")
    assert "MAE's decoder" in warning and "guessed" not in warning
    x = images()
    in_order = torch.arange(16, dtype=torch.float32).expand(2, 16)  # noise that keeps every patch, in order
    with torch.no_grad():
        out = theirs.vit(pixel_values=x, noise=in_order, output_attentions=True)
        torch.testing.assert_close(ours(x), out.last_hidden_state[:, 0], rtol=0, atol=1e-5)
    torch.testing.assert_close(extract_attention(ours, x).pre, torch.stack(out.attentions), rtol=0, atol=1e-5)
