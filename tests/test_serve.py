"""``deepvit-diag app`` (``deepvit_diag/serve.py`` and its command): the server's command line, the app's
settings, the help, a real server bound to this machine only, and the app started from a wheel."""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from test_app import app_environment as tiny_app_environment
from test_app import write_app_files

from deepvit_diag.cli import main
from deepvit_diag.errors import DiagError
from deepvit_diag.serve import (
    APP_SCRIPTS,
    DEFAULT_MAX_UPLOAD_MB,
    ServerOptions,
    app_environment,
    app_script,
    is_local,
    streamlit_command,
)

PROJECT = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 180  # the server imports torch and timm on a shared 2-core machine


@pytest.mark.parametrize(
    ("address", "local"),
    [("127.0.0.1", True), ("localhost", True), ("::1", True), ("0.0.0.0", False), ("10.1.2.3", False), (None, False)],
)
def test_only_loopback_addresses_are_local(address, local):
    # No address: Streamlit binds every interface.
    assert is_local(address) is local


def _options(command: list[str]) -> dict[str, str]:
    return dict(part[2:].split("=", 1) for part in command if part.startswith("--"))


def test_server_listens_on_this_machine_only_unless_told_otherwise():
    script = Path("/x/app/main.py")
    command = streamlit_command(ServerOptions(), script)
    assert command[:5] == [sys.executable, "-m", "streamlit", "run", str(script)]
    options = _options(command)
    assert options["server.address"] == "127.0.0.1" and options["server.port"] == "8501"
    assert options["browser.gatherUsageStats"] == "false"
    assert options["server.maxUploadSize"] == str(DEFAULT_MAX_UPLOAD_MB)
    assert "server.headless" not in options  # a local server opens the browser
    hosted = _options(streamlit_command(ServerOptions(host="0.0.0.0", port=9000, max_upload_mb=2.5), script))
    assert hosted["server.address"] == "0.0.0.0" and hosted["server.port"] == "9000"
    assert hosted["server.headless"] == "true"
    assert hosted["server.maxUploadSize"] == str(math.ceil(2.5))  # Streamlit's limit is whole MB
    assert _options(streamlit_command(ServerOptions(base_url_path="diag"), script))["server.baseUrlPath"] == "diag"


def test_app_settings_travel_as_its_environment_variables(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert app_environment(ServerOptions()) == {"DEEPVIT_DIAG_APP_MAX_CHECKPOINT_MB": str(DEFAULT_MAX_UPLOAD_MB)}
    environment = app_environment(
        ServerOptions(roots=(tmp_path / "a", tmp_path / "b" / ".." / "b"), max_images=50, max_results=2)
    )
    assert environment["DEEPVIT_DIAG_APP_ROOTS"] == os.pathsep.join(str((tmp_path / name).resolve()) for name in "ab")
    assert environment["DEEPVIT_DIAG_APP_MAX_IMAGES"] == "50"
    assert environment["DEEPVIT_DIAG_APP_MAX_RESULTS"] == "2"
    with pytest.raises(DiagError, match="is not a folder"):
        app_environment(ServerOptions(roots=(tmp_path / "missing",)))


def test_the_clones_app_is_found():
    assert app_script() in APP_SCRIPTS and app_script().is_file()


def test_help_says_how_to_serve_a_group_and_what_that_exposes(capsys):
    with pytest.raises(SystemExit) as done:
        main(["app", "--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for fragment in (
        "--host",
        "default 127.0.0.1: this machine only",
        "--root DIR",
        "reverse proxy",
        "no login",
        "upload checkpoints and images",
        "one at a time per device",
        "docs/serving.md",
    ):
        assert fragment in text, fragment


@pytest.mark.parametrize(
    ("arguments", "fragment"),
    [(["--port", "0"], "must be at least 1"), (["--port", "70000"], "at most 65535"), (["--max-images", "0"], "least")],
)
def test_bad_options_are_usage_errors(arguments, fragment, capsys):
    with pytest.raises(SystemExit) as done:
        main(["app", *arguments])
    assert done.value.code == 2 and fragment in capsys.readouterr().err


def test_a_missing_root_is_one_error_line(tmp_path, capsys):
    assert main(["app", "--root", str(tmp_path / "missing")]) == 1
    assert capsys.readouterr().err == f"error: --root {tmp_path / 'missing'} is not a folder\n"


# ----------------------------------------------------------------------------- real servers


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _outward_address() -> str | None:
    """This machine's address on its network, if it has one (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))
        except OSError:
            return None
        address = probe.getsockname()[0]
    return None if address.startswith("127.") else address


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
            return response.read().strip() == b"ok"
    except OSError:
        return False


@pytest.mark.slow
def test_app_command_serves_on_this_machine_only(tmp_path):
    port = _free_port()
    log = tmp_path / "server.log"
    env = {key: value for key, value in os.environ.items() if not key.startswith("DEEPVIT_DIAG_APP_")}
    command = [sys.executable, "-m", "deepvit_diag", "app", "--port", str(port)]
    with open(log, "w") as output:
        # Not the project root: the shipped .streamlit/config.toml must not be what binds it.
        server = subprocess.Popen(
            [*command, "--max-upload-mb", "5"], cwd=tmp_path, env=env, stdout=output, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _healthy(f"http://127.0.0.1:{port}"):
            assert server.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
        outward = _outward_address()
        if outward is not None:
            assert not _healthy(f"http://{outward}:{port}")
    finally:
        server.terminate()
        server.wait(30)


@pytest.mark.slow
def test_installed_wheel_starts_the_app(tmp_path):
    """``pip install .`` (not editable) into a fresh environment: the command, its help and the app
    itself (its pages import from the installed copy), run outside the clone."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    python = venv / "bin" / "python"
    installed = subprocess.run(
        [python, "-m", "pip", "install", "-q", "--no-deps", str(PROJECT)], capture_output=True, text=True
    )
    assert installed.returncode == 0, installed.stderr[-3000:]
    helped = subprocess.run(
        [venv / "bin" / "deepvit-diag", "app", "--help"], capture_output=True, text=True, cwd=tmp_path
    )
    assert helped.returncode == 0 and "--root DIR" in helped.stdout, helped.stderr
    check = f"""
import sys
from pathlib import Path
import deepvit_diag
from deepvit_diag.serve import app_script
from streamlit.testing.v1 import AppTest
venv = {str(venv)!r}
assert Path(deepvit_diag.__file__).is_relative_to(venv), deepvit_diag.__file__
at = AppTest.from_file(str(app_script()), default_timeout=300).run()
assert not at.exception, [e.value for e in at.exception]
assert not at.error, [e.value for e in at.error]
assert at.metric, "no analysis shown"
assert Path(sys.modules["app"].__file__).is_relative_to(venv), sys.modules["app"].__file__
print("ok")
"""
    env = {key: value for key, value in os.environ.items() if not key.startswith("DEEPVIT_DIAG_APP_")}
    env.update(tiny_app_environment(write_app_files(tmp_path)), OMP_NUM_THREADS="1")
    ran = subprocess.run([python, "-c", check], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert ran.returncode == 0 and ran.stdout.strip().endswith("ok"), ran.stderr[-3000:]
