"""The pixels a model sees: its timm data config, its eval transform, and the way back.

Every path from an image to a model goes through here: the analysis, ``extract_attention``,
the trainer's training and test tensors (so a model card's accuracy is measured on the
same pixels an analysis reads) and the tests.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps
from timm.data import create_transform, resolve_data_config
from torch import nn
from torchvision.transforms import Compose

from .errors import DiagError
from .hints import Hint, HintedError
from .introspection import describe_model


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL image as 8-bit RGB: EXIF orientation applied, alpha composited on white,
    wide data rescaled to 0..255 rather than clipped (``wide_to_uint8``)."""
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        img = Image.fromarray(wide_to_uint8(np.asarray(img, dtype=np.float64), floating=img.mode == "F"))
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB")


def wide_to_uint8(data: np.ndarray, floating: bool) -> np.ndarray:
    """Pixels of a float or wide-integer image as uint8: float data and integers outside 0..65535 (32-bit
    images) stretched from their finite minimum and maximum to 0..255, +inf/-inf as the maximum/minimum and
    NaN as 0; 16-bit data (above 255) scaled from 0..65535; 8-bit values kept."""
    finite = np.isfinite(data)
    if not finite.any():
        return np.zeros(data.shape, np.uint8)
    lo, hi = float(data[finite].min()), float(data[finite].max())
    if floating or lo < 0 or hi > 65535:
        data = (np.clip(data, lo, hi) - lo) / (hi - lo or 1.0) * 255.0
    elif hi > 255:
        data = data / 65535.0 * 255.0
    return np.clip(np.round(np.nan_to_num(data, nan=0.0)), 0, 255).astype(np.uint8)


def model_input_config(model: nn.Module) -> dict:
    """timm's data config for ``model``, with the input size the model was built for.

    ``resolve_data_config`` reports the pretrained config's size (224 for
    ``vit_tiny_patch16_224``), also when the model was created with another ``img_size``.
    """
    config = resolve_data_config({}, model=model)
    patch_embed = getattr(model, "patch_embed", None)
    img_size = getattr(patch_embed, "img_size", None)
    if img_size is not None and not getattr(model, "dynamic_img_size", False):
        config["input_size"] = (config["input_size"][0], *img_size)
    return config


def check_input_size(model: nn.Module, x: torch.Tensor) -> None:
    """Images (B, C, H, W) must have the channels and size the model was built for (timm asserts otherwise)."""
    if getattr(model, "dynamic_img_size", False):
        return
    expected = tuple(model_input_config(model)["input_size"])
    if tuple(x.shape[1:]) != expected:
        message = f"images have shape (C, H, W) = {tuple(x.shape[1:])}, but {describe_model(model)} expects {expected}"
        if hasattr(model, "dynamic_img_size") and x.shape[1] == expected[0]:  # timm models that can take any size
            raise HintedError(
                message,
                "; to run it at that size, load it with ",
                Hint("dynamic_img_size", "True"),
                " or resample its positions: ",
                Hint("img_size", "N", "N"),
                ", ",
                Hint("resample_pos_embed", "True"),
            )
        raise DiagError(message)


def model_transform(model: nn.Module) -> Callable[[Image.Image], torch.Tensor]:
    """The model's timm eval transform (resize, centre crop, normalise) for any PIL image,
    after ``to_rgb``."""
    # A Compose of module-level callables, so image-loading workers can be spawned with it.
    return Compose([to_rgb, create_transform(**model_input_config(model))])


def preprocess(model: nn.Module, images: Sequence[Image.Image]) -> torch.Tensor:
    """PIL images (any mode) -> (N, C, H, W) float tensor for ``model``."""
    transform = model_transform(model)
    return torch.stack([transform(image) for image in images])


def as_batch(model: nn.Module, images: torch.Tensor | Sequence[Image.Image]) -> torch.Tensor:
    """A (B, C, H, W) tensor as given, or PIL images preprocessed for ``model``."""
    if isinstance(images, torch.Tensor):
        if images.ndim != 4:
            raise DiagError(f"images must be a (B, C, H, W) tensor, got shape {tuple(images.shape)}")
        return images
    if isinstance(images, Sequence) and images and all(isinstance(image, Image.Image) for image in images):
        return preprocess(model, images)
    raise DiagError(
        f"images must be a (B, C, H, W) tensor or a non-empty list of PIL images, got {type(images).__name__}"
    )


def to_uint8_images(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Preprocessed images (E, C, H, W) back to (E, H, W, C) uint8 with the model's mean/std."""
    mean_ = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    std_ = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    pixels = (x.detach().float().cpu() * std_ + mean_).clamp(0, 1) * 255
    return pixels.round().to(torch.uint8).permute(0, 2, 3, 1)
