"""Linear CKA and minibatch CKA (docs/metrics.md) against brute-force numpy HSIC."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from deepvit_diag.errors import DiagError
from deepvit_diag.metrics import MinibatchCKA, cka_from_hsic, linear_cka


def features(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def related_features(seed: int, n: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """x (n, 5) and y (n, 3) = a noisy projection of x, so CKA is neither ~0 nor ~1."""
    x = features(seed, n, 5)
    return x, x @ features(seed + 1, 5, 3) + 0.8 * features(seed + 2, n, 3)


# ---- brute force ----


def u_statistic_hsic(k: np.ndarray, l: np.ndarray) -> float:
    """Song et al. 2012 unbiased HSIC straight from its U-statistic definition:
    the mean over ordered distinct (i, j, q, r) of k_ij l_ij + k_ij l_qr - 2 k_ij l_iq."""
    n = k.shape[0]
    terms = [
        k[i, j] * l[i, j] + k[i, j] * l[q, r] - 2 * k[i, j] * l[i, q]
        for i, j, q, r in itertools.permutations(range(n), 4)
    ]
    return sum(terms) / len(terms)


def closed_form_unbiased_hsic(k: np.ndarray, l: np.ndarray) -> float:
    n = k.shape[0]
    kt, lt = k - np.diag(np.diag(k)), l - np.diag(np.diag(l))
    ones = np.ones(n)
    return float(
        (
            np.trace(kt @ lt)
            + (ones @ kt @ ones) * (ones @ lt @ ones) / ((n - 1) * (n - 2))
            - 2 / (n - 2) * ones @ kt @ lt @ ones
        )
        / (n * (n - 3))
    )


def biased_hsic(k: np.ndarray, l: np.ndarray) -> float:
    n = k.shape[0]
    centring = np.eye(n) - np.ones((n, n)) / n
    return float(np.trace(k @ centring @ l @ centring) / (n - 1) ** 2)


def np_cka(x: np.ndarray, y: np.ndarray, hsic) -> float:
    k, l = x @ x.T, y @ y.T
    return hsic(k, l) / np.sqrt(hsic(k, k) * hsic(l, l))


def feature_space_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Kornblith et al. 2019 Eqn (linear CKA on centred features)."""
    xc, yc = x - x.mean(axis=0), y - y.mean(axis=0)
    return float(np.linalg.norm(yc.T @ xc) ** 2 / (np.linalg.norm(xc.T @ xc) * np.linalg.norm(yc.T @ yc)))


def brute_minibatch_cka(feats_a: torch.Tensor, feats_b: torch.Tensor, chunk_size: int) -> dict[str, np.ndarray]:
    a, b = feats_a.double().numpy(), feats_b.double().numpy()
    n = a.shape[1]
    starts = list(range(0, n, chunk_size))
    chunks = [slice(s, min(s + chunk_size, n)) for s in starts if min(s + chunk_size, n) - s >= 4]
    layers = {"a": a, "b": b}
    sums = {}
    for x_name, y_name in (("a", "a"), ("b", "b"), ("a", "b")):
        x_layers, y_layers = layers[x_name], layers[y_name]
        total = np.zeros((len(x_layers), len(y_layers)))
        for chunk in chunks:
            for p in range(len(x_layers)):
                for q in range(len(y_layers)):
                    x, y = x_layers[p, chunk], y_layers[q, chunk]
                    total[p, q] += closed_form_unbiased_hsic(x @ x.T, y @ y.T)
        sums[x_name + y_name] = total
    return {
        "a": sums["aa"] / np.sqrt(np.outer(np.diag(sums["aa"]), np.diag(sums["aa"]))),
        "b": sums["bb"] / np.sqrt(np.outer(np.diag(sums["bb"]), np.diag(sums["bb"]))),
        "ab": sums["ab"] / np.sqrt(np.outer(np.diag(sums["aa"]), np.diag(sums["bb"]))),
    }


