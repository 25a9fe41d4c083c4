"""One module per tab of the app; each exposes ``render(analysis)``."""
