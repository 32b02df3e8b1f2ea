"""Write one of our shared datasets in each peer's layout, with the same train/test split as ours.

    .venv/bin/python bench/peers/prepare.py isbi WORKDIR     # or wbc, fmd, cpm15

WORKDIR/<dataset>/ then holds
  split.json                 the train and test file stems (every tool trains on `train`, is scored on `test`)
  truth/                     test ground truth in our convention (what bench/peers/score.py reads)
  snakescope.yaml            our config: task, data_dir, the layout naming the test images, a time budget
  nnunet_raw/Dataset5xx_*    nnU-Net v2's raw layout (imagesTr, labelsTr, imagesTs, dataset.json)
  biapy/                     BiaPy's layout, with biapy.yaml (its template for the task)

The split is fixed by file name, not drawn, so that every tool sees the same images: ISBI 2012 slices
0-23 train, 24-29 test (the challenge never released its test labels); WBC Dataset 1 every fifth image
(005, 010, ..., 300) test; FMD the five noisy frames of field 19 (the dataset's own test field) test;
CPM-15 every fifth tile (image05 at 20x, image10 at 40x) test.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile
import yaml
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "workflow" / "scripts"))
from snakescope.tasks.instance_segmentation.labels import instances_to_classes, minimum_object_area  # noqa: E402

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


def write_nnunet_raw(raw: Path, split: dict, case: Callable, image: Callable, label: Callable,
                     channel_names: dict, labels: dict) -> None:
    """nnU-Net v2's raw layout (imagesTr, labelsTr, imagesTs as PNG, dataset.json) of `split`'s stems;
    `case` names a stem's case, `image` and `label` read its arrays."""
    for folder in ("imagesTr", "labelsTr", "imagesTs"):
        (raw / folder).mkdir(parents=True, exist_ok=True)
    for stem in split["train"]:
        Image.fromarray(image(stem)).save(raw / "imagesTr" / f"{case(stem)}_0000.png")
        Image.fromarray(label(stem)).save(raw / "labelsTr" / f"{case(stem)}.png")
    for stem in split["test"]:
        Image.fromarray(image(stem)).save(raw / "imagesTs" / f"{case(stem)}_0000.png")
    (raw / "dataset.json").write_text(json.dumps({
        "channel_names": channel_names, "labels": labels,
        "numTraining": len(split["train"]), "file_ending": ".png"}, indent=1))


def write_biapy_pairs(biapy: Path, split: dict, name: Callable, image: Callable, target: Callable) -> None:
    """BiaPy's paired folders, {train,test}/{x,y}/<name(stem)>.tif, which it pairs by file name."""
    for part in ("train", "test"):
        for folder in ("x", "y"):
            (biapy / part / folder).mkdir(parents=True, exist_ok=True)
        for stem in split[part]:
            tifffile.imwrite(biapy / part / "x" / f"{name(stem)}.tif", image(stem))
            tifffile.imwrite(biapy / part / "y" / f"{name(stem)}.tif", target(stem))


def isbi(out: Path, budget_minutes: float) -> None:
    source = SHARED / "isbi2012_em_membranes" / "train"
    stems = sorted((p.stem for p in (source / "image").glob("*.png")), key=int)
    split = {"task": "segmentation", "train": [s for s in stems if int(s) < 24],
             "test": [s for s in stems if int(s) >= 24]}

    def image(stem):
        return np.asarray(Image.open(source / "image" / f"{stem}.png").convert("L"))

    def interior(stem):
        # Our convention, as our conversion reads the 0/255 masks: class 1 = cell interior (255),
        # class 0 = membrane. The peers are given the membrane as their foreground class 1, the
        # class of interest in this challenge; bench/peers/score.py turns it back.
        return (np.asarray(Image.open(source / "label" / f"{stem}.png")) > 127).astype(np.uint8)

    (out / "truth").mkdir(parents=True, exist_ok=True)
    for stem in split["test"]:
        tifffile.imwrite(out / "truth" / f"{stem}.tif", interior(stem))
    (out / "split.json").write_text(json.dumps(split, indent=1))

    (out / "snakescope.yaml").write_text(yaml.safe_dump({
        "task": "segmentation",
        "data_dir": str(source.parent),
        "layout": {"images": "train/image/*.png", "masks": "train/label/*.png",
                   "test_images": "train/image/2[4-9].png"},
        "time_budget_minutes": budget_minutes,
    }, sort_keys=False))

    write_nnunet_raw(out / "nnunet_raw" / "Dataset501_ISBI", split, lambda s: f"isbi_{int(s):03d}", image,
                     lambda s: 1 - interior(s), {"0": "EM"}, {"background": 0, "membrane": 1})
    biapy = out / "biapy"
    write_biapy_pairs(biapy, split, lambda s: f"{int(s):03d}", image, lambda s: 1 - interior(s))
    (biapy / "biapy.yaml").write_text(yaml.safe_dump(biapy_semantic_2d(biapy), sort_keys=False))


