"""Starting the Streamlit app (``deepvit-diag app``): where its script is, and the server's command line.

The app ships in the wheel as ``deepvit_diag/_streamlit/app`` (see setup.py); in a clone it
is the project's ``app/``. Its settings travel to it as the environment variables that
``app/config.py`` and ``app/server_paths.py`` read, the server's own as Streamlit options on
the command line (they win over any ``.streamlit/config.toml``).
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from .errors import DiagError

PACKAGE = Path(__file__).resolve().parent
APP_SCRIPTS = (PACKAGE / "_streamlit" / "app" / "main.py", PACKAGE.parent / "app" / "main.py")
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8501
# Addresses reachable from this machine only; with no address Streamlit binds every interface.
LOCAL_ADDRESSES = frozenset({"127.0.0.1", "localhost", "::1"})
# Large enough for a ViT-B checkpoint; the app's own default too (app/config.py).
DEFAULT_MAX_UPLOAD_MB = 1024


def is_local(address: str | None) -> bool:
    """Whether a server bound to ``address`` can be reached from this machine only."""
    return address is not None and address.strip() in LOCAL_ADDRESSES


@dataclass(frozen=True)
class ServerOptions:
    """What ``deepvit-diag app`` was asked for; None: the app's own default."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    roots: tuple[Path, ...] = ()
    max_images: int | None = None
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB
    max_results: int | None = None
    base_url_path: str | None = None


def app_script() -> Path:
    """The app's ``main.py``: the installed copy, else the clone's."""
    for script in APP_SCRIPTS:
        if script.is_file():
            return script
    raise DiagError(f"the app is not installed: none of {', '.join(str(script) for script in APP_SCRIPTS)} exists")


def app_environment(options: ServerOptions) -> dict[str, str]:
    """The app's settings as its environment variables (only those given)."""
    for root in options.roots:
        if not root.is_dir():
            raise DiagError(f"--root {root} is not a folder")
    values = {
        "DEEPVIT_DIAG_APP_ROOTS": os.pathsep.join(str(root.resolve()) for root in options.roots),
        "DEEPVIT_DIAG_APP_MAX_IMAGES": options.max_images,
        "DEEPVIT_DIAG_APP_MAX_CHECKPOINT_MB": options.max_upload_mb,
        "DEEPVIT_DIAG_APP_MAX_RESULTS": options.max_results,
    }
    return {name: str(value) for name, value in values.items() if value not in (None, "")}


def streamlit_command(options: ServerOptions, script: Path) -> list[str]:
    """``python -m streamlit run`` with the server's options: the address and port, the upload
    limit, no usage statistics, and no browser opened by a server meant for others."""
    command = [sys.executable, "-m", "streamlit", "run", str(script)]
    settings = {
        "server.address": options.host,
        "server.port": options.port,
        "browser.gatherUsageStats": "false",
        "client.toolbarMode": "minimal",
        # Streamlit refuses larger files before the app sees them; the app checks the exact limit.
        "server.maxUploadSize": max(1, math.ceil(options.max_upload_mb)),
    }
    if not is_local(options.host):
        settings["server.headless"] = "true"
    if options.base_url_path:
        settings["server.baseUrlPath"] = options.base_url_path
    return [*command, *(f"--{name}={value}" for name, value in settings.items())]
