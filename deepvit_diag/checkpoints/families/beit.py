"""timm's ``Beit`` (BEiT, BEiT v2): relative-position bias tables per block
(``attn.relative_position_bias_table``) or shared (``rel_pos_bias.*``), whose columns are the heads and
whose ``(2g - 1)^2 + 3`` rows give the grid; ``q_bias``/``v_bias``; layer scale ``gamma_1``/``gamma_2``.
Built as ``beit_base_patch16_224`` with the weights' values."""

from __future__ import annotations

from typing import Any

from timm.models.beit import Attention, Beit

from .base import (
    COMMON_ARGUMENTS,
    Family,
    Reading,
    Tensors,
    attention_width,
    grid_from_table,
    has_part,
    pooling,
    shared_arguments,
)


def read(sd: Tensors, in_chans: int | None, img_size: Any) -> Reading:
    block = "blocks.0."
    shared = "rel_pos_bias.relative_position_bias_table" in sd
    table = sd[("rel_pos_bias." if shared else block + "attn.") + "relative_position_bias_table"]
    fc_norm = "fc_norm.weight" in sd
    kw = shared_arguments(sd) | {
        "qkv_bias": block + "attn.q_bias" in sd,
        "init_values": 1.0 if block + "gamma_1" in sd else None,
        "swiglu_mlp": block + "mlp.fc1_g.weight" in sd,
        "scale_mlp": block + "mlp.norm.weight" in sd,
        "use_abs_pos_emb": "pos_embed" in sd,
        "use_rel_pos_bias": not shared,
        "use_shared_rel_pos_bias": shared,
        "use_fc_norm": fc_norm,
    }
    reading = Reading("beit", kw, attention_width(sd, block), heads=table.shape[1])
    pooling(reading, True, fc_norm)
    reading.grid = grid_from_table(table.shape[0], extra=3)
    return reading


FAMILY = Family(
    name="beit",
    model_class=Beit,
    arguments=COMMON_ARGUMENTS
    + ("init_values", "swiglu_mlp", "scale_mlp", "use_abs_pos_emb", "use_rel_pos_bias", "use_shared_rel_pos_bias")
    + ("use_fc_norm",),
    detect=lambda keys: has_part(keys, "relative_position_bias_table"),
    read=read,
    attention=(Attention,),
    timm_name=lambda values: "beit_base_patch16_224",
)