# ---- linear_cka ----


def test_closed_form_brute_force_is_the_u_statistic():
    # Validates the numpy closed form the other tests rely on against the definition.
    x, y = related_features(1, n=6)
    k, l = x.double().numpy() @ x.double().numpy().T, y.double().numpy() @ y.double().numpy().T
    assert closed_form_unbiased_hsic(k, l) == pytest.approx(u_statistic_hsic(k, l), rel=1e-9)


def test_unbiased_cka_matches_u_statistic():
    x, y = related_features(2, n=6)
    expected = np_cka(x.double().numpy(), y.double().numpy(), u_statistic_hsic)
    assert linear_cka(x, y).item() == pytest.approx(expected, abs=1e-5)


def test_unbiased_cka_matches_closed_form():
    x, y = related_features(3, n=12)
    expected = np_cka(x.double().numpy(), y.double().numpy(), closed_form_unbiased_hsic)
    assert 0.05 < expected < 0.95
    assert linear_cka(x, y, unbiased=True).item() == pytest.approx(expected, abs=1e-5)


def test_biased_cka_matches_centred_gram_and_feature_space_forms():
    x, y = related_features(4, n=12)
    xn, yn = x.double().numpy(), y.double().numpy()
    result = linear_cka(x, y, unbiased=False)
    assert result.dtype == torch.float32 and result.ndim == 0
    assert result.item() == pytest.approx(np_cka(xn, yn, biased_hsic), abs=1e-5)
    assert result.item() == pytest.approx(feature_space_cka(xn, yn), abs=1e-5)
    assert linear_cka(x, y, unbiased=False).item() != pytest.approx(linear_cka(x, y).item(), abs=1e-3)


@pytest.mark.parametrize("unbiased", [True, False])
def test_cka_of_a_representation_with_itself_is_one(unbiased):
    x = features(5, 9, 6)
    assert linear_cka(x, x, unbiased=unbiased).item() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("unbiased", [True, False])
def test_cka_is_invariant_to_orthogonal_transforms_and_isotropic_scaling(unbiased):
    x, y = related_features(6, n=10)
    rotation, _ = torch.linalg.qr(features(7, 5, 5))
    reference = linear_cka(x, y, unbiased=unbiased).item()
    assert reference < 0.99  # a non-trivial value, so invariance means something
    assert linear_cka(x @ rotation, y, unbiased=unbiased).item() == pytest.approx(reference, abs=1e-5)
    assert linear_cka(3.7 * x, 0.2 * y, unbiased=unbiased).item() == pytest.approx(reference, abs=1e-5)
    assert linear_cka(y, x, unbiased=unbiased).item() == pytest.approx(reference, abs=1e-6)


def test_cka_is_not_invariant_to_anisotropic_scaling():
    # Guards the invariance test: a transform CKA must notice does change the value.
    x, y = related_features(8, n=10)
    stretched = x * torch.tensor([10.0, 1.0, 1.0, 1.0, 0.1])
    assert linear_cka(stretched, y).item() != pytest.approx(linear_cka(x, y).item(), abs=1e-3)


def test_hsic_estimators_ignore_a_shared_feature_offset():
    # The exact identity linear_cka relies on when it centres features (float64 here).
    x, y = related_features(20, n=9)
    xn, yn = x.double().numpy(), y.double().numpy()
    offset = np.linspace(-3, 3, xn.shape[1])
    for hsic in (closed_form_unbiased_hsic, biased_hsic):
        shifted = (xn + offset) @ (xn + offset).T
        assert hsic(shifted, yn @ yn.T) == pytest.approx(hsic(xn @ xn.T, yn @ yn.T), rel=1e-9)


