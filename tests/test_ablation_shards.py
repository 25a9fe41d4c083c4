"""Ablation shards (``ablate --shard I/N``, ``--pruning-from``) merge into the single run's
numbers, in two stages; shards of different stages, settings or plans are refused."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from test_ablation import OPTIONS, labelled, tiny_deepvit
from test_cli import assert_clean_error, run
from test_faults import write_png

from deepvit_diag import ablation_result
from deepvit_diag.ablation import ablate
from deepvit_diag.ablation_result import AblationResult
from deepvit_diag.ablation_shards import ablate_shard, merge_ablation_shards, result_sha256
from deepvit_diag.checkpoints.native import save_native
from deepvit_diag.errors import DiagError
from deepvit_diag.formats import read_arrays

pytestmark = pytest.mark.slow  # every test ablates a model several times over

# 11 images in chunks of 4 over 4 shards: shard 1/4 holds none, the others 4, 4 and 3.
SHARDING = dict(cka_chunk=4, **OPTIONS)
MEASURED = ("pruning_measured_kl", "pruning_measured_agreement", "pruning_measured_cosine")


@pytest.fixture(scope="module")
def model():
    return tiny_deepvit()


@pytest.fixture(scope="module")
def single(model):
    return ablate(model, labelled(), batch_size=4, **SHARDING)


@pytest.fixture(scope="module")
def stages(model, tmp_path_factory) -> dict[str, list[Path]]:
    """The shard folders of both stages (batch sizes differing between shards) and the merged first stage."""
    root = tmp_path_factory.mktemp("ablation-shards")
    first = [
        ablate_shard(model, labelled(), shard=f"{i}/4", batch_size=1 + i, **SHARDING).save(root / f"a{i}")
        for i in range(1, 5)
    ]
    merged = merge_ablation_shards(list(reversed(first)))
    merged.save(root / "merged")
    second = [
        ablate_shard(model, labelled(), shard=f"{i}/4", pruning_from=merged, batch_size=3, **SHARDING).save(
            root / f"b{i}"
        )
        for i in range(1, 5)
    ]
    return {"first": first, "second": second, "merged": [root / "merged"]}


def assert_same_numbers(merged, single, names) -> None:
    for name in names:
        np.testing.assert_allclose(merged.arrays[name], single.arrays[name], rtol=1e-5, atol=1e-7, err_msg=name)


def test_the_first_stage_is_the_single_run_but_the_measured_pruning(stages, single):
    merged = merge_ablation_shards(stages["first"])
    assert merged.pending == ("pruning_measured",)
    assert merged.num_images == 11 and merged.accuracy == single.accuracy
    assert merged.similar_blocks == single.similar_blocks
    measured = {name for name in single.arrays if name.startswith("pruning_measured")}
    assert set(merged.arrays) == set(single.arrays) - measured
    assert_same_numbers(merged, single, merged.arrays)
    assert merged.computation["shards"] == 4


def test_the_second_stage_completes_the_single_run(stages, single):
    merged = merge_ablation_shards(stages["second"])
    assert merged.pending == ()
    assert set(merged.arrays) == set(single.arrays)
    assert_same_numbers(merged, single, single.arrays)
    for ordering, found in single.summary()["pruning"].items():
        again = merged.summary()["pruning"][ordering]
        assert (again["k"], again["blocks"]) == (found["k"], found["blocks"]), ordering
    np.testing.assert_array_equal(merged.arrays["pruning_measured_order"], single.arrays["pruning_measured_order"])


def test_shards_plan_from_every_image(stages, model, single):
    """A shard's mean head ablation uses the head means of all 11 images, not of its own 4."""
    x, labels = labelled()
    own = ablate(model, (x[4:8], labels[4:8]), studies=["head"], **OPTIONS)  # shard 3/4's images alone
    shard = read_arrays(stages["first"][2] / "tally.npz")
    assert json.loads((stages["first"][2] / "shard.json").read_text())["count"] == 4
    assert shard["head_means"].shape[:2] == (single.geometry.num_blocks, single.geometry.num_tokens)
    assert not np.allclose(shard["families/head/kl"] / 4, own.arrays["head_kl"].ravel(), rtol=1e-3)


