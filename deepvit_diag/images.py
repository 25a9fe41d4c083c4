"""Where analysis images come from (folders, files, globs, the bundled sets) and how they
stream to the models (``ImageStream``).

Every image is handed out as an 8-bit RGB PIL image, whatever its mode on disk
(grayscale, palette, RGBA on white, 16-bit, float, CMYK, EXIF-rotated). Files that are
not images or cannot be decoded are skipped and counted, never fatal on their own;
a source with no usable image at all is a ``DiagError``. ``ImageSet.batches`` decodes
and preprocesses in worker processes (a torch ``DataLoader``), so a GPU need not wait
for JPEG decoding.

Labels travel with the images: an image in a class sub-folder of a folder source (an
ImageFolder) is labelled by that folder's name, a bundled digit by its digit, and the
stream hands each model its labels as class indices (``deepvit_diag.labels``), or the
labels of ``(images, labels)`` batches as they are.
"""

from __future__ import annotations

import glob
import hashlib
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from itertools import chain, zip_longest
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .errors import DiagError
from .labels import ClassMap, ModelLabels, class_indices, read_class_map
from .preprocessing import check_input_size, model_input_config, model_transform, to_rgb
from .settings import Settings

if TYPE_CHECKING:
    from .distributed import Shard


def _photo_paths() -> list[Path]:
    import skimage.data
    import sklearn.datasets

    sklearn_dir = Path(sklearn.datasets.__file__).parent / "images"
    skimage_dir = Path(skimage.data.__file__).parent
    names = [
        "astronaut.png",
        "chelsea.png",
        "coffee.png",
        "rocket.jpg",
        "camera.png",
        "coins.png",
        "moon.png",
        "hubble_deep_field.jpg",
        "ihc.png",
    ]
    return [sklearn_dir / "china.jpg", sklearn_dir / "flower.jpg", *(skimage_dir / n for n in names)]


def _held_out_digits(name: str) -> tuple[list[str], list[Callable[[], Image.Image]], list[str]]:
    from .datasets import held_out_set

    split = held_out_set(name)
    names = [f"{name}/{i:04d}-label{label}" for i, label in enumerate(split.labels)]
    labels = [split.classes[label] for label in split.labels]
    return names, [partial(to_rgb, img) for img in split.images], labels


BUNDLED_SETS: dict[str, str] = {
    "photos": "11 real photographs shipped with scikit-learn and scikit-image (china, flower, astronaut, chelsea, "
    "coffee, rocket, camera, coins, moon, hubble_deep_field, ihc)",
    "digits-test": "the 360 held-out scikit-learn digits (8x8 grayscale) of the fixed digits split",
    "digits-clutter-test": "the same 360 held-out digits, each at a random place on a 24 px canvas among fragments of "
    "other held-out digits (fixed seed); the demo weights' held-out set",
}


# Images with more pixels are refused from their header, before decoding: far above real photos (a
# 100-megapixel camera), below what exhausts memory (PIL itself only refuses above ~179 million).
MAX_PIXELS_ENV = "DEEPVIT_DIAG_MAX_PIXELS"
DEFAULT_MAX_PIXELS = 120_000_000
# JPEGs at least twice this size on both sides are decoded at a reduced scale (PIL's ``draft``): every
# model resizes to a few hundred pixels, so the full-size decode would only cost memory.
DRAFT_SIZE = (2048, 2048)


def max_pixels() -> int:
    """The pixel-count cap: ``$DEEPVIT_DIAG_MAX_PIXELS`` when set to a positive whole number, else the default."""
    text = os.environ.get(MAX_PIXELS_ENV, "")
    if not text:
        return DEFAULT_MAX_PIXELS
    if not text.isdigit() or int(text) < 1:
        raise DiagError(f"{MAX_PIXELS_ENV} must be a positive whole number of pixels, got {text!r}")
    return int(text)


def _open_capped(path: Path) -> Image.Image:
    """``Image.open`` with the pixel cap checked from the header and JPEG decoding reduced where it may be."""
    with warnings.catch_warnings():  # PIL's own warning threshold is below the cap checked here
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        img = Image.open(path)
    limit, count = max_pixels(), img.width * img.height
    if count > limit:
        img.close()
        raise Image.DecompressionBombError(
            f"{img.width} x {img.height} = {count:,} pixels, more than {limit:,} (${MAX_PIXELS_ENV})"
        )
    if img.format == "JPEG":
        img.draft("RGB", DRAFT_SIZE)
    return img


