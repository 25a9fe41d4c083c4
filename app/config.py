"""What the app opens with and the limits it enforces.

Environment variables override the defaults, so tests and deployments can point the app
at other checkpoints or images without touching code:

=====================================  =======================================================
``DEEPVIT_DIAG_APP_CKPT_A`` / ``_B``   checkpoint A / B: preset, store entry, timm name or path
``DEEPVIT_DIAG_APP_IMAGES``            bundled set name or folder; empty: the set the model
                                       cards name (``default_image_set``)
``DEEPVIT_DIAG_APP_NUM_IMAGES``        images analysed when the app opens
``DEEPVIT_DIAG_APP_MAX_CHECKPOINT_MB`` largest checkpoint upload accepted
``DEEPVIT_DIAG_APP_MAX_IMAGE_MB``      largest single image upload accepted
``DEEPVIT_DIAG_APP_MAX_IMAGES``        most images one analysis may read
``DEEPVIT_DIAG_APP_MAX_RESULTS``       analyses (and sweeps) each session keeps of its own
``DEEPVIT_DIAG_APP_ROOTS``             folders visitors may read (see ``app/server_paths.py``)
``DEEPVIT_DIAG_APP_SAVED``             a saved comparison the app opens on first visit when it
                                       is what the defaults would compute (default
                                       ``deepvit-diag-report``: where ``deepvit-diag compare``
                                       writes, in the folder the server runs in); empty: never
=====================================  =======================================================
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from deepvit_diag.serve import DEFAULT_MAX_UPLOAD_MB

# The bundled demo pair: 32-block ViT and DeepViT trained on scikit-learn digits on cluttered canvases.
DEMO_CHECKPOINTS = ("vit32", "deepvit32")
# What the CLI analyses by default: every image of the bundled held-out set (360 digits), so
# that the app's first screen shows the README's numbers for the demo pair.
DEFAULT_NUM_IMAGES = 360
# Must not exceed server.maxUploadSize in .streamlit/config.toml (Streamlit refuses larger files first).
DEFAULT_MAX_CHECKPOINT_MB = DEFAULT_MAX_UPLOAD_MB
DEFAULT_MAX_IMAGE_MB = 20
DEFAULT_MAX_IMAGES = 10_000
DEFAULT_MAX_RESULTS = 4
# Where `deepvit-diag compare` writes by default (--out), relative to the folder it runs in.
DEFAULT_SAVED = "deepvit-diag-report"


@dataclass(frozen=True)
class AppDefaults:
    checkpoint_a: str
    checkpoint_b: str
    images: str
    num_images: int
    max_checkpoint_mb: float
    max_image_mb: float
    max_images: int = DEFAULT_MAX_IMAGES
    max_results: int = DEFAULT_MAX_RESULTS
    saved: str = DEFAULT_SAVED

    @classmethod
    def from_env(cls) -> AppDefaults:
        env = os.environ.get
        return cls(
            checkpoint_a=env("DEEPVIT_DIAG_APP_CKPT_A") or DEMO_CHECKPOINTS[0],
            checkpoint_b=env("DEEPVIT_DIAG_APP_CKPT_B") or DEMO_CHECKPOINTS[1],
            images=env("DEEPVIT_DIAG_APP_IMAGES", ""),
            num_images=_positive(env("DEEPVIT_DIAG_APP_NUM_IMAGES"), int, DEFAULT_NUM_IMAGES),
            max_checkpoint_mb=_positive(env("DEEPVIT_DIAG_APP_MAX_CHECKPOINT_MB"), float, DEFAULT_MAX_CHECKPOINT_MB),
            max_image_mb=_positive(env("DEEPVIT_DIAG_APP_MAX_IMAGE_MB"), float, DEFAULT_MAX_IMAGE_MB),
            max_images=_positive(env("DEEPVIT_DIAG_APP_MAX_IMAGES"), int, DEFAULT_MAX_IMAGES),
            max_results=_positive(env("DEEPVIT_DIAG_APP_MAX_RESULTS"), int, DEFAULT_MAX_RESULTS),
            saved=env("DEEPVIT_DIAG_APP_SAVED", DEFAULT_SAVED),
        )


def _positive(text: str | None, kind: type, default: float) -> float:
    """``text`` as a positive number, else ``default`` (a bad variable must not stop the app)."""
    try:
        value = kind(text)
    except (TypeError, ValueError):
        return default
    return value if value > 0 else default
