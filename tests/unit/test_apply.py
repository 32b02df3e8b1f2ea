"""Apply (issue 13): a trained model on a folder of new images, from its run or its exported package, with
the same predictions `predict` makes, MC-dropout uncertainty, a ranking, and clear errors on bad images."""

from __future__ import annotations

import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
import yaml

from snakescope import lazy_images
from snakescope.applications import resolve_applications
from snakescope.apply import apply_model, smallest_side, training_data
from snakescope.config import ConfigError, resolve_datasets
from snakescope.export import export_model
from snakescope.io import InputError, read_json
from snakescope.predict import predict_dataset

pytestmark = pytest.mark.slow

NEW_IMAGES = 6
PROFILES = Path(__file__).resolve().parents[2] / "profiles"


def new_images(folder, out):
    """The first NEW_IMAGES images of a dataset, without their ground truth: new images to apply to."""
    out.mkdir()
    for path in sorted((folder / "image").glob("*.tif"))[:NEW_IMAGES]:
        shutil.copy(path, out / path.name)
    return out


def run_data(prepared):
    return training_data(str(prepared / "arrays.zarr"), str(prepared / "samples.tsv"), str(prepared / "splits.json"))


def test_segmentation_from_the_run_equals_predict_and_ranks_by_uncertainty(small_run, tmp_path):
    root, folder, prepared = small_run("segmentation")
    test_ids = read_json(prepared / "splits.json")["test"]
    images = tmp_path / "new"
    images.mkdir()
    for sample_id in test_ids:
        shutil.copy(folder / "image" / f"{sample_id}.tif", images)
    ranking = apply_model(str(root), str(images), str(tmp_path / "applied"), mc_samples=4, device="cpu")
    predict_dataset(str(root / "model.pt"), str(prepared / "arrays.zarr"), str(prepared / "samples.tsv"),
                    str(prepared / "splits.json"), str(tmp_path / "predict"), device="cpu")
    for sample_id in test_ids:  # the same files, read and normalised the same way: the same output
        applied = tifffile.imread(tmp_path / "applied/predictions" / f"{sample_id}_prob.tif")
        predicted = tifffile.imread(tmp_path / "predict" / f"{sample_id}_prob.tif")
        np.testing.assert_allclose(applied, predicted, atol=1e-6)
        np.testing.assert_array_equal(tifffile.imread(tmp_path / "applied/predictions" / f"{sample_id}_mask.tif"),
                                      tifffile.imread(tmp_path / "predict" / f"{sample_id}_mask.tif"))
    per_pixel = pd.read_csv(tmp_path / "applied/uncertainty/uncertainty.csv")
    assert sorted(ranking["id"]) == sorted(test_ids) and list(ranking["rank"]) == list(range(1, len(test_ids) + 1))
    expected = per_pixel.set_index("id")["uncertainty"]
    np.testing.assert_allclose(ranking["uncertainty"], expected[ranking["id"]].to_numpy())
    assert ranking["uncertainty"].is_monotonic_decreasing
    for sample_id in test_ids:  # each map's mean is the image's score
        entropy = tifffile.imread(tmp_path / "applied/uncertainty" / f"{sample_id}_uncertainty.tif")
        assert entropy.mean() == pytest.approx(expected[sample_id], rel=1e-5)
    assert pd.read_csv(tmp_path / "applied/ranking.tsv", sep="\t")["id"].tolist() == ranking["id"].tolist()
    summary = read_json(tmp_path / "applied/summary.json")
    assert (summary["kind"], summary["mc_samples"], summary["n_images"]) == ("run", 4, len(test_ids))