def why_unusable(path: Path, *, decode: bool = False) -> str | None:
    """None for a file PIL can identify as an image (from its header; with ``decode``, by decoding
    all of it), else the reason in one line."""
    try:
        with _open_capped(path) as img:
            if decode:
                img.load()
            else:
                img.size  # noqa: B018  (forces header parsing)
        return None
    except Image.DecompressionBombError as err:
        return f"too many pixels, refused as a possible decompression bomb ({err})"
    except Image.UnidentifiedImageError:
        return "not an image format PIL reads"
    except Exception as err:  # any other decoder or file error also means "not an image we can use"
        return f"{type(err).__name__}: {err}"


def _load_path(path: Path) -> Image.Image:
    with _open_capped(path) as img:
        img.load()
        return to_rgb(img)


@dataclass
class ImageSet:
    """An ordered, lazily loaded collection of RGB images.

    Iterating yields RGB PIL images; an image that fails to decode at load time is
    skipped with a warning and counted in ``skipped`` (which also counts the files
    rejected when the set was opened). ``labels`` names each image's class (None for an
    unlabelled image; no list for a set without labels) and ``class_map`` says which
    class index each name is, where the user gave one (``deepvit_diag.labels``).
    """

    description: str
    names: list[str]
    loaders: list[Callable[[], Image.Image]] = field(repr=False)
    skipped: int = 0
    skipped_names: list[str] = field(default_factory=list, repr=False)
    first_failure: str | None = None  # "<name>: <why>" of the first file skipped
    labels: list[str | None] | None = field(default=None, repr=False)
    class_map: ClassMap | None = field(default=None, repr=False)

    @classmethod
    def of_images(cls, images: Sequence[Image.Image]) -> ImageSet:
        """A set of images already in memory, in any mode (handed out as RGB, as every set)."""
        return cls(
            f"{len(images)} PIL images",
            [f"image {i + 1}" for i in range(len(images))],
            [partial(to_rgb, image) for image in images],
        )

    def __len__(self) -> int:
        return len(self.names)

    def subset(self, start: int, stop: int, description: str) -> ImageSet:
        """Images ``[start, stop)`` as a set of their own (labels and class map kept); its
        ``skipped`` counts only the images that fail to decode in it."""
        labels = None if self.labels is None else self.labels[start:stop]
        return replace(
            self,
            description=description,
            names=self.names[start:stop],
            loaders=self.loaders[start:stop],
            skipped=0,
            skipped_names=[],
            first_failure=None,
            labels=labels,
        )

    def __iter__(self) -> Iterator[Image.Image]:
        for name, load in zip(self.names, self.loaders):
            try:
                yield load()
            except Exception as err:  # a corrupt file must not end a long run
                self._skip(name, err)

    def load(self, index: int) -> Image.Image:
        return self.loaders[index]()

    def batches(
        self, transforms: Sequence[Callable[[Image.Image], torch.Tensor]], batch_size: int, **options: Any
    ) -> Iterator[tuple[torch.Tensor, ...]]:
        """The images in order, ``batch_size`` at a time, as one (B, C, H, W) tensor per
        transform: ``indexed_batches`` (with the same options) without the positions."""
        for _, tensors in self.indexed_batches(transforms, batch_size, **options):
            yield tensors

    def indexed_batches(
        self,
        transforms: Sequence[Callable[[Image.Image], torch.Tensor]],
        batch_size: int,
        *,
        num_workers: int = 0,
        pin_memory: bool = False,
    ) -> Iterator[tuple[torch.Tensor, tuple[torch.Tensor, ...]]]:
        """The images in order, ``batch_size`` at a time: the (B,) int64 positions in the
        set of the images in the batch, and one (B, C, H, W) tensor per transform.
        ``num_workers`` processes decode and transform ahead of the consumer (0: in this
        process); ``pin_memory`` puts the batches in page-locked memory for asynchronous
        copies to a GPU. Images that fail are skipped as in ``__iter__``, so a batch may
        hold fewer than ``batch_size``. A worker that dies (out of memory, a full /dev/shm
        in a container) is a ``DiagError``."""
        loader = iter(
            DataLoader(
                _Transformed(self.loaders, tuple(transforms)),
                batch_size=batch_size,
                num_workers=num_workers,
                pin_memory=pin_memory,
                collate_fn=_stack_usable,
            )
        )
        while True:
            try:
                indices, tensors, failures = next(loader)
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
                yield indices, tensors

    def _skip(self, name: str, error: object) -> None:
        self.skipped += 1
        self.skipped_names.append(name)
        self.first_failure = self.first_failure or f"{name}: {error}"
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


