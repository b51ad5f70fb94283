"""The log-sigmoid axis of the pairwise losses (reward model, ranking, DPO): the stable forms, the gradient's
sigmoid, and the naive ``log(sigmoid(x))`` that underflows to log(0) = -inf at large gaps."""

from __future__ import annotations

import numpy as np

__all__ = ["NAIVE_TEXT", "log_sigmoid", "naive_neg_log_sigmoid", "sigmoid"]

NAIVE_TEXT = (
    "log(sigmoid(x)) computed naively: sigmoid underflows to 0 for x below ~-745 (float64) / ~-104 "
    "(float32) and log(0) = -inf (an infinite loss at large reward gaps); use logsigmoid / softplus"
)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """sigma(x) = exp(-softplus(-x)), finite for every x."""
    return np.asarray(np.exp(-np.logaddexp(0.0, -x)))


def log_sigmoid(x: np.ndarray) -> np.ndarray:
    """log sigma(x) = -softplus(-x)."""
    return np.asarray(-np.logaddexp(0.0, -np.asarray(x, dtype=np.float64)))


def naive_neg_log_sigmoid(x: np.ndarray) -> np.ndarray:
    """-log(1 / (1 + exp(-x))): the naive form real code writes (inf once sigmoid underflows)."""
    with np.errstate(all="ignore"):
        return np.asarray(-np.log(1.0 / (1.0 + np.exp(-x))))
