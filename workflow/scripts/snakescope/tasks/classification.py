"""classification: one class per image, labels from a CSV, images used whole (resized).

* predict -> ``predictions.csv``: id, filename, predicted label, one probability column per class.
* uncertainty: Monte-Carlo dropout; the classifier's backbone runs once and only its dropout head is
  sampled (snakescope.engine.inference.sample_dropout), so 20 samples cost about one forward pass. The
  score is the normalised predictive entropy of the mean probabilities.
* evaluate: accuracy, balanced accuracy, macro F1 and Jaccard, MAE/MSE of the class index and
  one-vs-rest AUC (scikit-learn), beside the majority class of the training split as trivial baseline;
  a confusion matrix and ROC curves.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from snakescope.io import natural_key, save_figure
from snakescope.tasks.base import Predictor, Task, batched
from snakescope.uncertainty_measures import mutual_information, normalised_entropy, tracks_error

PREDICT_BATCH = 64


def classification_metrics(truth: list[str], predicted: list[str], probabilities: np.ndarray, classes: list[str]) -> dict:
    """Accuracy, balanced accuracy, macro F1, macro Jaccard, MAE/MSE of the class index, one-vs-rest AUC.

    AUC is macro-averaged over the classes present in `truth` (a class absent from the test set has no
    ROC curve); it is NaN when fewer than two classes are present.
    """
    from sklearn import metrics

    index = {c: i for i, c in enumerate(classes)}
    y_true = np.array([index[t] for t in truth])
    y_pred = np.array([index[p] for p in predicted])
    result = {
        "accuracy": metrics.accuracy_score(y_true, y_pred),
        "balanced_accuracy": metrics.balanced_accuracy_score(y_true, y_pred),
        "f1_macro": metrics.f1_score(y_true, y_pred, average="macro", labels=sorted(set(y_true)), zero_division=0),
        "jaccard_macro": metrics.jaccard_score(y_true, y_pred, average="macro", labels=sorted(set(y_true)), zero_division=0),
        "mae": metrics.mean_absolute_error(y_true, y_pred),
        "mse": metrics.mean_squared_error(y_true, y_pred),
    }
    present = sorted(set(y_true))
    if len(present) >= 2:
        aucs = [metrics.roc_auc_score(y_true == c, probabilities[:, c]) for c in present]
        result["auc_ovr_macro"] = float(np.mean(aucs))
    else:
        result["auc_ovr_macro"] = float("nan")
    return {k: float(v) for k, v in result.items()}


class ClassificationPredictor(Predictor):
    batch_size = PREDICT_BATCH

    def logits(self, items: list[dict]):
        """(N, K) network outputs for a batch of items (autocast on GPUs), a float tensor on the CPU."""
        import torch

        from snakescope.engine.runtime import autocast_dtype

        amp_dtype = autocast_dtype(self.device)
        image = torch.as_tensor(np.stack([it["image"] for it in items])).to(self.device)
        with torch.no_grad(), torch.autocast(self.device.type, dtype=amp_dtype or torch.float32,
                                             enabled=amp_dtype is not None):
            return self.model(image).float().cpu()

    def predict(self, items: list[dict], out: Path) -> list[dict]:
        import torch

        classes = self.payload["classes"]
        probabilities = torch.softmax(self.logits(items), dim=1).numpy()
        rows = []
        for item, p in zip(items, probabilities, strict=True):
            row = {"id": item["id"], "predicted_label": classes[int(p.argmax())]}
            row.update({f"prob_{c}": float(v) for c, v in zip(classes, p, strict=True)})
            rows.append(row)
        return rows


class Classification(Task):
    name = "classification"
    dense = False
    label_is_class_map = False
    default_model = "resnet50"
    losses = ("cross_entropy", "focal")
    headline_metric = "accuracy"
    score_name = "val_accuracy"
    # AIMIC's comparison: ResNeXt-50 the best accuracy, MobileNet-V2 the best accuracy per second
    rule_models = {"cpu": "mobilenet_v2", "cuda": "resnext50_32x4d"}
    rule_model_reason = "classification: AIMIC's pick"
    max_batch = 64
    cpu_batch = 16
    default_resize = [224, 224]
    mc_rows_per_pass = 256

    def fingerprint(self, settings: dict, samples: list, targets: dict, spatial_dims: int) -> dict:
        present = sorted({s.label for s in samples if s.label}, key=natural_key)
        classes = [str(c) for c in settings["classes"]] if settings.get("classes") else present
        return {"classes": classes, "class_counts": {c: sum(s.label == c for s in samples) for c in classes}}

    def out_channels(self, fingerprint: dict) -> int:
        return len(fingerprint["classes"])

    def dummy_target(self, batch: int, out_channels: int, shape: list[int], generator):
        import torch

        return torch.zeros(batch, dtype=torch.long)

    def label_reader(self, samples: pd.DataFrame, plan: dict):
        by_id = samples.set_index("id")

        def read(arrays, sample_id: str) -> int:
            return int(by_id.loc[sample_id, "label_index"])  # -1: an unlabelled test image

        return read

    def loss(self, name: str):
        from torch import nn

        from snakescope.engine.losses import FunctionLoss

        if name == "focal":
            from monai.losses import FocalLoss

            focal = FocalLoss(to_onehot_y=True, use_softmax=True)
            return FunctionLoss(lambda logits, label: focal(logits, label[:, None]))
        return FunctionLoss(lambda logits, label: nn.functional.cross_entropy(logits, label))

    def validation_score(self, logits, label) -> float:
        return (logits.argmax(1) == label).float().sum().item()

    def predictor(self, model, payload, data, threshold, device) -> Predictor:
        return ClassificationPredictor(self, model, payload, data, threshold, device)

    calibrated = True

    def calibration_logits(self, model, payload, items, device):
        predictor = self.predictor(model, payload, None, None, device)
        logits = np.concatenate([predictor.logits(chunk).numpy() for chunk in batched(items, PREDICT_BATCH)])
        return logits.astype(np.float64), np.array([item["label"] for item in items])

    def uncertainty(self, model, payload, items, data, samples, device, out, threshold):
        import torch

        from snakescope.engine.inference import sample_dropout

        classes = payload["classes"]
        rows = []
        for chunk in batched(items, PREDICT_BATCH):
            images = torch.as_tensor(np.stack([it["image"] for it in chunk])).to(device)
            probabilities = sample_dropout(model, images, payload["plan"], samples, self.mc_rows_per_pass,
                                           activation=lambda logits: torch.softmax(logits, dim=1)).numpy()
            mean = probabilities.mean(0)  # (N, K)
            entropy = normalised_entropy(mean, axis=1)
            bald = mutual_information(probabilities, entropy, axis=2)
            for index, item in enumerate(chunk):
                predicted = int(mean[index].argmax())
                known = "label" in item  # new images (snakescope.apply) have none
                rows.append({
                    "id": item["id"],
                    **({"true_label": classes[item["label"]]} if known else {}),
                    "mc_predicted_label": classes[predicted],
                    **({"correct": bool(predicted == item["label"])} if known else {}),
                    "uncertainty": float(entropy[index]),
                    "predictive_entropy": float(entropy[index] * np.log(len(classes))),
                    "mutual_information": float(bald[index]),
                    "std_of_predicted_class": float(probabilities[:, index, predicted].std()),
                    **{f"mc_prob_{c}": float(v) for c, v in zip(classes, mean[index], strict=True)},
                })
        frame = pd.DataFrame(rows)
        if "correct" not in frame:
            return frame, {}
        _uncertainty_figure(frame, out / "uncertainty_vs_error.png")
        return frame, tracks_error(frame["uncertainty"].to_numpy(), frame["correct"].to_numpy(), "images")

    def evaluate(self, predictions, predict_dir, arrays_store, samples, split, fingerprint, figures):
        import matplotlib.pyplot as plt
        from sklearn.metrics import ConfusionMatrixDisplay, RocCurveDisplay

        classes = fingerprint["classes"]
        truth_by_id = samples.set_index("id")["label"]
        truth = [truth_by_id[i] for i in predictions["id"]]
        probabilities = predictions[[f"prob_{c}" for c in classes]].to_numpy()
        metrics = classification_metrics(truth, predictions["predicted_label"].tolist(), probabilities, classes)
        train_labels = [truth_by_id[i] for i in split["train"]]
        majority = max(classes, key=train_labels.count)
        baseline = classification_metrics(truth, [majority] * len(truth),
                                          np.eye(len(classes))[[classes.index(majority)] * len(truth)], classes)
        metrics.update({f"baseline_{k}": v for k, v in baseline.items()})

        figure, axis = plt.subplots(figsize=(1.2 * len(classes) + 2, 1.2 * len(classes) + 1.5))
        ConfusionMatrixDisplay.from_predictions(truth, predictions["predicted_label"], labels=classes, ax=axis,
                                                colorbar=False)
        axis.set_title(f"Confusion matrix (n={len(truth)})")
        save_figure(figure, figures / "confusion_matrix.png")
        figure, axis = plt.subplots(figsize=(5, 4.5))
        for index, name in enumerate(classes):
            positives = np.array([t == name for t in truth])
            if 0 < positives.sum() < len(positives):
                RocCurveDisplay.from_predictions(positives, probabilities[:, index], name=name, ax=axis)
        axis.plot([0, 1], [0, 1], "k--", linewidth=0.8)
        axis.set_title("ROC, one class vs the rest")
        save_figure(figure, figures / "roc.png")
        per_sample = predictions.assign(
            true_label=truth, correct=[t == p for t, p in zip(truth, predictions["predicted_label"], strict=True)]
        )
        return metrics, per_sample


def _uncertainty_figure(frame: pd.DataFrame, path: Path) -> None:
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5, 3.8))
    bins = np.linspace(0, 1, 21)
    axis.hist(frame.loc[frame["correct"], "uncertainty"], bins=bins, alpha=0.7, label="correct")
    axis.hist(frame.loc[~frame["correct"], "uncertainty"], bins=bins, alpha=0.7, label="wrong")
    axis.set_xlabel("MC-dropout uncertainty (normalised entropy)")
    axis.set_ylabel("test images")
    axis.legend()
    axis.set_title("Does uncertainty track error?")
    save_figure(figure, path)


TASK = Classification()
