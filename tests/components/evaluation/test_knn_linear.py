"""kNN against a NumPy reference; the linear probe's protocol against scikit-learn."""

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from components.evaluation.knn import knn_scores, knn_top1
from components.evaluation.linear import _validation_split, fit_linear_probe


def knn_reference(train, train_y, test, k, t, classes):
    a = train / np.linalg.norm(train, axis=1, keepdims=True)
    b = test / np.linalg.norm(test, axis=1, keepdims=True)
    out = np.zeros((len(test), classes))
    for i, row in enumerate(b @ a.T):
        top = np.argsort(-row)[:k]
        for j in top:
            out[i, train_y[j]] += np.exp(row[j] / t)
    return out


def test_weighted_cosine_knn_matches_reference():
    rng = np.random.default_rng(0)
    train, test = rng.normal(size=(300, 16)), rng.normal(size=(70, 16))
    train_y = rng.integers(0, 4, 300)
    test_y = rng.integers(0, 4, 70)
    expected = knn_reference(train, train_y, test, 15, 0.2, 4)
    got = knn_scores(train, train_y, test, k=15, temperature=0.2, num_classes=4, chunk_size=32)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-4)
    assert knn_top1(train, train_y, test, test_y, 15, 0.2, 4) == pytest.approx(
        (expected.argmax(1) == test_y).mean())


def test_knn_separates_clusters_and_caps_k():
    centres = np.eye(3) * 5
    train = np.repeat(centres, 10, axis=0) + 0.1
    labels = np.repeat(np.arange(3), 10)
    assert knn_top1(train, labels, centres, np.arange(3), k=1000) == 1.0


def test_validation_split_is_stratified_and_disjoint():
    labels = np.repeat(np.arange(5), [50, 40, 30, 2, 1])
    train, val = _validation_split(labels, 0.2, seed=1)
    assert set(train).isdisjoint(val) and len(train) + len(val) == len(labels)
    # the rule of data.split.stratified_split: a class of 2 keeps one in each part
    assert np.bincount(labels[val], minlength=5).tolist() == [10, 8, 6, 1, 0]
    assert set(labels[train]) == set(range(5))  # every class keeps a training example


def test_probe_matches_sklearn_logistic_regression():
    digits = load_digits()
    x, y = digits.data.astype(np.float32), digits.target
    x_train, y_train, x_test, y_test = x[:1200], y[:1200], x[1200:], y[1200:]
    probe = fit_linear_probe(x_train, y_train, 10, l2_grid=[1e-3, 1e-2, 1e-1], val_fraction=0.2,
                             max_iter=200, seed=0)
    assert set(probe.val_accuracy) == {1e-3, 1e-2, 1e-1}
    assert probe.l2 == max(probe.val_accuracy, key=lambda l2: (probe.val_accuracy[l2], l2))
    ours = (probe.scores(x_test).argmax(1) == y_test).mean()
    # the same objective in sklearn: C = 1 / (2 * n * l2) for mean CE + l2 ||W||^2
    scaler = StandardScaler().fit(x_train)
    reference = LogisticRegression(C=1 / (2 * len(x_train) * probe.l2), max_iter=5000)
    reference.fit(scaler.transform(x_train), y_train)
    theirs = reference.score(scaler.transform(x_test), y_test)
    assert ours == pytest.approx(theirs, abs=0.015)
    assert ours > 0.9


def test_single_l2_is_still_scored_on_validation():
    x = np.random.default_rng(0).normal(size=(40, 3))
    y = (x[:, 0] > 0).astype(int)
    probe = fit_linear_probe(x, y, 2, l2_grid=[1e-3])
    assert probe.l2 == 1e-3 and list(probe.val_accuracy) == [1e-3]  # still scored: val_top1
    assert (probe.scores(x).argmax(1) == y).mean() > 0.9


def test_validation_probe_gives_the_choice_and_scores_of_the_full_protocol():
    """The studies' probe (no refit on train + val) chooses the same L2 with the same
    validation top-1 of every L2 as the pipeline's protocol."""
    from components.evaluation.linear import choose_linear_probe, validation_probe

    x, y = load_digits(return_X_y=True)
    train, val = slice(0, 1200), slice(1200, None)
    grid = [1e-1, 1e-3, 1e-5]
    probe = choose_linear_probe(x[train], y[train], x[val], y[val], 10, grid, max_iter=50)
    l2, scores = validation_probe(x[train], y[train], x[val], y[val], 10, grid, max_iter=50)
    assert l2 == probe.l2 and scores == probe.val_accuracy
    assert set(scores) == set(grid) and scores[l2] == max(scores.values()) > 0.85
