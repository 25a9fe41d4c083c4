"""Settings: one frozen dataclass validated on construction, recorded by results, and the
source of the CLI's analysis options."""

from __future__ import annotations

import argparse
from dataclasses import fields

import pytest
import torch

from deepvit_diag.cli import add_settings_options, settings_from
from deepvit_diag.errors import DiagError
from deepvit_diag.settings import METRIC_PARAMETERS, Settings


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"k": 0}, "k must be an integer >= 1, got 0"),
        ({"k": True}, "k must be an integer"),
        ({"batch_size": 2.0}, "batch_size must be an integer >= 1"),
        ({"cka_chunk": 3}, "cka_chunk must be an integer >= 4"),
        ({"num_images": 0}, "num_images must be an integer >= 1"),
        ({"num_workers": -1}, "num_workers must be an integer >= 0"),
        ({"tau": 1.5}, "tau must be a number from 0 to 1, got 1.5"),
        ({"rho": float("nan")}, "rho must be a number from 0 to 1, got nan"),
        ({"tau": "high"}, "tau must be a number from 0 to 1, got 'high'"),
        ({"axis": "diagonal"}, "axis must be one of 'columns', 'rows'"),
        ({"maps": "both"}, "maps must be one of 'pre', 'post'"),
        ({"dtype": "float16"}, "dtype must be one of 'float32', 'bfloat16'"),
        ({"device": 3}, "device must be a string"),
        ({"k": None}, "k must be an integer >= 1, got None"),
        ({"num_examples": None}, "num_examples must be an integer >= 0, got None"),
    ],
)
def test_bad_values_are_one_line_errors(overrides, message):
    with pytest.raises(DiagError, match=message):
        Settings(**overrides)


def test_optional_fields_accept_none_and_torch_devices_become_strings():
    settings = Settings(num_images=None, num_workers=None, device=torch.device("cpu"))
    assert settings.device == "cpu" and settings.num_images is None


def test_optional_is_declared_by_the_field_not_read_from_its_annotation():
    """Exactly the fields whose default is None may be None (declared in their metadata)."""
    optional = {spec.name for spec in fields(Settings) if spec.metadata["optional"]}
    expected = {"num_images", "num_workers", "memory_budget"}
    assert optional == {spec.name for spec in fields(Settings) if spec.default is None} == expected


def test_settings_hold_the_one_default_the_cli_uses():
    """The CLI, the API and the app read every default from Settings (one place)."""
    parser = argparse.ArgumentParser()
    add_settings_options(parser)
    assert settings_from(parser.parse_args([])).num_examples == Settings().num_examples == 2


def test_resolved_makes_device_and_workers_concrete():
    resolved = Settings(device="cpu").resolved()
    assert resolved.device == "cpu" and resolved.num_workers == 0
    assert Settings(device="cpu", num_workers=3).resolved().num_workers == 3
    with pytest.raises(DiagError, match="device"):
        Settings(device="nonsense").resolved()


def test_dict_round_trip_and_unknown_names():
    settings = Settings(k=3, tau=0.25, axis="rows", num_images=10)
    assert Settings.from_dict(settings.to_dict()) == settings
    with pytest.raises(DiagError, match="unknown analysis settings: colour"):
        Settings.from_dict({**settings.to_dict(), "colour": "red"})
    assert Settings.with_overrides(settings, {"k": 1}) == Settings(k=1, tau=0.25, axis="rows", num_images=10)
    assert Settings.with_overrides(None, {}) == Settings()


def test_every_field_has_help_and_a_label():
    for spec in fields(Settings):
        assert spec.metadata["help"] and spec.metadata["label"], spec.name


def test_cli_options_are_built_from_the_fields():
    parser = argparse.ArgumentParser()
    add_settings_options(parser)
    options = {action.dest: action for action in parser._actions}
    for spec in fields(Settings):
        action = options[spec.name]
        assert spec.metadata["help"] in action.help
        assert action.default == spec.default
        assert action.choices == spec.metadata["choices"]
    assert settings_from(parser.parse_args([])) == Settings()
    parsed = parser.parse_args(["--k", "3", "--tau", "0.2", "--axis", "rows", "--examples", "5", "--workers", "1"])
    assert settings_from(parsed) == Settings(k=3, tau=0.2, axis="rows", num_examples=5, num_workers=1)


def test_memory_budget_is_a_positive_number_of_mib_or_none():
    assert Settings(memory_budget=512).memory_budget == 512 and Settings().memory_budget is None
    with pytest.raises(DiagError, match="memory_budget must be an integer >= 1"):
        Settings(memory_budget=0)


def test_metric_parameters_are_the_first_fields_of_settings():
    """The parameters a saved result is matched on and the app's sidebar offers are Settings fields."""
    assert [spec.name for spec in fields(Settings)][: len(METRIC_PARAMETERS)] == list(METRIC_PARAMETERS)
