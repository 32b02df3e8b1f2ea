"""Calibration: the expected calibration error, temperature scaling, and the uncertainty stage's report."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tifffile

from snakescope.engine.checkpoint import read_model
from snakescope.engine.trainer import CALIBRATION_MIN_IMAGES
from snakescope.io import read_json
from snakescope.store import open_store
from snakescope.uncertainty_measures import (
    fit_temperature,
    mutual_information,
    normalised_entropy,
    reliability_bins,
    softmax,
)


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


def test_mutual_information_is_the_disagreement_between_the_dropout_samples():
    # (samples, images, classes): image 0 every sample unsure, image 1 samples sure but split, image 2 sure
    probabilities = np.array([[[0.5, 0.5], [1.0, 0.0], [1.0, 0.0]],
                              [[0.5, 0.5], [0.0, 1.0], [1.0, 0.0]]])
    entropy = normalised_entropy(probabilities.mean(0), axis=1)
    np.testing.assert_allclose(entropy, [1, 1, 0], atol=1e-9)
    np.testing.assert_allclose(mutual_information(probabilities, entropy, axis=2), [0, 1, 0], atol=1e-9)
    # per pixel: (samples, classes, y, x), the same three cases side by side
    maps = probabilities.transpose(0, 2, 1)[:, :, None, :]
    np.testing.assert_allclose(mutual_information(maps, normalised_entropy(maps.mean(0), axis=0), axis=1),
                               [[0, 1, 0]], atol=1e-9)


@pytest.mark.parametrize("task", ["classification", "segmentation"])
def test_the_uncertainty_stage_reports_the_calibration_of_what_predict_wrote(small_run, tmp_path, task):
    from snakescope.predict import predict_dataset
    from snakescope.uncertainty import estimate_uncertainty

    root, _, prepared = small_run(task)
    inputs = [str(root / "model.pt"), str(prepared / "arrays.zarr"), str(prepared / "samples.tsv"),
              str(prepared / "splits.json")]
    summary = estimate_uncertainty(*inputs, str(tmp_path / "uncertainty"), samples=2, device="cpu")
    assert summary["calibration_unit"] == ("images" if task == "classification" else "pixels")
    assert (tmp_path / "uncertainty/reliability.png").is_file()
    assert read_json(tmp_path / "uncertainty/summary.json")["ece"] == summary["ece"]
    scores = pd.read_csv(tmp_path / "uncertainty/uncertainty.csv")
    assert scores["mutual_information"].between(0, 1).all()
    assert (scores["mutual_information"] <= scores["uncertainty"] + 1e-6).all()  # the epistemic part of it
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
        with open_store(prepared / "arrays.zarr") as arrays:
            labels = np.concatenate([arrays[f"target/{i}"].ravel() for i in predictions["id"]])
    # predict writes the probabilities of the temperature training chose (1 = the network's own)
    written = summary["ece_temperature_scaled"] if summary["temperature_applied"] != 1.0 else summary["ece"]
    assert written == pytest.approx(reliability_bins(probabilities, labels)["ece"], abs=1e-5)
    assert summary["temperature_scaling_helps_on_val"] == (summary["val_ece_temperature_scaled"] < summary["val_ece"])


@pytest.mark.parametrize("task", ["classification", "instance_segmentation"])
def test_the_test_images_are_ranked_for_annotation(small_run, tmp_path, task):
    from snakescope.uncertainty import estimate_uncertainty

    root, _, prepared = small_run(task)
    estimate_uncertainty(str(root / "model.pt"), str(prepared / "arrays.zarr"), str(prepared / "samples.tsv"),
                         str(prepared / "splits.json"), str(tmp_path), samples=3, device="cpu")
    ranking = pd.read_csv(tmp_path / "annotate_next.tsv", sep="\t", dtype={"id": str})
    assert sorted(ranking["id"]) == sorted(read_json(prepared / "splits.json")["test"])
    assert ranking["rank"].tolist() == list(range(1, len(ranking) + 1))
    # per image the mean of what uncertainty.csv holds for it (one row per image, or per object)
    expected = pd.read_csv(tmp_path / "uncertainty.csv", dtype={"id": str}).groupby("id")["uncertainty"].mean()
    scored = ranking.dropna(subset=["uncertainty"])
    np.testing.assert_allclose(scored["uncertainty"], expected[scored["id"]].to_numpy())
    assert scored["uncertainty"].is_monotonic_decreasing and ranking["uncertainty"].isna().sum() == (
        len(ranking) - len(expected))  # images without objects go last
    assert (tmp_path / "annotate_next.png").is_file()


def test_training_fits_the_temperature_and_applies_it_where_it_helps(small_run):
    root, _, _ = small_run("classification")
    calibration = read_json(root / "card.json")["calibration"]
    payload = read_model(root / "model.pt")
    n_val = read_json(root / "card.json")["dataset"]["n_val"]
    helps = calibration["val_ece_temperature_scaled"] < calibration["val_ece"]
    assert calibration["applied"] == (helps and n_val >= CALIBRATION_MIN_IMAGES), (n_val, calibration)
    assert payload["temperature"] == (calibration["temperature_fitted"] if calibration["applied"] else 1.0)
    assert 0.05 <= calibration["temperature_fitted"] <= 20
    # auto leaves segmentation alone: its masks are cut from the unscaled maps (the uncertainty rule measures)
    root, _, _ = small_run("segmentation")
    assert "calibration" not in read_json(root / "card.json") and "temperature" not in read_model(root / "model.pt")


def test_a_temperature_divides_every_output_of_the_loaded_model(small_run, tmp_path):
    """predict, MC dropout (the classifier's sample-the-head-only path) and exports all see logits / T."""
    import torch

    from snakescope.engine.inference import sample_dropout
    from snakescope.engine.networks import TemperatureScaled
    from snakescope.tasks import load_trained

    root, _, _ = small_run("classification")
    payload = read_model(root / "model.pt")
    torch.save({**payload, "temperature": 1.0}, tmp_path / "plain.pt")
    torch.save({**payload, "temperature": 2.5}, tmp_path / "scaled.pt")
    plain, _ = load_trained(str(tmp_path / "plain.pt"), torch.device("cpu"))
    scaled, _ = load_trained(str(tmp_path / "scaled.pt"), torch.device("cpu"))
    assert isinstance(scaled, TemperatureScaled) and not isinstance(plain, TemperatureScaled)
    images = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(scaled(images), plain(images) / 2.5)
        torch.manual_seed(0)
        sampled_plain = sample_dropout(plain, images, payload["plan"], 4, 64)
        torch.manual_seed(0)
        sampled_scaled = sample_dropout(scaled, images, payload["plan"], 4, 64)
    torch.testing.assert_close(sampled_scaled, sampled_plain / 2.5)
