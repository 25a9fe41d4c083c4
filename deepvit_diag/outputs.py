"""Writing what a command produces whole or not at all, and never over files deepvit-diag did not write.

A command's output is a *target*: a folder of files (``analyze`` / ``compare --out``: result.json,
arrays.npz, report.html) or one file (``train --out``, a weight-store entry). ``OutputTarget`` is a
context manager around the whole command:

1. On entry, before any work, it refuses a target it may not write, unless ``force``:

   * a folder that holds a file deepvit-diag did not write, or an existing file it did not write
     (in a folder, a file is deepvit-diag's when the folder's marker lists it, ``manifest.MARKER``,
     and the caller's ``owned(path)`` agrees; a target file when ``owned(path)`` says so: a result.json
     whose ``format`` is a deepvit-diag result, a safetensors file with deepvit-diag metadata);
   * a target another run is writing (it holds the lock).

   It then takes the lock and creates the staging folder, which proves the place is writable (an
   ``--out`` under a file, in /proc or on a read-only disk fails here, not after an hour of work).
2. ``write(fill)``: ``fill(path)`` writes every file into the staging folder, and a folder's marker
   (the manifest of those files) is written after them. Only then are the files renamed into place,
   one ``os.replace`` each, the marker last, with Ctrl-C and SIGTERM held back until the last: a full
   disk, a file-size limit or an interrupt hits the staging folder, never the target, and a folder
   whose renames were cut short (a kill) is refused on load (``manifest.check_unit``). With ``force``,
   files of other names in a target folder are kept.
3. On leaving, also after a failure or an interrupt: the staging folder is removed, so is a target
   folder (or parent folders) that entry created and nothing was written to, and the lock is released.

The lock and the staging folder live where the files go (in the target folder; next to a target
file), named ``.<target name>.deepvit-diag-lock`` and ``.<target name>.deepvit-diag-XXXXXXXX/``. The
lock is an ``fcntl.flock`` on that file, held for the whole run (the file records the run's pid and
host for messages). The system releases it when its process ends however it ends, so a killed run's
lock is free: the next run takes it and removes that run's staging folders. Taking it is race-free:
two runs can never both hold it, and a run removes the lock file only while it still holds it.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import signal
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

from .errors import DiagError
from .manifest import MARKER, listed, write_marker


class OutputTarget:
    """A folder or file that a command will write (see the module docstring).

    Args:
        target: the folder (``folder=True``) or file to write.
        owned: whether an existing file there was written by deepvit-diag (and may be replaced).
        force: write even over files deepvit-diag did not write, or another run's lock.
        option: how the user named the target, for messages (``"--out"``).
        force_hint: how the user asks for ``force``, for messages.
    """

    def __init__(
        self,
        target: str | os.PathLike,
        *,
        folder: bool,
        owned: Callable[[Path], bool],
        force: bool = False,
        option: str = "--out",
        force_hint: str = "pass --force",
    ):
        self.target = Path(target)
        self.folder = folder
        self.owned = owned
        self.force = force
        self.option = option
        self.force_hint = force_hint
        self.home = self.target if folder else self.target.parent  # where the lock and the staging live
        self.prefix = f".{self.target.name}.deepvit-diag-"
        self.lock = self.home / f"{self.prefix}lock"
        self.staging: Path | None = None
        self._created: list[Path] = []
        self._lock_descriptor: int | None = None
        self._written = False

    # ------------------------------------------------------------------ entry: refuse, lock, stage

    def __enter__(self) -> OutputTarget:
        try:
            self._refuse_unusable()
            _make_folders(self.home, self._created)
            self._take_lock()
            self.staging = Path(tempfile.mkdtemp(prefix=self.prefix, dir=self.home))
        except OSError as err:
            self._leave()
            raise DiagError(f"cannot write {self.option} {self.target}: {_reason(err)}") from None
        except BaseException:
            self._leave()
            raise
        return self

    def _refuse_unusable(self) -> None:
        target = self.target
        if self.folder and target.exists() and not target.is_dir():
            raise DiagError(f"{self.option} {target} exists and is not a folder")
        if not self.folder and target.is_dir():
            raise DiagError(f"{self.option} {target} is a folder; give a file name")
        if self.force:
            return
        if self.folder and target.is_dir():
            ours = listed(target)
            foreign = sorted(
                p.name
                for p in target.iterdir()
                if not p.name.startswith(self.prefix) and p.name != MARKER and not (p.name in ours and self._ours(p))
            )
            if foreign:
                shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
                raise DiagError(
                    f"{self.option} {target} holds files deepvit-diag did not write ({shown}); choose another "
                    f"{self.option}, or {self.force_hint} to write there anyway (those files are kept)"
                )
        elif not self.folder and (target.exists() or target.is_symlink()) and not self._ours(target):
            raise DiagError(
                f"{self.option} {target} exists and was not written by deepvit-diag; choose another "
                f"{self.option}, or {self.force_hint} to replace it"
            )

    def _ours(self, path: Path) -> bool:
        return path.is_file() and not path.is_symlink() and self.owned(path)

    def _take_lock(self) -> None:
        record = json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode()
        for _ in range(5):
            descriptor = os.open(self.lock, os.O_CREAT | os.O_RDWR, 0o644)
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(descriptor)
                if not self.force:
                    holder = _lock_holder(self.lock)
                    who = f"pid {holder['pid']} on {holder.get('host')}" if holder else f"lock file {self.lock}"
                    raise DiagError(
                        f"another deepvit-diag run ({who}) is writing {self.option} {self.target}; wait for it "
                        f"to finish, or {self.force_hint} if it is not running"
                    ) from None
                self.lock.unlink(missing_ok=True)  # the other run keeps its lock on the file it opened
                continue
            if not _same_file(descriptor, self.lock):  # its holder removed it between our open and our lock
                os.close(descriptor)
                continue
            self._lock_descriptor = descriptor
            os.ftruncate(descriptor, 0)
            os.write(descriptor, record)
            for stale in self.home.glob(f"{self.prefix}*"):  # a killed run's staging folders
                if stale != self.lock:
                    shutil.rmtree(stale, ignore_errors=True)
            return
        raise DiagError(f"cannot lock {self.option} {self.target}: {self.lock} keeps changing")

    # ------------------------------------------------------------------ writing

    def write(self, fill: Callable[[Path], object]) -> Path:
        """``fill(path)`` writes the output (into the staging folder ``path``, or the file ``path``);
        then everything is moved into place at once. Returns the target."""
        if self.staging is None:
            raise RuntimeError("OutputTarget.write outside its with-block")
        try:
            fill(self.staging if self.folder else self.staging / self.target.name)
            staged = sorted(self.staging.iterdir())
            if self.folder:  # the marker is renamed last: until then, the folder's files are not one unit
                names = {path.name for path in staged}
                kept = [name for name in listed(self.target) if name not in names and (self.target / name).is_file()]
                staged.append(write_marker(self.staging, staged, kept))
            mode = _new_file_mode()
            for path in staged:
                if path.is_file():
                    path.chmod(mode)
            with _interrupts_held():
                for path in staged:
                    os.replace(path, self.target / path.name if self.folder else self.target)
        except OSError as err:
            raise DiagError(f"cannot write {self.option} {self.target}: {_reason(err)}") from None
        self._written = True
        return self.target

    # ------------------------------------------------------------------ leaving

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self._leave()

    def _leave(self) -> None:
        if self.staging is not None:
            shutil.rmtree(self.staging, ignore_errors=True)
            self.staging = None
        if self._lock_descriptor is not None:
            if _same_file(self._lock_descriptor, self.lock):  # not a lock file another run made since (--force)
                self.lock.unlink(missing_ok=True)
            os.close(self._lock_descriptor)  # releases the lock
            self._lock_descriptor = None
        if not self._written:
            for folder in reversed(self._created):  # deepest first; only while empty
                try:
                    folder.rmdir()
                except FileNotFoundError:
                    continue
                except OSError:
                    break
        self._created = []


def _new_file_mode() -> int:
    """The mode ``open`` gives a new file under the current umask (0o644 under the usual 022):
    every output gets it, also those whose writer creates files 0o600 (safetensors does)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def _make_folders(folder: Path, created: list[Path]) -> None:
    """Create ``folder`` and its missing parents, recording them in ``created`` (outermost first) as it goes."""
    created.extend(p for p in reversed((folder, *folder.parents)) if not p.exists())
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:  # it, or a folder it needs, is a file
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(folder)) from None


