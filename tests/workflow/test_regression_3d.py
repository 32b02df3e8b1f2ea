"""Pixel-wise regression and 3D segmentation through snakemake, on the shared real datasets.

* FMD denoising (tests/workflow/configs/fmd.yaml): the model must beat the noisy input itself on the
  predefined test field 19 (the no-denoising floor: PSNR 31.78 dB, Pearson r 0.967).
* StarDist 3D example volume (configs/stardist3d.yaml): a 3D U-Net must beat predicting background
  everywhere on the held-out right half of the volume.
* In-silico labeling (configs/isl.yaml): 13 phase-contrast z-slices -> DAPI must correlate better with the
  truth than a per-channel linear fit of the target from the input.
* 3D regression: the same volume with noise added (written to a temporary folder, never beside the
  shared data) is denoised by a 3D U-Net, which must beat the noisy volume itself.

The four datasets go through one snakemake run (each with its own settings), so one dataset's
single-threaded steps (conversion, evaluation, start-up) overlap another's training on the two cores.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
import yaml
from helpers import read_metrics, run_snakemake, write_config

pytestmark = pytest.mark.slow

CONFIGS = Path(__file__).parent / "configs"


def load_config(name: str, shared_data: Path) -> dict:
    """A test config with each dataset's data_dir pointed into `shared_data`."""
    config = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    for entry in config["datasets"].values():
        entry["data_dir"] = str(shared_data / Path(entry["data_dir"]).name)
    return config


def dataset_entries(name: str, shared_data: Path) -> dict:
    """The datasets of test config `name`, each with the config's top-level settings folded in."""
    config = load_config(name, shared_data)
    common = {key: value for key, value in config.items() if key != "datasets"}
    return {dataset: {**common, **entry} for dataset, entry in config["datasets"].items()}


def noisy_volume_entry(folder: Path, shared_data: Path) -> dict:
    """The StarDist volume with noise added, written under `folder`, as a 3D denoising dataset."""
    clean = tifffile.imread(shared_data / "stardist_wheel_examples" / "img3d.tif").astype(np.float32)
    noisy = clean + np.random.default_rng(0).normal(0, 0.5 * clean.std(), clean.shape).astype(np.float32)
    for sub, volume in (("image", noisy), ("groundtruth", clean)):
        (folder / sub).mkdir(parents=True)
        tifffile.imwrite(folder / sub / "volume.tif", volume)
    return {
        "task": "regression",
        "data_dir": str(folder),
        "layout": {"tile_size": [30, 28], "test_right_fraction": 0.5},
        "patch_size": [16, 32, 32],
        "models": ["unet_small"],
        "normalisation": "dataset_zscore",
        "batch_size": 4,
        "epochs": 15,
        "patience": 15,
        "max_batches_per_epoch": 8,
        "learning_rate": 0.003,
        "augmentations": ["flip", "rotate90"],
        "mc_samples": 4,
        "export": True,  # a 3D package: bioimage.io's test and the ONNX check
    }


@pytest.fixture(scope="module")
def regression_runs(tmp_path_factory, shared_data) -> Path:
    workdir = tmp_path_factory.mktemp("regression_3d")
    datasets = {name: entry for config in ("fmd", "stardist3d", "isl")
                for name, entry in dataset_entries(config, shared_data).items()}
    datasets["denoise3d"] = noisy_volume_entry(workdir / "noisy_volume", shared_data)
    run_snakemake(workdir, write_config(workdir, {"datasets": datasets}), "--replace-workflow-config")
    return workdir


def test_denoising_beats_the_noisy_input(regression_runs):
    metrics = read_metrics(regression_runs, "fmd", "unet_small")
    assert metrics["baseline"] == "input" and metrics["n_test"] == 2
    # the evaluation reproduces the published no-denoising floor of field 19
    assert metrics["baseline_psnr"] == pytest.approx(31.78, abs=0.05)
    assert metrics["baseline_pearson_r"] == pytest.approx(0.967, abs=0.002)
    assert metrics["psnr"] > metrics["baseline_psnr"] + 0.3
    assert metrics["pearson_r"] > metrics["baseline_pearson_r"]
    assert metrics["ssim"] > metrics["baseline_ssim"]
    assert metrics["mae"] < metrics["baseline_mae"]


