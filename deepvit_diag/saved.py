"""Opening what deepvit-diag saved: the folder ``analyze``, ``compare``, ``merge`` or ``sweep`` wrote,
or a zip archive of one (as the app's download packs it), and packing such a zip.

A zip comes from anyone, so it is checked before a byte of it is written, and refused with one line:

* it must be a zip archive of at most ``MAX_ENTRIES`` entries whose stated sizes stay within
  ``archives.ENTRY_LIMIT`` and ``TOTAL_LIMIT`` (``archives.check_expansion``; the reader never inflates
  more than an entry states);
* every entry is a plain file with a bare name, or all of them inside one folder (a zipped output
  folder): no absolute path, no ``..``, no backslash, no deeper folder, no link, no name twice;
* it holds deepvit-diag's marker (``manifest.MARKER``), which lists every other entry: an archive
  that is not an output of this tool is refused, not searched for something readable.

Then the files are extracted (each entry's bytes capped at its stated size) and checked against the
marker (``manifest.check_unit``), so a zip whose files were edited or mixed is refused too.
"""

from __future__ import annotations

import io
import shutil
import stat
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from . import archives
from .errors import DiagError
from .formats import read_json
from .manifest import MARKER, check_unit, read_marker, write_marker
from .settings import METRIC_PARAMETERS

if TYPE_CHECKING:
    from .results import AnalysisResult, ComparisonResult
    from .settings import Settings
    from .sweeps import SweepResult

    Saved = AnalysisResult | ComparisonResult | SweepResult

RESULT_FILE = "result.json"
SWEEP_FILE = "sweep.json"
# An output folder holds a handful of files (result.json, arrays.npz, report.html, the marker, shard sums).
MAX_ENTRIES = 16
# The marker is a few hundred bytes; anything far larger is not one.
MARKER_LIMIT = 1 << 20


def saved_kind(folder: str | Path) -> str:
    """``"analysis"``, ``"comparison"`` or ``"sweep"``: what the output folder holds (``DiagError`` for
    anything else, naming the files it lacks)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DiagError(f"{folder} is not a folder")
    if (folder / SWEEP_FILE).is_file():
        return "sweep"
    missing = f"is not a saved deepvit-diag output: it has neither {RESULT_FILE} nor {SWEEP_FILE}"
    if not (folder / RESULT_FILE).is_file():
        raise DiagError(f"{folder} {missing}")
    # The reader every document goes through: a result.json nested too deep to parse is refused in one line.
    document = read_json(folder / RESULT_FILE, missing)
    kind = document.get("format") if isinstance(document, dict) else None
    kinds = {"deepvit-diag analysis": "analysis", "deepvit-diag comparison": "comparison"}
    if kind not in kinds:
        raise DiagError(
            f"{folder / RESULT_FILE} holds a {kind!r} document, not an analysis or comparison "
            "(an ablation opens in the app's Ablation view)"
        )
    return kinds[kind]


def load_saved(folder: str | Path) -> Saved:
    """The ``AnalysisResult``, ``ComparisonResult`` or ``SweepResult`` saved in ``folder`` (the
    ``--out`` of ``analyze``, ``compare``/``merge`` or ``sweep``), whichever it holds; ``DiagError``
    for anything else. A zip of such a folder opens after ``extract_saved``.

    Example:
        >>> dd.load_saved("deepvit-diag-report").summary()["a"]["similar_blocks"]  # doctest: +SKIP
    """
    from .results import AnalysisResult, ComparisonResult
    from .sweeps import SweepResult

    loaders = {"analysis": AnalysisResult.load, "comparison": ComparisonResult.load, "sweep": SweepResult.load}
    return loaders[saved_kind(folder)](folder)


def model_labels(result: AnalysisResult | ComparisonResult) -> list[str]:
    """What the command line called the saved models in its table and report: the name given to
    ``--ckpt`` (a path's file name), with " (A)" and " (B)" for a comparison; the model's
    description where no name was recorded."""
    from .results import ComparisonResult

    def name(analysis: AnalysisResult) -> str:
        spec = (analysis.model.get("provenance") or {}).get("spec")
        return PurePosixPath(str(spec)).name if spec else str(analysis.model.get("description") or "model")

    if isinstance(result, ComparisonResult):
        return [f"{name(result.a)} (A)", f"{name(result.b)} (B)"]
    return [name(result)]


def made_with(
    result: ComparisonResult, specs: tuple[str, str], weights: tuple[Path, Path], images: str | None, settings: Settings
) -> str | None:
    """Why ``result`` is not the comparison of checkpoints ``specs`` (whose files are now ``weights``)
    on ``images`` (a bundled set or path as given to ``--images``; None: the set the model cards name)
    with the metric parameters of ``settings`` over ``settings.num_images`` images; None when it is.
    The weights are compared by sha256, so a retrained or replaced checkpoint never matches."""
    from .checkpoints.safe_load import file_sha256
    from .images import BUNDLED_SETS, default_image_set

    provenances = [analysis.model.get("provenance") or {} for analysis in (result.a, result.b)]
    for side, provenance, spec, path in zip("AB", provenances, specs, weights):
        if provenance.get("spec") != spec:
            return f"its model {side} is {provenance.get('spec')!r}, not {spec!r}"
        if not path.is_file() or provenance.get("sha256") != file_sha256(path):
            return f"its model {side} ({spec}) had other weights than {path}"
    if images is None:
        images = default_image_set([SimpleNamespace(provenance=provenance) for provenance in provenances])
    # How ``open_images`` describes a bundled set and other sources.
    source = f"of the bundled set '{images}'" if images in BUNDLED_SETS else f"from {images}"
    described = str(result.a.images.get("description", ""))
    if source not in described:
        return f"it analysed {described.split(':')[0]}, not {images}"
    saved = result.a.settings
    for name in METRIC_PARAMETERS:
        if getattr(saved, name) != getattr(settings, name):
            return f"it was made with {name} = {getattr(saved, name)}, not {getattr(settings, name)}"
    if settings.num_images is not None and result.a.num_images != settings.num_images:
        return f"it analysed {result.a.num_images} images, not {settings.num_images}"
    return None


# ----------------------------------------------------------------------------- zips


def _refuse(name: str, reason: str) -> DiagError:
    return DiagError(f"refused {name}: {reason}")


def _is_link(info: zipfile.ZipInfo) -> bool:
    return stat.S_ISLNK(info.external_attr >> 16)


def _entry_names(entries: list[zipfile.ZipInfo], name: str) -> dict[str, zipfile.ZipInfo]:
    """The archive's files by their bare names, after the checks on their paths (module docstring)."""
    files: dict[str, zipfile.ZipInfo] = {}
    folders: set[str] = set()
    for info in entries:
        path = info.filename
        parts = PurePosixPath(path).parts
        if path.startswith("/") or "\\" in path or ":" in path or ".." in parts or not parts:
            raise _refuse(name, f"entry {path!r} points outside the archive's folder")
        if _is_link(info):
            raise _refuse(name, f"entry {path!r} is a link")
        if info.is_dir():
            if len(parts) > 1:
                raise _refuse(name, f"entry {path!r} is a nested folder")
            folders.add(parts[0])
            continue
        if len(parts) > 2:
            raise _refuse(name, f"entry {path!r} lies in a nested folder")
        folders.update(parts[:-1])
        if parts[-1] in files:
            raise _refuse(name, f"it holds {parts[-1]} twice")
        files[parts[-1]] = info
    if len(folders) > 1 or (folders and any(len(PurePosixPath(i.filename).parts) == 1 for i in files.values())):
        raise _refuse(name, "its files are not all in one folder")
    return files


def extract_saved(archive: str | Path, destination: str | Path, name: str | None = None) -> Path:
    """Extract the zipped output folder ``archive`` into the new folder ``destination`` (made
    here; it must not exist) after the checks of the module docstring; returns ``destination``.
    ``name`` is what messages call the archive (default its file name). Raises ``DiagError``,
    with nothing left at ``destination``."""
    archive, destination = Path(archive), Path(destination)
    name = name or archive.name
    if not zipfile.is_zipfile(archive):
        raise _refuse(name, "it is not a zip archive")
    try:
        with zipfile.ZipFile(archive) as opened:
            entries = opened.infolist()
            if len(entries) > MAX_ENTRIES:
                raise _refuse(name, f"it has {len(entries)} entries, more than an output folder's {MAX_ENTRIES}")
            try:
                archives.check_expansion(archive, archives.ENTRY_LIMIT, archives.TOTAL_LIMIT)
            except DiagError as err:
                raise _refuse(name, str(err).split(": ", 1)[-1]) from None
            files = _entry_names(entries, name)
            if MARKER not in files or files[MARKER].file_size > MARKER_LIMIT:
                raise _refuse(name, f"it is not a deepvit-diag output (it holds no {MARKER})")
            destination.mkdir(parents=True)
            try:
                _extract(opened, files, destination, name)
            except BaseException:
                shutil.rmtree(destination, ignore_errors=True)
                raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, NotImplementedError) as err:
        raise _refuse(name, f"it is a damaged zip archive ({err})") from None
    return destination


