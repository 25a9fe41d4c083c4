"""deepvit_diag/example_images.py: the names, labels and top-1 predictions of the example
images an analysis keeps, against the files and the model's own forward pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data import create_transform

from deepvit_diag import analyze, compare
from deepvit_diag.example_images import CORRECT, LABELS, NAMES, PREDICTIONS, ExampleImage, describe_examples
from deepvit_diag.images import open_images, to_rgb
from deepvit_diag.preprocessing import model_input_config
from deepvit_diag.results import AnalysisResult, ComparisonResult

OPTIONS = dict(num_workers=0, batch_size=2)


@pytest.fixture
def class_folders(tmp_path):
    """An ImageFolder of six images in classes "0", "1" and "3" (whole numbers: class indices
    for a model that names no classes), a corrupt file among them."""
    rng = np.random.default_rng(1)
    for number, label in enumerate(["3", "0", "1", "3", "0", "1"]):
        folder = tmp_path / "data" / label
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"img{number}.png")
    (tmp_path / "data" / "0" / "broken.png").write_bytes(b"not a png")
    return tmp_path / "data"


def _top1(model: torch.nn.Module, x: torch.Tensor) -> list[int]:
    with torch.no_grad():
        return model(x).argmax(dim=1).tolist()


def _reference(model: torch.nn.Module, folder) -> tuple[list[str], list[str], list[int]]:
    """Names, labels and top-1 classes of the readable images, in the order the set lists them,
    through timm's own eval transform for the model's input size (one image per forward pass)."""
    image_set = open_images(folder)
    transform = create_transform(**model_input_config(model))
    names, labels, predicted = [], [], []
    for name, label, load in zip(image_set.names, image_set.labels or [None] * len(image_set), image_set.loaders):
        try:
            picture = to_rgb(load())
        except OSError:
            continue
        names.append(name)
        labels.append(label)
        predicted.extend(_top1(model, transform(picture)[None]))
    return names, labels, predicted


def test_folder_examples_name_their_files_labels_and_the_models_top1(tiny_model, class_folders):
    model = tiny_model("vit")
    with pytest.warns(UserWarning, match="broken.png"):
        result = analyze(model, class_folders, num_examples=4, **OPTIONS)
    names, labels, predicted = _reference(model, class_folders)
    examples = result.examples()
    assert [example.name for example in examples] == names[:4]  # the corrupt file is not an example
    assert [example.label for example in examples] == labels[:4]
    assert [example.prediction for example in examples] == [str(index) for index in predicted[:4]]
    assert [example.correct for example in examples] == [p == int(label) for p, label in zip(predicted, labels[:4])]
    assert len(result.arrays["example_images"]) == 4
    assert examples[0].short_name == names[0].rsplit("/", 1)[1]


def test_tensor_examples_are_named_by_position_with_their_class_indices(tiny_model):
    model = tiny_model("deepvit")
    x = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    predicted = _top1(model, x)
    labels = torch.tensor([predicted[0], (predicted[1] + 1) % 5, predicted[2], 4, 0])
    examples = analyze(model, (x, labels), num_examples=3, **OPTIONS).examples()
    assert examples == [
        ExampleImage(0, "image 1", str(predicted[0]), str(predicted[0]), True),
        ExampleImage(1, "image 2", str((predicted[1] + 1) % 5), str(predicted[1]), False),
        ExampleImage(2, "image 3", str(predicted[2]), str(predicted[2]), True),
    ]
    unlabelled = analyze(model, x, num_examples=2, **OPTIONS).examples()
    assert [(e.name, e.label, e.prediction, e.correct) for e in unlabelled] == [
        ("image 1", None, str(predicted[0]), None),
        ("image 2", None, str(predicted[1]), None),
    ]


def test_a_shards_tensor_images_are_named_by_their_place_in_the_whole_tensor(tiny_model):
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    examples = analyze(tiny_model("vit"), x, num_examples=2, shard="2/2", cka_chunk=4, **OPTIONS).examples()
    assert [example.name for example in examples] == ["image 5", "image 6"]


def test_predictions_use_the_class_names_the_model_gives(tiny_model, class_folders):
    model = tiny_model("vit")
    classes = ["zero", "one", "two", "three", "four"]
    model.provenance = {"card": {"classes": classes}}
    folder = class_folders / "3"  # no class sub-folders below it: unlabelled
    examples = analyze(model, folder, num_examples=2, **OPTIONS).examples()
    _, _, predicted = _reference(model, folder)
    assert [example.prediction for example in examples] == [classes[index] for index in predicted[:2]]
    assert all(example.label is None and example.correct is None for example in examples)


def test_a_model_without_a_classifier_predicts_nothing(tiny_model, images):
    examples = analyze(tiny_model("vit", num_classes=0), images, num_examples=2, **OPTIONS).examples()
    assert [(example.prediction, example.correct) for example in examples] == [(None, None), (None, None)]


def test_labels_that_are_no_class_of_the_model_leave_correctness_unknown(tiny_model, class_folders, tmp_path):
    (class_folders / "7").mkdir()
    Image.new("RGB", (32, 32), "red").save(class_folders / "7" / "red.png")  # 5 classes: 7 is none
    model = tiny_model("vit")
    with pytest.warns(UserWarning, match="broken.png"):
        examples = analyze(model, class_folders, num_examples=3, **OPTIONS).examples()
    _, labels, _ = _reference(model, class_folders)
    assert "7" in labels[:3] and [example.label for example in examples] == labels[:3]
    assert all(example.prediction is not None and example.correct is None for example in examples)


def test_each_model_of_a_comparison_has_its_own_predictions_and_they_survive_saving(tiny_model, images, tmp_path):
    vit, deepvit = tiny_model("vit", 0), tiny_model("deepvit", 1)
    comparison = compare(vit, deepvit, images, num_examples=2, **OPTIONS)
    for result, model in ((comparison.a, vit), (comparison.b, deepvit)):
        assert [example.prediction for example in result.examples()] == [str(i) for i in _top1(model, images)]
    comparison.save(tmp_path / "saved")
    loaded = ComparisonResult.load(tmp_path / "saved")
    assert loaded.a.examples() == comparison.a.examples() and loaded.b.examples() == comparison.b.examples()


def test_a_result_saved_before_examples_were_described_names_them_by_position(tiny_model, images, tmp_path):
    result = analyze(tiny_model("vit"), images, num_examples=2, **OPTIONS)
    older = AnalysisResult(
        **{**vars(result), "arrays": {k: v for k, v in result.arrays.items() if k not in (NAMES, LABELS)}}
    )
    assert [(e.name, e.label, e.prediction) for e in older.examples()] == [
        ("example image 1", None, None),
        ("example image 2", None, None),
    ]


@pytest.mark.parametrize("damage", ["short", "two-dimensional"])
def test_arrays_that_do_not_describe_every_example_are_not_read(damage):
    arrays = {
        "example_images": np.zeros((2, 4, 4, 3), np.uint8),
        NAMES: np.array(["a.png", "b.png"]),
        LABELS: np.array(["", "x"]),
        PREDICTIONS: np.array(["1", "2"]),
        CORRECT: np.array([-1, 1], np.int8),
    }
    assert describe_examples(arrays)[1] == ExampleImage(1, "b.png", "x", "2", True)
    arrays[NAMES] = arrays[NAMES][:1] if damage == "short" else arrays[NAMES][:, None]
    assert [example.name for example in describe_examples(arrays)] == ["example image 1", "example image 2"]