def _stack_usable(items: list[tuple]) -> tuple[torch.Tensor, tuple[torch.Tensor, ...], list[tuple[int, str]]]:
    """Collate: the positions of the usable images, those images stacked per transform, and
    the (index, reason) of the others."""
    usable = [(index, tensors) for index, tensors, _ in items if tensors is not None]
    failures = [(index, message) for index, tensors, message in items if tensors is None]
    indices = torch.tensor([index for index, _ in usable], dtype=torch.int64)
    return indices, tuple(torch.stack(parts) for parts in zip(*(tensors for _, tensors in usable))), failures


def _expand(spec: str | Path) -> list[Path]:
    """Files named by one spec: a folder (recursive), a glob, or a single file."""
    text = str(spec)
    if any(ch in text for ch in "*?["):
        return sorted(Path(p) for p in glob.glob(os.path.expanduser(text), recursive=True) if Path(p).is_file())
    path = Path(os.path.expanduser(text))
    if path.is_dir():
        # Hidden entries inside the folder are skipped (.git, .DS_Store); a hidden folder above it is the user's choice.
        files = sorted(
            p
            for p in path.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
        )
        return _interleave_by_folder(files)
    if path.is_file():
        return [path]
    raise DiagError(
        f"image source not found: {text} (give a folder, an image file, a glob or one of: {', '.join(BUNDLED_SETS)})"
    )


def _bundled_name(spec: object) -> str | None:
    """The bundled set ``spec`` names: its name, or its name with a trailing slash (``photos/``)
    when no such folder exists here."""
    if not isinstance(spec, str):
        return None
    if spec in BUNDLED_SETS:
        return spec
    name = spec.rstrip("/")
    return name if name in BUNDLED_SETS and not Path(spec).is_dir() else None


def _interleave_by_folder(files: list[Path]) -> list[Path]:
    """Round-robin over sub-folders, so the first N images of an ImageFolder cover every class."""
    groups: dict[Path, list[Path]] = {}
    for f in files:
        groups.setdefault(f.parent, []).append(f)
    if len(groups) <= 1:
        return files
    return [f for f in chain.from_iterable(zip_longest(*groups.values())) if f is not None]


def open_images(
    spec: str | Path | Sequence[str | Path],
    *,
    limit: int | None = None,
    class_map: ClassMap | str | Path | None = None,
) -> ImageSet:
    """Open an image source: a bundled set name, a folder, an image file, a glob, or a list
    of these (bundled sets included), read in the order given.

    ``limit`` keeps the first ``limit`` usable images (in sorted order, round-robin over
    the sub-folders of an ImageFolder layout). Images in a class sub-folder of a folder
    source are labelled by its name, the bundled digits by their digit; ``class_map`` (a
    ``ClassMap`` or a file for ``deepvit_diag.labels.read_class_map``) says which class
    index each name is. Raises ``DiagError`` when nothing usable is found.
    """
    if limit is not None and limit < 1:
        raise DiagError(f"the number of images must be at least 1, got {limit}")
    if class_map is not None and not isinstance(class_map, ClassMap):
        class_map = read_class_map(class_map)
    if bundled := _bundled_name(spec):
        return replace(_bundled(bundled, limit), class_map=class_map)
    specs = [spec] if isinstance(spec, (str, Path)) else list(spec)
    if not specs:
        raise DiagError("no image source given")
    # Every source is resolved first, so a missing one is an error even past the limit.
    candidates = [entry for source in specs for entry in _candidates(source, limit)]
    names, loaders, labels, rejected = [], [], [], []
    first_failure = None
    for name, loader, path, label in candidates:
        if limit is not None and len(names) >= limit:
            break
        reason = None if path is None else why_unusable(path)
        if reason is not None:
            rejected.append(name)
            first_failure = first_failure or f"{name}: {reason}"
            continue
        names.append(name)
        loaders.append(loader)
        labels.append(label)
    description = ", ".join(str(s) for s in specs)
    if not names:
        detail = f" ({len(rejected)} file(s) not readable as images; {first_failure})" if rejected else ""
        raise DiagError(f"no usable image in {description}{detail}")
    if rejected:
        warnings.warn(
            f"skipped {len(rejected)} file(s) that are not readable images in {description} (first: {first_failure})",
            stacklevel=2,
        )
    return ImageSet(
        f"{len(names)} images from {description}",
        names,
        loaders,
        skipped=len(rejected),
        skipped_names=rejected,
        first_failure=first_failure,
        labels=labels if any(label is not None for label in labels) else None,
        class_map=class_map,
    )


