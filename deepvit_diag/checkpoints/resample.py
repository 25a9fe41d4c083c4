"""Position embeddings resampled to another image size, the way timm does when it loads weights
into a model of another size (``checkpoint_filter_fn`` of its ViT, EVA and BEiT families).

Only on request (``load_model(..., img_size=N, resample_pos_embed=True)``, ``--resample-pos-embed``):
absolute ``pos_embed`` grids are resized with ``timm.layers.resample_abs_pos_embed`` (bicubic,
antialiased, prefix tokens kept), BEiT-style relative position tables with
``timm.layers.resize_rel_pos_bias_table``. Relative-position MLPs (timm's ``vit_relpos``) and rotary
embeddings (EVA-02) take any grid and need nothing.
"""

from __future__ import annotations

import math
import warnings

import torch
from timm.layers import resample_abs_pos_embed, resize_rel_pos_bias_table
from torch import nn

from ..errors import DiagError

Tensors = dict[str, torch.Tensor]


def resample_positions(skeleton: nn.Module, state_dict: Tensors) -> Tensors:
    """``state_dict`` with every position tensor whose shape differs from ``skeleton``'s (a model of the
    new size, on any device) resampled to it."""
    out = dict(state_dict)
    expected = skeleton.state_dict()
    for key, tensor in state_dict.items():
        target = expected.get(key)
        if target is None or target.shape == tensor.shape:
            continue
        if key.endswith("pos_embed"):
            grid = tuple(skeleton.patch_embed.grid_size)
            prefix = target.shape[1] - grid[0] * grid[1]
            old = math.isqrt(tensor.shape[1] - prefix)
            if old * old != tensor.shape[1] - prefix:
                raise DiagError(f"cannot resample {key} {tuple(tensor.shape)}: not a square grid")
            out[key] = resample_abs_pos_embed(tensor.float(), list(grid), [old, old], prefix).to(tensor.dtype)
        elif key.endswith("relative_position_bias_table"):
            module = skeleton.get_submodule(key.rsplit(".", 1)[0])
            window = tuple(module.window_size)
            with warnings.catch_warnings():  # timm's interpolation indexes in a way torch deprecates
                warnings.filterwarnings("ignore", message="Using a non-tuple sequence")
                table = resize_rel_pos_bias_table(tensor.float(), window, tuple(target.shape))
            out[key] = table.to(tensor.dtype)
    return out
