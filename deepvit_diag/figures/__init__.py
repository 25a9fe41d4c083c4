"""Plotly figures of analysis and sweep results, shared by ``report.html``, ``sweep.html``
and the Streamlit app; every function only draws what a result already holds.

* ``style``: the look every figure shares (template, colours, ticks, colour scales, images);
* ``similarity``, ``head_mixing``, ``overlays``: figures of analyses;
* ``sweep``: figures of sweeps;
* ``ablation``: figures of ablations;
* ``registry``: the ``@figure`` decorator the catalogue's ``Figure`` specs point at;
* ``drawing``: catalogue figures drawn with their captions (``draw``, ``draw_sweep``, ``draw_ablation``).

This package imports none of its modules, so the catalogue can import figure modules
while ``drawing`` imports the catalogue.
"""