def test_without_the_block_study_one_stage_is_complete(model, single, tmp_path):
    studies = ["attention", "pruning"]
    folders = [
        ablate_shard(model, labelled(), shard=f"{i}/2", studies=studies, **SHARDING).save(tmp_path / str(i))
        for i in (1, 2)
    ]
    merged = merge_ablation_shards(folders)
    assert merged.pending == ()
    assert "pruning_measured_kl" not in merged.arrays
    assert_same_numbers(merged, single, ["attention_kl", "pruning_similarity_kl", "pruning_influence_agreement"])


def test_merge_refuses_mixed_stages_and_incomplete_sets(stages):
    first, second = stages["first"], stages["second"]
    with pytest.raises(DiagError, match="different stages"):
        merge_ablation_shards([first[0], second[1], first[2], first[3]])
    with pytest.raises(DiagError, match=r"shards 2/4 are missing"):
        merge_ablation_shards([first[0], first[2], first[3]])
    with pytest.raises(DiagError, match="given twice"):
        merge_ablation_shards([*first, first[1]])


def test_merge_refuses_shards_of_other_settings_studies_or_images(model, stages, tmp_path):
    first = stages["first"]
    other_rho = ablate_shard(model, labelled(), shard="2/4", rho=0.5, **SHARDING).save(tmp_path / "rho")
    with pytest.raises(DiagError, match=r"different settings \(rho\)"):
        merge_ablation_shards([first[0], other_rho, first[2], first[3]])
    zero = ablate_shard(model, labelled(), shard="2/4", heads="zero", **SHARDING).save(tmp_path / "zero")
    with pytest.raises(DiagError, match="ran different ablations"):
        merge_ablation_shards([first[0], zero, first[2], first[3]])
    x, labels = labelled()
    other = ablate_shard(model, (x.flip(0), labels.flip(0)), shard="2/4", **SHARDING).save(tmp_path / "images")
    with pytest.raises(DiagError, match="different image lists"):
        merge_ablation_shards([first[0], other, first[2], first[3]])


def test_merge_refuses_a_different_plan_and_changed_numbers(stages, tmp_path):
    import shutil

    first = stages["first"]
    changed = Path(shutil.copytree(first[1], tmp_path / "plan"))
    document = json.loads((changed / "shard.json").read_text())
    document["plan"]["similar"] = [0]
    (changed / "shard.json").write_text(json.dumps(document))
    with pytest.raises(DiagError, match=r"planned differently from all images \(similar differs\)"):
        merge_ablation_shards([first[0], changed, first[2], first[3]])

    def edited(name: str, change) -> Path:
        folder = Path(shutil.copytree(first[2], tmp_path / name))
        arrays = read_arrays(folder / "tally.npz")
        change(arrays)
        np.savez_compressed(folder / "tally.npz", **arrays)
        return folder

    negative = edited("kl", lambda arrays: arrays["families/block/kl"].__setitem__(0, -1.0))
    with pytest.raises(DiagError, match="families/block/kl is outside what 4 images can add up to"):
        merge_ablation_shards([first[0], first[1], negative, first[3]])
    means = edited("means", lambda arrays: arrays.__setitem__("head_means", arrays["head_means"] * 1.01))
    with pytest.raises(DiagError, match=r"planned differently from all images \(head_means differs\)"):
        merge_ablation_shards([first[0], first[1], means, first[3]])
    shape = edited("shape", lambda arrays: arrays.__setitem__("families/head/cosine", np.zeros(3)))
    with pytest.raises(DiagError, match="families/head/cosine has shape"):
        merge_ablation_shards([first[0], first[1], shape, first[3]])
    extra = edited("extra", lambda arrays: arrays.__setitem__("families/made_up/kl", np.zeros(1)))
    with pytest.raises(DiagError, match="families/made_up/kl is not an array"):
        merge_ablation_shards([first[0], first[1], extra, first[3]])


