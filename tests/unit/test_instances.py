"""snakescope.tasks.instance_segmentation: metrics against hand-computed cases, ground-truth helpers, post-processing,
the Otsu baseline, and one Mask R-CNN training step."""

from __future__ import annotations

import numpy as np
import pytest

from snakescope.engine import networks
from snakescope.store import open_store
from snakescope.tasks import instance_segmentation
from snakescope.tasks.instance_segmentation import detector, metrics
from snakescope.tasks.instance_segmentation import labels as label_images


def squares(shape=(40, 60), boxes=()):
    """Label image with object k+1 filling boxes[k] = (top, left, height, width)."""
    labels = np.zeros(shape, np.int32)
    for k, (top, left, height, width) in enumerate(boxes):
        labels[top : top + height, left : left + width] = k + 1
    return labels


def disk(shape, centre, radius):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


# ---- metrics -------------------------------------------------------------------------------------


def test_identical_images_score_one():
    truth = squares(boxes=[(2, 2, 10, 10), (20, 30, 8, 12)])
    m = metrics.instance_metrics(truth, truth * 7)  # ids need not agree
    for key in (
        "precision_50",
        "recall_50",
        "f1_50",
        "ap_50",
        "ap_50_95",
        "aji",
        "pq",
        "mean_matched_iou",
        "iou",
        "dice",
    ):
        assert m[key] == pytest.approx(1.0), key
    assert (m["tp_50"], m["fp_50"], m["fn_50"]) == (2, 0, 0)


def test_one_shifted_one_missed_one_false_positive():
    # truth: two 10x10 squares (area 100). Prediction: the first shifted right by 2 px (intersection 80,
    # union 120, IoU 2/3), the second missed, and a 5x5 false positive elsewhere.
    truth = squares(boxes=[(0, 0, 10, 10), (20, 20, 10, 10)])
    prediction = squares(boxes=[(0, 2, 10, 10), (30, 50, 5, 5)])
    m = metrics.instance_metrics(truth, prediction)
    assert (m["tp_50"], m["fp_50"], m["fn_50"]) == (1, 1, 1)
    assert m["precision_50"] == pytest.approx(0.5)
    assert m["recall_50"] == pytest.approx(0.5)
    assert m["f1_50"] == pytest.approx(0.5)
    assert m["ap_50"] == pytest.approx(1 / 3)  # TP / (TP + FP + FN)
    # the match holds at IoU 0.5, 0.55, 0.6, 0.65 (2/3 >= t), not from 0.7 on: 4 of 10 thresholds
    assert m["ap_50_95"] == pytest.approx(4 * (1 / 3) / 10)
    # AJI: C = 80; U = 120 (pair) + 100 (missed truth) + 25 (unpaired prediction)
    assert m["aji"] == pytest.approx(80 / 245)
    assert m["mean_matched_iou"] == pytest.approx(2 / 3)
    assert m["pq"] == pytest.approx((2 / 3) * 0.5)  # SQ x RQ, RQ = F1
    # pixels: foreground intersection 80, union 100 + 100 + 20 + 25
    assert m["iou"] == pytest.approx(80 / 245)
    assert m["dice"] == pytest.approx(160 / (200 + 125))


def test_split_object_counts_one_match_at_exactly_half():
    # one 10x20 object predicted as two 10x10 halves: IoU 0.5 each; IoU >= 0.5 is a hit, one-to-one
    truth = squares(boxes=[(0, 0, 10, 20)])
    prediction = squares(boxes=[(0, 0, 10, 10), (0, 10, 10, 10)])
    m = metrics.instance_metrics(truth, prediction)
    assert (m["tp_50"], m["fp_50"], m["fn_50"]) == (1, 1, 0)
    assert m["ap_50"] == pytest.approx(0.5)
    # AJI pairs the truth with one half (100 / 200); the other half is unpaired (+100 to U)
    assert m["aji"] == pytest.approx(100 / 300)


def test_merged_objects_aji_lets_one_prediction_pair_twice():
    # two touching 10x10 objects predicted as one 10x20: Kumar's AJI pairs both with it (C = 200,
    # U = 400), unlike the one-to-one object metrics (one match at IoU 0.5, one miss)
    truth = squares(boxes=[(0, 0, 10, 10), (0, 10, 10, 10)])
    prediction = squares(boxes=[(0, 0, 10, 20)])
    m = metrics.instance_metrics(truth, prediction)
    assert m["aji"] == pytest.approx(0.5)
    assert (m["tp_50"], m["fp_50"], m["fn_50"]) == (1, 0, 1)


