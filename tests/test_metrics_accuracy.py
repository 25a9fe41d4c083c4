"""Top-k accuracy: ``topk_correct`` against a brute-force loop, summing over batches, bad input."""

from __future__ import annotations

import pytest
import torch

from deepvit_diag.errors import DiagError
from deepvit_diag.metrics import TOP_K, Accuracy, reported_ks, topk_correct
from deepvit_diag.metrics._checks import deferred_value_checks


def brute_force_correct(logits: torch.Tensor, labels: torch.Tensor, k: int) -> int:
    """Image by image: is the label among the k classes with the largest logits (argmax for k = 1)?"""
    correct = 0
    for row, label in zip(logits.tolist(), labels.tolist()):
        if k == 1:
            correct += int(max(range(len(row)), key=lambda c: row[c]) == label)
        else:
            correct += int(label in sorted(range(len(row)), key=lambda c: -row[c])[:k])
    return correct


@pytest.mark.parametrize("num_classes", [7, 10, 1000])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_counts_equal_a_brute_force_argmax_loop(num_classes, dtype):
    generator = torch.Generator().manual_seed(num_classes)
    logits = torch.randn(53, num_classes, generator=generator, dtype=dtype)
    labels = torch.randint(0, num_classes, (53,), generator=generator)
    labels[:9] = logits[:9].argmax(dim=1)  # some images right, so no count is trivially 0
    ks = (1, 2, 5)
    counts = topk_correct(logits, labels, ks)
    assert counts.dtype == torch.int64 and counts.shape == (3,)
    assert counts.tolist() == [brute_force_correct(logits, labels, k) for k in ks]
    assert counts[0] == (logits.argmax(dim=1) == labels).sum()


def test_batches_add_up_to_the_whole_set():
    generator = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(40, 10, generator=generator), torch.randint(0, 10, (40,), generator=generator)
    whole = topk_correct(logits, labels)
    parts = sum(topk_correct(logits[start : start + 7], labels[start : start + 7]) for start in range(0, 40, 7))
    assert torch.equal(whole, parts)


def test_ties_go_to_the_label_and_all_k_count_at_most_the_images():
    logits = torch.tensor([[1.0, 1.0, 0.0], [0.0, 2.0, 2.0], [3.0, 1.0, 2.0]])
    labels = torch.tensor([1, 1, 1])
    assert topk_correct(logits, labels, (1, 2, 3)).tolist() == [2, 2, 3]


def test_bfloat16_logits_and_labels_of_another_integer_type():
    logits = torch.tensor([[0.1, 0.9], [0.8, 0.2]], dtype=torch.bfloat16)
    assert topk_correct(logits, torch.tensor([1, 1], dtype=torch.int32), (1,)).tolist() == [1]


@pytest.mark.parametrize(
    "logits,labels,ks,message",
    [
        (torch.rand(4, 3), torch.tensor([0.0, 1.0, 2.0, 0.0]), (1,), "integer tensor"),
        (torch.rand(4, 3), torch.tensor([0, 1, 2]), (1,), r"\(B,\) = \(4,\)"),
        (torch.rand(4, 3), torch.tensor([[0], [1], [2], [0]]), (1,), "integer tensor"),
        (torch.rand(4), torch.tensor([0, 1, 2, 0]), (1,), r"\(B, C\)"),
        (torch.rand(4, 3), torch.tensor([0, 1, 2, 0]), (4,), "from 1 to the 3 classes"),
        (torch.rand(4, 3), torch.tensor([0, 1, 2, 0]), (), "from 1 to the 3 classes"),
        (torch.rand(4, 3), torch.tensor([0, 1, 3, 0]), (1,), "class indices from 0 to 2"),
        (torch.rand(4, 3), torch.tensor([0, -1, 2, 0]), (1,), "class indices from 0 to 2"),
        (torch.tensor([[0.0, float("nan")], [1.0, 0.0]]), torch.tensor([0, 0]), (1,), "NaN or Inf"),
    ],
)
def test_bad_input_is_a_diag_error(logits, labels, ks, message):
    with pytest.raises(DiagError, match=message):
        topk_correct(logits, labels, ks)


def test_labels_out_of_range_are_reported_at_the_end_of_deferred_checks():
    with pytest.raises(DiagError, match=r"class indices from 0 to 2 \(at position 5\)"):
        with deferred_value_checks() as checks:
            checks.at(5)
            counts = topk_correct(torch.rand(2, 3), torch.tensor([0, 7]), (1,))  # no raise here
            assert counts.shape == (1,)


def test_reported_ks_and_the_accuracy_record():
    assert TOP_K == (1, 5)
    assert reported_ks(10) == (1, 5) and reported_ks(5) == (1,) and reported_ks(1) == ()
    accuracy = Accuracy(8, {1: 6, 5: 8}, "class folders")
    assert accuracy.available and accuracy.top(1) == 0.75 and accuracy.top(5) == 1.0 and accuracy.top(2) is None
    assert Accuracy.from_dict(accuracy.to_dict()) == accuracy
    assert accuracy.to_dict()["correct"] == {"1": 6, "5": 8}  # JSON object keys
    missing = Accuracy.unavailable("no labels")
    assert not missing.available and missing.top(1) is None and missing.labels == "no labels"