def test_the_second_stage_refuses_a_complete_or_foreign_result(model, stages, single):
    with pytest.raises(DiagError, match="has nothing pending"):
        ablate_shard(model, labelled(), shard="1/2", pruning_from=single, **SHARDING)
    merged = merge_ablation_shards(stages["first"])
    x, labels = labelled()
    with pytest.raises(DiagError, match="another image list"):
        ablate_shard(model, (x.flip(0), labels.flip(0)), shard="1/2", pruning_from=merged, **SHARDING)
    with pytest.raises(DiagError, match=r"other settings \(tau\)"):
        ablate_shard(model, labelled(), shard="1/2", pruning_from=merged, tau=0.6, **SHARDING)
    with pytest.raises(DiagError, match="other weights"):
        ablate_shard(tiny_deepvit(seed=1), labelled(), shard="1/2", pruning_from=merged, **SHARDING)


def test_the_command_line_runs_both_stages(model, tmp_path):
    """ablate --shard, merge, ablate --pruning-from --shard, merge: the single run's numbers."""
    save_native(model, tmp_path / "model.safetensors")
    for index in range(6):
        write_png(tmp_path / "images" / f"{index}.png", index)
    common = ["ablate", "--ckpt", str(tmp_path / "model.safetensors"), "--images", str(tmp_path / "images")]
    common += ["--device", "cpu", "--cka-chunk", "4", "--studies", "block", "head", "pruning", "--quiet"]
    status, _, err = run([*common, "--out", str(tmp_path / "single")])
    assert status == 0, err
    for i in (1, 2):
        status, _, err = run([*common, "--shard", f"{i}/2", "--out", str(tmp_path / f"a{i}")])
        assert status == 0, err
    status, out, err = run(["merge", str(tmp_path / "a2"), str(tmp_path / "a1"), "--out", str(tmp_path / "m1")])
    assert status == 0, err
    assert "--pruning-from" in out  # the merged first stage says what is still to come
    for i in (1, 2):
        second = [
            *common,
            "--pruning-from",
            str(tmp_path / "m1"),
            "--shard",
            f"{i}/2",
            "--out",
            str(tmp_path / f"b{i}"),
        ]
        status, _, err = run(second)
        assert status == 0, err
    status, _, err = run(
        ["merge", str(tmp_path / "b1"), str(tmp_path / "b2"), "--out", str(tmp_path / "m2"), "--quiet"]
    )
    assert status == 0, err
    single, merged = AblationResult.load(tmp_path / "single"), AblationResult.load(tmp_path / "m2")
    assert merged.pending == () and set(merged.arrays) == set(single.arrays)
    assert_same_numbers(merged, single, single.arrays)
    assert (tmp_path / "m2" / "report.html").is_file()
    status, _, err = run(["merge", str(tmp_path / "a1"), str(tmp_path / "b2"), "--out", str(tmp_path / "x")])
    assert_clean_error(status, err, 1, "different stages")
    status, _, err = run([*common, "--pruning-from", str(tmp_path / "m1"), "--out", str(tmp_path / "y")])
    assert_clean_error(status, err, 1, "give --shard I/N")
    analysis = ["analyze", "--ckpt", str(tmp_path / "model.safetensors"), "--images", str(tmp_path / "images")]
    status, _, err = run([*analysis, "--device", "cpu", "--shard", "1/1", "--out", str(tmp_path / "an"), "--quiet"])
    assert status == 0, err
    status, _, err = run(["merge", str(tmp_path / "a1"), str(tmp_path / "an"), "--out", str(tmp_path / "z")])
    assert_clean_error(status, err, 1, "is a shard of an ablation", "merge them apart")


def test_the_first_stages_fingerprint_is_the_same_on_any_machine(single, monkeypatch):
    """Stage-2 shards on machines with other package versions complete the same merged first stage."""
    before = result_sha256(single)
    monkeypatch.setattr(ablation_result, "package_versions", lambda: {"torch": "0.0"})
    assert result_sha256(single) == before
    changed = dict(single.arrays, block_kl=single.arrays["block_kl"] + 1)
    assert result_sha256(replace(single, arrays=changed)) != before
