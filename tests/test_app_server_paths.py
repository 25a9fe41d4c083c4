"""Which server paths a visitor may name (``app/server_paths.py``), alone and in the running app."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import tomllib
from streamlit.testing.v1 import AppTest
from test_app import APP, TIMEOUT, app_environment, write_app_files

from app.server_paths import ROOTS_VARIABLE, PathRefused, ServerPaths
from deepvit_diag.serve import is_local

PROJECT = Path(__file__).resolve().parent.parent


def test_shipped_config_binds_to_this_machine_only():
    config = tomllib.loads((PROJECT / ".streamlit" / "config.toml").read_text())
    assert is_local(config["server"]["address"])


def test_a_local_server_reads_anything_a_served_one_only_the_working_folder_or_the_named_roots(tmp_path):
    assert ServerPaths.from_settings("127.0.0.1", None, tmp_path).roots is None
    assert ServerPaths.from_settings("0.0.0.0", None, tmp_path).roots == (tmp_path.resolve(),)
    assert ServerPaths.from_settings(None, "", tmp_path).roots == (tmp_path.resolve(),)
    named = f"{tmp_path / 'a'}{os.pathsep}{tmp_path / 'b'}{os.pathsep}"
    expected = (tmp_path.resolve() / "a", tmp_path.resolve() / "b")
    assert ServerPaths.from_settings("0.0.0.0", named, tmp_path).roots == expected
    assert ServerPaths.from_settings("127.0.0.1", named, tmp_path).roots == expected  # named roots confine a local one


@pytest.fixture
def layout(tmp_path):
    """A readable root with a file, a folder and links out of it, and a private folder beside it."""
    root, private = tmp_path / "root", tmp_path / "private"
    (root / "images").mkdir(parents=True)
    private.mkdir()
    (root / "model.pth").write_bytes(b"x")
    (root / "images" / "a.png").write_bytes(b"x")
    (private / "secret.pth").write_bytes(b"x")
    (private / "b.png").write_bytes(b"x")
    (root / "link.pth").symlink_to(private / "secret.pth")
    (root / "dangling.pth").symlink_to(private / "missing.pth")
    (root / "images" / "escape.png").symlink_to(private / "b.png")
    (root / "clean").mkdir()
    (root / "clean" / "c.png").write_bytes(b"x")
    (root / "leaky").mkdir()
    (root / "leaky" / "out").symlink_to(private, target_is_directory=True)
    return root, private


def test_paths_inside_the_roots_are_allowed(layout):
    root, _ = layout
    paths = ServerPaths((root.resolve(),))
    assert paths.check(str(root / "model.pth")) == root / "model.pth"
    assert paths.check(str(root / "images" / ".." / "model.pth")).resolve() == (root / "model.pth").resolve()
    assert paths.check(str(root / "not-there.pth")) == root / "not-there.pth"  # inside: missing is an honest answer
    assert paths.allows_tree(root / "clean")
    assert paths.glob(str(root / "images" / "*.png")) == [root / "images" / "a.png"]


def test_every_way_out_of_the_roots_is_refused_with_one_message_whether_the_file_exists_or_not(layout):
    root, private = layout
    paths = ServerPaths((root.resolve(),))
    outside = [
        str(private / "secret.pth"),  # absolute, exists
        str(private / "missing.pth"),  # absolute, does not exist
        str(root / ".." / "private" / "secret.pth"),  # .., exists
        str(root / ".." / "private" / "missing.pth"),  # .., does not exist
        str(root / "link.pth"),  # a link to a file that exists
        str(root / "dangling.pth"),  # a link to one that does not
        "/",
    ]
    messages = set()
    for text in outside:
        with pytest.raises(PathRefused) as refused:
            paths.check(text)
        messages.add(str(refused.value))
    for pattern in (str(private / "*.pth"), str(private / "*.nothing"), str(root / ".." / "*" / "*.pth")):
        with pytest.raises(PathRefused) as refused:
            paths.glob(pattern)
        messages.add(str(refused.value))
    assert messages == {paths.refusal}
    assert "secret" not in paths.refusal and str(private) not in paths.refusal


def test_glob_and_folder_never_yield_a_file_through_a_link_out_of_the_roots(layout):
    root, _ = layout
    paths = ServerPaths((root.resolve(),))
    assert paths.glob(str(root / "**" / "*.png")) == [root / "clean" / "c.png", root / "images" / "a.png"]
    assert paths.glob(str(root / "images" / "*" / ".." / ".." / ".." / "private" / "*")) == []
    assert not paths.allows_tree(root / "images")  # holds escape.png
    assert not paths.allows_tree(root / "leaky")  # holds a link to a folder outside
    assert ServerPaths(None).allows_tree(root / "leaky")  # the local default keeps today's freedom


# ----------------------------------------------------------------------------- in the app


@pytest.fixture
def hosted_app(tmp_path, monkeypatch):
    """The app confined to a root holding the tiny files, with a private folder beside it."""
    root = (tmp_path / "root").resolve()
    root.mkdir()
    write_app_files(root)
    private = tmp_path / "private"
    private.mkdir()
    (private / "secret.safetensors").write_bytes((root / "vit.safetensors").read_bytes())
    (private / "photo.png").write_bytes((root / "images" / "0.png").read_bytes())
    (root / "images-with-link").mkdir()
    (root / "images-with-link" / "photo.png").symlink_to(private / "photo.png")
    for name, value in app_environment(root).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv(ROOTS_VARIABLE, str(root))
    return root, private


def _errors(at: AppTest) -> list[str]:
    return [error.value for error in at.error]


def test_hosted_app_refuses_server_paths_outside_its_roots_alike(hosted_app):
    root, private = hosted_app
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    assert not at.exception and not at.error  # the defaults lie inside the root
    refusal = ServerPaths((root,)).refusal
    at.selectbox(key="a_source").set_value("path").run()
    for text in (str(private / "secret.safetensors"), str(private / "missing.safetensors"), "~/x.safetensors"):
        at.text_input(key="a_path").set_value(text).run()
        assert _errors(at) == [refusal], text
    at.selectbox(key="a_source").set_value("timm").run()
    at.text_input(key="a_timm").set_value(str(private / "secret.safetensors")).run()
    assert _errors(at) == [refusal]  # a "timm name" that is a path is a path
    at.text_input(key="a_timm").set_value(str(root / "vit.safetensors")).run()
    assert _errors(at) == []
    at.selectbox(key="images_source").set_value("folder").run()
    for text in (str(private), f"{private}/*.png", f"{root}/../private/*.png", str(root / "images-with-link")):
        at.text_input(key="images_path").set_value(text).run()
        assert _errors(at) == [refusal], text
    at.text_input(key="images_path").set_value(f"{root}/images/*.png").run()
    assert _errors(at) == []
    assert not any("secret" in message or "private" in message for message in _errors(at))
