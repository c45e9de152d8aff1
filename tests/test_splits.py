import numpy as np
import pytest

from mstl.data.splits import (SelectionError, balanced_class_weights, binary_mapping, group_split,
                              nested_subsets, stratified_sample)


def test_nested_and_stratified():
    labels = np.repeat([0, 1, 2, 3], [500, 300, 150, 50])
    subs = nested_subsets(labels, [100, 200, 400, 800], seed=3)
    prev = set()
    for size, idx in subs.items():
        assert len(idx) == size and prev <= set(idx)
        prev = set(idx)
        counts = np.bincount(labels[idx], minlength=4)
        expected = size * np.bincount(labels) / len(labels)
        assert np.all(np.abs(counts - expected) <= 1), (size, counts, expected)
    assert np.array_equal(nested_subsets(labels, [100], 3)[100], subs[100])
    assert not np.array_equal(nested_subsets(labels, [100], 4)[100], subs[100])


def test_too_large_size_is_a_clear_error():
    with pytest.raises(SelectionError, match="larger than the 10 usable images"):
        nested_subsets(np.zeros(10, int), [5, 20], 0)


def test_group_split_keeps_patients_together():
    rng = np.random.default_rng(0)
    groups = [f"p{i // 3}" for i in range(300)]
    labels = np.array([int(g[1:]) % 2 for g in groups])
    rest, held = group_split(labels, groups, 0.2, seed=1)
    assert not ({groups[i] for i in rest} & {groups[i] for i in held})
    assert 0.15 <= len(held) / 300 <= 0.25
    frac1 = labels[held].mean()
    assert 0.35 <= frac1 <= 0.65
    rest2, held2 = group_split(labels, groups, 0.2, seed=1, use_groups=False)
    assert {groups[i] for i in rest2} & {groups[i] for i in held2}  # images of one patient on both sides
    del rng


def test_binary_mapping():
    m = binary_mapping(["COVID-19", "Non-COVID", "Normal"], None)
    assert m.positive == "COVID-19" and m.apply(np.array([0, 1, 2])).tolist() == [1, 0, 0]
    assert m.names == ["not COVID-19", "COVID-19"]
    with pytest.raises(SelectionError, match="--positive-class"):
        binary_mapping(["NORMAL", "PNEUMONIA"], None)
    with pytest.raises(SelectionError, match="not in the target"):
        binary_mapping(["NORMAL", "PNEUMONIA"], "COVID")
    assert binary_mapping(["NORMAL", "PNEUMONIA"], "PNEUMONIA").apply(np.array([1, 0])).tolist() == [1, 0]


def test_class_weights_and_sample():
    w = balanced_class_weights(np.array([0, 0, 0, 1]), 2)
    assert w[1] == pytest.approx(2.0) and w[0] == pytest.approx(4 / 6)
    labels = np.repeat([0, 1, 2], [100, 100, 100])
    s = stratified_sample(labels, 30, 0)
    assert np.bincount(labels[s]).tolist() == [10, 10, 10]
