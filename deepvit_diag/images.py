"""Where analysis images come from: folders, files, globs and the bundled sets.

Every image is handed out as an 8-bit RGB PIL image, whatever its mode on disk
(grayscale, palette, RGBA on white, 16-bit, float, CMYK, EXIF-rotated). Files that are
not images or cannot be decoded are skipped and counted, never fatal on their own;
a source with no usable image at all is a ``DiagError``. ``ImageSet.batches`` decodes
and preprocesses in worker processes (a torch ``DataLoader``), so a GPU need not wait
for JPEG decoding.
"""
from __future__ import annotations

import glob
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from itertools import chain, zip_longest
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import DataLoader, Dataset

from .errors import DiagError


def _photo_paths() -> list[Path]:
    import skimage.data
    import sklearn.datasets

    sklearn_dir = Path(sklearn.datasets.__file__).parent / "images"
    skimage_dir = Path(skimage.data.__file__).parent
    names = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "camera.png", "coins.png", "moon.png",
             "hubble_deep_field.jpg", "ihc.png"]  # fmt: skip
    return [sklearn_dir / "china.jpg", sklearn_dir / "flower.jpg", *(skimage_dir / n for n in names)]


def _held_out_digits(name: str) -> tuple[list[str], list[Callable[[], Image.Image]]]:
    from .datasets import cluttered_digits, digits_split

    split = digits_split("test") if name == "digits-test" else cluttered_digits("test")
    names = [f"{name}/{i:04d}-label{label}" for i, label in enumerate(split.labels)]
    return names, [partial(to_rgb, img) for img in split.images]