def test_empty_images():
    empty = np.zeros((8, 8), np.int32)
    both = metrics.instance_metrics(empty, empty)
    assert both["f1_50"] == both["ap_50_95"] == both["aji"] == both["pq"] == 1.0
    some = squares(shape=(8, 8), boxes=[(1, 1, 3, 3)])
    missed = metrics.instance_metrics(some, empty)
    assert missed["f1_50"] == missed["aji"] == missed["pq"] == 0.0
    assert np.isnan(missed["precision_50"]) and missed["recall_50"] == 0.0
    spurious = metrics.instance_metrics(empty, some)
    assert spurious["precision_50"] == 0.0 and np.isnan(spurious["recall_50"])


def test_matching_is_one_to_one_and_prefers_more_matches():
    # at IoU 0.3 the greedy choice (highest IoU first) would pair (0, 0) and leave row 1 unmatched;
    # the assignment pairs (0, 1) and (1, 0) instead
    iou = np.array([[0.6, 0.4], [0.35, 0.0]])
    rows, columns = metrics.match(iou, 0.3)
    assert sorted(zip(rows.tolist(), columns.tolist(), strict=True)) == [(0, 1), (1, 0)]


def test_average_precision_curve_matches_metric():
    truth = squares(boxes=[(0, 0, 10, 10), (20, 20, 10, 10)])
    prediction = squares(boxes=[(0, 2, 10, 10), (30, 50, 5, 5)])
    curve = metrics.average_precision_curve(truth, prediction)
    assert len(curve) == 10
    assert np.mean(curve) == pytest.approx(metrics.instance_metrics(truth, prediction)["ap_50_95"])


# ---- ground truth and post-processing ------------------------------------------------------------


def test_binary_to_instances_splits_touching_disks_and_keeps_ellipse_whole():
    shape = (60, 90)
    touching = disk(shape, (30, 20), 10) | disk(shape, (30, 36), 10)  # centres 16 px apart: a neck
    alone = disk(shape, (30, 72), 6)
    labels = label_images.binary_to_instances(touching | alone)
    assert labels.max() == 3
    assert len(np.unique(labels[disk(shape, (30, 20), 4)])) == 1
    assert labels[30, 20] != labels[30, 36]
    yy, xx = np.mgrid[:40, :80]
    ellipse = ((yy - 20) / 8.0) ** 2 + ((xx - 40) / 30.0) ** 2 <= 1
    assert label_images.binary_to_instances(ellipse).max() == 1


def test_prepare_targets_derives_only_from_binary_masks():
    shape = (60, 90)
    binary = (disk(shape, (30, 20), 10) | disk(shape, (30, 36), 10)).astype(np.uint8) * 255
    targets, derived = label_images.prepare_instance_targets({"a": binary, "b": np.zeros(shape, np.uint8)})
    assert derived and targets["a"].max() == 2
    labelled = squares(boxes=[(0, 0, 5, 5), (10, 10, 5, 5)])
    same, derived = label_images.prepare_instance_targets({"a": labelled})
    assert not derived and same["a"] is labelled


def test_instance_fingerprint():
    labels = squares(boxes=[(0, 0, 10, 10), (20, 20, 5, 4)])
    fingerprint = label_images.instance_fingerprint({"a": labels, "b": np.zeros_like(labels)})
    assert fingerprint["n_objects"] == 2
    assert fingerprint["objects_per_image"] == {"median": 1.0, "min": 0, "max": 2}
    assert fingerprint["median_object_area"] == pytest.approx(60.0)


def test_classes_separate_touching_objects():
    labels = squares(shape=(10, 20), boxes=[(2, 2, 6, 6), (2, 8, 6, 6)])  # touching at columns 7|8
    classes = label_images.instances_to_classes(labels)
    assert classes[0, 0] == 0
    assert classes[4, 4] == 1  # interior
    assert classes[4, 7] == 2 and classes[4, 8] == 2  # both sides of the contact are boundary
    assert classes[2, 3] == 2  # outer rim


def test_watershed_recovers_instances_from_ideal_probabilities():
    shape = (60, 90)
    truth = squares(shape=shape, boxes=[(5, 5, 12, 12), (5, 17, 12, 12), (30, 40, 20, 15)])
    probabilities = np.eye(3, dtype=np.float32)[label_images.instances_to_classes(truth)].transpose(2, 0, 1)
    labels = label_images.watershed_instances(probabilities, min_area=4)
    m = metrics.instance_metrics(truth, labels)
    assert m["f1_50"] == 1.0 and m["aji"] > 0.95


