"""Packaging beyond what pyproject.toml can say: the Streamlit app (the clone's ``app/``) ships in
the wheel as ``deepvit_diag/_streamlit/app``, so that ``deepvit-diag app`` starts it from an
installed package. Its ``main.py`` puts the folder above ``app/`` on the path (the project root
in a clone, ``deepvit_diag/_streamlit`` when installed) and imports ``app``: the same file runs
from both places, and nothing but ``app`` is added to the import path of the app's process.
"""

from setuptools import find_packages, setup

INSTALLED_APP = "deepvit_diag._streamlit.app"

setup(
    packages=[*find_packages(include=["deepvit_diag*"]), INSTALLED_APP, f"{INSTALLED_APP}.views"],
    package_dir={INSTALLED_APP: "app", f"{INSTALLED_APP}.views": "app/views"},
)
