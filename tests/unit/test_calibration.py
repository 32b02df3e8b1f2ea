"""Calibration: the expected calibration error, temperature scaling, and the uncertainty stage's report."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tifffile

from snakescope.io import read_json
from snakescope.uncertainty_measures import fit_temperature, reliability_bins, softmax


def test_expected_calibration_error_by_hand():
    probabilities = np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.6, 0.4]])
    labels = np.array([0, 0, 1, 0])  # right at 0.9, wrong at 0.8, right at 0.7 and 0.6
    bins = reliability_bins(probabilities, labels)
    # one image per bin: gaps |0.9 - 1|, |0.8 - 0|, |0.7 - 1|, |0.6 - 1|
    assert bins["ece"] == pytest.approx((0.1 + 0.8 + 0.3 + 0.4) / 4)
    assert bins["count"].tolist() == [0, 0, 0, 0, 0, 0, 1, 1, 1, 1]
    np.testing.assert_allclose(bins["accuracy"][6:], [1, 1, 0, 1])


def test_temperature_scaling_finds_the_temperature_that_made_the_labels():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (20_000, 4))
    probabilities = softmax(logits, 2.5)  # an overconfident network: its logits are 2.5 times too large
    labels = (probabilities.cumsum(1) > rng.random((len(logits), 1))).argmax(1)
    temperature = fit_temperature(logits, labels)
    assert temperature == pytest.approx(2.5, rel=0.05)
    before, after = (reliability_bins(softmax(logits, t), labels)["ece"] for t in (1.0, temperature))
    assert before > 0.1 and after < 0.02


@pytest.mark.parametrize("task", ["classification", "segmentation"])
def test_the_uncertainty_stage_reports_the_calibration_of_what_predict_wrote(small_run, tmp_path, task):
    from snakescope.predict import predict_dataset
    from snakescope.uncertainty import estimate_uncertainty

    root, _, prepared = small_run(task)
    inputs = [str(root / "model.pt"), str(prepared / "arrays.npz"), str(prepared / "samples.tsv"),
              str(prepared / "splits.json")]
    summary = estimate_uncertainty(*inputs, str(tmp_path / "uncertainty"), samples=2, device="cpu")
    assert summary["calibration_unit"] == ("images" if task == "classification" else "pixels")
    assert (tmp_path / "uncertainty/reliability.png").is_file()
    assert read_json(tmp_path / "uncertainty/summary.json")["ece"] == summary["ece"]
    # the same ECE from what `predict` wrote: per image its probabilities, per pixel its probability maps
    predict_dataset(*inputs, str(tmp_path / "predict"), device="cpu")
    predictions = pd.read_csv(tmp_path / "predict/predictions.csv")
    if task == "classification":
        samples = pd.read_csv(prepared / "samples.tsv", sep="\t").set_index("id")
        classes = sorted(samples["label"].unique())
        probabilities = predictions[[f"prob_{c}" for c in classes]].to_numpy()
        labels = np.array([classes.index(samples.loc[i, "label"]) for i in predictions["id"]])
    else:  # 32 x 32 test images: every pixel is taken
        maps = [tifffile.imread(tmp_path / "predict" / name) for name in predictions["prob"]]
        probabilities = np.concatenate([m.reshape(len(m), -1).T for m in maps])
        with np.load(prepared / "arrays.npz") as arrays:
            labels = np.concatenate([arrays[f"target/{i}"].ravel() for i in predictions["id"]])
    assert summary["ece"] == pytest.approx(reliability_bins(probabilities, labels)["ece"], abs=1e-5)
    assert summary["temperature_scaling_helps_on_val"] == (summary["val_ece_temperature_scaled"] < summary["val_ece"])