def biapy_semantic_2d(root: Path) -> dict:
    """BiaPy 3.x's template for 2D semantic segmentation (templates/semantic_segmentation/
    2d_semantic_segmentation.yaml), with our paths and one worker per core of this machine."""
    return {
        "SYSTEM": {"NUM_CPUS": -1, "NUM_WORKERS": 2},
        "PROBLEM": {"TYPE": "SEMANTIC_SEG", "NDIM": "2D"},
        "DATA": {
            "PATCH_SIZE": "(256, 256, 1)",
            "TRAIN": {"PATH": str(root / "train" / "x"), "GT_PATH": str(root / "train" / "y"), "IN_MEMORY": True},
            "VAL": {"SPLIT_TRAIN": 0.1},
            "TEST": {"PATH": str(root / "test" / "x"), "GT_PATH": str(root / "test" / "y"), "IN_MEMORY": True,
                     "LOAD_GT": True, "PADDING": "(32,32)"},
        },
        "AUGMENTOR": {"ENABLE": True, "RANDOM_ROT": True, "VFLIP": True, "HFLIP": True},
        "MODEL": {"ARCHITECTURE": "attention_unet", "FEATURE_MAPS": [16, 32, 64, 128, 256], "LOAD_CHECKPOINT": False},
        "TRAIN": {"ENABLE": True, "OPTIMIZER": "ADAMW", "LR": 1.0e-4, "BATCH_SIZE": 6, "EPOCHS": 360, "PATIENCE": 50},
        "TEST": {"ENABLE": True, "AUGMENTATION": False, "FULL_IMG": False},
    }


def wbc(out: Path, budget_minutes: float) -> None:
    source = SHARED / "wbc_zheng2018"
    labels = pd.read_csv(source / "Class_Labels_of_Dataset_1.csv")
    label_of = {f"{row['image ID']:03d}": str(row["class label"]) for _, row in labels.iterrows()}
    stems = sorted(label_of)
    split = {"task": "classification", "train": [s for s in stems if int(s) % 5],
             "test": [s for s in stems if int(s) % 5 == 0]}
    (out / "truth").mkdir(parents=True, exist_ok=True)
    (out / "split.json").write_text(json.dumps(split, indent=1))
    pd.DataFrame({"id": split["test"], "label": [label_of[s] for s in split["test"]]}).to_csv(
        out / "truth" / "labels.tsv", sep="\t", index=False)

    (out / "snakescope.yaml").write_text(yaml.safe_dump({
        "task": "classification",
        "data_dir": str(source),
        "layout": {"images": "Dataset_1/*.bmp", "labels_csv": "Class_Labels_of_Dataset_1.csv",
                   "filename_column": "image ID", "label_column": "class label", "filename_format": "{:03d}",
                   "test_images": "Dataset_1/*[05].bmp"},
        "time_budget_minutes": budget_minutes,
    }, sort_keys=False))

    # BiaPy: one folder per class for training (it numbers the classes in the folders' sorted order); the
    # test images in one folder without labels, since BiaPy wants every class among the test folders and
    # the one basophil is in training. We score its predictions.csv ourselves.
    biapy = out / "biapy"
    for part in ("train", "test"):
        for stem in split[part]:
            folder = biapy / part / (label_of[stem] if part == "train" else "unlabelled")
            folder.mkdir(parents=True, exist_ok=True)
            Image.open(source / "Dataset_1" / f"{stem}.bmp").convert("RGB").save(folder / f"{stem}.png")
    (biapy / "biapy.yaml").write_text(yaml.safe_dump(biapy_classification_2d(biapy, len(set(label_of.values()))),
                                                     sort_keys=False))