def _candidates(
    source: str | Path, limit: int | None
) -> list[tuple[str, Callable[[], Image.Image], Path | None, str | None]]:
    """(name, loader, file to check or None, label or None) for each image a source names;
    bundled images need no check."""
    if name := _bundled_name(source):
        bundled = _bundled(name, limit)
        labels = bundled.labels or [None] * len(bundled)
        return [(name, loader, None, label) for name, loader, label in zip(bundled.names, bundled.loaders, labels)]
    return [(str(path), partial(_load_path, path), path, _class_folder(path, source)) for path in _expand(source)]


def _class_folder(path: Path, source: str | Path) -> str | None:
    """The ImageFolder class of a file found in folder ``source``: the sub-folder of
    ``source`` it lies in (None for files directly in it, and for file and glob sources)."""
    root = Path(os.path.expanduser(str(source)))
    if any(ch in str(source) for ch in "*?[") or not root.is_dir():
        return None
    parts = path.relative_to(root).parts
    return parts[0] if len(parts) > 1 else None


def _bundled(name: str, limit: int | None) -> ImageSet:
    labels = None
    if name == "photos":
        paths = _photo_paths()[:limit]
        names, loaders = [f"photos/{p.stem}" for p in paths], [partial(_load_path, p) for p in paths]
    else:
        names, loaders, labels = _held_out_digits(name)
        names, loaders, labels = names[:limit], loaders[:limit], labels[:limit]
    return ImageSet(
        description=f"{len(names)} images of the bundled set '{name}': {BUNDLED_SETS[name]}",
        names=names,
        loaders=loaders,
        labels=labels,
    )


def default_image_set(models: Sequence[object]) -> str:
    """The bundled set that fits the models: the one all their model cards name, else 'photos'.

    Models whose cards name different sets are refused (``DiagError``): evaluating them all on
    one of those sets would give the others' accuracy and maps on images they were not meant for.
    """
    named = {((getattr(m, "provenance", None) or {}).get("card") or {}).get("image_set") for m in models}
    different = sorted(name for name in named if name)
    if len(different) > 1:
        raise DiagError(
            f"the model cards name different image sets ({', '.join(different)}): choose the images with --images "
            "(images= in Python)"
        )
    if len(named) == 1 and (only := named.pop()) in BUNDLED_SETS:
        return only
    return "photos"


ImageSource = (
    torch.Tensor
    | tuple[torch.Tensor, torch.Tensor]
    | Sequence[Image.Image]
    | str
    | Path
    | Sequence[str | Path]
    | ImageSet
    | Iterable[torch.Tensor]
)


@dataclass
class StreamBatch:
    """One batch of the stream: the images as each model sees them, and each model's labels.

    Attributes:
        images: one (B, C, H, W) tensor per model.
        labels: one (B,) int64 tensor of class indices per model, or None for a model
            without labels.
        names: each image's name: its file, its bundled-set entry, or "image N" (1-based
            position in the source) for PIL images and tensors.
        label_names: each image's label as the source names it (class folder, digit; the
            class index of an (images, labels) batch), or None.
    """

    images: tuple[torch.Tensor, ...]
    labels: tuple[torch.Tensor | None, ...]
    names: tuple[str, ...]
    label_names: tuple[str | None, ...]

    def __len__(self) -> int:
        return len(self.images[0])

    def part(self, start: int, stop: int) -> StreamBatch:
        """Images ``start`` to ``stop`` (exclusive) of the batch."""
        return StreamBatch(
            tuple(x[start:stop] for x in self.images),
            tuple(None if y is None else y[start:stop] for y in self.labels),
            self.names[start:stop],
            self.label_names[start:stop],
        )