def test_watershed_keeps_objects_without_markers_and_drops_specks():
    probabilities = np.zeros((3, 20, 20), np.float32)
    probabilities[0] = 1
    probabilities[:, 2:6, 2:6] = np.array([0.1, 0.3, 0.6])[
        :, None, None
    ]  # no interior > 0.5: still an object
    probabilities[:, 15, 15] = np.array([0.0, 1.0, 0.0])  # a one-pixel speck
    labels = label_images.watershed_instances(probabilities, min_area=4)
    assert labels.max() == 1 and labels[3, 3] == 1 and labels[15, 15] == 0


def test_otsu_baseline_polarity():
    truth = squares(shape=(50, 50), boxes=[(5, 5, 10, 10), (30, 30, 12, 12)])
    dark_objects = np.where(truth > 0, 40.0, 200.0)[None].repeat(3, 0)  # H&E-like: dark nuclei
    assert not metrics.objects_are_bright([dark_objects], [truth])
    labels = metrics.otsu_instances(dark_objects, bright_objects=False)
    assert metrics.instance_metrics(truth, labels)["f1_50"] == 1.0
    assert metrics.otsu_instances(dark_objects, bright_objects=True).max() == 1  # the background, one component


def test_real_dsb_image_binary_round_trip_and_baseline(shared_data):
    tifffile = pytest.importorskip("tifffile")
    folder = shared_data / "stardist_wheel_examples"
    image = tifffile.imread(folder / "img2d.tif")[None].astype(np.float32)
    truth = tifffile.imread(folder / "mask2d.tif").astype(np.int64)
    # deriving instances from the binary mask recovers most of the 125 annotated nuclei
    derived = label_images.binary_to_instances(truth > 0)
    assert metrics.instance_metrics(truth, derived)["f1_50"] > 0.85
    # the Otsu baseline finds bright fluorescent nuclei but merges touching ones
    assert metrics.objects_are_bright([image], [truth])
    baseline = metrics.instance_metrics(truth, metrics.otsu_instances(image, True))
    assert 0.3 < baseline["aji"] < 0.95


# ---- Mask R-CNN ----------------------------------------------------------------------------------


def test_maskrcnn_target_boxes_are_positive_and_slivers_dropped():
    pytest.importorskip("torch")
    labels = squares(shape=(16, 16), boxes=[(0, 0, 1, 1), (4, 4, 1, 6), (8, 8, 5, 5)])
    target = detector.maskrcnn_target(labels, min_pixels=4)
    assert target["boxes"].tolist() == [[4.0, 4.0, 10.0, 5.0], [8.0, 8.0, 13.0, 13.0]]
    assert target["masks"].shape == (2, 16, 16) and target["masks"][1].sum() == 25
    empty = detector.maskrcnn_target(np.zeros((8, 8), np.int32))
    assert empty["boxes"].shape == (0, 4)


def test_anchor_sizes_follow_object_size():
    assert networks.anchor_sizes(150.0) == (8, 16, 32, 64, 128)  # nuclei of ~12 px
    assert networks.anchor_sizes(None) == (32, 64, 128, 256, 512)  # torchvision's defaults


@pytest.mark.slow
def test_maskrcnn_trains_one_step_and_paints_instances():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = networks.build_maskrcnn(in_channels=1, sizes=(8, 16, 32, 64, 128), image_size=64)
    model.roi_heads.detections_per_img = 10  # random weights: keep the untrained detections few
    labels = squares(shape=(64, 64), boxes=[(4, 4, 12, 12), (30, 30, 10, 14)])
    image = torch.as_tensor((labels > 0).astype(np.float32))[None]
    model.train()
    losses = model([image], [detector.maskrcnn_target(labels)])
    assert {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"} <= set(
        losses
    )
    sum(losses.values()).backward()
    predicted, scores = detector.maskrcnn_instances(model, image, score_threshold=0.0, min_area=1)
    assert predicted.shape == (64, 64) and predicted.dtype == np.int32
    assert set(np.unique(predicted)) - {0} == set(scores)


