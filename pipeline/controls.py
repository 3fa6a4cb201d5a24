"""Controls that separate a teacher's knowledge from plain regularisation, usable with any method.

- Label smoothing matched to the teacher (``distill.label_smoothing.epsilon: teacher``): the
  smoothing strength whose smoothed one-hot target has the teacher's mean soft-target entropy
  on the training split. ``none`` + this is the "KD is just label smoothing" control.
- Shuffled teacher (``distill.teacher_shuffle: true``): every training pair is given the teacher
  input (hence the cached teacher outputs) of another training pair of the same class, a
  derangement within each class (the student's label, noisy labels included; on an unlabelled pair,
  the class the teacher predicts from the pair's own input). Class-level knowledge survives,
  instance-level knowledge does not; a method that only beats ``none`` with the real teacher, not
  with this one, transfers instances. With noisy labels it also loses the teacher's label correction (the
  swapped-in pair shares the *noisy* label, not the teacher's verdict on this pair).
- Class-prototype teacher (``distill.teacher_prototype: true``): every training pair is given the mean teacher
  output (features and logits) over the training pairs of the class the teacher predicts for this pair
  (``class_prototypes``). The teacher's verdict on the pair survives (label correction), everything else the
  teacher knows about this pair does not: real teacher minus prototype is knowledge of the instance, prototype
  minus shuffled teacher is label correction.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def smoothed_entropy(epsilon: float, num_classes: int) -> float:
    """Entropy (nats) of the label-smoothed one-hot target, torch's convention: (1-e)*onehot + e/C."""
    c = num_classes
    p_true, p_other = 1 - epsilon + epsilon / c, epsilon / c
    h = -p_true * math.log(p_true) if p_true > 0 else 0.0
    if p_other > 0:
        h -= (c - 1) * p_other * math.log(p_other)
    return h


def epsilon_for_entropy(entropy: float, num_classes: int, tol: float = 1e-10) -> float:
    """The smoothing strength in [0, 1] whose target has ``entropy`` nats (bisection; H rises with e)."""
    if num_classes < 2:
        raise ValueError("label smoothing needs at least two classes")
    top = math.log(num_classes)
    if entropy <= 0:
        return 0.0
    if entropy >= top:
        return 1.0
    lo, hi = 0.0, 1.0
    while hi - lo > tol:
        mid = (lo + hi) / 2
        if smoothed_entropy(mid, num_classes) < entropy:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def mean_soft_entropy(logits: torch.Tensor, temperature: float = 1.0) -> float:
    """Mean over rows of the entropy (nats) of softmax(logits / temperature)."""
    logp = torch.log_softmax(logits.double() / temperature, dim=1)
    return float(-(logp.exp() * logp).sum(1).mean())


def teacher_matched_epsilon(teacher_logits: torch.Tensor, temperature: float = 1.0) -> tuple[float, float]:
    """(epsilon, the teacher's mean soft-target entropy) for the training rows' teacher logits."""
    h = mean_soft_entropy(teacher_logits, temperature)
    return epsilon_for_entropy(h, teacher_logits.shape[1]), h


def shuffle_within_class(y: np.ndarray, rows: np.ndarray, seed: int) -> np.ndarray:
    """A permutation of ``rows`` (dataset row ids): each row maps to another row of the same class.

    Returns ``src`` with ``src[k]`` the row whose teacher outputs row ``rows[k]`` receives. Within each
    class the rows are put in a seeded random order and each takes its successor's (one cycle), so
    there is no fixed point wherever a class has more than one row.
    """
    rows = np.asarray(rows)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5F1E]))
    src = rows.copy()
    labels = np.asarray(y)[rows]
    for c in np.unique(labels):
        pos = np.flatnonzero(labels == c)
        order = pos[rng.permutation(len(pos))]
        src[order] = rows[np.roll(order, -1)]
    return src


def labelled_or_predicted(labels: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """The class the shuffled-teacher control groups a training row by: its label, or on an unlabelled row
    (label -1) the class the teacher predicts from the row's own input."""
    labels = np.asarray(labels)
    return np.where(labels >= 0, labels, np.asarray(predicted))


def shuffled_teacher_rows(y: np.ndarray, split: np.ndarray, seed: int) -> np.ndarray:
    """A row map over the whole dataset: training rows deranged within class, other rows unchanged.

    ``x_teacher[row_map]`` is the teacher's input as the shuffled-teacher control sees it.
    """
    row_map = np.arange(len(y))
    train = np.flatnonzero(split == 0)
    row_map[train] = shuffle_within_class(y, train, seed)
    return row_map


def class_prototypes(features: torch.Tensor, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """(features, logits, predicted class) per training row, each row's outputs replaced by the mean over the rows
    the teacher predicts the same class for (argmax of its own logits; the first class on ties). Means are taken in
    float64 and returned in the inputs' dtype; a predicted class's prototype argmax can differ from the class where
    the mean is flat, and that is kept as it is (the control is the mean, not a relabelling)."""
    if len(features) != len(logits):
        raise ValueError(f"class_prototypes: {len(features)} feature rows but {len(logits)} logit rows")
    predicted = logits.argmax(1)
    f_out, z_out = torch.empty_like(features), torch.empty_like(logits)
    for c in torch.unique(predicted):
        rows = predicted == c
        f_out[rows] = features[rows].double().mean(0).to(features.dtype)
        z_out[rows] = logits[rows].double().mean(0).to(logits.dtype)
    return f_out, z_out, predicted.cpu().numpy()