@pytest.mark.parametrize("unbiased", [True, False])
def test_cka_stays_accurate_under_large_feature_offsets(unbiased):
    # Block outputs share large offsets; uncentred float32 Grams would lose the signal.
    x, y = related_features(21, n=32)
    hsic = closed_form_unbiased_hsic if unbiased else biased_hsic
    expected = np_cka(x.double().numpy(), y.double().numpy(), hsic)
    assert linear_cka(x + 100, y - 100, unbiased=unbiased).item() == pytest.approx(expected, abs=1e-5)


def test_bfloat16_input_gives_float32_answer():
    x, y = related_features(9, n=12)
    result = linear_cka(x.bfloat16(), y.bfloat16())
    assert result.dtype == torch.float32
    assert result.item() == pytest.approx(linear_cka(x.bfloat16().float(), y.bfloat16().float()).item(), abs=1e-6)
    assert result.item() == pytest.approx(linear_cka(x, y).item(), abs=2e-2)


def test_constant_features_give_nan():
    x = features(10, 8, 4)
    assert linear_cka(x, torch.ones(8, 3)).isnan()


def test_bad_feature_matrices_raise_diag_error():
    x = features(11, 8, 4)
    with_nan = x.clone()
    with_nan[0, 0] = float("nan")
    for bad_x, bad_y in ((x[0], x), (x, x[:7]), (with_nan, x), (x[:3], x[:3]), (x.numpy().astype(bool), x)):
        with pytest.raises(DiagError):
            linear_cka(bad_x, bad_y)
    assert linear_cka(x[:3], x[:3], unbiased=False).item() == pytest.approx(1.0, abs=1e-5)  # biased: n >= 2


# ---- MinibatchCKA ----


@pytest.mark.parametrize("num_images, chunk_size", [(11, 4), (13, 4), (14, 5), (6, 8)])
def test_minibatch_cka_matches_per_chunk_brute_force(num_images, chunk_size):
    # (11, 4): a partial chunk of 3 is dropped; (14, 5): one of 4 counts; (6, 8): only a partial chunk.
    feats_a = features(12, 3, num_images, 5)
    feats_b = feats_a[:2] @ features(13, 5, 4) + features(14, 2, num_images, 4)
    accumulator = MinibatchCKA(chunk_size=chunk_size)
    accumulator.update(feats_a, feats_b)
    result = accumulator.result()
    expected = brute_minibatch_cka(feats_a, feats_b, chunk_size)
    assert set(result) == {"a", "b", "ab"}
    for key in expected:
        assert result[key].dtype == torch.float32
        np.testing.assert_allclose(result[key].numpy(), expected[key], atol=1e-5)
    np.testing.assert_allclose(np.diag(result["a"].numpy()), 1.0, atol=1e-6)


def test_minibatch_cka_stays_accurate_under_large_feature_offsets():
    feats_a = features(29, 2, 12, 6)
    feats_b = feats_a @ features(30, 6, 4) + features(31, 2, 12, 4)
    accumulator = MinibatchCKA(chunk_size=6)
    accumulator.update(feats_a + 100, feats_b - 100)
    expected = brute_minibatch_cka(feats_a, feats_b, chunk_size=6)
    for key, value in accumulator.result().items():
        np.testing.assert_allclose(value.numpy(), expected[key], atol=1e-5)


def test_minibatch_cka_does_not_depend_on_update_sizes():
    feats_a, feats_b = features(15, 3, 14, 6), features(16, 2, 14, 4)
    results = []
    for batch_size in (1, 3, 14):
        accumulator = MinibatchCKA(chunk_size=4)
        for start in range(0, 14, batch_size):
            accumulator.update(feats_a[:, start : start + batch_size], feats_b[:, start : start + batch_size])
        results.append(accumulator.result())
    for other in results[1:]:
        for key in ("a", "b", "ab"):
            torch.testing.assert_close(other[key], results[0][key], atol=1e-6, rtol=0)


