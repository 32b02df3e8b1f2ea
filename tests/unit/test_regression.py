"""Tests for pixel-wise regression and 3D support: snakescope.tasks.regression and the layout additions of convert."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image

from snakescope.convert import (
    convert_dataset,
    discover_samples,
    parse_key_values,
    read_sample_image,
    tile_regions,
)
from snakescope.io import InputError, read_json
from snakescope.plots import orthogonal_views
from snakescope.store import open_store
from snakescope.tasks.regression.metrics import (
    baseline_kind,
    baseline_prediction,
    fit_linear_baseline,
    regression_metrics,
)
from snakescope.tasks.regression.targets import (
    as_channels_first,
    denormalise_target,
    normalise_target,
    target_statistics,
)

# --- target normalisation ----------------------------------------------------------------------------


def test_target_normalisation_round_trip_and_percentiles() -> None:
    rng = np.random.default_rng(0)
    targets = [rng.uniform(10, 110, size=(2, 32, 32)).astype(np.float32) for _ in range(3)]
    targets[0][1] += 1000  # a second channel on another scale
    stats = target_statistics(targets)
    assert stats["method"] == "percentile" and len(stats["low"]) == 2
    assert 10 <= stats["low"][0] < 13 and 107 < stats["high"][0] <= 110
    scaled = normalise_target(targets[1], stats)
    assert scaled.dtype == np.float32
    np.testing.assert_allclose(denormalise_target(scaled, stats), targets[1], rtol=1e-5, atol=1e-3)
    # MC samples (S, C, Y, X) map back channel by channel too
    samples = np.stack([scaled, scaled])
    np.testing.assert_allclose(
        denormalise_target(samples, stats, samples_first=True)[1], targets[1], atol=1e-3
    )


def test_target_statistics_of_a_constant_target_do_not_divide_by_zero() -> None:
    stats = target_statistics([np.full((1, 8, 8), 5.0, np.float32)])
    assert stats["high"][0] > stats["low"][0]
    assert np.isfinite(normalise_target(np.full((1, 8, 8), 5.0, np.float32), stats)).all()


def test_as_channels_first_follows_the_convert_convention() -> None:
    assert as_channels_first(np.zeros((5, 6)), spatial_dims=2).shape == (1, 5, 6)
    assert as_channels_first(np.zeros((3, 5, 6)), spatial_dims=2).shape == (3, 5, 6)
    assert as_channels_first(np.zeros((4, 5, 6)), spatial_dims=3).shape == (1, 4, 5, 6)


# --- metrics -------------------------------------------------------------------------------------------


def test_metrics_of_a_perfect_prediction() -> None:
    truth = np.random.default_rng(1).uniform(0, 255, size=(1, 32, 32))
    result = regression_metrics(truth, truth.copy(), data_range=255)
    assert result["mae"] == 0 and result["mse"] == 0 and result["mean_relative_error"] == 0
    assert result["psnr"] == np.inf
    assert result["ssim"] == pytest.approx(1.0)
    assert result["pearson_r"] == pytest.approx(1.0)


def test_metrics_of_a_constant_offset_match_hand_computation() -> None:
    truth = np.random.default_rng(2).uniform(10, 50, size=(1, 40, 40))
    result = regression_metrics(truth, truth + 5.0, data_range=255)
    assert result["mae"] == pytest.approx(5.0)
    assert result["mse"] == pytest.approx(25.0)
    assert result["psnr"] == pytest.approx(10 * np.log10(255**2 / 25.0))
    assert result["mean_relative_error"] == pytest.approx(5.0 / truth.mean())
    assert result["pearson_r"] == pytest.approx(1.0)  # an offset does not change the correlation


def test_metrics_work_on_thin_volumes_and_reject_shape_mismatch() -> None:
    rng = np.random.default_rng(3)
    truth = rng.uniform(0, 1, size=(1, 5, 16, 16))
    result = regression_metrics(truth, truth + rng.normal(0, 0.05, truth.shape), data_range=1.0)
    assert 0 < result["ssim"] < 1 and result["psnr"] > 20
    with pytest.raises(ValueError, match="shape"):
        regression_metrics(truth, truth[:, :4], data_range=1.0)


def test_noisier_prediction_scores_worse() -> None:
    rng = np.random.default_rng(4)
    truth = rng.uniform(0, 100, size=(1, 64, 64))
    slightly = regression_metrics(truth, truth + rng.normal(0, 2, truth.shape), 255)
    badly = regression_metrics(truth, truth + rng.normal(0, 20, truth.shape), 255)
    assert slightly["psnr"] > badly["psnr"] and slightly["ssim"] > badly["ssim"]
    assert slightly["pearson_r"] > badly["pearson_r"] and slightly["mae"] < badly["mae"]


# --- baselines -----------------------------------------------------------------------------------------


def test_identity_baseline_when_channels_match_else_linear() -> None:
    assert baseline_kind({"channels": 1, "target_channels": 1}) == "input"
    assert baseline_kind({"channels": 13, "target_channels": 1}) == "linear"
    image = np.arange(12, dtype=np.float32).reshape(1, 3, 4)
    np.testing.assert_array_equal(baseline_prediction(image, 1, None), image)


def test_linear_baseline_recovers_a_linear_relation() -> None:
    rng = np.random.default_rng(5)
    images = [rng.uniform(0, 1, size=(2, 16, 16)) for _ in range(3)]
    targets = [(3 * im[0] - 2 * im[1] + 7)[None] for im in images]
    coefficients = fit_linear_baseline(images, targets)
    np.testing.assert_allclose(coefficients[:, 0], [3, -2, 7], atol=1e-6)
    np.testing.assert_allclose(baseline_prediction(images[0], 1, coefficients), targets[0], atol=1e-4)


# --- 3D views --------------------------------------------------------------------------------------------


def test_orthogonal_views_place_the_three_central_slices() -> None:
    volume = np.zeros((4, 6, 8))
    volume[2, :, :] = 1  # the middle XY slice
    volume[:, 3, :] += 2  # the middle XZ slice
    mosaic = orthogonal_views(volume)
    assert mosaic.shape == (6 + 4, 8 + 4)
    np.testing.assert_array_equal(mosaic[:6, :8], volume[2])
    np.testing.assert_array_equal(mosaic[6:, :8], volume[:, 3, :])
    np.testing.assert_array_equal(mosaic[:6, 8:], volume[:, :, 4].T)
    assert orthogonal_views(np.zeros((2, 4, 6, 8))).shape == (2, 10, 12)  # CZYX: per channel
    assert orthogonal_views(np.zeros((6, 8))).shape == (6, 8)  # 2D passes through


# --- convert: layouts ------------------------------------------------------------------------------------


def test_parse_key_values_skips_bare_words_and_splits_at_the_first_dash() -> None:
    pairs = parse_key_values("lab-X,condition-K_0_8,acquisition_date,z_depth-3,channel-PHASE-CONTRAST")
    assert pairs == {"lab": "X", "condition": "K_0_8", "z_depth": "3", "channel": "PHASE-CONTRAST"}


def _write_png(path, array) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


@pytest.fixture
def denoising_dir(tmp_path):
    """raw/<field>/frame<k>.png (noisy) and gt/<field>/avg.png (clean), 4 fields of 2 frames, 32x32 uint8."""
    rng = np.random.default_rng(0)
    for field in range(1, 5):
        clean = rng.integers(20, 200, size=(32, 32)).astype(np.uint8)
        _write_png(tmp_path / "gt" / str(field) / "avg.png", clean)
        for frame in range(2):
            noisy = np.clip(clean + rng.normal(0, 15, clean.shape), 0, 255).astype(np.uint8)
            _write_png(tmp_path / "raw" / str(field) / f"frame{frame}.png", noisy)
    return tmp_path


def _settings(data_dir, layout, task="regression", patch_size=(16, 16)) -> dict:
    return {
        "name": "t",
        "task": task,
        "data_dir": str(data_dir),
        "layout": layout,
        "patch_size": list(patch_size),
        "resize": None,
        "classes": None,
        "num_classes": None,
        "group_column": None,
    }


def test_folder_pairing_groups_frames_and_marks_the_test_field(denoising_dir) -> None:
    layout = {
        "images": "raw/*/*.png",
        "targets": "gt/*/avg.png",
        "pair_by": "folder",
        "test_images": "raw/4/*.png",
    }
    samples = discover_samples(_settings(denoising_dir, layout))
    assert len(samples) == 8
    assert {s.id for s in samples if s.subset == "test"} == {"4_frame0", "4_frame1"}
    assert all(s.target.endswith(f"gt/{s.group}/avg.png") for s in samples)
    assert {s.group for s in samples} == {"1", "2", "3", "4"}


def test_folder_pairing_reports_images_without_target(denoising_dir) -> None:
    (denoising_dir / "gt" / "2" / "avg.png").unlink()
    layout = {"images": "raw/*/*.png", "targets": "gt/*/avg.png", "pair_by": "folder"}
    with pytest.raises(InputError, match="raw/2/frame0.png: no target in a folder named '2'"):
        discover_samples(_settings(denoising_dir, layout))


def test_test_images_matching_nothing_is_an_error(denoising_dir) -> None:
    layout = {
        "images": "raw/*/*.png",
        "targets": "gt/*/avg.png",
        "pair_by": "folder",
        "test_images": "raw/9/*.png",
    }
    with pytest.raises(InputError, match="matches none"):
        discover_samples(_settings(denoising_dir, layout))


def test_convert_reads_float_targets_and_records_target_channels_and_range(denoising_dir, tmp_path) -> None:
    layout = {
        "images": "raw/*/*.png",
        "targets": "gt/*/avg.png",
        "pair_by": "folder",
        "test_images": "raw/4/*.png",
    }
    out = tmp_path / "out"
    fingerprint = convert_dataset(
        _settings(denoising_dir, layout), out / "a.zarr", out / "s.tsv", out / "f.json"
    )
    assert fingerprint["target_channels"] == 1
    assert fingerprint["target_data_range"] == 255.0  # uint8 targets
    with open_store(out / "a.zarr") as arrays:
        target = arrays["target/1_frame0"]
        assert target.dtype == np.float32 and target.shape == (32, 32)
        expected = np.asarray(Image.open(denoising_dir / "gt" / "1" / "avg.png"), dtype=np.float32)
        np.testing.assert_array_equal(target, expected)
    assert read_json(out / "f.json")["n_by_subset"] == {"unsplit": 6, "test": 2}


def _key_value_field(folder, well: str, rng) -> None:
    base = f"lab-L,condition-C,acquisition_date,year-2015,well-{well},tile_computation-STITCHED"
    for z in (10, 2, 0):  # written out of order on purpose
        _write_png(
            folder / f"{base},z_depth-{z},channel-PHASE,is_mask-false.png",
            np.full((64, 64), 100 * (1 + z), np.uint16),
        )
    _write_png(
        folder / f"{base},depth_computation-MAXPROJECT,channel-DAPI,is_mask-false.png",
        rng.integers(0, 60000, size=(64, 64)).astype(np.uint16),
    )
    _write_png(
        folder / f"{base},depth_computation-MAXPROJECT,channel-MAP2,is_mask-false.png",
        np.zeros((64, 64), np.uint16),
    )


def test_key_value_fields_stack_slices_in_order_and_tile_spatially(tmp_path) -> None:
    rng = np.random.default_rng(0)
    for well in ("A4", "B2"):
        _key_value_field(tmp_path / "data", well, rng)
    layout = {
        "images": "*.png",
        "channel_key": "channel",
        "slice_key": "z_depth",
        "input_channels": ["PHASE"],
        "target_channel": "DAPI",
        "tile_size": [32, 32],
        "test_right_fraction": 0.5,
    }
    settings = _settings(tmp_path / "data", layout)
    samples = discover_samples(settings)
    assert sorted(s.id for s in samples) == ["A4", "B2"]  # only the well varies
    stacked = read_sample_image(samples[0].image)
    assert stacked.shape == (3, 64, 64)
    assert [int(stacked[c, 0, 0]) for c in range(3)] == [100, 300, 1100]  # z 0, 2, 10
    out = tmp_path / "out"
    fingerprint = convert_dataset(settings, out / "a.zarr", out / "s.tsv", out / "f.json")
    assert fingerprint["channels"] == 3 and fingerprint["n_images"] == 8
    assert fingerprint["n_by_subset"] == {"unsplit": 4, "test": 4}
    assert fingerprint["target_data_range"] == 65535.0
    with open_store(out / "a.zarr") as arrays:
        assert arrays["image/A4_y32_x32"].shape == (3, 32, 32)
        assert arrays["target/A4_y32_x32"].shape == (32, 32)


def test_key_value_fields_report_a_missing_target(tmp_path) -> None:
    _key_value_field(tmp_path, "A4", np.random.default_rng(0))
    layout = {
        "images": "*.png",
        "channel_key": "channel",
        "input_channels": ["PHASE"],
        "target_channel": "GFP",
    }
    with pytest.raises(InputError, match="0 files with channel-GFP"):
        discover_samples(_settings(tmp_path, layout))


def test_tile_regions_ids_regions_test_columns_and_remainders() -> None:
    from snakescope.convert import Sample

    sample = Sample("img", "img.tif", target="t.tif")
    regions = tile_regions(sample, (10, 13), [5, 4], test_right_fraction=0.34)
    tiles = [tile for tile, _ in regions]
    assert [t.id for t in tiles][:4] == ["img_y0_x0", "img_y0_x4", "img_y0_x8", "img_y5_x0"]
    assert len(tiles) == 6  # 2 x 3 tiles; the last column of 1 pixel is dropped
    assert [t.subset for t in tiles] == ["", "", "test"] * 2
    assert tiles[4].region == "y5:10,x4:8" and tiles[4].group == "img" and tiles[4].target == "t.tif"
    assert regions[4][1] == (slice(5, 10), slice(4, 8))
    with pytest.raises(InputError, match="does not fit"):
        tile_regions(sample, (10, 13), [20, 4], None)


def test_volume_segmentation_with_foreground_masks_and_3d_tiles(tmp_path) -> None:
    rng = np.random.default_rng(0)
    volume = rng.integers(100, 400, size=(12, 30, 30)).astype(np.uint16)
    labels = np.zeros((12, 30, 30), np.uint16)
    for index in range(1, 101):  # more ids than a semantic mask may hold
        z, y, x = rng.integers(0, 10), rng.integers(0, 28), rng.integers(0, 28)
        labels[z : z + 2, y : y + 2, x : x + 2] = index
    tifffile.imwrite(tmp_path / "img3d.tif", volume)
    tifffile.imwrite(tmp_path / "mask3d.tif", labels)
    layout = {
        "images": "img3d.tif",
        "targets": "mask3d.tif",
        "pair_by": "folder",
        "mask_foreground": True,
        "tile_size": [12, 10, 10],
        "test_right_fraction": 0.34,
    }
    settings = _settings(tmp_path, layout, task="segmentation", patch_size=(8, 8, 8))
    out = tmp_path / "out"
    fingerprint = convert_dataset(settings, out / "a.zarr", out / "s.tsv", out / "f.json")
    assert fingerprint["spatial_dims"] == 3 and fingerprint["num_classes"] == 2
    assert fingerprint["n_by_subset"] == {"unsplit": 6, "test": 3}
    with open_store(out / "a.zarr") as arrays:
        assert arrays["image/img3d_y10_x20"].shape == (1, 12, 10, 10)
        mask = arrays["target/img3d_y10_x20"]
        np.testing.assert_array_equal(mask, (labels[:, 10:20, 20:30] > 0).astype(np.int64))


# --- 3D regression, end to end through the package functions ------------------------------------------


@pytest.mark.slow
def test_volume_denoising_runs_through_every_stage(tmp_path) -> None:
    """convert -> split -> plan -> train -> predict -> evaluate -> uncertainty on 3D volumes (CPU, seconds)."""
    from snakescope.augment import write_plan_and_preview
    from snakescope.config import TrainConfig, resolve_datasets
    from snakescope.evaluate import evaluate_run
    from snakescope.predict import predict_dataset
    from snakescope.split import write_split
    from snakescope.train import fit
    from snakescope.uncertainty import estimate_uncertainty

    rng = np.random.default_rng(0)
    for index in range(6):
        clean = np.zeros((16, 32, 32), np.float32)
        for _ in range(4):
            z, y, x = rng.integers(2, 14), rng.integers(4, 28), rng.integers(4, 28)
            clean[z - 2 : z + 2, y - 3 : y + 3, x - 3 : x + 3] += 100
        noisy = clean + rng.normal(0, 20, clean.shape).astype(np.float32)
        (tmp_path / "data" / "image").mkdir(parents=True, exist_ok=True)
        (tmp_path / "data" / "groundtruth").mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(tmp_path / "data" / "image" / f"v{index}.tif", noisy)
        tifffile.imwrite(tmp_path / "data" / "groundtruth" / f"v{index}.tif", clean)
    config = {
        "task": "regression",
        "data_dir": str(tmp_path / "data"),
        "patch_size": [16, 32, 32],
        "normalisation": "dataset_zscore",
        "epochs": 2,
        "batch_size": 4,
        "learning_rate": 0.003,
        "test_fraction": 0.34,
        "mc_samples": 3,
        "device": "cpu",
    }
    settings = next(iter(resolve_datasets(config).values()))
    out = tmp_path / "results"
    fingerprint = convert_dataset(settings, out / "arrays.zarr", out / "samples.tsv", out / "fingerprint.json")
    assert fingerprint["spatial_dims"] == 3 and fingerprint["target_channels"] == 1
    write_split(str(out / "samples.tsv"), settings, str(out / "split.json"))
    plan = write_plan_and_preview(
        settings,
        str(out / "fingerprint.json"),
        str(out / "arrays.zarr"),
        str(out / "split.json"),
        str(out / "plan.json"),
        str(out / "preview.png"),
    )
    assert plan["patch_size"] == [16, 32, 32]
    card = fit(
        str(out / "arrays.zarr"),
        str(out / "samples.tsv"),
        str(out / "split.json"),
        str(out / "plan.json"),
        str(out / "fingerprint.json"),
        TrainConfig.from_settings(settings, "unet", 0),
        str(out / "model.pt"),
        str(out / "history.tsv"),
        str(out / "card.json"),
    )
    assert card["output"]["input_residual"] is not None  # same units in and out, dataset-level normalisation
    direct = fit(
        *(str(out / name) for name in ("arrays.zarr", "samples.tsv", "split.json", "plan.json", "fingerprint.json")),
        TrainConfig.from_settings({**settings, "residual_learning": False}, "unet_small", 0),
        *(str(out / "direct" / name) for name in ("model.pt", "history.tsv", "card.json")),
    )
    assert direct["output"]["input_residual"] is None  # the config switched residual learning off
    predict_dataset(
        str(out / "model.pt"),
        str(out / "arrays.zarr"),
        str(out / "samples.tsv"),
        str(out / "split.json"),
        str(out / "predict"),
        device="cpu",
    )
    prediction = tifffile.imread(next((out / "predict").glob("*_pred.tif")))
    assert prediction.shape == (16, 32, 32) and prediction.dtype == np.float32
    record = evaluate_run(
        str(out / "predict"),
        str(out / "arrays.zarr"),
        str(out / "samples.tsv"),
        str(out / "split.json"),
        str(out / "fingerprint.json"),
        str(out / "evaluate"),
    )
    assert record["baseline"] == "input" and record["n_test"] == 2
    assert all(np.isfinite(record[k]) for k in ("mae", "psnr", "ssim", "pearson_r", "baseline_psnr"))
    figures = out / "evaluate" / "figures"
    assert (figures / "examples.png").is_file() and (figures / "per_image_boxplot.png").is_file()
    summary = estimate_uncertainty(
        str(out / "model.pt"),
        str(out / "arrays.zarr"),
        str(out / "samples.tsv"),
        str(out / "split.json"),
        str(out / "uncertainty"),
        samples=3,
        device="cpu",
    )
    assert summary["n_images"] == 2 and "spearman_std_vs_abs_error" in summary
    std_map = tifffile.imread(next((out / "uncertainty").glob("*_std.tif")))
    assert std_map.shape == (16, 32, 32) and (std_map >= 0).all()


def test_input_residual_starts_as_the_identity_in_raw_units() -> None:
    import torch

    from snakescope.engine.models import ModelSpec, build_model
    from snakescope.tasks.regression.targets import input_residual, with_input_residual

    plan = {
        "normalisation": "dataset_zscore",
        "dataset_mean": [10.0],
        "dataset_std": [20.0],
        "spatial_dims": 2,
        "target_normalisation": {"low": [4.0], "high": [108.0]},
    }
    residual = input_residual(plan, {"channels": 1, "target_channels": 1})
    assert residual == {"scale": [20.0 / 104.0], "shift": [6.0 / 104.0]}
    model = with_input_residual(
        build_model(ModelSpec("unet", "regression", 1, 1, 2, 0.1)), {**plan, "input_residual": residual}
    ).eval()
    raw = torch.rand(1, 1, 32, 32) * 100
    with torch.no_grad():
        out = model((raw - 10) / 20)
    torch.testing.assert_close(out * 104 + 4, raw, atol=1e-3, rtol=0)
    # no residual across modalities or with per-image normalisation
    assert input_residual(plan, {"channels": 13, "target_channels": 1}) is None
    assert (
        input_residual({**plan, "normalisation": "percentile"}, {"channels": 1, "target_channels": 1}) is None
    )
