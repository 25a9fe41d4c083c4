"""Data that ships with the dependencies: the scikit-learn digits with a fixed split."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

DIGITS_SPLIT_SEED = 0
DIGITS_TEST_FRACTION = 0.2
DIGITS_DESCRIPTION = (
    "scikit-learn digits (1,797 8x8 grayscale images, 10 classes); "
    f"stratified {1 - DIGITS_TEST_FRACTION:.0%}/{DIGITS_TEST_FRACTION:.0%} train/test split, "
    f"random_state={DIGITS_SPLIT_SEED}"
)


@dataclass
class LabelledImages:
    images: list[Image.Image]
    labels: np.ndarray
    classes: list[str]


def digits_split(split: str) -> LabelledImages:
    """The ``"train"`` or ``"test"`` part of the fixed digits split as 8x8 mode-"L" images.

    Pixel values 0..16 are scaled to 0..255 so the images look like any other photo to
    the preprocessing pipeline.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    digits = load_digits()
    train_idx, test_idx = train_test_split(
        np.arange(len(digits.target)),
        test_size=DIGITS_TEST_FRACTION,
        random_state=DIGITS_SPLIT_SEED,
        stratify=digits.target,
    )
    idx = train_idx if split == "train" else test_idx
    pixels = np.round(digits.images[idx] * (255.0 / 16.0)).astype(np.uint8)
    return LabelledImages(
        images=[Image.fromarray(p) for p in pixels],
        labels=digits.target[idx].astype(np.int64),
        classes=[str(c) for c in digits.target_names],
    )


# The attention task. Upsampled to fill the frame, a digit can be read by averaging every
# patch, so nothing rewards attending anywhere; here the digit fills a small part of the
# canvas at a random place and fragments of other digits surround it, so only a few
# patches carry the class and a model has to find them.
CLUTTER_CANVAS = 24
CLUTTER_DIGIT_SIZE = 12
CLUTTER_FRAGMENTS = 3
# Fragment height and width in canvas pixels, inclusive. At most half the space the digit
# leaves, (24 - 12) / 2, so that a fragment always fits beside the digit wherever it is.
CLUTTER_FRAGMENT_SIDES = (4, 6)
CLUTTER_FRAGMENT_CONTRAST = (0.5, 1.0)
CLUTTER_NOISE_STD = 12.0  # grey levels of 255
CLUTTER_TEST_SEED = 2021
CLUTTER_DESCRIPTION = (
    f"scikit-learn digits on a cluttered canvas: each digit of the fixed digits split scaled to "
    f"{CLUTTER_DIGIT_SIZE} px at a random place on a {CLUTTER_CANVAS} px black canvas, with "
    f"{CLUTTER_FRAGMENTS} fragments ({CLUTTER_FRAGMENT_SIDES[0]}-{CLUTTER_FRAGMENT_SIDES[1]} px crops of other digits "
    f"of the same split, contrast {CLUTTER_FRAGMENT_CONTRAST[0]}-{CLUTTER_FRAGMENT_CONTRAST[1]}) placed off the digit, "
    f"and Gaussian noise (std {CLUTTER_NOISE_STD:g}/255); the test canvases are fixed (one per held-out digit, "
    f"seed {CLUTTER_TEST_SEED}), training canvases are drawn afresh every epoch"
)


def cluttered_digits(
    split: str, count: int | None = None, seed: int | Sequence[int] = CLUTTER_TEST_SEED
) -> LabelledImages:
    """Digits of the fixed ``split`` on cluttered ``CLUTTER_CANVAS`` px canvases, mode "L".

    ``count=None`` gives one canvas per digit of the split, in the split's order (the
    held-out set is ``cluttered_digits("test")``); a ``count`` draws that many, cycling
    through the split's digits in a seeded random order so every digit appears about
    equally often. Fragments come from the same split, so no held-out digit ever
    appears in a training canvas. Deterministic in ``(split, count, seed)``.
    """
    source = digits_split(split)
    if count is not None and count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    rng = np.random.default_rng(seed)
    digits = [
        np.asarray(img.resize((CLUTTER_DIGIT_SIZE, CLUTTER_DIGIT_SIZE), Image.BILINEAR), dtype=np.float64)
        for img in source.images
    ]
    order = np.arange(len(digits)) if count is None else np.resize(rng.permutation(len(digits)), count)
    images = [Image.fromarray(_clutter_canvas(digits, int(index), rng)) for index in order]
    return LabelledImages(images=images, labels=source.labels[order], classes=source.classes)


def _clutter_canvas(digits: list[np.ndarray], index: int, rng: np.random.Generator) -> np.ndarray:
    """One uint8 canvas: ``digits[index]`` at a random place, fragments of the others around it."""
    size, canvas_size = CLUTTER_DIGIT_SIZE, CLUTTER_CANVAS
    canvas = np.zeros((canvas_size, canvas_size))
    top, left = rng.integers(0, canvas_size - size + 1, size=2)
    canvas[top : top + size, left : left + size] = digits[index]
    placed = 0
    while placed < CLUTTER_FRAGMENTS:
        other = int(rng.integers(len(digits) - 1))
        other += other >= index  # any digit but the target
        height, width = rng.integers(CLUTTER_FRAGMENT_SIDES[0], CLUTTER_FRAGMENT_SIDES[1] + 1, size=2)
        crop_top, crop_left = rng.integers(0, size - height + 1), rng.integers(0, size - width + 1)
        y, x = rng.integers(0, canvas_size - height + 1), rng.integers(0, canvas_size - width + 1)
        # A fragment on the digit would change what it shows, and the label must stay right.
        if y < top + size and top < y + height and x < left + size and left < x + width:
            continue
        fragment = digits[other][crop_top : crop_top + height, crop_left : crop_left + width]
        contrast = rng.uniform(*CLUTTER_FRAGMENT_CONTRAST)
        region = canvas[y : y + height, x : x + width]
        np.maximum(region, fragment * contrast, out=region)
        placed += 1
    canvas += rng.normal(0.0, CLUTTER_NOISE_STD, canvas.shape)
    return np.clip(np.round(canvas), 0, 255).astype(np.uint8)


def held_out_set(name: str) -> LabelledImages:
    """The held-out images behind a bundled image set: ``"digits-test"`` (the fixed split's
    test digits) or ``"digits-clutter-test"`` (the same digits on their fixed cluttered canvases)."""
    if name == "digits-test":
        return digits_split("test")
    if name == "digits-clutter-test":
        return cluttered_digits("test")
    raise ValueError(f"no held-out digit set named {name!r}")
