"""Plotly figures of analysis and sweep results, shared by ``report.html``, ``sweep.html``
and the Streamlit app; every function only draws what a result already holds.

* ``style``: the look every figure shares (template, colours, ticks, colour scales, images);
* ``similarity``, ``head_mixing``, ``overlays``: figures of analyses;
* ``sweep``: figures of sweeps;
* ``ablation``: figures of ablations;
* ``registry``: the ``@figure`` decorator the catalogue's ``Figure`` specs point at;
* ``drawing``: catalogue figures drawn with their captions (``draw``, ``draw_sweep``, ``draw_ablation``).

The figure functions are exported here (``deepvit_diag.figures.similarity_ratio(result)``);
each takes one result or a ``{label: result}`` mapping (a comparison or a sweep where it
draws one). ``drawing`` is not imported here, so the catalogue can import figure modules
while ``drawing`` imports the catalogue.
"""

from .head_mixing import norm_gains, theta_distances, theta_heatmaps
from .overlays import cls_attention
from .similarity import (
    block_curves,
    cka_across,
    cka_within,
    cross_head_curves,
    cross_head_matrices,
    entropy_curves,
    head_curves,
    layer_similarity,
    similarity_ratio,
)
from .sweep import (
    sweep_accuracy,
    sweep_adjacent_curves,
    sweep_collapse_start,
    sweep_entropy_curves,
    sweep_ratio_curves,
    sweep_similar_blocks,
)

__all__ = [
    "block_curves",
    "cka_across",
    "cka_within",
    "cls_attention",
    "cross_head_curves",
    "cross_head_matrices",
    "entropy_curves",
    "head_curves",
    "layer_similarity",
    "norm_gains",
    "similarity_ratio",
    "sweep_accuracy",
    "sweep_adjacent_curves",
    "sweep_collapse_start",
    "sweep_entropy_curves",
    "sweep_ratio_curves",
    "sweep_similar_blocks",
    "theta_distances",
    "theta_heatmaps",
]
