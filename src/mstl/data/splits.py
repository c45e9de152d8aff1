"""Deterministic selection: nested stratified subsets, patient-aware stratified splits, class mapping,
class weights. Everything is a pure function of (labels, groups, seed)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class SelectionError(ValueError):
    pass


def stratified_order(labels: np.ndarray, seed: int) -> np.ndarray:
    """An ordering of all items whose every prefix is stratified (each class within 1 of its share).

    Items of class c are shuffled, then the r-th one gets key (r + 0.5) / n_c; sorting by key
    interleaves the classes evenly, so a prefix of length N holds round(N * n_c / n) of class c,
    give or take one - and the subsets for growing N are nested by construction.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    keys = np.empty(len(labels), dtype=np.float64)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        keys[idx] = (np.arange(len(idx)) + 0.5) / len(idx)
    # Class id breaks ties so that the order is fully determined.
    return np.lexsort((labels, keys))


def nested_subsets(labels: np.ndarray, sizes, seed: int) -> dict[int, np.ndarray]:
    """For each size, the indices of a stratified subset; each contains all smaller ones."""
    n = len(labels)
    too_big = [s for s in sizes if s > n]
    if too_big:
        raise SelectionError(
            f"requested size(s) {too_big} larger than the {n} usable images the bridge dataset holds; "
            f"pass smaller --sizes (at most {n})"
        )
    order = stratified_order(labels, seed)
    return {int(s): np.sort(order[: int(s)]) for s in sorted(sizes)}


def group_split(labels: np.ndarray, groups, fraction: float, seed: int,
                use_groups: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Split into (rest, held_out) with about ``fraction`` held out, stratified by class.

    With ``use_groups``, items sharing a group (patient) never fall on both sides. Items without a
    group form their own singleton group.
    """
    labels = np.asarray(labels)
    n = len(labels)
    if n < 2:
        raise SelectionError(f"cannot split {n} image(s) into two parts")
    keys = [(g if (use_groups and g is not None) else f"__item{i}") for i, g in enumerate(groups)]
    group_items: dict[str, list[int]] = {}
    for i, k in enumerate(keys):
        group_items.setdefault(k, []).append(i)
    names = sorted(group_items)
    rng = np.random.default_rng(seed)
    rng.shuffle(names)
    classes = np.unique(labels)
    target = {int(c): fraction * np.sum(labels == c) for c in classes}
    taken = {int(c): 0 for c in classes}
    held = np.zeros(n, dtype=bool)
    # Greedy: a group goes to the held-out side while its majority class still needs images there.
    for name in names:
        items = group_items[name]
        cls_counts = np.bincount(labels[items], minlength=int(classes.max()) + 1)
        major = int(np.argmax(cls_counts))
        need = target[major] - taken[major]
        if need >= 0.5 * len(items) or (need > 0 and len(items) == 1):
            held[items] = True
            for c, k in enumerate(cls_counts):
                if k:
                    taken[c] += int(k)
    if held.all() or not held.any():
        raise SelectionError(f"split of {n} images at fraction {fraction} left one side empty; use more data")
    return np.flatnonzero(~held), np.flatnonzero(held)


@dataclass(frozen=True)
class ClassMapping:
    """Maps source classes onto a binary task: index 1 = positive."""

    source_classes: tuple[str, ...]
    positive: str

    @property
    def names(self) -> list[str]:
        return [f"not {self.positive}", self.positive]

    def apply(self, labels: np.ndarray) -> np.ndarray:
        pos = self.source_classes.index(self.positive)
        return (np.asarray(labels) == pos).astype(np.int64)


def binary_mapping(classes, positive: str | None) -> ClassMapping:
    classes = tuple(classes)
    if positive is None:
        if "COVID-19" in classes:
            positive = "COVID-19"
        else:
            raise SelectionError(
                f"which class is positive? the target has classes {list(classes)}; pass --positive-class NAME"
            )
    if positive not in classes:
        raise SelectionError(f"positive class {positive!r} is not in the target's classes {list(classes)}")
    if len(classes) < 2:
        raise SelectionError(f"the target needs at least 2 classes, found {list(classes)}")
    return ClassMapping(classes, positive)


def balanced_class_weights(labels: np.ndarray, n_classes: int) -> dict[int, float]:
    """n / (k * n_c): minority classes weigh more (PROTOCOL.md); absent classes get 0."""
    labels = np.asarray(labels)
    counts = np.bincount(labels, minlength=n_classes)
    n = len(labels)
    return {c: (n / (n_classes * counts[c]) if counts[c] else 0.0) for c in range(n_classes)}


def stratified_sample(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """A stratified random sample of n items (the target's 2,800)."""
    return np.sort(stratified_order(labels, seed)[:n])