def test_denoising_outputs_are_in_target_units_with_uncertainty_maps(regression_runs):
    run = regression_runs / "results/fmd/unet_small/seed0"
    split = json.loads((regression_runs / "results/fmd/split/splits.json").read_text())
    assert split["test"] == ["19_HV110_P0500510000", "19_HV110_P0500510001"]
    assert not {s.split("_")[0] for s in split["train"]} & {
        s.split("_")[0] for s in split["val"]
    }  # fields apart
    prediction = tifffile.imread(run / "predict/19_HV110_P0500510000_pred.tif")
    assert prediction.shape == (512, 512) and prediction.dtype == np.float32
    assert 0 < prediction.mean() < 60  # grey values of the 8-bit average (its mean is 13), not 0..1
    card = json.loads((run / "train/model_card.json").read_text())
    assert (
        card["output"]["input_residual"] and card["output"]["target_normalisation"]["method"] == "percentile"
    )
    std = tifffile.imread(run / "uncertainty/19_HV110_P0500510000_std.tif")
    assert std.shape == (512, 512) and (std >= 0).all()
    summary = json.loads((run / "uncertainty/summary.json").read_text())
    assert summary["mc_samples"] == 4 and "spearman_std_vs_abs_error" in summary
    per_sample = pd.read_csv(run / "evaluate/per_sample.tsv", sep="\t")
    assert {"psnr", "ssim", "pearson_r", "baseline_psnr"} <= set(per_sample.columns)
    for figure in ("examples.png", "per_image_boxplot.png"):
        assert (run / "evaluate/figures" / figure).stat().st_size > 10_000


def test_3d_segmentation_beats_all_background(regression_runs):
    metrics = read_metrics(regression_runs, "stardist3d", "unet_small")
    assert metrics["n_test"] == 2
    assert metrics["baseline_foreground_dice"] == 0  # the majority class is background
    assert metrics["foreground_dice"] > 0.6
    assert metrics["iou"] > metrics["baseline_iou"] + 0.15
    assert metrics["pixel_accuracy"] > metrics["baseline_pixel_accuracy"]


def test_3d_outputs_are_volumes(regression_runs):
    run = regression_runs / "results/stardist3d/unet_small/seed0"
    fingerprint = json.loads((regression_runs / "results/stardist3d/convert/fingerprint.json").read_text())
    assert fingerprint["spatial_dims"] == 3 and fingerprint["num_classes"] == 2
    mask = tifffile.imread(run / "predict/img3d_y0_x28_mask.tif")
    assert mask.shape == (31, 30, 28) and set(np.unique(mask)) <= {0, 1}
    uncertainty = tifffile.imread(run / "uncertainty/img3d_y0_x28_uncertainty.tif")
    assert uncertainty.shape == (31, 30, 28) and 0 <= uncertainty.min() and uncertainty.max() <= 1
    assert (run / "evaluate/figures/examples.png").stat().st_size > 10_000


def test_3d_denoising_beats_the_noisy_volume(regression_runs):
    metrics = read_metrics(regression_runs, "denoise3d", "unet_small")
    assert metrics["baseline"] == "input" and metrics["n_test"] == 2
    assert metrics["psnr"] > metrics["baseline_psnr"] + 0.5  # measured: 23.87 against 22.83 dB
    assert metrics["mae"] < metrics["baseline_mae"]
    run = regression_runs / "results/denoise3d/unet_small/seed0"
    prediction = tifffile.imread(next((run / "predict").glob("*_pred.tif")))
    assert prediction.ndim == 3 and prediction.dtype == np.float32
    assert next((run / "uncertainty").glob("*_std.tif")).is_file()
    # a 3D package whose test tile is smaller than the smallest side the package declares: padded to it
    export = json.loads((run / "export/export.json").read_text())
    assert export["bioimageio_test"]["status"] == "passed" and export["onnx_max_abs_difference"] <= 1e-4


def test_label_free_prediction_beats_the_linear_baseline(regression_runs):
    metrics = read_metrics(regression_runs, "isl", "unet")
    assert metrics["baseline"] == "linear" and metrics["n_test"] == 32
    # measured: Pearson r 0.37 against 0.14; MAE 3285 against 3385; PSNR 23.0 against 24.1 dB (not beaten)
    assert metrics["pearson_r"] > metrics["baseline_pearson_r"] + 0.1
