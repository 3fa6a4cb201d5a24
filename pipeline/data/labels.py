"""The labels a student trains on: partly labelled pairs (``data.labelled``) and noisy labels (``data.label_noise``).

Used by ``fdkd.pipeline.data.load`` on every dataset, built-in or manifest; the dataset file is never changed. A
training row whose student label is ``UNLABELLED`` (-1) is a pair nobody labelled: every teacher term of every
method still applies to it, the cross-entropy never does (``fdkd.pipeline.objectives``). Validation and test labels
are never touched.

- ``labelled`` in (0, 1]: within each class of the labelled training rows, ``max(1, round(labelled * n))`` rows
  keep their label (seeded); the others become unlabelled. At 1 nothing changes.
- ``label_noise`` in [0, 1): within each class of the rows that kept a label, ``round(label_noise * n)`` rows get
  another class drawn uniformly (symmetric noise), fixed per pair by the seed.

Both draws come from ``numpy.random.default_rng`` seeded by (seed, a constant per knob), so the same dataset,
knobs and seed give the same labels on every machine. The teacher keeps the file's labels (``teacher_labels``):
for the built-in presets every training image is labelled (image labels are cheap, public data); a manifest's
empty label cells are unlabelled for the teacher too.
"""

from __future__ import annotations

import numpy as np

UNLABELLED = -1


def keep_labels(y: np.ndarray, split: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A copy of ``y`` in which only ``fraction`` of each class's labelled training rows keep their label."""
    if not 0 < fraction <= 1:
        raise ValueError(f"data.labelled must be in (0, 1], got {fraction}")
    out = np.array(y, copy=True)
    if fraction == 1:
        return out
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x1ABE1]))
    train = np.flatnonzero((split == 0) & (out >= 0))
    for c in np.unique(out[train]):
        rows = train[out[train] == c]
        keep = max(1, int(round(fraction * len(rows))))
        drop = rng.permutation(rows)[keep:]
        out[drop] = UNLABELLED
    return out


def add_label_noise(y: np.ndarray, split: np.ndarray, noise: float, num_classes: int, seed: int) -> np.ndarray:
    """A copy of ``y`` with ``noise`` of each class's labelled training rows flipped to another class, uniformly."""
    if not 0 <= noise < 1:
        raise ValueError(f"data.label_noise must be in [0, 1), got {noise}")
    out = np.array(y, copy=True)
    if noise == 0:
        return out
    if num_classes < 2:
        raise ValueError("data.label_noise needs at least two classes")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x401CE]))
    train = np.flatnonzero((split == 0) & (y >= 0))
    for c in np.unique(y[train]):
        rows = train[y[train] == c]
        flip = rng.permutation(rows)[: int(round(noise * len(rows)))]
        out[flip] = (c + rng.integers(1, num_classes, size=len(flip))) % num_classes  # never the class itself
    return out


def student_labels(y: np.ndarray, split: np.ndarray, num_classes: int, labelled: float, noise: float,
                   seed: int) -> tuple[np.ndarray, dict]:
    """(the student's labels, a summary for reports): ``labelled`` first, then ``noise`` on the kept labels."""
    kept = keep_labels(y, split, labelled, seed)
    out = add_label_noise(kept, split, noise, num_classes, seed)
    train = split == 0
    info = {"labelled_fraction": labelled, "label_noise": noise, "label_seed": seed,
            "train_rows": int(train.sum()), "train_labelled": int((train & (out >= 0)).sum()),
            "train_unlabelled": int((train & (out < 0)).sum()),
            "train_unlabelled_in_file": int((train & (np.asarray(y) < 0)).sum()),  # a manifest's empty label cells
            "train_noisy": int((train & (out >= 0) & (out != y)).sum())}
    return out, info
