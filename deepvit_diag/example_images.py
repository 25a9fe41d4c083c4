"""What is known of each example image an analysis keeps (``Settings.num_examples``, the
first images, in order, with their pixels in ``example_images``): its name, its label and
the model's prediction, so that a picker can say which image it is without the files.

Arrays of an ``AnalysisResult`` (E examples); results saved before they existed lack them,
and ``describe_examples`` then names the images by their position:

=========================  =====  ============================================================
``example_names``          (E,)   str: the file, the bundled-set entry, or "image N" (1-based
                                  position in the source) for PIL images and tensors
``example_labels``         (E,)   str: the label as the source names it (class folder,
                                  digit); "" for an unlabelled image
``example_predictions``    (E,)   str: the model's top-1 class, by name where the model names
                                  its classes (``labels.model_class_names``), else its index;
                                  "" when the model gives no class logits
``example_correct``        (E,)   int8: 1 when the top-1 class is the image's label as the
                                  model's class index, 0 when it is not, -1 when unknown
                                  (no label, or one that does not map to the model's classes)
=========================  =====  ============================================================
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePath

import numpy as np

NAMES, LABELS, PREDICTIONS, CORRECT = "example_names", "example_labels", "example_predictions", "example_correct"
UNKNOWN = -1  # in ``example_correct``
DESCRIBED_ARRAYS = (NAMES, LABELS, PREDICTIONS, CORRECT)


@dataclass(frozen=True)
class ExampleImage:
    """One example image: ``index`` (0-based among the examples), and what is known of it
    (None where nothing is: no label, no prediction, correctness unknown)."""

    index: int
    name: str
    label: str | None
    prediction: str | None
    correct: bool | None

    @property
    def short_name(self) -> str:
        """The name's last part (a file's name without its folders), for narrow places."""
        return PurePath(self.name).name or self.name


def example_arrays(
    names: Sequence[str],
    labels: Sequence[str | None],
    predictions: np.ndarray | None,
    correct: np.ndarray | None,
    class_names: Sequence[str] | None,
) -> dict[str, np.ndarray]:
    """The four arrays of the module docstring for E examples.

    Args:
        names, labels: each example's name and label (None: unlabelled).
        predictions: (E,) top-1 class indices, or None when the model gives no class logits.
        correct: (E,) bool, top-1 class == label index, or None when the labels do not map.
        class_names: the model's class names by index, or None when it names none.
    """
    count = len(names)
    if predictions is None:
        predicted = [""] * count
    else:
        predicted = [str(index) if class_names is None else class_names[index] for index in predictions.tolist()]
    return {
        NAMES: np.array(list(names), dtype=str),
        LABELS: np.array(["" if label is None else label for label in labels], dtype=str),
        PREDICTIONS: np.array(predicted, dtype=str),
        CORRECT: np.full(count, UNKNOWN, np.int8) if correct is None else correct.astype(np.int8),
    }


def describe_examples(arrays: dict[str, np.ndarray]) -> list[ExampleImage]:
    """Every example image of a result's ``arrays`` with what is known of it; a result saved
    before names were kept (or whose arrays do not hold one entry per image) names them
    "example image N" and knows nothing else."""
    count = len(arrays.get("example_images", ()))
    described = (arrays.get(key) for key in DESCRIBED_ARRAYS)
    if not all(values is not None and values.shape == (count,) for values in described):
        return [ExampleImage(index, f"example image {index + 1}", None, None, None) for index in range(count)]
    return [
        ExampleImage(
            index,
            str(arrays[NAMES][index]),
            str(arrays[LABELS][index]) or None,
            str(arrays[PREDICTIONS][index]) or None,
            None if arrays[CORRECT][index] == UNKNOWN else bool(arrays[CORRECT][index]),
        )
        for index in range(count)
    ]
