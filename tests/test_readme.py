"""The README's commands run as written: every ``deepvit-diag`` line of its bash blocks that
needs neither a network nor files the reader brings runs here, in order, in an empty folder,
with fewer images and epochs than a reader would use. The others are listed with the reason
they cannot run here, so that a new command is either run or explicitly set aside."""

from __future__ import annotations

import glob
import re
import shlex
from pathlib import Path

import pytest
from test_cli import run

README = Path(__file__).resolve().parents[1] / "README.md"
# A command that mentions one of these needs what a test machine lacks.
NEEDS = {
    "~/imagenet": "an ImageNet folder",
    ".pth.tar": "the reader's checkpoint files",
    "my_vit.safetensors": "the reader's checkpoint file",
    "deit_small_patch16_224": "a download from the Hugging Face hub",
    "$SLURM_ARRAY_TASK_ID": "a Slurm array job",
    "shards/*": "the shards of the Slurm array job",
    "ablation1/*": "the ablation shards of the Slurm array job",
    "ablation2/*": "the ablation shards of the Slurm array job",
    "deepvit-diag app": "a server that runs until it is stopped (tests/test_app.py drives the app)",
}
# Smaller than a reader would use, so that the test is quick; the command is otherwise unchanged.
QUICKER = {"--epochs 30": "--epochs 1", "--save-every 5": "--save-every 1"}
IMAGE_COMMANDS = ("analyze", "compare", "sweep")


def readme_commands() -> list[str]:
    """Every ``deepvit-diag`` command of the README's bash blocks, continuation lines joined,
    comments dropped, ``a && b`` split."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            for part in line.split("&&"):
                words = shlex.split(part, comments=True)
                if words[:1] == ["deepvit-diag"]:
                    commands.append(" ".join(shlex.quote(word) for word in words))
    return commands


def runnable(command: str) -> bool:
    return not any(marker in command for marker in NEEDS)


def test_the_readme_has_commands_of_both_kinds():
    commands = readme_commands()
    assert sum(map(runnable, commands)) >= 5
    assert any(not runnable(command) for command in commands)


@pytest.mark.slow
def test_every_readme_command_that_needs_no_network_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for command in filter(runnable, readme_commands()):
        for written, quicker in QUICKER.items():
            command = command.replace(written, quicker)
        argv = shlex.split(command)[1:]
        argv = [match for word in argv for match in (sorted(glob.glob(word)) if "*" in word else [word])]
        if argv[0] in IMAGE_COMMANDS and "--num-images" not in argv and "--monitor" not in argv:
            argv += ["--num-images", "4"]
        status, out, err = run(argv)
        assert status == 0, f"{command}: {err}"
        assert "Traceback" not in err
