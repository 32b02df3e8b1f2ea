"""uncertainty_measures: the scores every task's uncertainty uses, and whether they track error.

The classification and segmentation score is the predictive entropy of the mean MC-dropout
probabilities, divided by log(K) so it lies in [0, 1] whatever the number of classes K (0: all samples
agree on one class with certainty; 1: uniform). Its epistemic part, the mutual information between the
prediction and the dropout mask (BALD, Houlsby et al. 2011; Gal et al., ICML 2017), is written next to
it: high only where the samples disagree, not where each sample is unsure on its own. Whether an
uncertainty is useful is read from the accuracy (or error) of the most certain share of images, pixels or objects against the rest.
Whether the network's probabilities can be trusted is read from its expected calibration error and a
reliability diagram, before and after temperature scaling.
"""

from __future__ import annotations

import numpy as np

CERTAIN_SHARE = 0.2  # the "most certain" share compared with the rest


def normalised_entropy(mean_probabilities: np.ndarray, axis: int = 0) -> np.ndarray:
    """Entropy of class probabilities along `axis`, divided by log(K): values in [0, 1]."""
    k = mean_probabilities.shape[axis]
    p = np.clip(mean_probabilities, 1e-12, 1.0)
    return -(p * np.log(p)).sum(axis=axis) / np.log(k)


def mutual_information(probabilities: np.ndarray, entropy_of_mean: np.ndarray, axis: int) -> np.ndarray:
    """BALD score of MC-dropout class probabilities (samples first, classes along `axis`): the normalised
    entropy of the mean (which the caller has already computed for its own score) minus the mean of the
    samples' normalised entropies."""
    expected = normalised_entropy(probabilities, axis=axis).mean(axis=0)
    return np.maximum(entropy_of_mean - expected, 0.0)


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


# -- calibration: can the probabilities be trusted? ------------------------------------------------------

CALIBRATION_BINS = 10


def reliability_bins(probabilities: np.ndarray, labels: np.ndarray, n_bins: int = CALIBRATION_BINS) -> dict:
    """Top-label reliability of (n, K) class probabilities: per confidence bin the count, the mean
    confidence and the accuracy, and the expected calibration error (ECE: the count-weighted mean gap
    between confidence and accuracy; Guo et al., ICML 2017). sklearn has calibration curves but no ECE."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    which = np.clip((confidence * n_bins).astype(int), 0, n_bins - 1)
    count = np.bincount(which, minlength=n_bins)
    filled = np.maximum(count, 1)
    mean_confidence = np.bincount(which, confidence, minlength=n_bins) / filled
    accuracy = np.bincount(which, correct, minlength=n_bins) / filled
    ece = float((count * np.abs(mean_confidence - accuracy)).sum() / max(len(labels), 1))
    return {"ece": ece, "count": count, "confidence": mean_confidence, "accuracy": accuracy}


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    from scipy.special import softmax as scipy_softmax

    return scipy_softmax(logits / temperature, axis=1)


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature T minimising the negative log-likelihood of softmax(logits / T) (temperature
    scaling, Guo et al. 2017), searched on log T in [1/20, 20]."""
    from scipy.optimize import minimize_scalar
    from scipy.special import log_softmax

    rows = np.arange(len(labels))

    def nll(log_t: float) -> float:
        return float(-log_softmax(logits / np.exp(log_t), axis=1)[rows, labels].mean())

    return float(np.exp(minimize_scalar(nll, bounds=(-np.log(20), np.log(20)), method="bounded").x))


def calibration_report(val: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray], unit: str,
                       figure_path=None, temperature: float | None = None) -> dict:
    """ECE of the network's softmax on the test set before and after temperature scaling with
    `temperature` (None: fitted on the validation set; `val`, `test`: (n, K) logits and (n,) labels), and a
    reliability diagram."""
    temperature = fit_temperature(*val) if temperature is None else temperature
    before, after = (reliability_bins(softmax(test[0], t), test[1]) for t in (1.0, temperature))
    val_before, val_after = (reliability_bins(softmax(val[0], t), val[1])["ece"] for t in (1.0, temperature))
    if figure_path is not None:
        _reliability_figure(before, after, temperature, unit, len(test[1]), figure_path)
    return {"calibration_unit": unit, "temperature": temperature, "ece": before["ece"],
            "ece_temperature_scaled": after["ece"], "val_ece": val_before, "val_ece_temperature_scaled": val_after,
            "temperature_scaling_helps_on_val": val_after < val_before}


def _reliability_figure(before: dict, after: dict, temperature: float, unit: str, n: int, path) -> None:
    import matplotlib.pyplot as plt

    from snakescope.io import save_figure

    centres = (np.arange(CALIBRATION_BINS) + 0.5) / CALIBRATION_BINS
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(5, 5.6), sharex=True, height_ratios=[3, 1])
    top.plot([0, 1], [0, 1], "k--", linewidth=0.8, label="perfect calibration")
    for bins, name in ((before, "network"), (after, f"temperature-scaled, T = {temperature:.2f}")):
        filled = bins["count"] > 0
        top.plot(bins["confidence"][filled], bins["accuracy"][filled], "o-", label=f"{name}: ECE {bins['ece']:.3f}")
    top.set_ylabel("accuracy")
    top.set_ylim(0, 1.02)
    top.legend(fontsize=8, loc="upper left")
    top.set_title(f"Reliability on the test set ({n} {unit}; T fitted on validation)")
    bottom.bar(centres, before["count"], width=1 / CALIBRATION_BINS, color="0.6", edgecolor="white")
    bottom.set_xlabel("confidence (probability of the predicted class)")
    bottom.set_ylabel(unit)
    bottom.set_xlim(0, 1)
    save_figure(figure, path)
