"""The sidebar: two checkpoints, the images, the metric parameters, the device and Run.

An input that cannot be used shows its ``st.error`` (one not given yet, a hint) right
below the widget and leaves the request empty; nothing here loads a model or reads an image set (that is Run's job).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import TypeVar

import streamlit as st
import torch

from deepvit_diag import Settings
from deepvit_diag.checkpoints import list_models
from deepvit_diag.escaping import markdown_text
from deepvit_diag.images import BUNDLED_SETS
from deepvit_diag.settings import METRIC_PARAMETERS

from .compute import AnalysisRequest
from .config import AppDefaults
from .sources import (
    ImageChoice,
    InputError,
    InputMissing,
    ModelChoice,
    SavedChoice,
    images_from_bundled,
    images_from_folder,
    images_from_uploads,
    model_from_name,
    model_from_path,
    model_from_timm,
    model_from_upload,
    saved_from_path,
    saved_from_upload,
)

MODEL_SOURCES = {
    "name": "Preset or weight store",
    "timm": "timm model name",
    "path": "File on the server",
    "upload": "Upload a file",
}
IMAGE_SOURCES = {
    "default": "Set named by the model cards",
    "bundled": "Bundled set",
    "folder": "Folder, file or glob on the server",
    "upload": "Upload images",
}
T = TypeVar("T")
# Short: the select box shows "deepvit32 (demo weights)" whole in the sidebar; the caption below says more.
WEIGHT_WORDS = {"bundled": "demo weights", "store": "weight store", "none": "no weights yet"}


SAVED_SOURCES = {"path": "Folder on the server", "upload": "Upload a zip of one"}


@dataclass
class SidebarInput:
    request: AnalysisRequest | None  # None while an input is missing or has an error
    run_clicked: bool
    images: ImageChoice | None  # also what a sweep reads; None while the input has an error
    settings: Settings  # also what a sweep runs with
    opened: SavedChoice | None = None  # a saved output the user has just opened


def render_sidebar(defaults: AppDefaults) -> SidebarInput:
    opened = _saved_input(defaults)
    st.header("Checkpoints")
    model_a = _checked(lambda: _model_input("a", defaults.checkpoint_a, defaults.max_checkpoint_mb))
    model_b = _checked(lambda: _model_input("b", defaults.checkpoint_b, defaults.max_checkpoint_mb))
    st.header("Images")
    images = _checked(lambda: _image_input(defaults))
    num_images = st.number_input(
        "Number of images",
        min_value=1,
        max_value=defaults.max_images,
        value=min(defaults.num_images, defaults.max_images),
        step=16,
        key="num_images",
        help="The first N usable images of the source are analysed.",
    )
    st.header("Metric parameters")
    settings = Settings(num_images=int(num_images), **_setting_inputs())
    run_clicked = st.button("Run analysis", type="primary", key="run", width="stretch")
    request = None if None in (model_a, model_b, images) else AnalysisRequest(model_a, model_b, images, settings)
    return SidebarInput(request, run_clicked, images, settings, opened)


def _saved_input(defaults: AppDefaults) -> SavedChoice | None:
    """A saved output folder, or a zip of one, when **Open** is pressed (its error shown here if it cannot be)."""
    with st.expander("Open a saved result"):
        st.caption(
            "What `deepvit-diag analyze`, `compare` or `sweep` wrote (the --out folder: result.json or sweep.json "
            "with arrays.npz), shown at once without the checkpoints. A sweep opens in the Sweep view."
        )
        source = st.radio("From", list(SAVED_SOURCES), format_func=SAVED_SOURCES.get, key="saved_source")
        if source == "path":
            text = st.text_input("Folder on the server", key="saved_path", placeholder="deepvit-diag-report")
        else:
            uploaded = st.file_uploader(
                "Zip of an output folder",
                key="saved_upload",
                max_upload_size=_widget_megabytes(defaults.max_checkpoint_mb),
                help=f"As the Export view downloads it, up to {defaults.max_checkpoint_mb:g} MB",
            )
        if not st.button("Open", key="saved_open"):
            return None

        def chosen() -> SavedChoice:
            if source == "path":
                return saved_from_path(text)
            if uploaded is None:
                raise InputMissing("upload a zip of a saved output folder")
            return saved_from_upload(uploaded, defaults.max_checkpoint_mb)

        return _checked(chosen)


def _checked(make: Callable[[], T]) -> T | None:
    """``make()``, or None with the reason shown where the input is."""
    try:
        return make()
    except InputMissing as missing:
        st.info(markdown_text(missing))
        return None
    except InputError as err:
        st.error(markdown_text(err))
        return None


# ----------------------------------------------------------------------------- checkpoints


@st.cache_data(ttl=30, show_spinner=False)
def model_rows() -> list[dict]:
    """Presets and store entries (re-read every 30 s, so new store entries appear)."""
    return [{key: str(value) if key == "path" else value for key, value in row.items()} for row in list_models()]


def _default_source(spec: str, names: list[str]) -> str:
    if spec in names:
        return "name"
    if os.sep in spec or "/" in spec or os.path.exists(spec):
        return "path"
    return "timm"


def _model_input(side: str, default_spec: str, max_mb: float) -> ModelChoice:
    rows = {row["name"]: row for row in model_rows()}
    default_source = _default_source(default_spec, list(rows))
    # The default spec fills the input of its own kind only.
    default_text = {default_source: default_spec}
    st.subheader(f"Checkpoint {side.upper()}")
    sources = list(MODEL_SOURCES)
    source = st.selectbox(
        "Source", sources, index=sources.index(default_source), format_func=MODEL_SOURCES.get, key=f"{side}_source"
    )
    if source == "name":
        names = list(rows)
        name = st.selectbox(
            "Model",
            names,
            index=names.index(default_spec) if default_spec in rows else 0,
            key=f"{side}_name",
            format_func=lambda n: f"{n} ({WEIGHT_WORDS.get(rows[n]['weights'], rows[n]['weights'])})",
        )
        st.caption(markdown_text(rows[name]["description"]))
        return model_from_name(name)
    if source == "timm":
        text = st.text_input(
            "timm model name",
            value=default_text.get("timm", ""),
            placeholder="vit_tiny_patch16_224",
            key=f"{side}_timm",
            help="Pretrained weights are downloaded by timm (needs network access on the server).",
        )
        return model_from_timm(text)
    if source == "path":
        text = st.text_input(
            "Path on the server",
            value=default_text.get("path", ""),
            placeholder="/data/checkpoints/deepvit32.pth.tar",
            key=f"{side}_path",
            help="Read only: the app never writes there.",
        )
        return model_from_path(text, _arch_input(side))
    uploaded = st.file_uploader(
        "Checkpoint file",
        key=f"{side}_upload",
        max_upload_size=_widget_megabytes(max_mb),
        help=f".pth, .pth.tar, .pt, .bin or .safetensors, up to {max_mb:g} MB",
    )
    arch = _arch_input(side)
    if uploaded is None:
        raise InputMissing(f"upload a checkpoint file for {side.upper()}")
    return model_from_upload(uploaded, arch, max_mb)


def _widget_megabytes(max_mb: float) -> int:
    """The uploader's own limit (whole MB, at least 1); the exact limit is checked on upload."""
    return max(1, math.ceil(max_mb))