def _extract(opened: zipfile.ZipFile, files: dict[str, zipfile.ZipInfo], destination: Path, name: str) -> None:
    """The marker first, then the files it lists; refuses files it does not list and files that differ."""
    _copy(opened, files[MARKER], destination / MARKER)
    marker = read_marker(destination)
    if marker is None:
        raise _refuse(name, f"its {MARKER} is not deepvit-diag's")
    listed = {*marker["files"], *(entry for entry in marker["kept"] if isinstance(entry, str))}
    unlisted = sorted(set(files) - listed - {MARKER})
    if unlisted:
        raise _refuse(name, f"it holds {', '.join(unlisted[:3])}, which its {MARKER} does not list")
    for entry in sorted(set(files) - {MARKER}):
        _copy(opened, files[entry], destination / entry)
    try:
        check_unit(destination, [entry for entry in marker["files"] if entry in files])
    except DiagError:
        raise _refuse(
            name, f"its files are not those its {MARKER} describes (changed, or from different runs)"
        ) from None


def _copy(opened: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path) -> None:
    """One entry to ``target``, never more bytes than it states (``zipfile`` also checks its CRC)."""
    with opened.open(info) as source, open(target, "xb") as sink:
        copied = 0
        for chunk in iter(lambda: source.read(1 << 20), b""):
            copied += len(chunk)
            if copied > info.file_size:
                raise zipfile.BadZipFile(f"{info.filename} holds more than it states")
            sink.write(chunk)


def pack_output(fill: Callable[[Path], Any], folder_name: str) -> bytes:
    """A zip of the output that ``fill(folder)`` writes into an empty folder, with its marker, all
    under ``folder_name/``: what ``extract_saved`` opens again, and unzips to a folder like ``--out``'s."""
    with tempfile.TemporaryDirectory(prefix="deepvit-diag-pack-") as work:
        folder = Path(work)
        fill(folder)
        written = sorted(path for path in folder.iterdir() if path.is_file())
        marker = write_marker(folder, written)
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as packed:
            for path in [*written, marker]:
                packed.write(path, f"{folder_name}/{path.name}")
    return buffer.getvalue()
