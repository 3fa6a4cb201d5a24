"""Train/val/test splits of a user manifest that never separate rows sharing a file.

Rows that share a file (the same image paired with several clips, or the same clip with several
images) are one *group*, and so are rows with the same value in the optional ``group`` column
(a speaker, a recording session); groups chain transitively. A whole group goes to one split,
so no file and no group is seen in training and again in evaluation.

``grouped_split`` assigns groups greedily, largest first (seeded order among equal sizes), each
to the split whose per-class shortfall against the requested fractions is largest for that
group's rows. With one row per group this reduces to a class-stratified split. An unlabelled row
(label -1, an empty ``label`` cell) is for training only: its whole group goes to train, and the
fractions are met on the labelled rows.
"""

from __future__ import annotations

import numpy as np


def row_groups(keys_per_row: list[list[str]]) -> np.ndarray:
    """Group id per row: rows sharing any key (a file path, a ``group`` value) share an id (union-find)."""
    parent = list(range(len(keys_per_row)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict[str, int] = {}
    for i, keys in enumerate(keys_per_row):
        for k in keys:
            if k in first:
                a, b = find(i), find(first[k])
                if a != b:
                    parent[max(a, b)] = min(a, b)
            else:
                first[k] = i
    roots = [find(i) for i in range(len(keys_per_row))]
    _, ids = np.unique(roots, return_inverse=True)
    return ids.astype(np.int64)


def grouped_split(labels: np.ndarray, groups: np.ndarray, fractions, rng: np.random.Generator) -> np.ndarray:
    """Split ids (0 train, 1 val, 2 test) per row; every group lands whole in one split.

    Rows labelled -1 (unlabelled) and every row of their groups go to train."""
    labels, groups = np.asarray(labels), np.asarray(groups)
    n_classes = int(labels.max()) + 1 if len(labels) and labels.max() >= 0 else 0
    labelled = labels >= 0
    frac = np.asarray(fractions, dtype=np.float64)
    want = np.outer(frac, np.bincount(labels[labelled], minlength=n_classes))  # [split, class] target rows
    have = np.zeros_like(want)
    ids, sizes = np.unique(groups, return_counts=True)
    order = sorted(range(len(ids)), key=lambda i: (-sizes[i], rng.random()))
    split = np.zeros(len(labels), np.int8)
    forced = set(np.unique(groups[~labelled]).tolist())  # an unlabelled row trains, and so does its whole group
    have[0] += np.bincount(labels[labelled & np.isin(groups, list(forced))], minlength=n_classes)
    for i in order:
        if ids[i] in forced:
            continue
        members = np.flatnonzero(groups == ids[i])
        counts = np.bincount(labels[members], minlength=n_classes)
        shortfall = ((want - have) * counts).sum(axis=1)  # rows this split still lacks, of the group's classes
        s = int(np.argmax(shortfall))
        split[members] = s
        have[s] += counts
    return split