def _same_file(descriptor: int, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``descriptor``."""
    try:
        found = path.stat()
    except FileNotFoundError:
        return False
    opened = os.fstat(descriptor)
    return (found.st_dev, found.st_ino) == (opened.st_dev, opened.st_ino)


def _lock_holder(lock: Path) -> dict | None:
    """The lock's ``{"pid", "host"}``, or None when it cannot be read (e.g. being written)."""
    try:
        holder = json.loads(lock.read_text())
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) and isinstance(holder.get("pid"), int) else None


@contextmanager
def _interrupts_held() -> Iterator[None]:
    """Ctrl-C and SIGTERM wait until the block is done (only the main thread receives signals)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    held = (signal.SIGINT, signal.SIGTERM)
    previous = {signum: signal.signal(signum, lambda signum, frame: received.append(signum)) for signum in held}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if received:
        raise KeyboardInterrupt(received[0])


def _reason(err: OSError) -> str:
    """The operating system's words, e.g. "No space left on device" or "File too large"."""
    return err.strerror or str(err) or type(err).__name__


def write_checked(
    folder: str | os.PathLike, owned: Callable[[Path], bool], fill: Callable[[Path], object], *, force: bool = False
) -> Path:
    """``fill(path)`` writes a result's files, which land in ``folder`` by ``OutputTarget``'s
    rules: whole or not at all, and never into a folder holding files deepvit-diag did not
    write unless ``force`` (what ``save`` of a result does from Python)."""
    with OutputTarget(
        folder, folder=True, owned=owned, force=force, option="folder", force_hint="pass force=True"
    ) as target:
        return target.write(fill)