def biapy_classification_2d(root: Path, n_classes: int) -> dict:
    """BiaPy 3.x's template for 2D classification (templates/classification/2d_classification.yaml), with
    our paths, the images' size and channels, BiaPy's own resize for the few smaller images, and the
    validation images taken from the training folders as in its semantic-segmentation template."""
    return {
        "SYSTEM": {"NUM_CPUS": -1, "NUM_WORKERS": 2},
        "PROBLEM": {"TYPE": "CLASSIFICATION", "NDIM": "2D"},
        "DATA": {
            "PATCH_SIZE": "(120, 120, 3)",
            "PREPROCESS": {"RESIZE": {"ENABLE": True, "OUTPUT_SHAPE": "(120, 120)"}},
            "TRAIN": {"PATH": str(root / "train"), "IN_MEMORY": True},
            "VAL": {"FROM_TRAIN": True, "SPLIT_TRAIN": 0.1},
            "TEST": {"PATH": str(root / "test"), "IN_MEMORY": True, "LOAD_GT": False},
        },
        "AUGMENTOR": {"ENABLE": True, "RANDOM_ROT": True, "HFLIP": True, "VFLIP": True},
        "MODEL": {"ARCHITECTURE": "ViT", "N_CLASSES": n_classes, "LOAD_CHECKPOINT": False},
        "TRAIN": {"ENABLE": True, "OPTIMIZER": "ADAMW", "LR": 1.0e-4, "BATCH_SIZE": 6, "EPOCHS": 360, "PATIENCE": 50},
        "TEST": {"ENABLE": True},
    }


def fmd(out: Path, budget_minutes: float) -> None:
    source = SHARED / "fmd_confocal_bpae_b_subset"
    frames = sorted((p for p in (source / "raw").glob("*/*.png")), key=lambda p: (int(p.parent.name), p.name))
    stem = {p: f"{int(p.parent.name):02d}_{p.stem}" for p in frames}  # frame names repeat in every field
    split = {"task": "regression", "train": [stem[p] for p in frames if p.parent.name != "19"],
             "test": [stem[p] for p in frames if p.parent.name == "19"]}
    (out / "truth").mkdir(parents=True, exist_ok=True)
    (out / "split.json").write_text(json.dumps(split, indent=1))
    clean = {p: np.asarray(Image.open(source / "gt" / p.parent.name / "avg50.png")) for p in frames}
    tifffile.imwrite(out / "truth" / "field19.tif", np.asarray(Image.open(source / "gt" / "19" / "avg50.png")))

    (out / "snakescope.yaml").write_text(yaml.safe_dump({
        "task": "regression",
        "data_dir": str(source),
        "layout": {"images": "raw/*/*.png", "targets": "gt/*/avg50.png", "pair_by": "folder",
                   "test_images": "raw/19/*.png"},
        "time_budget_minutes": budget_minutes,
    }, sort_keys=False))

    # BiaPy pairs x and y by file name: each noisy frame gets a copy of its field's clean average.
    frame = {stem[p]: p for p in frames}
    biapy = out / "biapy"
    write_biapy_pairs(biapy, split, str, lambda s: np.asarray(Image.open(frame[s])), lambda s: clean[frame[s]])
    (biapy / "biapy.yaml").write_text(yaml.safe_dump(biapy_image_to_image_2d(biapy), sort_keys=False))


def biapy_image_to_image_2d(root: Path) -> dict:
    """BiaPy 3.x's template for 2D image-to-image (templates/image-to-image/2d_image-to-image.yaml), with
    our paths and one worker per core of this machine."""
    return {
        "SYSTEM": {"NUM_CPUS": -1, "NUM_WORKERS": 2},
        "PROBLEM": {"TYPE": "IMAGE_TO_IMAGE", "NDIM": "2D"},
        "DATA": {
            "PATCH_SIZE": "(128, 128, 1)",
            "TRAIN": {"PATH": str(root / "train" / "x"), "GT_PATH": str(root / "train" / "y"), "IN_MEMORY": True},
            "VAL": {"FROM_TRAIN": True, "SPLIT_TRAIN": 0.1},
            "TEST": {"PATH": str(root / "test" / "x"), "GT_PATH": str(root / "test" / "y"), "IN_MEMORY": False,
                     "LOAD_GT": True, "PADDING": "(40,40)"},
        },
        "AUGMENTOR": {"ENABLE": True, "VFLIP": True, "HFLIP": True},
        "MODEL": {"ARCHITECTURE": "attention_unet", "LOAD_CHECKPOINT": False},
        "TRAIN": {"ENABLE": True, "OPTIMIZER": "ADAMW", "LR": 1.0e-4, "BATCH_SIZE": 8, "EPOCHS": 50, "PATIENCE": 10},
        "TEST": {"ENABLE": True, "FULL_IMG": False},
    }


