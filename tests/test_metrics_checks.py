"""Input value checks: immediate by default, deferred (on-device flags, raised at the end)
inside ``deferred_value_checks``; either way bad values end in a DiagError."""

from __future__ import annotations

import pytest
import torch

from deepvit_diag.errors import DiagError
from deepvit_diag.metrics import (
    MinibatchCKA,
    attention_entropy,
    collapse_statistics,
    mean_attention_distance,
    rank_collapse,
    token_similarity,
)
from deepvit_diag.metrics._checks import as_float32, deferred_value_checks


def softmax_maps(seed: int = 0, shape=(3, 2, 2, 5)) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    num_blocks, batch, heads, tokens = shape
    return torch.randn(num_blocks, batch, heads, tokens, tokens, generator=generator).softmax(dim=-1)


def with_value(tensor: torch.Tensor, value: float) -> torch.Tensor:
    bad = tensor.clone()
    bad.view(-1)[bad.numel() // 2] = value
    return bad


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_non_finite_values_raise_at_once(value, dtype):
    with pytest.raises(DiagError, match="contains NaN or Inf"):
        as_float32(with_value(torch.rand(3, 4), value).to(dtype), "x", 2, "(n, p)")
    assert as_float32(torch.rand(3, 4).to(dtype), "x", 2, "(n, p)").dtype == torch.float32


def test_deferred_checks_raise_at_the_end_naming_the_first_bad_position():
    good, bad = softmax_maps(), with_value(softmax_maps(), float("nan"))
    reached_end = False
    with pytest.raises(DiagError, match=r"maps contains NaN or Inf values \(first bad input 1\)"):
        with deferred_value_checks(lambda position: f"first bad input {position}") as checks:
            for position, maps in enumerate([good, bad, good, bad]):
                checks.at(position)
                collapse_statistics(maps)  # no error here: the check waits on the device
            reached_end = True
    assert reached_end


def test_deferred_checks_pass_clean_input_and_cover_every_streamed_metric():
    hidden = torch.randn(3, 4, 6, 8, generator=torch.Generator().manual_seed(1))
    with deferred_value_checks():
        collapse_statistics(softmax_maps())
        attention_entropy(softmax_maps())
        token_similarity(hidden)
        rank_collapse(hidden)
        MinibatchCKA(chunk_size=4).update(hidden.flatten(2))
    for call in (
        lambda: token_similarity(with_value(hidden, float("inf"))),
        lambda: rank_collapse(with_value(hidden, float("nan"))),
        lambda: MinibatchCKA(chunk_size=4).update(with_value(hidden, float("nan")).flatten(2)),
    ):
        with pytest.raises(DiagError, match="NaN or Inf"), deferred_value_checks():
            call()


def test_deferred_negative_weights_for_softmax_metrics():
    signed = softmax_maps() - 0.1
    with pytest.raises(DiagError, match="needs softmax"), deferred_value_checks():
        mean_attention_distance(signed, patch_size=4, num_prefix_tokens=1, grid_size=(2, 2))
    with deferred_value_checks():
        collapse_statistics(signed)  # signed maps are fine for similarity


def test_nan_is_reported_before_the_negative_check_it_also_fails():
    with pytest.raises(DiagError, match="NaN or Inf"), deferred_value_checks():
        attention_entropy(with_value(softmax_maps(), float("nan")))


def test_an_error_inside_the_block_is_not_replaced_by_a_failed_check():
    with pytest.raises(RuntimeError, match="boom"), deferred_value_checks():
        collapse_statistics(with_value(softmax_maps(), float("nan")))
        raise RuntimeError("boom")


def test_deferred_checks_never_read_a_value_back(monkeypatch):
    """The deferred path must not sync with the device: no bool(), item() or tolist() on a
    tensor until the block ends."""

    def forbidden(*_):
        raise AssertionError("read a tensor value back inside deferred_value_checks")

    hidden = torch.randn(3, 4, 6, 8, generator=torch.Generator().manual_seed(2))
    maps = softmax_maps()
    with pytest.raises(DiagError, match="NaN or Inf"), deferred_value_checks() as checks:
        with monkeypatch.context() as patch:
            for name in ("__bool__", "item", "tolist"):
                patch.setattr(torch.Tensor, name, forbidden)
            checks.at(0)
            collapse_statistics(with_value(maps, float("nan")))
            attention_entropy(maps)
            token_similarity(hidden)
            rank_collapse(hidden)
            MinibatchCKA(chunk_size=4).update(hidden.flatten(2))


def test_nested_blocks_keep_their_own_failures():
    with pytest.raises(DiagError, match="outer"), deferred_value_checks(lambda p: "outer"):
        with deferred_value_checks(lambda p: "inner"):
            collapse_statistics(softmax_maps())
        collapse_statistics(with_value(softmax_maps(), float("nan")))


# ----------------------------------------------------------------------------- numpy and per-block inputs


def _maps(seed: int = 0) -> torch.Tensor:
    logits = torch.randn(3, 2, 2, 5, 5, generator=torch.Generator().manual_seed(seed))
    return logits.softmax(dim=-1)


@pytest.mark.parametrize(
    "metric",
    ["cross_layer_similarity", "similarity_ratio", "cross_head_similarity", "attention_entropy"],
)
def test_numpy_arrays_and_per_block_lists_equal_tensor_input(metric):
    import numpy as np

    import deepvit_diag as dd

    maps = _maps()
    function = getattr(dd, metric)
    expected = function(maps)
    for same in (maps.numpy(), list(maps), tuple(maps.numpy()), [block.numpy() for block in maps]):
        torch.testing.assert_close(function(same), expected, equal_nan=True)
    hidden = torch.randn(3, 4, 5, 8, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(dd.token_similarity(np.asarray(hidden)), dd.token_similarity(hidden))
    torch.testing.assert_close(dd.rank_collapse(list(hidden)), dd.rank_collapse(hidden))


def test_bad_per_block_inputs_say_what_is_wrong():
    import numpy as np

    import deepvit_diag as dd

    maps = _maps()
    cases = [
        ([maps[0], maps[1, :, :1]], r"the entries of maps must have one shape to stack into \(L, B, H, T, T\)"),
        ([], "maps is an empty sequence"),
        ("maps", r"maps must be a torch.Tensor or numpy array \(L, B, H, T, T\) or a list of per-block tensors"),
        (np.array(["a"]), "maps must be a numeric array"),
        (maps.numpy().astype(np.int64), "maps must be a floating-point tensor, got torch.int64"),
    ]
    for bad, message in cases:
        with pytest.raises(DiagError, match=message):
            dd.cross_layer_similarity(bad)


# ----------------------------------------------------------------------------- one validation of k, tau, rho


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("tau", 1.5, "tau must be a number from 0 to 1, got 1.5"),
        ("tau", float("nan"), "tau must be a number from 0 to 1, got nan"),
        ("rho", 1.5, "rho must be a number from 0 to 1, got 1.5"),
        ("rho", "high", "rho must be a number from 0 to 1, got 'high'"),
        ("k", 0, "k must be an integer >= 1, got 0"),
        ("k", True, "k must be an integer >= 1, got True"),
    ],
)
def test_settings_and_metric_functions_refuse_alike(name, value, message):
    import deepvit_diag as dd

    with pytest.raises(DiagError, match=message):
        dd.Settings(**{name: value})
    maps = _maps()
    with pytest.raises(DiagError, match=message):
        if name == "rho":
            dd.similar_blocks(torch.tensor([0.5, 0.95]), rho=value)
        else:
            dd.similarity_ratio(maps, **{name: value})
    if name != "rho":
        from deepvit_diag.metrics import collapse_statistics

        with pytest.raises(DiagError, match=message):
            collapse_statistics(maps, **{name: value})
