"""Class labels: class-map files, the model's own class names (card, timm, ImageNet synsets),
and the mapping of the images' labels to a model's class indices, or the reason there is none."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import timm
import torch
from PIL import Image
from test_cli import assert_clean_error, run, write_image

from deepvit_diag.checkpoints import load_model
from deepvit_diag.checkpoints.native import save_native
from deepvit_diag.errors import DiagError
from deepvit_diag.images import ImageStream, open_images
from deepvit_diag.labels import ClassMap, class_indices, model_class_names, read_class_map
from deepvit_diag.preprocessing import preprocess
from deepvit_diag.settings import Settings

SYNSETS = ["n01440764", "n01443537", "n15075141"]  # ImageNet-1k classes 0, 1 and 999


def model(num_classes: int, classes: list[str] | None = None, label_names: list[str] | None = None):
    """What the mapping reads of a model: its class count, model card and timm config."""
    card = {"classes": classes} if classes is not None else {}
    return SimpleNamespace(
        num_classes=num_classes,
        provenance={"card": card},
        pretrained_cfg={"label_names": label_names} if label_names else {},
    )


def test_class_map_files(tmp_path):
    (tmp_path / "map.json").write_text(json.dumps({"cat": 3, "dog": 0}))
    assert read_class_map(tmp_path / "map.json") == ClassMap({"cat": 3, "dog": 0}, "class map map.json")
    (tmp_path / "classes.txt").write_text("dog\n  cat \nbird\n\n")
    assert read_class_map(tmp_path / "classes.txt").indices == {"dog": 0, "cat": 1, "bird": 2}


@pytest.mark.parametrize(
    "name,content,message",
    [
        ("map.json", "{not json", "not valid JSON"),
        ("map.json", '["cat", "dog"]', "JSON object"),
        ("map.json", '{"cat": -1}', "whole numbers >= 0"),
        ("map.json", '{"cat": true}', "whole numbers >= 0"),
        ("map.json", "{}", "maps no class"),
        ("classes.txt", "dog\n\ncat\n", "without blank lines"),
        ("classes.txt", "", "one class per line"),
        ("classes.txt", "dog\ndog\n", "names a class twice"),
    ],
)
def test_bad_class_maps_are_one_line_errors(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(DiagError, match=message):
        read_class_map(tmp_path / name)
    with pytest.raises(DiagError, match="cannot read the class map"):
        read_class_map(tmp_path / "missing.txt")


def test_model_class_names_come_from_the_card_timm_or_imagenet():
    assert model_class_names(model(3, classes=["a", "b", "c"]))[0] == ["a", "b", "c"]
    assert model_class_names(model(2, label_names=["no", "yes"])) == (["no", "yes"], "timm's label names of the model")
    names, source = model_class_names(model(1000))
    assert names[0] == SYNSETS[0] and names[1] == SYNSETS[1] and names[999] == SYNSETS[2]
    assert "imagenet-1k" in source
    assert model_class_names(model(10)) is None
    assert model_class_names(model(4, classes=["a", "b"])) is None  # a card that does not fit the head
    # A timm ImageNet model, as load_model gives it.
    vit = timm.create_model("vit_tiny_patch16_224", depth=1, embed_dim=32, num_heads=2, img_size=32)
    assert model_class_names(vit)[0][:2] == SYNSETS[:2]


def test_imagenet_synset_folders_map_to_imagenet_classes():
    mapped = class_indices([SYNSETS[2], SYNSETS[0], SYNSETS[1]], model(1000), None)
    assert mapped.indices.tolist() == [999, 0, 1] and "imagenet-1k synsets" in mapped.note
    unknown = class_indices(["n01440764", "cats"], model(1000), None)
    assert unknown.indices is None and "cats are not among the model's classes" in unknown.note


def test_named_classes_digits_as_indices_and_class_maps():
    assert class_indices(["3", "1"], model(10, classes=[str(d) for d in range(10)]), None).indices.tolist() == [3, 1]
    as_indices = class_indices(["3", "1"], model(10), None)
    assert as_indices.indices.tolist() == [3, 1] and "as class indices" in as_indices.note
    too_few = class_indices(["3", "7"], model(5), None)
    assert too_few.indices is None and "outside the model's 5 classes" in too_few.note
    unnamed = class_indices(["cat", "dog"], model(5), None)
    assert unnamed.indices is None and "--class-map" in unnamed.note
    by_map = class_indices(["cat", "dog"], model(5), ClassMap({"cat": 4, "dog": 2}, "class map m.json"))
    assert by_map.indices.tolist() == [4, 2] and "class map m.json" in by_map.note
    # A class map wins over the model's own names.
    named = model(3, classes=["cat", "dog", "bird"])
    assert class_indices(["cat"], named, ClassMap({"cat": 2}, "class map")).indices.tolist() == [2]


def test_no_accuracy_without_labels_for_every_image_or_without_a_head():
    assert class_indices(None, model(10), None).note.startswith("the images carry no labels")
    partial = class_indices(["3", None, "1"], model(10), None)
    assert partial.indices is None and partial.note.startswith("1 of 3 images carry no label")
    assert "no classifier head" in class_indices(["3"], model(0), None).note


@pytest.fixture
def image_folder(tmp_path):
    """cat/ and dog/ sub-folders, one image directly in the root, and an unreadable file."""
    for index, (folder, colour) in enumerate([("cat", "red"), ("cat", "green"), ("dog", "blue"), ("", "white")]):
        (tmp_path / "set" / folder).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), colour).save(tmp_path / "set" / folder / f"{index}.png")
    (tmp_path / "set" / "dog" / "0-broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(10))
    return tmp_path / "set"


def test_folder_images_are_labelled_by_their_class_folder(image_folder):
    with pytest.warns(UserWarning, match="skipped 1 file"):
        images = open_images(image_folder)
    by_name = dict(zip((name.split("set/")[1] for name in images.names), images.labels))
    assert by_name == {"3.png": None, "cat/0.png": "cat", "cat/1.png": "cat", "dog/2.png": "dog"}
    assert open_images(image_folder / "cat").labels is None  # the class folder itself: files directly in it
    with pytest.warns(UserWarning, match="skipped 1 file"):
        assert open_images(str(image_folder / "*" / "*.png")).labels is None  # globs carry no labels
    digits = open_images("digits-test", limit=5)
    assert digits.labels == [name.split("label")[1] for name in digits.names]
    assert open_images("photos", limit=2).labels is None
    mixed = open_images(["photos", "digits-test"], limit=13)
    assert mixed.labels[:11] == [None] * 11 and mixed.labels[11:] == digits.labels[:2]


def test_labels_stay_with_their_images_when_an_image_fails_late(tmp_path):
    """An image that passes the header check but fails to decode is dropped from its batch,
    and so is its label: the positions travel through the loader with the pixels."""
    for index, folder in enumerate(["a", "b", "a", "b", "a"]):
        (tmp_path / folder).mkdir(exist_ok=True)
        Image.new("RGB", (8, 8), (index * 50, 0, 0)).save(tmp_path / folder / f"{index}.png")
    truncated = tmp_path / "b" / "1.png"
    Image.new("RGB", (64, 64)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:60])
    images = open_images(tmp_path, class_map=ClassMap({"a": 0, "b": 1}, "class map"))
    vit = timm.create_model("vit16", depth=1, embed_dim=32, num_heads=2, img_size=32, patch_size=8, num_classes=2)
    stream = ImageStream(images, [vit], Settings(batch_size=2, device="cpu"))
    with pytest.warns(UserWarning, match="skipped unreadable image"):
        batches = list(stream)
    kept = [name for name in images.names if name != str(truncated)]
    expected = [0 if "/a/" in name else 1 for name in kept]
    assert torch.cat([batch.labels[0] for batch in batches]).tolist() == expected
    assert sum(len(batch) for batch in batches) == 4 and stream.label_notes[0].startswith("labels of 2 classes")


def test_class_map_option_gives_accuracy_in_the_table_and_the_json(tmp_path):
    torch.manual_seed(0)
    checkpoint = save_native(
        timm.create_model("vit16", depth=2, embed_dim=32, num_heads=4, img_size=32, patch_size=8, num_classes=10),
        tmp_path / "vit.safetensors",
    )
    files = {
        name: [write_image(tmp_path / "images" / name / f"{i}.png", i + 5 * j) for i in range(3)]
        for j, name in enumerate(("cat", "dog"))
    }
    argv = ["analyze", "--ckpt", str(checkpoint), "--images", str(tmp_path / "images"), "--device", "cpu"]
    status, stdout, stderr = run([*argv, "--out", str(tmp_path / "plain"), "--json"])
    assert status == 0, stderr
    plain = json.loads(stdout)
    assert plain["accuracy_top1"] is None and "labels (cat, dog) cannot be mapped" in plain["accuracy_labels"]
    (tmp_path / "classes.txt").write_text("dog\ncat\n")
    mapped = [*argv, "--class-map", str(tmp_path / "classes.txt"), "--out", str(tmp_path / "mapped")]
    status, stdout, stderr = run(mapped)
    assert status == 0, stderr
    assert "top-1 / top-5 accuracy" in stdout and "n/a" not in stdout
    summary = json.loads(run([*mapped, "--json"])[1])
    model = load_model(checkpoint)
    with torch.no_grad():
        predicted = {
            name: model(preprocess(model, [Image.open(path) for path in paths])).argmax(1)
            for name, paths in files.items()
        }
    expected = int((predicted["dog"] == 0).sum() + (predicted["cat"] == 1).sum())
    assert summary["accuracy_top1"] == expected / 6 and summary["accuracy_images"] == 6
    assert summary["accuracy_labels"] == "labels of 2 classes, mapped to the model's classes by class map classes.txt"
    (tmp_path / "bad.json").write_text("[1, 2]")
    status, _, stderr = run([*argv, "--class-map", str(tmp_path / "bad.json"), "--out", str(tmp_path / "o")])
    assert_clean_error(status, stderr, 1, "must be a JSON object")