def _arch_input(side: str) -> str | None:
    text = st.text_input(
        "Architecture (only if the weights cannot say)",
        key=f"{side}_arch",
        placeholder="e.g. deepvit32",
        help="A preset, official DeepViT or timm model name; leave empty to infer it from the weights.",
    )
    return text.strip() or None


# ----------------------------------------------------------------------------- images


def _image_input(defaults: AppDefaults) -> ImageChoice:
    sources = list(IMAGE_SOURCES)
    default = "default" if not defaults.images else "bundled" if defaults.images in BUNDLED_SETS else "folder"
    source = st.selectbox(
        "Source", sources, index=sources.index(default), format_func=IMAGE_SOURCES.get, key="images_source"
    )
    if source == "default":
        st.caption("The bundled set both model cards name (digits-clutter-test for the demo pair), else the photos.")
        return ImageChoice(None)
    if source == "bundled":
        names = list(BUNDLED_SETS)
        name = st.selectbox(
            "Set", names, index=names.index(defaults.images) if defaults.images in names else 0, key="images_bundled"
        )
        st.caption(BUNDLED_SETS[name])
        return images_from_bundled(name)
    if source == "folder":
        text = st.text_input(
            "Folder, image file or glob",
            value=defaults.images if default == "folder" else "",
            placeholder="/data/imagenet/val",
            key="images_path",
            help="Read only: the app never writes there.",
        )
        return images_from_folder(text)
    files = st.file_uploader(
        "Image files",
        accept_multiple_files=True,
        key="images_upload",
        max_upload_size=_widget_megabytes(defaults.max_image_mb),
        help=f"PNG, JPEG, BMP, GIF, TIFF or WebP, up to {defaults.max_image_mb:g} MB each",
    )
    if not files:
        raise InputMissing("upload at least one image")
    choice, errors = images_from_uploads(files, defaults.max_image_mb)
    for error in errors:
        st.error(markdown_text(error))  # one error per bad upload, and no other
    if choice is None:
        raise InputMissing("upload at least one image that can be decoded")
    return choice


# ----------------------------------------------------------------------------- parameters


_FIELDS = {spec.name: spec for spec in fields(Settings)}
_HELP = {name: spec.metadata["help"][:1].upper() + spec.metadata["help"][1:] + "." for name, spec in _FIELDS.items()}
# The settings the sidebar offers (the others keep the library's defaults), with the step
# of each slider and the largest k worth offering.
_SLIDER_STEPS = {"tau": 0.05, "rho": 0.01}
_LARGEST_K = 16
_CHOICE_WORDS = {"post": "post-Θ (multiply V)", "pre": "pre-Θ (softmax)"}


def _setting_inputs() -> dict:
    """k, tau, rho, attention vectors, map kind and device: one widget per ``Settings``
    field, with the field's label, help, allowed values and default."""
    values = {}
    for name in METRIC_PARAMETERS:
        meta, default = _FIELDS[name].metadata, _FIELDS[name].default
        label = meta["label"][:1].upper() + meta["label"][1:]
        if meta["minimum"] is not None:
            values[name] = int(
                st.number_input(
                    label, min_value=meta["minimum"], max_value=_LARGEST_K, value=default, key=name, help=_HELP[name]
                )
            )
        elif meta["interval"] is not None:
            low, high = meta["interval"]
            values[name] = float(st.slider(label, low, high, default, _SLIDER_STEPS[name], key=name, help=_HELP[name]))
        else:
            choices = list(meta["choices"])
            values[name] = st.radio(
                label,
                choices,
                index=choices.index(default),
                horizontal=True,
                key=name,
                help=_HELP[name],
                format_func=lambda choice: _CHOICE_WORDS.get(choice, choice),
            )
    devices = ["auto", "cpu", *(f"cuda:{index}" for index in range(torch.cuda.device_count()))]
    values["device"] = st.selectbox("Device", devices, key="device", help=_HELP["device"])
    return values