def test_an_image_too_large_for_memory_is_predicted_block_by_block_as_whole(small_run, tmp_path, monkeypatch):
    """A mosaic of 5 x 5 demo images (160 x 160 pixels, three classes) as a tiled TIFF, applied whole and
    then block by block (the memory budget forced to 0; blocks of 64 pixels, margins of 16 for the
    32-pixel patch)."""
    import zarr

    root, folder, prepared = small_run("segmentation")
    tiles = [tifffile.imread(path) for path in sorted((folder / "image").glob("*.tif"))]
    tiles = [tiles[i % len(tiles)] for i in range(25)]
    mosaic = np.concatenate([np.concatenate(tiles[row * 5:row * 5 + 5], axis=1) for row in range(5)], axis=0)
    images = tmp_path / "new"
    images.mkdir()
    tifffile.imwrite(images / "mosaic.tif", mosaic, tile=(64, 64), photometric="rgb")
    monkeypatch.setitem(lazy_images.BLOCK_SIDE, 2, 64)
    apply_model(str(root), str(images), str(tmp_path / "whole"), mc_samples=2, device="cpu")
    ranking = apply_model(str(root), str(images), str(tmp_path / "blocks"), mc_samples=2, device="cpu",
                          memory_budget=0)
    summary = read_json(tmp_path / "blocks/summary.json")
    assert summary["predicted_in_blocks"] == ["mosaic"]
    assert summary["uncertainty"] == "MC dropout; one pass for the 1 image(s) predicted in blocks"
    whole_probability = tifffile.imread(tmp_path / "whole/predictions/mosaic_prob.tif")
    prediction = zarr.open_group(str(tmp_path / "blocks/predictions/mosaic.ome.zarr"), mode="r")
    probability = np.asarray(prediction["0"])
    assert probability.shape == whole_probability.shape == (3, 160, 160)
    # the blocks' windows are the whole image's (unet_small normalises each window: any other placement
    # would change every pixel), blended in another order
    np.testing.assert_allclose(probability, whole_probability, atol=1e-5)
    whole_mask = tifffile.imread(tmp_path / "whole/predictions/mosaic_mask.tif")
    np.testing.assert_array_equal(np.asarray(prediction["labels/mask/0"]), whole_mask)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "blocks/predictions/mosaic_mask.tif"), whole_mask)
    table = pd.read_csv(tmp_path / "blocks/predictions/predictions.csv")
    assert table[["id", "filename", "prob", "mask"]].values.tolist() == [
        ["mosaic", "mosaic.tif", "mosaic.ome.zarr", "mosaic_mask.tif"]]
    entropy = np.asarray(zarr.open_group(str(tmp_path / "blocks/uncertainty/mosaic_uncertainty.ome.zarr"), mode="r")["0"])
    assert ranking["uncertainty"].tolist() == [pytest.approx(float(entropy.mean()), rel=1e-5)]


def test_a_regression_image_too_large_for_memory_is_predicted_block_by_block_as_whole(small_run, tmp_path,
                                                                                      monkeypatch):
    import zarr

    root, folder, _ = small_run("regression")  # 48 x 48 float images, patch 32: blocks of 24 with margins of 48
    images = new_images(folder, tmp_path / "new")
    monkeypatch.setitem(lazy_images.BLOCK_SIDE, 2, 24)
    apply_model(str(root), str(images), str(tmp_path / "whole"), mc_samples=2, device="cpu")
    apply_model(str(root), str(images), str(tmp_path / "blocks"), mc_samples=2, device="cpu", memory_budget=0)
    table = pd.read_csv(tmp_path / "blocks/predictions/predictions.csv")
    assert sorted(table["prediction"]) == sorted(f"{p.stem}.ome.zarr" for p in images.iterdir())
    for name in table["prediction"]:
        blocked = np.asarray(zarr.open_group(str(tmp_path / "blocks/predictions" / name), mode="r")["0"])
        whole = tifffile.imread(tmp_path / "whole/predictions" / name.replace(".ome.zarr", "_pred.tif"))
        np.testing.assert_allclose(blocked, whole, rtol=1e-5, atol=1e-3)  # target units: values in the hundreds


def test_an_image_too_large_for_a_whole_image_task_says_how_to_cut_it(small_run, tmp_path):
    root, folder, _ = small_run("classification")
    images = new_images(folder, tmp_path / "new")
    with pytest.raises(InputError, match=r"too large to predict whole .* classification model needs the whole image"):
        apply_model(str(root), str(images), str(tmp_path / "out"), device="cpu", memory_budget=0)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("task", ["classification", "regression", "instance_segmentation"])