NO_TENSOR_LABELS = "preprocessed tensors carry no labels (pass (images, labels) pairs for accuracy)"


class ImageStream:
    """Batches of at most ``settings.batch_size`` images, as one tensor per model, with each
    model's labels (``StreamBatch``).

    Tensors and iterables of tensor batches are passed to every model as they are (already
    preprocessed), with the labels of ``(images, labels)`` pairs as class indices for every
    model; PIL images and image files are preprocessed with each model's own timm data
    config (models with the same config share one tensor), by ``settings.num_workers``
    processes and into pinned memory when the device is a GPU, and their labels are mapped
    to each model's classes (``deepvit_diag.labels``). ``label_notes`` says, per model,
    where its labels come from or why there are none.
    """

    def __init__(
        self, images: ImageSource, models: Sequence[nn.Module], settings: Settings, shard: Shard | None = None
    ):
        self.models = models
        self.shard = shard
        self.batch_size = settings.batch_size
        self.limit = settings.num_images
        self.num_workers = settings.resolved().num_workers
        self.pin_memory = settings.torch_device.type == "cuda"
        self.count = 0
        self._image_set: ImageSet | None = None
        self._tensors: Iterable[torch.Tensor] | None = None
        self._label_tables: list[torch.Tensor | None] = [None] * len(models)
        self._batches_labelled: bool | None = None  # tensor batches: whether the first carried labels
        self.label_notes = [NO_TENSOR_LABELS] * len(models)
        self.total: int | None = None
        self.open_skipped = 0  # a shard's count of the files refused when the whole source was opened
        self.held = ""  # which images of the source a shard holds
        self.whole: dict[str, Any] = {}  # a shard's whole image list: description, total, fingerprint
        self._first_position = 0  # of a shard's tensor images in the whole tensor, for their names
        self._classify(images)
        if shard is not None:
            self._cut(shard, settings.cka_chunk)

    def _classify(self, images: ImageSource) -> None:
        images = _unpacked(images)
        if isinstance(images, (list, tuple)) and images and all(_is_image_tensor(item) for item in images):
            raise DiagError(
                f"images is a {type(images).__name__} of {len(images)} (C, H, W) tensors; stack them into one "
                "(N, C, H, W) tensor: torch.stack(images)"
            )
        if isinstance(images, torch.Tensor) or _is_labelled_tensor(images):
            x = images if isinstance(images, torch.Tensor) else images[0]
            self._tensors, self.total = [images], min(len(x), self.limit or len(x))
            labelled = " with labels" if x is not images else ""
            self.description = f"a tensor of {len(x)} preprocessed images{labelled}"
        elif isinstance(images, ImageSet) or is_path_spec(images):
            self._use(images if isinstance(images, ImageSet) else open_images(images, limit=self.limit))
        elif isinstance(images, Sequence) and images and all(isinstance(image, Image.Image) for image in images):
            self._use(ImageSet.of_images(images))
        elif isinstance(images, Iterable) and not isinstance(images, (str, bytes, Image.Image)):
            self._tensors, self.total = images, self.limit
            self.description = f"batches of preprocessed images from a {type(images).__name__}"
        else:
            raise DiagError(
                "images must be a (N, C, H, W) tensor, an (images, labels) pair, a list of PIL images, a folder/file/"
                f"glob/bundled-set name, or an iterable of (B, C, H, W) batches; got {type(images).__name__}"
            )

    def _cut(self, shard: Shard, chunk: int) -> None:
        """Keep only ``shard`` of the (limited) image list, cut at CKA minibatch boundaries
        (``distributed.Shard.bounds``)."""
        if self._tensors is not None and not isinstance(self._tensors, list):
            raise DiagError(
                "an iterable of batches cannot be cut into shards: give a tensor, PIL images or image files "
                "(or analyse without shards or a process group)"
            )
        self.whole = {"description": self.description, "total": self.total, "fingerprint": self._fingerprint()}
        start, stop = shard.bounds(self.total, chunk)
        self.held = f"shard {shard}: " + (f"images {start + 1}-{stop}" if stop > start else "no images")
        self.held += f" of {self.total}"
        if self._image_set is not None:
            self.open_skipped = self._image_set.skipped
            self._image_set = self._image_set.subset(start, stop, f"{self.description}; {self.held}")
            # Labels are looked up by position in the set being streamed, now the shard.
            self._label_tables = [None if table is None else table[start:stop] for table in self._label_tables]
        else:
            (item,) = self._tensors
            self._first_position = start
            self._tensors = [
                tuple(part[start:stop] for part in item) if _is_labelled_tensor(item) else item[start:stop]
            ]
        self.total, self.limit = stop - start, None

    def _fingerprint(self) -> str:
        """A hash of the whole (limited) image list: its names, or a tensor's bytes."""
        digest = hashlib.sha256()
        if self._image_set is not None:
            # surrogateescape: a file name that is not UTF-8 hashes as its own bytes
            digest.update("\n".join(self._image_set.names[: self.total]).encode("utf-8", "surrogateescape"))
        else:
            (item,) = self._tensors
            for part in item if _is_labelled_tensor(item) else (item,):
                digest.update(part[: self.total].detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()

    def _use(self, image_set: ImageSet) -> None:
        self._image_set = image_set
        self.total = min(len(image_set), self.limit or len(image_set))
        self.description = image_set.description
        labels: list[ModelLabels] = [
            class_indices(image_set.labels, model, image_set.class_map) for model in self.models
        ]
        self._label_tables = [model_labels.indices for model_labels in labels]
        self.label_notes = [model_labels.note for model_labels in labels]

    @property
    def skipped(self) -> int:
        """Files skipped as unreadable: those of this stream's (shard of the) images that
        failed to decode, plus, for a whole source, those refused when it was opened."""
        return self._image_set.skipped if self._image_set is not None else 0

    def __iter__(self) -> Iterator[StreamBatch]:
        source = self._image_batches() if self._image_set is not None else self._tensor_batches()
        for batch in source:
            if self.limit is not None:
                batch = batch.part(0, self.limit - self.count)
            self.count += len(batch)
            yield batch
            if self.limit is not None and self.count >= self.limit:
                return
        if self.count == 0 and self.shard is None:  # a shard may be empty; the whole analysis may not
            failure = self._image_set.first_failure if self._image_set is not None else None
            reason = f": every one failed to load (first: {failure})" if failure else ""
            raise DiagError(f"no images to analyse in {self.description}{reason}")

    def _tensor_batches(self) -> Iterator[StreamBatch]:
        warned = False
        position = self._first_position
        for item in self._tensors:
            item = _unpacked(item)
            x = _batch_tensor(item)
            if not warned and _looks_unnormalised(x):
                warned = True
                warnings.warn(
                    f"the images hold values up to {float(x.max()):g}: they look like 0..255 pixels, not "
                    "preprocessed input; divide by 255 and normalise with the model's mean and std "
                    "(timm.data.resolve_data_config, or pass PIL images and deepvit-diag preprocesses them)",
                    stacklevel=5,
                )
            labels = self._batch_labels(item, len(x))
            for model in self.models:
                check_input_size(model, x)
            names = tuple(f"image {position + index + 1}" for index in range(len(x)))
            position += len(x)
            label_names = (None,) * len(x) if labels is None else tuple(map(str, labels.cpu().tolist()))
            whole = StreamBatch((x,) * len(self.models), (labels,) * len(self.models), names, label_names)
            for start in range(0, len(x), self.batch_size):
                yield whole.part(start, start + self.batch_size)

    def _batch_labels(self, item: object, size: int) -> torch.Tensor | None:
        """The labels of an (images, labels) batch; every batch must have them or none."""
        labels = item[1] if _is_labelled_tensor(item) else None
        if self._batches_labelled is None:
            self._batches_labelled = labels is not None
            if labels is not None:
                note = "class indices from the (images, labels) batches"
            elif isinstance(item, (tuple, list)) and len(item) > 1:
                note = f"the second entry of the batches is {_described(item[1])}, not a (B,) tensor of class indices"
            else:
                note = NO_TENSOR_LABELS
            self.label_notes = [note] * len(self.models)
        elif self._batches_labelled != (labels is not None):
            raise DiagError("some batches carry (B,) class-index labels and others do not")
        if labels is not None and len(labels) != size:
            raise DiagError(f"a batch of {size} images comes with {len(labels)} labels")
        return labels

    def _image_batches(self) -> Iterator[StreamBatch]:
        configs = [repr(sorted(model_input_config(model).items())) for model in self.models]
        transforms = {config: model_transform(model) for config, model in zip(configs, self.models)}
        batches = self._image_set.indexed_batches(
            list(transforms.values()), self.batch_size, num_workers=self.num_workers, pin_memory=self.pin_memory
        )
        for indices, tensors in batches:
            by_config = dict(zip(transforms, tensors))
            labels = tuple(None if table is None else table[indices] for table in self._label_tables)
            positions, label_names = indices.tolist(), self._image_set.labels
            yield StreamBatch(
                tuple(by_config[config] for config in configs),
                labels,
                tuple(self._image_set.names[index] for index in positions),
                tuple(None if label_names is None else label_names[index] for index in positions),
            )


def _is_labelled_tensor(item: object) -> bool:
    """An (images, labels, ...) tuple: a tensor and a (B,) integer tensor of class indices
    (further entries, e.g. a dataset's sample indices, are ignored)."""
    return (
        isinstance(item, (tuple, list))
        and len(item) >= 2
        and isinstance(item[0], torch.Tensor)
        and isinstance(item[1], torch.Tensor)
        and item[1].ndim == 1
        and not (item[1].is_floating_point() or item[1].is_complex() or item[1].dtype == torch.bool)
    )


def is_path_spec(images: object) -> bool:
    """A folder, file, glob or bundled-set name, or a list of them (what ``open_images`` opens)."""
    if isinstance(images, (str, Path)):
        return True
    return isinstance(images, (list, tuple)) and bool(images) and all(isinstance(item, (str, Path)) for item in images)


def _unpacked(item: object) -> object:
    """A batch as a tensor or an (images, labels) tuple: a mapping (a Hugging Face batch)
    gives its ``pixel_values`` and, where it has them, its ``labels``."""
    if not isinstance(item, Mapping):
        return item
    if "pixel_values" not in item:
        keys = ", ".join(map(repr, list(item)[:6]))
        raise DiagError(f"a dict batch must hold the images under 'pixel_values'; it holds {keys}")
    labels = item.get("labels", item.get("label"))
    return item["pixel_values"] if labels is None else (item["pixel_values"], labels)


def _is_image_tensor(item: object) -> bool:
    return isinstance(item, torch.Tensor) and item.ndim == 3


def _described(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return f"a {type(value).__name__}"


def _looks_unnormalised(x: torch.Tensor) -> bool:
    """Pixels in 0..255 rather than normalised input (which stays within a few units of 0)."""
    if x.numel() == 0:  # an empty shard of a process group
        return False
    low, high = torch.aminmax(x.detach())
    return bool(low >= 0) and bool(high > 10)


def _batch_tensor(item: object) -> torch.Tensor:
    """A (B, C, H, W) float tensor from a batch, or from the first entry of an (images, labels, ...) tuple."""
    if isinstance(item, (tuple, list)) and item and isinstance(item[0], torch.Tensor):
        item = item[0]
    if not isinstance(item, torch.Tensor):
        raise DiagError(
            f"every batch of images must be a preprocessed float tensor (B, C, H, W), got {type(item).__name__}"
        )
    if item.ndim == 3:
        raise DiagError(
            f"images of shape {tuple(item.shape)} are one image (C, H, W); add the batch dim: x[None] "
            "(or x.unsqueeze(0))"
        )
    if item.ndim != 4:
        raise DiagError(f"every batch of images must be a (B, C, H, W) tensor, got shape {tuple(item.shape)}")
    if not item.is_floating_point():
        raise DiagError(
            f"images must be a preprocessed floating-point tensor, got dtype {item.dtype}; convert and normalise "
            "them first (x.float() / 255, then the model's mean and std), or pass PIL images"
        )
    return item
