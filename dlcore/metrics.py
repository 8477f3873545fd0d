"""Metrics on NumPy arrays: accuracy, F1, R^2 and MAE. Each takes ``(y_true, y_pred)`` where ``y_pred`` may be
raw model output (logits or scores): classification metrics take the argmax of 2-D scores, and multi-label
metrics threshold logits at 0 (probability 0.5)."""
from __future__ import annotations

import numpy as np


def _labels(y_pred):
    y_pred = np.asarray(y_pred)
    return y_pred.argmax(-1) if y_pred.ndim == 2 else y_pred


def accuracy(y_true, y_pred):
    """Share of exact matches; for multi-label 0/1 targets, of matching rows (subset accuracy)."""
    y_true = np.asarray(y_true)
    if y_true.ndim == 2:  # multi-label: threshold logits at 0
        return float(np.mean(np.all((np.asarray(y_pred) > 0) == (y_true > 0.5), axis=1)))
    return float(np.mean(_labels(y_pred) == y_true))


def f1(y_true, y_pred, average=None):
    """F1 score. Multi-label (2-D 0/1 targets, logits thresholded at 0): micro-averaged by default.
    Multi-class: macro-averaged by default; binary labels: F1 of class 1."""
    y_true = np.asarray(y_true)
    if y_true.ndim == 2:
        pred = np.asarray(y_pred) > 0
        true = y_true > 0.5
        if (average or "micro") == "micro":
            tp = np.sum(pred & true)
            return float(2 * tp / max(1, 2 * tp + np.sum(pred & ~true) + np.sum(~pred & true)))
        scores = [f1(true[:, j].astype(int), pred[:, j].astype(int)) for j in range(true.shape[1])]
        return float(np.mean(scores))
    pred = _labels(y_pred)
    classes = np.unique(np.concatenate([y_true, pred]))
    if average is None and set(classes.tolist()) <= {0, 1}:
        tp = np.sum((pred == 1) & (y_true == 1))
        return float(2 * tp / max(1, np.sum(pred == 1) + np.sum(y_true == 1)))
    scores = []
    for c in classes:
        tp = np.sum((pred == c) & (y_true == c))
        scores.append(2 * tp / max(1, np.sum(pred == c) + np.sum(y_true == c)))
    return float(np.mean(scores))


def r2(y_true, y_pred):
    """Coefficient of determination, 1 - SS_res / SS_tot (averaged over outputs for 2-D targets)."""
    y_true, y_pred = np.asarray(y_true, np.float64), np.asarray(y_pred, np.float64).reshape(np.shape(y_true))
    ss_res = np.sum((y_true - y_pred) ** 2, axis=0)
    ss_tot = np.sum((y_true - y_true.mean(axis=0)) ** 2, axis=0)
    return float(np.mean(1 - ss_res / np.where(ss_tot == 0, 1, ss_tot)))


def mae(y_true, y_pred):
    """Mean absolute error."""
    y_true = np.asarray(y_true, np.float64)
    return float(np.mean(np.abs(y_true - np.asarray(y_pred, np.float64).reshape(y_true.shape))))


METRICS = {"accuracy": accuracy, "acc": accuracy, "f1": f1, "r2": r2, "mae": mae}
# metrics where smaller is better (early stopping and checkpointing need the direction)
SMALLER_IS_BETTER = {"loss", "mae"}


def get(metric):
    """A metric function from a name in METRICS or a callable(y_true, y_pred) -> float."""
    if callable(metric):
        return getattr(metric, "__name__", "metric"), metric
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; known: {', '.join(METRICS)}")
    return metric, METRICS[metric]
