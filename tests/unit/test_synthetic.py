"""Tests for the synthetic white-blood-cell demo dataset (snakescope.synthetic)."""

from __future__ import annotations

import collections
import csv
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
from scipy import ndimage

from snakescope import synthetic
from snakescope.synthetic import CELL_CLASSES, draw_cell, write_demo_dataset

PACKAGE_PARENT = Path(synthetic.__file__).resolve().parents[1]


def read_csv_rows(out_dir: Path) -> list[dict[str, str]]:
    with open(out_dir / "groundtruth" / "groundtruth.csv", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def cells_per_class() -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """40 (image, mask) pairs per class, 64x64."""
    rng = np.random.default_rng(123)
    return {name: [draw_cell(rng, 64, name) for _ in range(40)] for name in CELL_CLASSES}


# --- draw_cell -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [32, 64, 97])
@pytest.mark.parametrize("cell_class", CELL_CLASSES)
def test_draw_cell_shapes_dtypes_and_mask_values(cell_class: str, size: int) -> None:
    image, mask = draw_cell(np.random.default_rng(0), size, cell_class)
    assert image.shape == (size, size, 3) and image.dtype == np.uint8
    assert mask.shape == (size, size) and mask.dtype == np.uint8
    assert set(np.unique(mask)) == {0, 1, 2}


def test_draw_cell_rejects_unknown_class_and_tiny_size() -> None:
    with pytest.raises(ValueError, match="basophil"):
        draw_cell(np.random.default_rng(0), 64, "basophil")
    with pytest.raises(ValueError, match="size"):
        draw_cell(np.random.default_rng(0), 8, "monocyte")


def test_draw_cell_is_deterministic_per_generator_state() -> None:
    first = draw_cell(np.random.default_rng(5), 64, "neutrophil")
    again = draw_cell(np.random.default_rng(5), 64, "neutrophil")
    other = draw_cell(np.random.default_rng(6), 64, "neutrophil")
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert not np.array_equal(first[0], other[0])


def test_nucleus_lies_inside_the_cell(cells_per_class) -> None:
    for name, cells in cells_per_class.items():
        for _, mask in cells:
            # No nucleus pixel touches the background: there is always cytoplasm around it.
            touching = ndimage.binary_dilation(mask == 2) & (mask == 0)
            assert not touching.any(), name


def test_masks_agree_with_the_image(cells_per_class) -> None:
    for name, cells in cells_per_class.items():
        for image, mask in cells:
            pixels = image.astype(np.float64)
            luminance = pixels.mean(axis=-1)
            assert luminance[mask == 2].mean() < luminance[mask == 1].mean() - 20, name
            cytoplasm_rgb = pixels[mask == 1].mean(axis=0)
            background_rgb = pixels[mask == 0].mean(axis=0)
            assert np.abs(cytoplasm_rgb - background_rgb).max() > 8, name


def test_classes_differ_in_nucleus_shape(cells_per_class) -> None:
    """Nucleus pieces: lymphocyte and monocyte one, eosinophil two, neutrophil three to five (joined by
    strands, so counted on the nucleus minus its thin parts)."""

    def median_lobes(name: str) -> float:
        counts = []
        for _, mask in cells_per_class[name]:
            nucleus_without_strands = ndimage.binary_opening(mask == 2, iterations=1)
            counts.append(ndimage.label(nucleus_without_strands)[1])
        return float(np.median(counts))

    assert median_lobes("lymphocyte") == 1
    assert median_lobes("monocyte") == 1
    assert median_lobes("eosinophil") == 2
    assert 3 <= median_lobes("neutrophil") <= 5

    def median_nucleus_fraction(name: str) -> float:
        return float(np.median([(mask == 2).sum() / (mask > 0).sum() for _, mask in cells_per_class[name]]))

    # A lymphocyte's nucleus fills most of the cell; a monocyte is the largest cell.
    assert median_nucleus_fraction("lymphocyte") > 0.5 > median_nucleus_fraction("monocyte")
    cell_area = {
        name: np.median([(mask > 0).sum() for _, mask in cells]) for name, cells in cells_per_class.items()
    }
    assert cell_area["monocyte"] == max(cell_area.values())
    assert cell_area["lymphocyte"] == min(cell_area.values())


def test_classes_are_learnable_but_not_from_mean_colour_alone() -> None:
    """A linear model on 16x16 downsampled pixels beats chance (0.25) by far; one on mean colour does not
    come close, so a model must look at shape and texture."""
    sklearn_linear_model = pytest.importorskip("sklearn.linear_model")
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(2024)
    labels = np.arange(200) % len(CELL_CLASSES)
    images = np.stack([draw_cell(rng, 64, CELL_CLASSES[label])[0] for label in labels]) / 255.0
    downsampled = images.reshape(200, 16, 4, 16, 4, 3).mean(axis=(2, 4)).reshape(200, -1)
    mean_colour = images.mean(axis=(1, 2))

    def held_out_accuracy(features: np.ndarray) -> float:
        model = make_pipeline(StandardScaler(), sklearn_linear_model.LogisticRegression(C=0.1, max_iter=2000))
        model.fit(features[:100], labels[:100])
        return model.score(features[100:], labels[100:])

    pixel_accuracy, colour_accuracy = held_out_accuracy(downsampled), held_out_accuracy(mean_colour)
    assert pixel_accuracy >= 0.65
    assert colour_accuracy <= 0.75
    assert pixel_accuracy > colour_accuracy + 0.15


# --- write_demo_dataset --------------------------------------------------------------------------------


def test_layout_on_disk(tmp_path: Path) -> None:
    out_dir = write_demo_dataset(tmp_path / "demo", n_images=10, size=48, seed=1)
    assert out_dir == tmp_path / "demo"
    expected_names = [f"cell_{index:03d}.tif" for index in range(10)]
    assert sorted(p.name for p in (out_dir / "image").iterdir()) == expected_names
    assert sorted(p.name for p in (out_dir / "groundtruth").iterdir()) == expected_names + ["groundtruth.csv"]
    for name in expected_names:
        image = tifffile.imread(out_dir / "image" / name)
        mask = tifffile.imread(out_dir / "groundtruth" / name)
        assert image.shape == (48, 48, 3) and image.dtype == np.uint8
        assert mask.shape == (48, 48) and mask.dtype == np.uint8
        assert set(np.unique(mask)) <= {0, 1, 2}

    with open(out_dir / "groundtruth" / "groundtruth.csv", newline="") as handle:
        assert handle.readline() == "filename,label\n"
    rows = read_csv_rows(out_dir)
    assert sorted(row["filename"] for row in rows) == expected_names  # every image exactly once
    assert {row["label"] for row in rows} <= set(CELL_CLASSES)


def test_classes_are_balanced_and_shuffled(tmp_path: Path) -> None:
    rows = read_csv_rows(write_demo_dataset(tmp_path / "demo", seed=3))
    labels = [row["label"] for row in rows]
    assert len(labels) == 120
    assert collections.Counter(labels) == {name: 30 for name in CELL_CLASSES}
    round_robin = [CELL_CLASSES[index % len(CELL_CLASSES)] for index in range(120)]
    assert labels != round_robin

    uneven = read_csv_rows(write_demo_dataset(tmp_path / "uneven", n_images=10, seed=3))
    assert sorted(collections.Counter(row["label"] for row in uneven).values()) == [2, 2, 3, 3]


def test_same_seed_same_dataset_other_seed_other_dataset(tmp_path: Path) -> None:
    first = write_demo_dataset(tmp_path / "a", n_images=8, size=32, seed=7)
    again = write_demo_dataset(tmp_path / "b", n_images=8, size=32, seed=7)
    other = write_demo_dataset(tmp_path / "c", n_images=8, size=32, seed=8)
    assert read_csv_rows(first) == read_csv_rows(again)
    for row in read_csv_rows(first):
        for folder in ("image", "groundtruth"):
            np.testing.assert_array_equal(
                tifffile.imread(first / folder / row["filename"]),
                tifffile.imread(again / folder / row["filename"]),
            )
    assert not np.array_equal(
        tifffile.imread(first / "image" / "cell_000.tif"), tifffile.imread(other / "image" / "cell_000.tif")
    )


def test_complete_dataset_is_left_alone(tmp_path: Path) -> None:
    out_dir = write_demo_dataset(tmp_path / "demo", n_images=6, size=32)
    marker = out_dir / "image" / "cell_000.tif"
    os.utime(marker, (0, 0))
    assert write_demo_dataset(out_dir, n_images=6, size=32) == out_dir
    assert marker.stat().st_mtime == 0  # not rewritten
    assert [p.name for p in tmp_path.iterdir()] == ["demo"]  # no temporary folder left beside it


def test_killed_run_leaves_no_half_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real_draw_cell = synthetic.draw_cell

    def draw_then_die(rng, size, cell_class):
        calls.append(cell_class)
        if len(calls) == 3:
            raise KeyboardInterrupt  # as if the job were interrupted midway
        return real_draw_cell(rng, size, cell_class)

    monkeypatch.setattr(synthetic, "draw_cell", draw_then_die)
    with pytest.raises(KeyboardInterrupt):
        write_demo_dataset(tmp_path / "demo", n_images=6, size=32)
    assert list(tmp_path.iterdir()) == []


def test_existing_folders_are_never_overwritten(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="Delete it"):
        write_demo_dataset(foreign, n_images=4, size=32)
    assert [p.name for p in foreign.iterdir()] == ["precious.txt"]

    # A complete dataset of another shape is not silently reused either.
    write_demo_dataset(tmp_path / "demo", n_images=4, size=32)
    with pytest.raises(FileExistsError):
        write_demo_dataset(tmp_path / "demo", n_images=5, size=32)
    with pytest.raises(FileExistsError):
        write_demo_dataset(tmp_path / "demo", n_images=4, size=40)


def test_empty_folder_is_filled(tmp_path: Path) -> None:
    (tmp_path / "demo").mkdir()
    write_demo_dataset(tmp_path / "demo", n_images=4, size=32)
    assert len(read_csv_rows(tmp_path / "demo")) == 4


def test_default_dataset_is_fast(tmp_path: Path) -> None:
    start = time.perf_counter()
    write_demo_dataset(tmp_path / "demo")
    # The requirement is "well under 10 s on one core"; it takes about half a second.
    assert time.perf_counter() - start < 10


# --- command line --------------------------------------------------------------------------------------


def test_main_writes_then_keeps(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    synthetic.main([str(tmp_path / "demo"), "--n-images", "8", "--size", "32", "--seed", "2"])
    output = capsys.readouterr().out
    assert output.startswith("Wrote") and "8 RGB images of 32x32" in output and "2 monocyte" in output
    synthetic.main([str(tmp_path / "demo"), "--n-images", "8", "--size", "32", "--seed", "2"])
    assert capsys.readouterr().out.startswith("Kept")


def test_module_runs_as_a_script(tmp_path: Path) -> None:
    environment = {**os.environ, "PYTHONPATH": str(PACKAGE_PARENT)}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakescope.synthetic",
            str(tmp_path / "demo"),
            "--n-images",
            "4",
            "--size",
            "32",
        ],
        capture_output=True,
        text=True,
        env=environment,
        check=True,
    )
    assert "Wrote" in result.stdout
    assert len(read_csv_rows(tmp_path / "demo")) == 4