def cpm15(out: Path, budget_minutes: float) -> None:
    source = SHARED / "cpm15_he_nuclei"
    stems = sorted(p.stem for p in (source / "images").glob("*.png"))
    split = {"task": "instance_segmentation", "train": [s for s in stems if int(s[-2:]) % 5],
             "test": [s for s in stems if int(s[-2:]) % 5 == 0]}

    def image(stem):  # the tiles are RGBA with an opaque alpha
        return np.asarray(Image.open(source / "images" / f"{stem}.png").convert("RGB"))

    def instances(stem):
        return np.asarray(Image.open(source / "masks" / f"{stem}_mask.png"))

    # nnU-Net's watershed gets the minimum object area ours starts from (score.py reads it here).
    split["min_area"] = minimum_object_area(np.concatenate(
        [np.bincount(instances(s).ravel())[1:] for s in split["train"]]))
    (out / "truth").mkdir(parents=True, exist_ok=True)
    for stem in split["test"]:
        tifffile.imwrite(out / "truth" / f"{stem}.tif", instances(stem))
    (out / "split.json").write_text(json.dumps(split, indent=1))

    (out / "snakescope.yaml").write_text(yaml.safe_dump({
        "task": "instance_segmentation",
        "data_dir": str(source),
        "layout": {"images": "images/*.png", "masks": "masks/*.png", "mask_suffix": "_mask",
                   "test_images": "images/image*[05].png"},
        "time_budget_minutes": budget_minutes,
    }, sort_keys=False))

    # nnU-Net learns semantic classes: it gets our U-Net's three (background, interior, boundary) and
    # its probabilities go through our watershed (score.py), as our U-Net's do.
    write_nnunet_raw(out / "nnunet_raw" / "Dataset503_CPM15", split, lambda s: f"cpm_{s[-2:]}", image,
                     lambda s: instances_to_classes(instances(s)).astype(np.uint8),
                     {"0": "R", "1": "G", "2": "B"}, {"background": 0, "interior": 1, "boundary": 2})
    biapy = out / "biapy"
    write_biapy_pairs(biapy, split, str, image, instances)
    (biapy / "biapy.yaml").write_text(yaml.safe_dump(biapy_instance_2d(biapy), sort_keys=False))


def biapy_instance_2d(root: Path) -> dict:
    """BiaPy 3.x's template for 2D instance segmentation (templates/instance_segmentation/
    2d_instance_segmentation.yaml: a U-Net learning foreground and contour channels, then a marker-controlled
    watershed), with our paths, RGB patches and one worker per core of this machine; the template's
    "BC" channels in 3.7's names (foreground F, contour C), which fill the watershed's seeds and "auto"
    thresholds by default and no longer take the template's DATA_MW_TH_TYPE."""
    return {
        "SYSTEM": {"NUM_CPUS": -1, "NUM_WORKERS": 2},
        "PROBLEM": {"TYPE": "INSTANCE_SEG", "NDIM": "2D",
                    "INSTANCE_SEG": {"DATA_CHANNELS": ["F", "C"]}},
        "DATA": {
            "PATCH_SIZE": "(256, 256, 3)",
            "TRAIN": {"PATH": str(root / "train" / "x"), "GT_PATH": str(root / "train" / "y"), "IN_MEMORY": True},
            "VAL": {"SPLIT_TRAIN": 0.1},
            "TEST": {"PATH": str(root / "test" / "x"), "GT_PATH": str(root / "test" / "y"), "IN_MEMORY": True,
                     "LOAD_GT": True, "PADDING": "(32,32)"},
        },
        "AUGMENTOR": {"ENABLE": True, "RANDOM_ROT": True, "VFLIP": True, "HFLIP": True},
        "MODEL": {"ARCHITECTURE": "unet", "LOAD_CHECKPOINT": False},
        "TRAIN": {"ENABLE": True, "OPTIMIZER": "ADAMW", "LR": 1.0e-4, "BATCH_SIZE": 6, "EPOCHS": 360, "PATIENCE": 50},
        "TEST": {"ENABLE": True, "AUGMENTATION": True, "FULL_IMG": True},
    }


DATASETS = {"isbi": isbi, "wbc": wbc, "fmd": fmd, "cpm15": cpm15}

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dataset", choices=sorted(DATASETS))
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--budget-minutes", type=float, default=6.0, help="snakescope's time_budget_minutes")
    args = parser.parse_args()
    DATASETS[args.dataset](args.workdir / args.dataset, args.budget_minutes)
    print(f"wrote {args.workdir / args.dataset}")
