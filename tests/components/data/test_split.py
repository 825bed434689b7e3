import numpy as np

from components.data.split import stratified_split


def test_stratified_split_per_class_fraction_and_determinism():
    labels = np.repeat(np.arange(3), [10, 20, 1])
    mask = stratified_split(labels, 0.25, seed=3)
    assert mask.sum() == round(2.5 + 0.5) + 5  # 3 of class 0 (2.5 rounds half up), 5 of class 1
    assert mask[labels == 0].sum() == 3 and mask[labels == 1].sum() == 5
    assert not mask[labels == 2].any()  # a single image stays in train
    assert np.array_equal(mask, stratified_split(labels, 0.25, seed=3))
    assert not np.array_equal(mask, stratified_split(labels, 0.25, seed=4))


def test_every_class_of_two_or_more_lands_in_both_splits():
    labels = np.repeat(np.arange(4), 2)
    for fraction in (0.01, 0.99):
        mask = stratified_split(labels, fraction, seed=0)
        for c in range(4):
            assert mask[labels == c].sum() == 1