BUNDLED_SETS: dict[str, str] = {
    "photos": "11 real photographs shipped with scikit-learn and scikit-image (china, flower, astronaut, chelsea, "
    "coffee, rocket, camera, coins, moon, hubble_deep_field, ihc)",
    "digits-test": "the 360 held-out scikit-learn digits (8x8 grayscale) of the fixed digits split",
    "digits-clutter-test": "the same 360 held-out digits, each at a random place on a 24 px canvas among fragments of "
    "other held-out digits (fixed seed); the demo weights' held-out set",
}


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL image as 8-bit RGB: EXIF orientation applied, alpha composited on white,
    16-bit and float data rescaled to 0..255 rather than clipped."""
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        data = np.asarray(img, dtype=np.float64)
        if img.mode == "F":
            lo, hi = float(np.nanmin(data)), float(np.nanmax(data))
            data = (data - lo) / (hi - lo or 1.0) * 255.0
        elif data.max() > 255:
            data = data / 65535.0 * 255.0
        img = Image.fromarray(np.clip(np.round(np.nan_to_num(data)), 0, 255).astype(np.uint8))
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB")


def _try_open(path: Path) -> bool:
    """Cheap header check: is this a file PIL can identify as an image?"""
    try:
        with Image.open(path) as img:
            img.size  # noqa: B018  (forces header parsing)
        return True
    except Exception:  # any decoder error means "not an image we can use"
        return False


def _load_path(path: Path) -> Image.Image:
    with Image.open(path) as img:
        img.load()
        return to_rgb(img)


@dataclass
class ImageSet:
    """An ordered, lazily loaded collection of RGB images.

    Iterating yields RGB PIL images; an image that fails to decode at load time is
    skipped with a warning and counted in ``skipped`` (which also counts the files
    rejected when the set was opened).
    """

    description: str
    names: list[str]
    loaders: list[Callable[[], Image.Image]] = field(repr=False)
    skipped: int = 0
    skipped_names: list[str] = field(default_factory=list, repr=False)

    @classmethod
    def of_images(cls, images: Sequence[Image.Image]) -> ImageSet:
        """A set of images already in memory, in any mode (handed out as RGB, as every set)."""
        return cls(f"{len(images)} PIL images", [f"image {i}" for i in range(len(images))], [partial(to_rgb, image) for image in images])

    def __len__(self) -> int:
        return len(self.names)

    def __iter__(self) -> Iterator[Image.Image]:
        for name, load in zip(self.names, self.loaders):
            try:
                yield load()
            except Exception as err:  # a corrupt file must not end a long run
                self._skip(name, err)

    def load(self, index: int) -> Image.Image:
        return self.loaders[index]()

    def batches(
        self, transforms: Sequence[Callable[[Image.Image], torch.Tensor]], batch_size: int, *, num_workers: int = 0,
        pin_memory: bool = False,
    ) -> Iterator[tuple[torch.Tensor, ...]]:
        """The images in order, ``batch_size`` at a time, as one (B, C, H, W) tensor per
        transform. ``num_workers`` processes decode and transform ahead of the consumer
        (0: in this process); ``pin_memory`` puts the batches in page-locked memory for
        asynchronous copies to a GPU. Images that fail are skipped as in ``__iter__``, so
        a batch may hold fewer than ``batch_size``. A worker that dies (out of memory, a
        full /dev/shm in a container) is a ``DiagError``."""
        loader = iter(DataLoader(
            _Transformed(self.loaders, tuple(transforms)), batch_size=batch_size, num_workers=num_workers,
            pin_memory=pin_memory, collate_fn=_stack_usable,
        ))  # fmt: skip
        while True:
            try:
                tensors, failures = next(loader)
            except StopIteration:
                return
            except RuntimeError as err:
                if num_workers == 0:
                    raise
                reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                raise DiagError(
                    f"an image-loading worker process failed ({reason}); run with --workers 0 (num_workers=0) "
                    "or give /dev/shm more space"
                ) from None
            for index, message in failures:
                self._skip(self.names[index], message)
            if tensors:
                yield tensors

    def _skip(self, name: str, error: object) -> None:
        self.skipped += 1
        self.skipped_names.append(name)
        warnings.warn(f"skipped unreadable image {name}: {error}", stacklevel=3)


class _Transformed(Dataset):
    """Image ``index`` through every transform, or the reason it could not be read.

    Picklable (module-level loaders and transforms), so it also works with workers that
    are spawned rather than forked."""

    def __init__(self, loaders: Sequence[Callable[[], Image.Image]], transforms: tuple[Callable, ...]):
        self.loaders = loaders
        self.transforms = transforms

    def __len__(self) -> int:
        return len(self.loaders)

    def __getitem__(self, index: int) -> tuple[int, tuple[torch.Tensor, ...] | None, str | None]:
        try:
            image = self.loaders[index]()
            return index, tuple(transform(image) for transform in self.transforms), None
        except Exception as err:  # reported and skipped by the consumer, like a failed decode
            return index, None, str(err)


def _stack_usable(items: list[tuple]) -> tuple[tuple[torch.Tensor, ...], list[tuple[int, str]]]:
    """Collate: the usable images stacked per transform, and the (index, reason) of the others."""
    usable = [tensors for _, tensors, _ in items if tensors is not None]
    failures = [(index, message) for index, tensors, message in items if tensors is None]
    return tuple(torch.stack(parts) for parts in zip(*usable)), failures


def _expand(spec: str | Path) -> list[Path]:
    """Files named by one spec: a folder (recursive), a glob, or a single file."""
    text = str(spec)
    if any(ch in text for ch in "*?["):
        return sorted(Path(p) for p in glob.glob(os.path.expanduser(text), recursive=True) if Path(p).is_file())
    path = Path(os.path.expanduser(text))
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.parts))
        return _interleave_by_folder(files)
    if path.is_file():
        return [path]
    raise DiagError(f"image source not found: {text} (give a folder, an image file, a glob or one of: {', '.join(BUNDLED_SETS)})")


def _interleave_by_folder(files: list[Path]) -> list[Path]:
    """Round-robin over sub-folders, so the first N images of an ImageFolder cover every class."""
    groups: dict[Path, list[Path]] = {}
    for f in files:
        groups.setdefault(f.parent, []).append(f)
    if len(groups) <= 1:
        return files
    return [f for f in chain.from_iterable(zip_longest(*groups.values())) if f is not None]


def open_images(spec: str | Path | Sequence[str | Path], *, limit: int | None = None) -> ImageSet:
    """Open an image source: a bundled set name, a folder, an image file, a glob, or a list
    of these (bundled sets included), read in the order given.

    ``limit`` keeps the first ``limit`` usable images (in sorted order, round-robin over
    the sub-folders of an ImageFolder layout). Raises ``DiagError`` when nothing usable is found.
    """
    if limit is not None and limit < 1:
        raise DiagError(f"the number of images must be at least 1, got {limit}")
    if isinstance(spec, str) and spec in BUNDLED_SETS:
        return _bundled(spec, limit)
    specs = [spec] if isinstance(spec, (str, Path)) else list(spec)
    if not specs:
        raise DiagError("no image source given")
    # Every source is resolved first, so a missing one is an error even past the limit.
    candidates = [entry for source in specs for entry in _candidates(source, limit)]
    names, loaders, rejected = [], [], []
    for name, loader, path in candidates:
        if limit is not None and len(names) >= limit:
            break
        if path is not None and not _try_open(path):
            rejected.append(name)
            continue
        names.append(name)
        loaders.append(loader)
    label = ", ".join(str(s) for s in specs)
    if not names:
        detail = f" ({len(rejected)} files were not readable images)" if rejected else ""
        raise DiagError(f"no usable image in {label}{detail}")
    if rejected:
        warnings.warn(f"skipped {len(rejected)} file(s) that are not readable images in {label}", stacklevel=2)
    return ImageSet(f"{len(names)} images from {label}", names, loaders, skipped=len(rejected), skipped_names=rejected)


def _candidates(source: str | Path, limit: int | None) -> list[tuple[str, Callable[[], Image.Image], Path | None]]:
    """(name, loader, file to check or None) for each image a source names; bundled
    images need no check."""
    if isinstance(source, str) and source in BUNDLED_SETS:
        bundled = _bundled(source, limit)
        return [(name, loader, None) for name, loader in zip(bundled.names, bundled.loaders)]
    return [(str(path), partial(_load_path, path), path) for path in _expand(source)]


def _bundled(name: str, limit: int | None) -> ImageSet:
    if name == "photos":
        paths = _photo_paths()[:limit]
        names, loaders = [f"photos/{p.stem}" for p in paths], [partial(_load_path, p) for p in paths]
    else:
        names, loaders = _held_out_digits(name)
        names, loaders = names[:limit], loaders[:limit]
    return ImageSet(description=f"{len(names)} images of the bundled set '{name}': {BUNDLED_SETS[name]}", names=names, loaders=loaders)


def default_image_set(models: Sequence[object]) -> str:
    """The bundled set that fits the models: the one all their model cards name, else 'photos'."""
    named = {((getattr(m, "provenance", None) or {}).get("card") or {}).get("image_set") for m in models}
    if len(named) == 1 and (only := named.pop()) in BUNDLED_SETS:
        return only
    return "photos"