def test_minibatch_cka_single_model_and_result_does_not_consume():
    # 9 images in chunks of 5: result() counts the partial chunk 5..8 without consuming it,
    # so after 6 more images the chunks are 0..4, 5..9, 10..14, as if all came at once.
    feats = features(17, 3, 15, 5)
    accumulator = MinibatchCKA(chunk_size=5)
    accumulator.update(feats[:, :9])
    assert set(accumulator.result()) == {"a"}
    accumulator.update(feats[:, 9:])
    at_once = MinibatchCKA(chunk_size=5)
    at_once.update(feats)
    torch.testing.assert_close(accumulator.result()["a"], at_once.result()["a"], atol=1e-6, rtol=0)


def test_minibatch_cka_equals_linear_cka_on_one_full_chunk():
    feats = features(18, 2, 8, 5)
    accumulator = MinibatchCKA(chunk_size=8)
    accumulator.update(feats)
    assert accumulator.result()["a"][0, 1].item() == pytest.approx(linear_cka(feats[0], feats[1]).item(), abs=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_results_stay_on_device_and_match_cpu():
    x, y = related_features(19, n=12)
    on_gpu = linear_cka(x.cuda(), y.cuda())
    assert on_gpu.device.type == "cuda"
    assert on_gpu.item() == pytest.approx(linear_cka(x, y).item(), abs=1e-4)
    feats_a, feats_b = features(20, 3, 10, 6), features(21, 2, 10, 4)
    on_cpu, on_cuda = MinibatchCKA(4), MinibatchCKA(4)
    on_cpu.update(feats_a, feats_b)
    on_cuda.update(feats_a.cuda(), feats_b.cuda())
    for key, value in on_cuda.result().items():
        assert value.device.type == "cuda"
        torch.testing.assert_close(value.cpu(), on_cpu.result()[key], atol=1e-4, rtol=0)


def test_minibatch_cka_bad_input_raises_diag_error():
    with pytest.raises(DiagError):
        MinibatchCKA(chunk_size=3)
    accumulator = MinibatchCKA(chunk_size=4)
    accumulator.update(features(22, 2, 3, 5))
    with pytest.raises(DiagError, match="at least 4 images"):
        accumulator.result()
    with pytest.raises(DiagError):
        accumulator.update(features(23, 2, 3, 6))  # feature width changed
    with pytest.raises(DiagError):
        accumulator.update(features(24, 2, 3, 5), features(25, 2, 3, 5))  # feats_b appeared
    with pytest.raises(DiagError):
        MinibatchCKA().update(features(26, 2, 3, 5), features(27, 2, 4, 5))  # image counts differ
    with pytest.raises(DiagError):
        MinibatchCKA().update(features(28, 3, 5))


def test_hsic_totals_of_disjoint_chunk_sets_add_up_to_the_whole():
    """Shards cut at chunk boundaries: their HSIC totals add up to one accumulator's, the
    final partial chunk (here 6 of 8 images) included."""
    generator = torch.Generator().manual_seed(5)
    feats_a, feats_b = torch.randn(3, 22, 7, generator=generator), torch.randn(2, 22, 5, generator=generator)
    whole = MinibatchCKA(chunk_size=8)
    whole.update(feats_a, feats_b)
    parts = []
    for start, stop in [(0, 8), (8, 16), (16, 22)]:
        part = MinibatchCKA(chunk_size=8)
        part.update(feats_a[:, start:stop], feats_b[:, start:stop])
        parts.append(part.hsic_totals())
    added = {key: sum(part[key] for part in parts) for key in ("a", "b", "ab")}
    for key, value in whole.hsic_totals().items():
        torch.testing.assert_close(added[key], value, rtol=1e-12, atol=1e-12)
        assert value.dtype == torch.float64
    for key, value in whole.result().items():
        torch.testing.assert_close(cka_from_hsic(added)[key], value)
    small = MinibatchCKA(chunk_size=8)
    small.update(feats_a[:, :3])
    assert small.hsic_totals() == {}  # fewer than 4 images: nothing to add
