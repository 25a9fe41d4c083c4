"""Several visitors of one app server (``app/compute.py``, ``app/sources.py``): what one session
sees of another's work, and analyses started together."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

# The fixtures that open the app on tiny checkpoints with empty caches.
from test_app import APP, TIMEOUT, _assert_fine, files, tiny_app  # noqa: F401

import app.compute
from deepvit_diag import Settings, compare

pytestmark = pytest.mark.usefixtures("tiny_app")


def _open() -> AppTest:
    return AppTest.from_file(APP, default_timeout=TIMEOUT)


def _upload_pair(at: AppTest, folder: Path) -> AppTest:
    """Checkpoint A uploaded (the same bytes in every session), then analysed."""
    at.selectbox(key="a_source").set_value("upload").run()
    at.file_uploader(key="a_upload").upload("mine.safetensors", (folder / "vit.safetensors").read_bytes())
    at.button(key="run").click().run()
    _assert_fine(at)
    return at


def test_a_session_never_sees_another_sessions_uploads_or_results(monkeypatch):
    folder = Path(os.environ["DEEPVIT_DIAG_APP_CKPT_B"]).parent
    analysed = []
    monkeypatch.setattr(app.compute, "compare", lambda *args, **kwargs: analysed.append(1) or compare(*args, **kwargs))
    first, second = _upload_pair(_open().run(), folder), _upload_pair(_open().run(), folder)
    ours, theirs = first.session_state["shown_analysis"], second.session_state["shown_analysis"]
    # The same bytes uploaded twice: two files, two analyses, neither served from the other session.
    assert ours.request.a.spec != theirs.request.a.spec
    assert first.session_state["session_key"] in ours.request.a.spec
    assert second.session_state["session_key"] in theirs.request.a.spec
    assert ours.key != theirs.key and ours is not theirs
    assert len(analysed) == 4  # each session: its first (server paths) analysis and its upload's
    assert first.session_state["analyses"].get(theirs.key) is None
    assert second.session_state["analyses"].get(ours.key) is None
    assert app.compute.result_store().get(ours.key) is None  # nothing of a visitor's in the shared store
    assert all(first.session_state["session_key"] not in spec for spec in _shared_specs())


def _shared_specs() -> list[str]:
    store = app.compute.result_store()
    return [analysis.request.a.spec for analysis in store._entries.values()]


def test_two_sessions_starting_together_both_finish_the_second_after_waiting():
    queue = app.compute.device_queue()
    device = app.compute.queue_name(Settings())
    sessions = [_open(), _open()]
    threads = [threading.Thread(target=session.run) for session in sessions]
    with queue.turn(device):  # a third job holds the device while both sessions arrive
        for thread in threads:
            thread.start()
        deadline = threading.Event()
        for _ in range(int(TIMEOUT / 0.1)):
            if queue.ahead(device) == 3:
                break
            deadline.wait(0.1)
        assert queue.ahead(device) == 3, "both sessions should be waiting in the queue"
    for thread in threads:
        thread.join(TIMEOUT)
    waited = []
    for session in sessions:
        _assert_fine(session)
        assert session.session_state["shown_analysis"] is not None
        captions = [caption.value for caption in session.caption if "waited" in caption.value]
        assert len(captions) == 1, captions
        waited.append(captions[0])
    # Arrived behind the held job, and one of them also behind the other session.
    assert sorted("2 jobs ahead" in caption for caption in waited) == [False, True]
    assert all("in the queue" in caption for caption in waited)
