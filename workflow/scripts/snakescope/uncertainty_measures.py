"""uncertainty_measures: the scores every task's uncertainty uses, and whether they track error.

The classification and segmentation score is the predictive entropy of the mean MC-dropout
probabilities, divided by log(K) so it lies in [0, 1] whatever the number of classes K (0: all samples
agree on one class with certainty; 1: uniform). Whether an uncertainty is useful is read from the
accuracy (or error) of the most certain share of images, pixels or objects against the rest.
"""

from __future__ import annotations

import numpy as np

CERTAIN_SHARE = 0.2  # the "most certain" share compared with the rest


def normalised_entropy(mean_probabilities: np.ndarray, axis: int = 0) -> np.ndarray:
    """Entropy of class probabilities along `axis`, divided by log(K): values in [0, 1]."""
    k = mean_probabilities.shape[axis]
    p = np.clip(mean_probabilities, 1e-12, 1.0)
    return -(p * np.log(p)).sum(axis=axis) / np.log(k)


def most_certain(uncertainty: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the CERTAIN_SHARE least uncertain values (at least one) and of the rest."""
    order = np.argsort(uncertainty, kind="stable")
    n_certain = max(1, int(round(CERTAIN_SHARE * len(order))))
    return order[:n_certain], order[n_certain:]


def tracks_error(uncertainty: np.ndarray, correct: np.ndarray, unit: str) -> dict:
    """Accuracy of the most certain 20 % versus the rest (of images, sampled pixels or objects), and the
    AUC of uncertainty as a detector of errors; {} without anything to score."""
    if correct.size == 0:
        return {}
    certain, rest = most_certain(uncertainty)
    result = {
        "unit": unit,
        "accuracy_most_certain_20pct": float(correct[certain].mean()),
        "accuracy_rest": float(correct[rest].mean()) if len(rest) else float("nan"),
    }
    if np.ptp(uncertainty) > 0 and 0 < correct.mean() < 1:
        from sklearn.metrics import roc_auc_score

        # AUC of uncertainty as a detector of errors: 0.5 = unrelated, 1 = every error is more uncertain
        result["error_detection_auc"] = float(roc_auc_score(~correct.astype(bool), uncertainty))
    return result
