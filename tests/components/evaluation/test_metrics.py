"""Top-k accuracy, confusion matrix and per-class accuracy against scikit-learn."""

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, confusion_matrix, recall_score, top_k_accuracy_score

from components.evaluation.metrics import (
    classification_metrics,
    confusion,
    per_class_accuracy,
    topk_accuracy,
)


@pytest.fixture
def fixed_predictions():
    rng = np.random.default_rng(3)
    scores = rng.normal(size=(500, 10))
    labels = rng.integers(0, 10, 500)
    scores[np.arange(250), labels[:250]] += 2.0  # half the rows lean to the truth
    return scores, labels


def test_top1_and_top5_match_sklearn(fixed_predictions):
    scores, labels = fixed_predictions
    assert topk_accuracy(scores, labels, 1) == pytest.approx(accuracy_score(labels, scores.argmax(1)))
    for k in (1, 2, 5, 10):
        assert topk_accuracy(scores, labels, k) == pytest.approx(
            top_k_accuracy_score(labels, scores, k=k, labels=np.arange(10)))
    assert classification_metrics(scores, labels, "linear") == {
        "linear_top1": pytest.approx(accuracy_score(labels, scores.argmax(1))),
        "linear_top5": pytest.approx(top_k_accuracy_score(labels, scores, k=5, labels=np.arange(10))),
    }


def test_hand_computed_example():
    scores = np.array([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
    labels = np.array([1, 1, 0, 2])
    assert topk_accuracy(scores, labels, 1) == 0.25
    assert topk_accuracy(scores, labels, 2) == 0.5
    assert topk_accuracy(scores, labels, 5) == 1.0  # k beyond the class count = all classes


def test_confusion_and_per_class_match_sklearn(fixed_predictions):
    scores, labels = fixed_predictions
    predictions = scores.argmax(1)
    np.testing.assert_array_equal(confusion(labels, predictions, 10),
                                  confusion_matrix(labels, predictions, labels=np.arange(10)))
    np.testing.assert_allclose(per_class_accuracy(labels, predictions, 10),
                               recall_score(labels, predictions, average=None, labels=np.arange(10)))
    absent = per_class_accuracy(np.array([0, 0]), np.array([0, 1]), 3)
    assert absent[0] == 0.5 and np.isnan(absent[2])