def test_run_and_exported_package_give_the_same_predictions(task, small_run, tmp_path):
    root, folder, prepared = small_run(task)
    images = new_images(folder, tmp_path / "new")
    from_run = apply_model(str(root / "model.pt"), str(images), str(tmp_path / "run"), training=run_data(prepared),
                           mc_samples=3, device="cpu")
    export_model(str(root / "model.pt"), str(prepared / "arrays.zarr"), str(prepared / "splits.json"), {},
                 str(tmp_path / "export"), test=False)
    from_package = apply_model(str(tmp_path / "export/package.zip"), str(images), str(tmp_path / "package"),
                               mc_samples=3, device="cpu")
    assert sorted(from_run["id"]) == sorted(from_package["id"]) == sorted(p.stem for p in images.iterdir())
    run_table = pd.read_csv(tmp_path / "run/predictions/predictions.csv").set_index("id")
    package_table = pd.read_csv(tmp_path / "package/predictions/predictions.csv").set_index("id")
    if task == "classification":
        assert (run_table["predicted_label"] == package_table["predicted_label"][run_table.index]).all()
        probabilities = [c for c in run_table.columns if c.startswith("prob_")]
        np.testing.assert_allclose(run_table[probabilities], package_table.loc[run_table.index, probabilities],
                                   atol=1e-4)
    else:
        column = {"regression": "prediction", "instance_segmentation": "prob"}[task]
        for name in run_table[column]:
            np.testing.assert_allclose(tifffile.imread(tmp_path / "package/predictions" / name),
                                       tifffile.imread(tmp_path / "run/predictions" / name), atol=1e-4)
    assert read_json(tmp_path / "package/summary.json")["mc_samples"] == 1  # a traced network: one pass
    if task == "instance_segmentation":  # without the run's data: the exported minimum area, threshold 0.5
        assert (package_table["threshold"] == 0.5).all()
        exported = yaml.safe_load(zipfile.ZipFile(tmp_path / "export/package.zip").read("rdf.yaml"))
        assert (package_table["min_area"] == exported["config"]["snakescope"]["min_object_area"]).all()


def test_an_ome_zarr_image_is_applied_like_the_same_pixels_in_a_tiff(small_run, tmp_path):
    from test_layouts import write_ngff  # the OME-Zarr writer of the layout tests

    root, folder, _ = small_run("segmentation")
    source = sorted((folder / "image").glob("*.tif"))[0]
    images = tmp_path / "new"
    images.mkdir()
    shutil.copy(source, images / "as_tiff.tif")
    write_ngff(images / "as_zarr.zarr", np.moveaxis(tifffile.imread(source), -1, 0), "cyx")
    ranking = apply_model(str(root), str(images), str(tmp_path / "out"), mc_samples=2, device="cpu")
    assert sorted(ranking["filename"]) == ["as_tiff.tif", "as_zarr.zarr"]
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "out/predictions/as_zarr_prob.tif"),
                                  tifffile.imread(tmp_path / "out/predictions/as_tiff_prob.tif"))


def test_bad_new_images_are_all_named_before_anything_is_written(small_run, tmp_path):
    root, folder, _ = small_run("segmentation")  # trained on RGB 2D images, patch 32x32
    images = new_images(folder, tmp_path / "new")
    grey = images / "grey.tif"
    tifffile.imwrite(grey, np.zeros((40, 40), np.uint8) + np.arange(40, dtype=np.uint8))
    tiny = images / "tiny.tif"
    tifffile.imwrite(tiny, np.ones((8, 40, 3), np.uint8))
    stack = images / "stack.tif"
    tifffile.imwrite(stack, np.ones((5, 40, 40), np.uint8), metadata={"axes": "ZYX"})
    with pytest.raises(InputError) as error:
        apply_model(str(root), str(images), str(tmp_path / "out"), device="cpu")
    message = str(error.value)
    assert f"{grey}: 1 channel(s), but the model was trained on images with 3" in message
    assert f"{tiny}: 8x40 pixels, smaller than the model takes (at least {smallest_side(32)}x{smallest_side(32)}" in message
    assert f"{stack}: a Z-stack of 5 planes" in message
    assert not (tmp_path / "out").exists()