@pytest.mark.slow
def test_score_threshold_tuning_equals_painting_at_each_threshold():
    """One pass at the lowest threshold, objects below t dropped, must equal painting at t (the shortcut
    tune_score_threshold takes); the chosen threshold is the one with the best validation PQ."""
    torch = pytest.importorskip("torch")
    from skimage.segmentation import relabel_sequential

    torch.manual_seed(1)
    model = networks.build_maskrcnn(in_channels=1, sizes=(8, 16, 32, 64, 128), image_size=64, backbone="resnet18")
    model.roi_heads.detections_per_img = 30
    labels = squares(shape=(64, 64), boxes=[(4, 4, 12, 12), (30, 30, 10, 14), (44, 6, 9, 9)])
    image = torch.as_tensor((labels > 0).astype(np.float32))[None]
    lowest, lowest_scores = detector.maskrcnn_instances(model, image, min(detector.SCORE_THRESHOLDS), min_area=2)
    assert len(lowest_scores) > 3  # random weights score around 0.5: the thresholds do cut
    for threshold in detector.SCORE_THRESHOLDS:
        direct, _ = detector.maskrcnn_instances(model, image, threshold, min_area=2)
        dropped = [i for i, score in lowest_scores.items() if score < threshold]
        shortcut = relabel_sequential(np.where(np.isin(lowest, dropped), 0, lowest))[0]
        np.testing.assert_array_equal(shortcut, direct)
    item = {"id": "a", "image": image.numpy(), "label": labels[None]}
    best, pq = detector.tune_score_threshold(model, [item], 2, "cpu")
    assert set(pq) == {str(t) for t in detector.SCORE_THRESHOLDS} and pq[str(best)] == max(pq.values())
    assert detector.tune_score_threshold(model, [{"id": "b", "image": image.numpy()}], 2, "cpu") == (
        networks.MASKRCNN_SCORE_THRESHOLD,
        {},
    )


def test_detectors_are_registered_models():
    from snakescope.engine.models import MODELS, is_detector

    detectors = [name for name, entry in MODELS.items() if entry.detector]
    assert detectors == ["maskrcnn", "maskrcnn_resnet18"] and all(is_detector(name) for name in detectors)
    assert not is_detector("unet") and not is_detector("no_such_model")
    # a detector is neither proposed on a CPU nor timed on random input by the planner
    assert all(MODELS[name].needs_gpu and not MODELS[name].measurable for name in detectors)


def test_panoptic_quality_agrees_with_instance_metrics():
    truth = squares(boxes=[(0, 0, 10, 10), (20, 20, 10, 10)])
    prediction = squares(boxes=[(0, 2, 10, 10), (30, 50, 5, 5)])
    assert metrics.panoptic_quality(truth, prediction) == pytest.approx(
        metrics.instance_metrics(truth, prediction)["pq"]
    )
    assert metrics.panoptic_quality(np.zeros((4, 4), int), np.zeros((4, 4), int)) == 1.0


def test_tune_postprocessing_on_validation_images():
    torch = pytest.importorskip("torch")
    truth = squares(shape=(48, 64), boxes=[(4, 4, 12, 12), (4, 16, 12, 12), (28, 30, 14, 20)])
    logits = 10 * np.eye(3, dtype=np.float32)[label_images.instances_to_classes(truth)].transpose(2, 0, 1)
    plan = {"task": "instance_segmentation", "patch_size": [32, 32]}
    item = {"id": "a", "image": logits, "label": truth[None]}
    threshold, min_area, scores = instance_segmentation.tune_postprocessing(torch.nn.Identity(), plan, [item], 4, "cpu")
    assert threshold in instance_segmentation.INTERIOR_THRESHOLDS and min_area in (4, 8, 16)
    assert max(scores.values()) > 0.9 and len(scores) == 3 * len(instance_segmentation.INTERIOR_THRESHOLDS)
    assert instance_segmentation.tune_postprocessing(torch.nn.Identity(), plan, [{"id": "b", "image": logits}], 4, "cpu")[
        :2
    ] == (0.5, 4)


def test_convert_derives_instances_from_binary_masks(tmp_path):
    from PIL import Image

    from snakescope.config import resolve_datasets, stage_settings
    from snakescope.convert import convert_dataset

    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    shape = (64, 96)
    for k in range(4):
        binary = disk(shape, (32, 20 + k), 10) | disk(shape, (32, 36 + k), 10) | disk(shape, (12, 80), 5)
        image = np.where(binary, 200, 30).astype(np.uint8)
        Image.fromarray(image).save(tmp_path / "images" / f"im{k}.png")
        Image.fromarray(binary.astype(np.uint8) * 255).save(tmp_path / "masks" / f"im{k}_mask.png")
    config = {
        "task": "instance_segmentation",
        "data_dir": str(tmp_path),
        "patch_size": [32, 32],
        "layout": {"images": "images/*.png", "masks": "masks/*.png", "mask_suffix": "_mask"},
    }
    settings = next(iter(resolve_datasets(config).values()))
    out = tmp_path / "out"
    fingerprint = convert_dataset(
        stage_settings(settings, "convert"), out / "arrays.zarr", out / "samples.tsv", out / "fingerprint.json"
    )
    assert fingerprint["instances_derived_from_binary"]
    assert fingerprint["n_objects"] == 12 and fingerprint["objects_per_image"]["median"] == 3
    assert fingerprint["num_classes"] == 3
    with open_store(out / "arrays.zarr") as arrays:
        target = arrays["target/im0"]
    assert target.max() == 3 and target[32, 20] != target[32, 36]  # the touching pair is split
