"""Which paths on the server a visitor may name: checkpoints, image folders and globs, saved sweeps.

Run on one's own machine (the server bound to this machine only) the app reads any path the
server can read, as the CLI does. Served to others (bound to any other address) it reads
only under the folders ``DEEPVIT_DIAG_APP_ROOTS`` names (``os.pathsep``-separated; also
``deepvit-diag app --roots``), by default the folder the server was started in; setting the
variable confines a local server too. A path is resolved (``~``, ``..``, symbolic links)
before it is compared with the roots, every file a folder or glob yields is checked the
same way, and a path outside is refused with one message that is the same whether it
exists or not, so that a visitor cannot probe which files the server has.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path

from deepvit_diag.serve import is_local

ROOTS_VARIABLE = "DEEPVIT_DIAG_APP_ROOTS"
GLOB_CHARACTERS = "*?["


class PathRefused(Exception):
    """A path outside the readable roots; the message never says whether it exists."""


@dataclass(frozen=True)
class ServerPaths:
    """The folders visitors may read; ``roots`` None: any path the server can read."""

    roots: tuple[Path, ...] | None

    @classmethod
    def from_settings(cls, address: str | None, roots_text: str | None, working_folder: Path) -> ServerPaths:
        """Confined to ``roots_text`` when given, else free on a local bind and confined to
        ``working_folder`` on any other."""
        named = [part.strip() for part in (roots_text or "").split(os.pathsep) if part.strip()]
        if named:
            return cls(tuple(Path(os.path.expanduser(part)).resolve() for part in named))
        return cls(None if is_local(address) else (working_folder.resolve(),))

    @property
    def confined(self) -> bool:
        return self.roots is not None

    @property
    def refusal(self) -> str:
        """The one answer to every path outside the roots: it names neither the path nor its kind."""
        roots = ", ".join(str(root) for root in self.roots or ())
        return f"that path is not readable here: this server lets visitors read files only under {roots}"

    def allows(self, path: Path) -> bool:
        """Whether ``path``, with every link and ``..`` resolved, lies under a root."""
        if self.roots is None:
            return True
        resolved = path.resolve()
        return any(resolved.is_relative_to(root) for root in self.roots)

    def check(self, text: str) -> Path:
        """``text`` as a path (``~`` expanded); raises ``PathRefused`` when it lies outside the roots,
        before anything about the file is looked up."""
        path = Path(os.path.expanduser(text.strip()))
        if not self.allows(path):
            raise PathRefused(self.refusal)
        return path

    def allows_tree(self, path: Path) -> bool:
        """Whether no link in folder ``path`` leads outside the roots (a folder is read recursively)."""
        if self.roots is None:
            return True
        for folder, subfolders, files in os.walk(path):
            for name in (*subfolders, *files):
                entry = Path(folder, name)
                if entry.is_symlink() and not self.allows(entry):
                    return False
        return True

    def glob(self, pattern: str) -> list[Path]:
        """The files ``pattern`` matches (recursive ``**``) that lie under the roots, sorted.

        The folder before the first wildcard must itself lie under a root; matches that lead
        outside (through links or ``..``) are dropped, so they are indistinguishable from none."""
        pattern = os.path.expanduser(pattern.strip())
        if self.roots is not None:
            fixed = pattern[: min(pattern.index(ch) for ch in GLOB_CHARACTERS if ch in pattern)]
            if not self.allows(Path(os.path.dirname(fixed) or ".")):
                raise PathRefused(self.refusal)
        return sorted(
            Path(match)
            for match in glob.glob(pattern, recursive=True)
            if Path(match).is_file() and self.allows(Path(match))
        )