def test_sources_and_folders_that_cannot_be_applied(small_run, tmp_path):
    root, folder, _ = small_run("segmentation")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="empty: no image files \\(it is empty\\)"):
        apply_model(str(root), str(tmp_path / "empty"), str(tmp_path / "out"), device="cpu")
    with pytest.raises(InputError, match="not a trained model. Give a run folder"):
        apply_model(str(folder), str(folder / "image"), str(tmp_path / "out"), device="cpu")


def test_smallest_side_leaves_reflection_a_narrower_margin():
    # MONAI pads a short side by reflection up to the window: each margin must be narrower than the side
    for patch in (16, 32, 64, 128):
        side = smallest_side(patch)
        assert (patch - side) - (patch - side) // 2 < side
        assert (patch - side + 1) - (patch - side + 1) // 2 >= side - 1


def test_apply_entries_resolve_runs_of_ours_and_files(small_run, tmp_path, monkeypatch):
    root, folder, _ = small_run("segmentation")
    monkeypatch.chdir(tmp_path)
    config = {"task": "segmentation", "data_dir": str(folder), "mc_samples": 7,
              "apply": {"ours": {"model": "cells/unet/seed2", "images": str(folder / "image")},
                        "file": {"model": str(root / "model.pt"), "images": "new", "threshold": "0.4"}}}
    (tmp_path / "new").mkdir()
    datasets = resolve_datasets(config)
    assert list(datasets) == ["cells"]
    resolved = resolve_applications(config, datasets)
    assert resolved["ours"] == {
        "model": "results/cells/unet/seed2/train/model.pt", "images": str(folder / "image"),
        "training": {"arrays": "results/cells/convert/arrays.zarr", "samples": "results/cells/convert/samples.tsv",
                     "split": "results/cells/split/splits.json"},
        "mc_samples": 7, "threshold": "otsu", "device": "auto", "seed": 2}
    assert resolved["file"]["model"] == str(root / "model.pt") and resolved["file"]["training"] is None
    assert (resolved["file"]["threshold"], resolved["file"]["images"]) == (0.4, str(tmp_path / "new"))
    only_apply = {"apply": {"file": config["apply"]["file"]}}  # a model trained elsewhere: no dataset needed
    assert resolve_datasets(only_apply) == {} and list(resolve_applications(only_apply, {})) == ["file"]


@pytest.mark.parametrize(("entry", "message"), [
    ({"model": "cells/unet/seed0", "images": "missing"}, "apply/x: images 'missing' is not a folder"),
    ({"model": "other/unet/seed0", "images": "."}, "apply/x: model 'other/unet/seed0' is neither a run of this "
                                                      "workflow (<dataset>/<model>/seed<seed>; datasets: cells)"),
    ({"model": "cells/unet/seed0", "images": ".", "threshold": "high"}, "threshold must be 'otsu' or a number"),
])
def test_apply_entries_that_cannot_work_name_the_key(entry, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cells").mkdir()
    config = {"task": "segmentation", "data_dir": "cells", "apply": {"x": entry}}
    with pytest.raises(ConfigError, match=re.escape(message)):
        resolve_applications(config, resolve_datasets(config))


def test_the_slurm_profiles_send_apply_to_the_gpu_partition():
    for profile in ("slurm", "slurm-drmaa"):
        settings = yaml.safe_load((PROFILES / profile / "config.yaml").read_text())["set-resources"]
        assert settings["apply_model"]["slurm_partition"] == "?GPU_PARTITION"
        assert settings["apply_model"].get("gpu") == 1 or "gpu" in settings["apply_model"]["drmaa_gres"]
