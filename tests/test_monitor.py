"""CollapseMonitor: training with it is bit-identical to training without it, one JSON line
per measurement, and the file reads back as a series (library, ``sweep --monitor``)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from PIL import Image
from test_cli import assert_clean_error, run

from deepvit_diag import CollapseMonitor, analyze
from deepvit_diag.errors import DiagError
from deepvit_diag.monitor import preserved_random_state
from deepvit_diag.sweeps import SweepResult

TINY = dict(depth=2, embed_dim=32, num_heads=4, img_size=32, patch_size=8, num_classes=10)
STEPS = 4


@pytest.fixture(scope="module")
def probe_folder(tmp_path_factory) -> Path:
    """Six labelled images in class folders named by digits (class indices for a model that names none)."""
    root = tmp_path_factory.mktemp("probe")
    rng = np.random.default_rng(0)
    for index in range(6):
        folder = root / str(index % 3)
        folder.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(folder / f"{index}.png")
    return root


def train(monitor_options: dict | None = None) -> tuple[dict, dict, list[torch.Tensor], CollapseMonitor | None]:
    """A few SGD steps of a tiny DeepViT with dropout (its training forward draws random numbers,
    and its Re-attention BatchNorm updates running statistics), with numpy and Python random
    numbers in the loop; the monitor, if any, measures between backward and the optimiser step."""
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    model = timm.create_model("deepvit16", drop_rate=0.2, attn_drop_rate=0.1, drop_path_rate=0.1, **TINY).train()
    optimiser = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    monitor = CollapseMonitor(model, **monitor_options) if monitor_options is not None else None
    gradients = []
    for step in range(STEPS):
        x = torch.randn(8, 3, 32, 32) * (1 + np.random.rand()) + random.random()
        y = torch.randint(0, 10, (8,))
        loss = F.cross_entropy(model(x), y)
        optimiser.zero_grad()
        loss.backward()
        if monitor is not None:
            monitor.step(step)
            assert model.training and all(module.training for module in model.modules())
        gradients.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
        optimiser.step()
    generators = {"torch": torch.get_rng_state(), "numpy": np.random.get_state()[1], "python": random.getstate()}
    return model.state_dict(), generators, gradients, monitor


def test_training_with_the_monitor_is_bit_identical_to_training_without(probe_folder, tmp_path):
    path = tmp_path / "collapse.jsonl"
    with_monitor = train({"probe_images": str(probe_folder), "every": 1, "path": path, "batch_size": 4})
    without = train()
    for name, tensor in without[0].items():
        assert torch.equal(with_monitor[0][name], tensor), name  # weights and BatchNorm statistics
    assert torch.equal(with_monitor[1]["torch"], without[1]["torch"])
    assert np.array_equal(with_monitor[1]["numpy"], without[1]["numpy"])
    assert with_monitor[1]["python"] == without[1]["python"]
    assert all(torch.equal(a, b) for a, b in zip(with_monitor[2], without[2]))  # gradients untouched
    # One line per measurement, each a full record.
    lines = path.read_text().splitlines()
    assert len(lines) == STEPS == len(with_monitor[3].entries)
    records = [json.loads(line) for line in lines]
    assert [record["step"] for record in records] == list(range(STEPS))
    assert records[0]["format"] == "deepvit-diag monitor" and records[0]["summary"]["num_images"] == 6
    assert records[0]["summary"]["accuracy_top1"] is not None  # the probe's class folders are labels
    assert len(records[0]["curves"]["ratio"]) == 2 and len(records[0]["curves"]["adjacent_similarity"]) == 1


def test_the_generators_are_put_back_after_an_analysis_that_moves_them(probe_folder):
    """Why the monitor restores the generators: the image loader draws a seed."""
    model = timm.create_model("vit16", **TINY)
    before = torch.get_rng_state()
    analyze(model, str(probe_folder), device="cpu", progress=False)
    assert not torch.equal(before, torch.get_rng_state())
    states = torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()
    with preserved_random_state():
        analyze(model, str(probe_folder), device="cpu", progress=False)
        torch.rand(3), np.random.rand(), random.random()
    assert torch.equal(states[0], torch.get_rng_state())
    assert np.array_equal(states[1], np.random.get_state()[1]) and states[2] == random.getstate()


def test_every_n_steps_and_the_file_as_a_series(probe_folder, tmp_path):
    model = timm.create_model("vit16", **TINY)
    path = tmp_path / "runs" / "m.jsonl"
    monitor = CollapseMonitor(model, str(probe_folder), every=3, path=path, num_images=4, label="tiny run")
    measured = [monitor.step(step) for step in range(7)]
    assert [entry is not None for entry in measured] == [True, False, False, True, False, False, True]
    assert len(path.read_text().splitlines()) == 3
    series = SweepResult.from_monitor(path)
    assert series.x_axis == "step" and [series.x(entry) for entry in series.entries] == [0, 3, 6]
    assert series.entries[0].label == "tiny run" and series.entries[0].group == "ViT"
    assert series.entries[0].summary == monitor.entries[0].summary
    np.testing.assert_array_equal(series.entries[1].curves["ratio"], monitor.entries[1].curves["ratio"])
    # Resolved where the model is (the CPU), with no image-decoding workers.
    assert series.settings == monitor.result().settings
    assert (series.settings.device, series.settings.num_workers, series.settings.num_examples) == ("cpu", 0, 0)
    assert monitor.result().entries[2].step == 6
    with pytest.raises(DiagError, match="every must be"):
        CollapseMonitor(model, str(probe_folder), every=0)


def test_sweep_draws_a_monitor_file(probe_folder, tmp_path):
    model = timm.create_model("deepvit16", **TINY)
    path = tmp_path / "m.jsonl"
    monitor = CollapseMonitor(model, (torch.randn(4, 3, 32, 32), torch.arange(4)), path=path)
    for step in (10, 20):
        monitor.measure(step)
    status, stdout, stderr = run(["sweep", "--monitor", str(path), "--out", str(tmp_path / "out")])
    assert status == 0, stderr
    assert "Training series by training step" in stdout and "at steps 10 and 20" in stdout
    assert SweepResult.load(tmp_path / "out").x_axis == "step"
    (tmp_path / "bad.jsonl").write_text(path.read_text() + "{not json\n")
    status, _, err = run(["sweep", "--monitor", str(tmp_path / "bad.jsonl"), "--out", str(tmp_path / "o")])
    assert_clean_error(status, err, 1, "bad.jsonl, line 3: not valid JSON")
    (tmp_path / "other.jsonl").write_text('{"format": "something else"}\n')
    status, _, err = run(["sweep", "--monitor", str(tmp_path / "other.jsonl"), "--out", str(tmp_path / "o")])
    assert_clean_error(status, err, 1, "line 1: not a deepvit-diag monitor measurement")
