"""Hostile text (labels, file names, model cards) rendered through every output as data: report.html,
sweep.html, the terminal, ``deepvit-diag models``, the app (AppTest) and a headless Chromium that must see
no request leave the page."""

from __future__ import annotations

import io
import re

import pytest
from rich.console import Console
from test_cli import run
from test_report import CHROMIUM, comparison, render_in_chromium, synthetic  # noqa: F401  (a fixture)

from deepvit_diag.catalogue import SWEEP_FIGURES
from deepvit_diag.checkpoints.native import save_native
from deepvit_diag.escaping import (
    REPLACEMENT,
    html_text,
    markdown_text,
    plotly_label,
    rich_text,
    terminal_console,
    terminal_text,
)
from deepvit_diag.models import build_model
from deepvit_diag.report import build_report, build_sweep_report, report_figures
from deepvit_diag.summary import comparison_findings, print_summary, print_sweep, sweep_findings
from deepvit_diag.sweeps import SweepEntry, SweepResult

EVIL = "evil.example"
# What a label, a file name or a card may hold: HTML and Plotly tags, Markdown links and images,
# Streamlit directives and math, Rich markup, terminal escapes (an OSC 8 hyperlink, clear screen).
HOSTILE = [
    f'<a href="http://{EVIL}/a">link</a>',
    f"<img src=http://{EVIL}/i.png>",
    "</script><script>alert(1)</script>",
    f"[text](http://{EVIL}/m)",
    f"![img](http://{EVIL}/m.png)",
    ":red[red] $x^2$",
    "[/bold]",
    f"[link=http://{EVIL}/r]x[/link]",
    f"\x1b]8;;http://{EVIL}/t\x07x\x1b]8;;\x07",
    "\x1b[2J\x1b[H",
    "name\udcff",  # a file name that was not UTF-8
]
LABELS = [HOSTILE[0] + " (A)", HOSTILE[1] + HOSTILE[3] + HOSTILE[4] + " (B)"]


def test_terminal_text_shows_control_characters_and_undecodable_bytes():
    assert terminal_text("a\x1b[2Jb\nc\x9b\x7f") == "a\\x1b[2Jb\\nc\\x9b\\x7f"
    assert terminal_text("name\udcff") == "name" + REPLACEMENT
    assert terminal_text("plain é ü") == "plain é ü"


def test_markdown_text_leaves_no_markdown_syntax():
    escaped = markdown_text(f"![i](http://{EVIL}) [t](u) *e* _e_ `c` :red[r] $m$ <b> www.{EVIL} me@{EVIL}")
    # Every mark Markdown reads is preceded by a backslash: nothing is read as syntax or as a link.
    assert not re.search(r"(?<!\\)[\[\]*_`:$<>@]|www\.", escaped)
    assert markdown_text("a\nb") == "a b"
    assert markdown_text("cat.png: it holds text, not 'weights'") == "cat.png: it holds text, not 'weights'"


def test_html_and_plotly_text_have_no_tags():
    for text in HOSTILE:
        assert "<" not in html_text(text) and "<" not in plotly_label(text)
    assert plotly_label("a & b") == "a &amp; b"


def test_rich_text_is_shown_as_written():
    out = io.StringIO()
    Console(file=out, width=200).print(rich_text("[/bold] [link=http://x]y[/link]"))
    assert out.getvalue().strip() == "[/bold] [link=http://x]y[/link]"


def _no_live_markup(page: str) -> None:
    assert not re.search(rf"<a\s[^>]*{EVIL}|<img\s[^>]*{EVIL}", page)
    assert "<script>alert(1)" not in page and "</script><script>" not in page
    assert "&lt;a href" in page  # the label is there, as text


def test_report_html_shows_hostile_labels_as_text(comparison):  # noqa: F811
    page = build_report(comparison, LABELS)
    _no_live_markup(page)
    for item in report_figures(comparison, LABELS):  # Plotly reads its label markup from these
        figure = item.figure.to_plotly_json()
        assert "<a href" not in str(figure) and "<img" not in str(figure)


def _hostile_sweep() -> SweepResult:
    entries = [
        SweepEntry.of(synthetic([0.2, 0.95, 0.97], 0.5), HOSTILE[0], group=HOSTILE[1], step=1),
        SweepEntry.of(synthetic([0.2, 0.3, 0.97], 0.5), HOSTILE[2] + HOSTILE[3], group=HOSTILE[1], step=2),
    ]
    first = synthetic([0.1], 0.5)
    return SweepResult(entries, "epoch", first.settings, {**first.images, "description": HOSTILE[4]})


