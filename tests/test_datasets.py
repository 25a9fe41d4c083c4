"""The bundled data: the fixed digits split and the cluttered-canvas task built from it."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import deepvit_diag.datasets as datasets
from deepvit_diag.datasets import CLUTTER_CANVAS, CLUTTER_DIGIT_SIZE, cluttered_digits, digits_split, held_out_set


def pixels(images: list[Image.Image]) -> np.ndarray:
    return np.stack([np.asarray(image) for image in images])


def test_digits_split_is_fixed_and_disjoint():
    train, test = digits_split("train"), digits_split("test")
    assert len(train.labels) == 1437 and len(test.labels) == 360
    train_pixels = {image.tobytes() for image in train.images}
    assert not any(image.tobytes() in train_pixels for image in test.images if image.getbbox())
    with pytest.raises(ValueError, match="split"):
        digits_split("validation")


def test_cluttered_test_set_is_one_fixed_canvas_per_held_out_digit():
    test = cluttered_digits("test")
    assert len(test.images) == 360 and test.classes == [str(c) for c in range(10)]
    np.testing.assert_array_equal(test.labels, digits_split("test").labels)
    assert all(image.mode == "L" and image.size == (CLUTTER_CANVAS, CLUTTER_CANVAS) for image in test.images)
    np.testing.assert_array_equal(pixels(test.images), pixels(cluttered_digits("test").images))


def test_cluttered_draws_are_seeded_balanced_and_fresh_per_seed():
    first, again, other = (cluttered_digits("train", 40, seed=seed) for seed in ([0, 1], [0, 1], [0, 2]))
    assert len(first.images) == 40
    np.testing.assert_array_equal(pixels(first.images), pixels(again.images))
    np.testing.assert_array_equal(first.labels, again.labels)
    assert not np.array_equal(pixels(first.images), pixels(other.images))
    # every training digit once before any twice: counts per class follow the split's
    labels = cluttered_digits("train", 1437, seed=3).labels
    np.testing.assert_array_equal(np.bincount(labels), np.bincount(digits_split("train").labels))
    with pytest.raises(ValueError, match="count"):
        cluttered_digits("train", 0)


def test_each_canvas_shows_its_labelled_digit(monkeypatch):
    """Without clutter and noise a canvas holds exactly one scaled digit: its pixel values
    are those of a training digit with the canvas's label."""
    monkeypatch.setattr(datasets, "CLUTTER_FRAGMENTS", 0)
    monkeypatch.setattr(datasets, "CLUTTER_NOISE_STD", 0.0)
    train = digits_split("train")
    scaled = [np.asarray(img.resize((CLUTTER_DIGIT_SIZE,) * 2, Image.BILINEAR)) for img in train.images]
    values = {}
    for digit, label in zip(scaled, train.labels):
        values.setdefault(np.sort(digit[digit > 0]).tobytes(), set()).add(int(label))
    drawn = cluttered_digits("train", 30, seed=7)
    for image, label in zip(drawn.images, drawn.labels):
        canvas = np.asarray(image)
        assert int(label) in values[np.sort(canvas[canvas > 0]).tobytes()]


def test_fragments_stay_off_the_digit_and_come_from_other_digits(monkeypatch):
    monkeypatch.setattr(datasets, "CLUTTER_NOISE_STD", 0.0)
    size = CLUTTER_DIGIT_SIZE
    assert 2 * datasets.CLUTTER_FRAGMENT_SIDES[1] <= CLUTTER_CANVAS - size  # room beside the digit wherever it is
    digits = [np.full((size, size), 10.0 * (i + 1)) for i in range(20)]
    span = CLUTTER_CANVAS - size + 1
    for seed in range(10):
        canvas = datasets._clutter_canvas(digits, 4, np.random.default_rng(seed))
        places = [(y, x) for y in range(span) for x in range(span) if (canvas[y : y + size, x : x + size] == 50).all()]
        assert len(places) == 1  # the target (grey 50) is whole: nothing was drawn over it
        (y, x), clutter = places[0], canvas.copy()
        clutter[y : y + size, x : x + size] = 0
        assert clutter.any() and clutter.max() <= 200  # fragments, at contrast <= 1 of the brightest other digit


def test_training_canvases_never_show_a_held_out_digit(monkeypatch):
    """Training canvases are built from the training digits only (targets and fragments):
    mark the two parts with different grey levels and look for the held-out one."""
    monkeypatch.setattr(datasets, "CLUTTER_NOISE_STD", 0.0)
    real_split = datasets.digits_split

    def marked_split(split: str) -> datasets.LabelledImages:
        part = real_split(split)
        level = 100 if split == "train" else 250
        return datasets.LabelledImages([Image.new("L", (8, 8), level) for _ in part.images], part.labels, part.classes)

    monkeypatch.setattr(datasets, "digits_split", marked_split)
    train = pixels(cluttered_digits("train", 50, seed=0).images)
    test = pixels(cluttered_digits("test").images[:50])
    assert train.max() == 100 and test.max() == 250


def test_held_out_set_names_the_bundled_held_out_digits():
    plain, clutter = held_out_set("digits-test"), held_out_set("digits-clutter-test")
    assert np.array_equal(plain.labels, digits_split("test").labels)
    assert np.array_equal(clutter.labels, plain.labels)  # one canvas per held-out digit, in the split's order
    expected = cluttered_digits("test")
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(clutter.images, expected.images))
    with pytest.raises(ValueError, match="no held-out digit set named 'photos'"):
        held_out_set("photos")
