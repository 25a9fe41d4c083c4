"""Data that ships with the dependencies: the scikit-learn digits with a fixed split."""

from __future__ import annotations

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
