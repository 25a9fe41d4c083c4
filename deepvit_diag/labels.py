"""Class labels of analysis images, mapped to a model's class indices.

An image set names the class of each image by a string (``ImageSet.labels``): the
ImageFolder sub-folder the image lies in (``val/n01440764/x.JPEG`` is ``n01440764``), or a
bundled set's own label (``digits-test/0007-label3`` is ``3``). ``class_indices`` turns
those names into one model's class indices, trying in order:

1. a class map given with the images (``--class-map FILE``, ``read_class_map``);
2. the class names the model knows (``model_class_names``): its model card's ``classes``
   (deepvit-diag's trainer writes them), timm's ``pretrained_cfg["label_names"]``, or the
   synsets of the ImageNet subset with as many classes as the model (timm's
   ``ImageNetInfo``), which ImageNet validation folders such as ``n01440764`` are named by;
3. for a model that names no classes, names that are whole numbers, taken as indices.

When some image has no label or a label that does not map, there is no accuracy, and the
note says why: an accuracy over part of the images, or over guessed classes, would be a
wrong number.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import DiagError
from .jsonfiles import check_depth

if TYPE_CHECKING:
    import torch
    from torch import nn

CLASS_MAP_HELP = (
    "how the images' class folders map to the model's classes, for top-1/top-5 accuracy: a JSON object "
    '{"folder": index, ...}, or a text file of class names, one per line (line 1 is class 0); by default the '
    "model's own class names (model card, timm label names, ImageNet synsets such as n01440764) are used"
)


@dataclass(frozen=True)
class ClassMap:
    """Class names -> class indices, and where they come from (shown in reports)."""

    indices: dict[str, int]
    source: str


@dataclass(frozen=True)
class ModelLabels:
    """The labels of every image of a set as one model's class indices, or why there are none.

    Attributes:
        indices: (N,) int64 class index of each image, or None.
        note: where the labels come from, or why there are none.
    """

    indices: torch.Tensor | None
    note: str


def read_class_map(path: str | Path) -> ClassMap:
    """A class map file: a JSON object ``{"name": index}`` (``.json``), or a text file with
    one class name per line, line 1 being class 0 (blank lines end nothing and are not
    allowed; surrounding spaces are ignored). Any problem is a one-line ``DiagError``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise DiagError(f"cannot read the class map {path}: {getattr(err, 'strerror', None) or err}") from None
    if path.suffix.lower() == ".json":
        check_depth(text, f"class map {path}")
        try:
            mapping = json.loads(text)
        except json.JSONDecodeError as err:
            raise DiagError(f"class map {path} is not valid JSON: {err}") from None
        if not isinstance(mapping, dict) or not all(
            isinstance(index, int) and not isinstance(index, bool) and index >= 0 for index in mapping.values()
        ):
            raise DiagError(f'class map {path} must be a JSON object {{"name": index, ...}} of whole numbers >= 0')
        indices = dict(mapping)
    else:
        names = [line.strip() for line in text.splitlines()]
        while names and not names[-1]:
            names.pop()
        if not names or "" in names:
            raise DiagError(f"class map {path} must name one class per line, without blank lines")
        if len(set(names)) != len(names):
            raise DiagError(f"class map {path} names a class twice")
        indices = {name: index for index, name in enumerate(names)}
    if not indices:
        raise DiagError(f"class map {path} maps no class")
    return ClassMap(indices, f"class map {path.name}")


def model_class_names(model: nn.Module) -> tuple[list[str], str] | None:
    """The model's class names by index and where they come from, or None if it names none."""
    num_classes = getattr(model, "num_classes", None)
    card = ((getattr(model, "provenance", None) or {}).get("card")) or {}
    if isinstance(card.get("classes"), list) and len(card["classes"]) == num_classes:
        return [str(name) for name in card["classes"]], "the class names of its model card"
    label_names = (getattr(model, "pretrained_cfg", None) or {}).get("label_names")
    if label_names and len(label_names) == num_classes:
        return [str(name) for name in label_names], "timm's label names of the model"
    from timm.data import ImageNetInfo, infer_imagenet_subset

    subset = infer_imagenet_subset(model) if num_classes else None
    if subset is not None:
        return list(ImageNetInfo(subset).label_names()), f"the {subset} synsets (timm's ImageNetInfo)"
    return None


def class_indices(labels: Sequence[str | None] | None, model: nn.Module, class_map: ClassMap | None) -> ModelLabels:
    """The images' labels as ``model``'s class indices (see the module docstring for the order)."""
    if not labels:
        return ModelLabels(None, "the images carry no labels (class sub-folders of an ImageFolder or a labelled set)")
    unlabelled = sum(label is None for label in labels)
    if unlabelled:
        return ModelLabels(
            None,
            f"{unlabelled} of {len(labels)} images carry no label (labels come from the class sub-folders of an "
            "ImageFolder or from a labelled bundled set)",
        )
    num_classes = getattr(model, "num_classes", None)
    if not isinstance(num_classes, int) or num_classes < 2:
        return ModelLabels(None, "the model has no classifier head with two or more classes")
    names = sorted(set(labels))
    if class_map is not None:
        mapping, source = class_map.indices, class_map.source
    elif (known := model_class_names(model)) is not None:
        mapping, source = {name: index for index, name in enumerate(known[0])}, known[1]
    elif all(name.isdigit() for name in names):
        mapping = {name: int(name) for name in names}
        source = "reading the labels as class indices (the model names no classes)"
    else:
        return ModelLabels(
            None,
            f"the model does not name its classes, so the labels ({_some(names)}) cannot be mapped; "
            "give a class map (--class-map FILE)",
        )
    unknown = [name for name in names if name not in mapping]
    if unknown:
        return ModelLabels(None, f"labels {_some(unknown)} are not among the model's classes ({source})")
    outside = [name for name in names if not 0 <= mapping[name] < num_classes]
    if outside:
        return ModelLabels(
            None, f"labels {_some(outside)} map to indices outside the model's {num_classes} classes ({source})"
        )
    import torch  # here, so that the command line's help text (CLASS_MAP_HELP) comes without torch

    indices = torch.tensor([mapping[label] for label in labels], dtype=torch.int64)
    return ModelLabels(indices, f"labels of {len(names)} classes, mapped to the model's classes by {source}")


def _some(names: Sequence[str], shown: int = 4) -> str:
    listed = ", ".join(names[:shown])
    return listed + (f" and {len(names) - shown} more" if len(names) > shown else "")
