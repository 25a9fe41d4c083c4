"""The Heads view's image picker and click-to-query, driven headlessly with ``AppTest``, and
the mapping from a Plotly selection to a patch (``app.charts.clicked_patch``)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import streamlit as st
from PIL import Image
from streamlit.testing.v1 import AppTest
from test_app import APP, TIMEOUT, _png, app_environment, write_app_files

from app.charts import clicked_patch, query_attention
from deepvit_diag.escaping import markdown_text
from deepvit_diag.figures.style import colour_scale

# A file name that Markdown would read as a link and emphasis if it were not escaped.
MARKUP_NAME = "[click](http:x)_*a*.png"


@pytest.fixture(scope="module")
def labelled_files(tmp_path_factory):
    """The tiny checkpoints, and images in class folders "1" and "3" (class indices of the
    tiny models, which name no classes), one with a name full of Markdown."""
    root = write_app_files(tmp_path_factory.mktemp("heads_files"))
    rng = np.random.default_rng(5)
    for label, name in (("1", MARKUP_NAME), ("3", "three.png"), ("1", "one.png"), ("3", "other.png")):
        folder = root / "labelled" / label
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(folder / name)
    shutil.rmtree(root / "images")
    return root


@pytest.fixture
def heads_app(labelled_files, monkeypatch):
    environment = app_environment(labelled_files)
    environment.update(DEEPVIT_DIAG_APP_IMAGES=str(labelled_files / "labelled"), DEEPVIT_DIAG_APP_NUM_IMAGES="4")
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    st.cache_data.clear()
    st.cache_resource.clear()
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    at.session_state["view"] = "Heads"
    yield at.run()
    st.cache_data.clear()
    st.cache_resource.clear()


def _picker_captions(at: AppTest) -> list[str]:
    return [caption.value for caption in at.caption if " predicts " in caption.value]


def _map_specs(at: AppTest) -> list[str]:
    return [chart.proto.spec for chart in at.get("plotly_chart") if "patch row" in chart.proto.spec]


def test_thumbnails_show_name_label_and_each_models_prediction(heads_app):
    at = heads_app
    assert not at.exception and not at.error
    analysis = at.session_state["shown_analysis"]
    examples_a, examples_b = analysis.comparison.a.examples(), analysis.comparison.b.examples()
    captions = _picker_captions(at)
    assert len(captions) == len(examples_a) == 2
    for caption, example_a, example_b in zip(captions, examples_a, examples_b):
        assert f"**{markdown_text(example_a.short_name)}**" in caption
        assert f"label {example_a.label}" in caption
        for side, example in (("A", example_a), ("B", example_b)):
            mark = " ✓" if example.correct else " ✗"
            assert f"{side} predicts {example.prediction}{mark}" in caption
    shown_names = {example.short_name for example in examples_a}
    assert MARKUP_NAME in shown_names  # the escaped name is the one drawn, never its markup
    assert any(markdown_text(MARKUP_NAME) in caption for caption in captions)
    pickers = [button for button in at.button if button.key.startswith("heads_image_")]
    assert [button.label for button in pickers] == ["Shown", "Show"]
    assert [button.help for button in pickers] == [markdown_text(example.name) for example in examples_a]  # whole


def test_uploaded_images_are_named_as_they_were_uploaded(heads_app):
    at = heads_app
    at.selectbox(key="images_source").set_value("upload").run()
    at.file_uploader(key="images_upload").set_value(
        [(name, _png(seed), "image/png") for seed, name in enumerate(["cat photo.png", "dog.png"])]
    )
    at.button(key="run").click().run()
    assert not at.exception and not at.error
    captions = _picker_captions(at)
    assert [caption.split("**")[1] for caption in captions] == ["cat photo.png", "dog.png"]
    assert [button.help for button in at.button if button.key.startswith("heads_image_")] == [
        "cat photo.png",
        "dog.png",
    ]


def test_choosing_a_thumbnail_changes_the_maps(heads_app):
    at = heads_app
    first = _map_specs(at)
    assert len(first) == 3  # A pre; B pre and post
    at.button(key="heads_image_1").click().run()
    assert not at.exception and not at.error
    assert at.session_state["heads_image"] == 1
    assert [button.label for button in at.button if button.key.startswith("heads_image_")] == ["Show", "Shown"]
    second = _map_specs(at)
    assert len(second) == 3 and all(before != after for before, after in zip(first, second))
    at.button(key="heads_image_0").click().run()
    assert _map_specs(at) == first  # the same image draws the same maps


@pytest.mark.parametrize(
    "event, patch",
    [
        ({"selection": {"points": [{"point_index": 0, "curve_number": 2}], "point_indices": [0]}}, (0, 0)),
        ({"selection": {"points": [{"point_index": 6}], "point_indices": [6]}}, (1, 2)),
        ({"selection": {"points": [{"point_index": 1}, {"point_index": 11}]}}, (2, 3)),  # the last point clicked
        ({"selection": {"points": [], "point_indices": [], "box": [], "lasso": []}}, None),  # a click unselected it
        ({"selection": {"points": [{"point_index": 12}]}}, None),  # outside the 3 x 4 grid
        ({"selection": {"points": [{"point_index": -1}]}}, None),
        ({"selection": {"points": [{"point_index": True}]}}, None),
        ({"selection": {"points": [{"point_index": "3"}]}}, None),
        ({"selection": {"points": [{"x": 1.0, "y": 2.0}]}}, None),
        ({"selection": {}}, None),
        (None, None),
        ("not a selection", None),
    ],
)
def test_a_selection_maps_to_the_patch_its_point_stands_for(event, patch):
    assert clicked_patch(event, (3, 4)) == patch


@pytest.mark.parametrize("grid, size", [((3, 4), (24, 32)), ((4, 4), (32, 32)), ((2, 5), (14, 35))])
def test_every_clickable_point_lies_in_the_patch_clicked_patch_names(grid, size):
    """The points a click selects are drawn where their patch is: point i lies inside the
    pixels of patch ``clicked_patch`` of i, and shows that patch's weight on hover."""
    grid_h, grid_w = grid
    height, width = size
    maps = np.random.default_rng(0).random((2, grid_h, grid_w)).astype(np.float32)
    fig = query_attention(np.zeros((height, width, 3), np.uint8), maps, "t", colour_scale([maps]), "w", (0, 0))
    scatters = [trace for trace in fig.data if trace.type == "scatter"]
    assert len(scatters) == 2  # one per head
    cell_h, cell_w = height / grid_h, width / grid_w
    for head, trace in enumerate(scatters):
        for index, (x, y, data) in enumerate(zip(trace.x, trace.y, trace.customdata)):
            row, column = clicked_patch({"selection": {"points": [{"point_index": index}]}}, grid)
            assert row * cell_h - 0.5 < y < (row + 1) * cell_h - 0.5  # the image spans [-0.5, size - 0.5]
            assert column * cell_w - 0.5 < x < (column + 1) * cell_w - 0.5
            assert (data[0], data[1]) == (row + 1, column + 1) and data[2] == pytest.approx(maps[head, row, column])


def test_a_plain_vit_gets_its_maps_without_theta_words(heads_app):
    """A (a plain ViT) has one kind of map: titled as attention, with no note about Re-attention;
    B (a DeepViT) keeps its pre- and post-Θ maps."""
    import json

    titles = [json.loads(spec)["layout"]["title"]["text"] for spec in _map_specs(heads_app)]
    assert titles[0].endswith("attention (softmax)") and "Θ" not in titles[0]
    assert titles[1].endswith("pre-Θ (softmax)") and titles[2].endswith("post-Θ")
    assert not [info.value for info in heads_app.info if "Re-attention" in info.value or "mixes no heads" in info.value]