def test_sweep_html_shows_hostile_labels_as_text():
    page = build_sweep_report(_hostile_sweep())
    _no_live_markup(page)


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium")
def test_no_request_leaves_the_hostile_pages(comparison, tmp_path):  # noqa: F811
    report = tmp_path / "report.html"
    report.write_text(build_report(comparison, LABELS), encoding="utf-8")
    rendered, problems = render_in_chromium(report, len(report_figures(comparison, LABELS)), str(tmp_path / "r.png"))
    assert problems == []  # no request (an <img> would make one), no script error
    sweep_page = tmp_path / "sweep.html"
    sweep_page.write_text(build_sweep_report(_hostile_sweep()), encoding="utf-8")
    _, problems = render_in_chromium(sweep_page, len(SWEEP_FIGURES), str(tmp_path / "s.png"))
    assert problems == []


def _terminal_output(draw) -> str:
    out = io.StringIO()
    draw(terminal_console(file=out, width=160, force_terminal=True, color_system="standard"))
    return out.getvalue()


def _assert_terminal_safe(text: str) -> None:
    # Rich's own styles are CSI "m" sequences; nothing else may start with ESC, and no BEL or OSC.
    assert not re.search(r"\x1b(?!\[[0-9;]*m)", text), repr(text)
    assert "\x07" not in text and "\udcff" not in text


def test_terminal_summary_and_sweep_show_hostile_text(comparison):  # noqa: F811
    results = {HOSTILE[6] + HOSTILE[8]: comparison.a, HOSTILE[7] + HOSTILE[9]: comparison.b}
    findings = comparison_findings(*results, comparison)
    text = _terminal_output(lambda console: print_summary(console, results, findings, out=HOSTILE[10]))
    _assert_terminal_safe(text)
    assert "[/bold]" in text and "\\x1b]8;;" in text
    sweep = _hostile_sweep()
    _assert_terminal_safe(_terminal_output(lambda console: print_sweep(console, sweep, sweep_findings(sweep))))


def test_models_lists_a_hostile_card_as_text(tmp_path, weight_store):
    weight_store.store.mkdir(parents=True)
    card = {"dataset": HOSTILE[6] + HOSTILE[7] + HOSTILE[8], "imported_from": HOSTILE[9]}
    save_native(
        build_model({"family": "vit", "kwargs": dict(depth=1, embed_dim=16, num_heads=2)}),
        weight_store.store / "evil.safetensors",
        card=card,
    )
    status, stdout, stderr = run(["models"])
    assert status == 0, stderr
    assert "[/bold]" in stdout and "[link=" in stdout
    _assert_terminal_safe(stdout)


def test_error_lines_show_control_characters(tmp_path):
    missing = tmp_path / "a\x1b[2Jb"
    status, _, stderr = run(["analyze", "--ckpt", str(missing), "--out", str(tmp_path / "out")])
    assert status == 1 and len(stderr.strip().splitlines()) == 1
    assert "\x1b" not in stderr and "a\\x1b[2Jb" in stderr


@pytest.mark.slow
def test_app_shows_a_hostile_file_name_as_text(tmp_path, monkeypatch):
    from test_app import VIEWS, _clear_caches, _open, _show, app_environment, write_app_files

    files = write_app_files(tmp_path)
    hostile = files / "![i](y.png) [t](x) <b>b :red[r] $m$.safetensors"
    (files / "vit.safetensors").rename(hostile)
    for name, value in {**app_environment(files), "DEEPVIT_DIAG_APP_CKPT_A": str(hostile)}.items():
        monkeypatch.setenv(name, value)
    _clear_caches()
    at = _open()
    named_in = []
    for view in VIEWS[:-1]:
        at = _show(at, view)
        assert not at.exception, [e.value for e in at.exception]
        shown = [
            str(element.value)
            for kind in ("markdown", "caption", "subheader", "info", "warning", "error")
            for element in at.get(kind)
        ]
        shown += [str(table.value.to_dict()) for table in at.table]
        # The name is there, but no "](" or "[" that is not escaped, and no raw tag.
        named_in += [view] if any("y.png" in text for text in shown) else []
        for text in shown:
            assert not re.search(r"(?<!\\)\]\(|(?<!\\)<b>", text), text
    assert "Overview" in named_in and "Similarity ratio" in named_in
    _clear_caches()
