"""The deepvit-diag Streamlit app: ``streamlit run app/main.py``.

The app only draws: every number comes from ``deepvit_diag`` (analysis, results,
summary sentences, figures); modules here choose inputs, cache, and lay out views.
"""
