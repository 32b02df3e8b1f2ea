"""The training data path (snakescope.engine.data.TrainBatches): exact batched flips/turns, repeatable epochs."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from snakescope.engine.data import BatchAugment, TrainBatches
from snakescope.engine.transforms import AUGMENTATION_DEFAULTS


def _plan(task: str, augmentations: list[str], patch: list[int] | None = None) -> dict:
    return {
        "task": task,
        "spatial_dims": 2,
        "channels": 1,
        "normalisation": "none",
        "patch_size": patch,
        "augmentations": [{"name": a, **AUGMENTATION_DEFAULTS[a]} for a in augmentations],
        "seed": 0,
        "dataset_mean": [0.0],
        "dataset_std": [1.0],
    }


def _segmentation_items(n: int = 10, size: int = 20, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [
        {
            "id": str(i),
            "image": rng.random((1, size, size), dtype=np.float32),
            "label": rng.integers(0, 3, (1, size, size)).astype(np.int64),
        }
        for i in range(n)
    ]


def test_batched_flips_and_turns_equal_per_image_ones():
    augment = BatchAugment(_plan("segmentation", ["flip", "rotate90"]))
    x, y = torch.randn(32, 2, 6, 6), torch.randint(0, 3, (32, 1, 6, 6))
    params = augment.draw(32, torch.Generator().manual_seed(0))
    out_x, out_y = augment([x, y], params)
    assert set(params["k"].tolist()) == {0, 1, 2, 3}
    for i in range(32):
        xi, yi = x[i], y[i]
        for axis in range(2):
            if params["flips"][i, axis]:
                xi, yi = xi.flip(1 + axis), yi.flip(1 + axis)
        k = int(params["k"][i])
        assert torch.equal(out_x[i], torch.rot90(xi, k, (1, 2)))
        assert torch.equal(out_y[i], torch.rot90(yi, k, (1, 2)))


def test_draw_probabilities_match_monai_defaults():
    augment = BatchAugment(_plan("segmentation", ["flip", "rotate90"]))
    params = augment.draw(20_000, torch.Generator().manual_seed(1))
    assert abs(params["flips"].float().mean().item() - 0.5) < 0.02
    turned = params["k"] > 0
    assert abs(turned.float().mean().item() - 0.5) < 0.02
    counts = torch.bincount(params["k"][turned], minlength=4)[1:].float() / turned.sum()
    assert torch.allclose(counts, torch.full((3,), 1 / 3), atol=0.02)  # RandRotate90(max_k=3): k in 1..3


@pytest.mark.parametrize("augmentations", [["flip", "rotate90"], ["flip", "rotate90", "gaussian_noise"]])
def test_epochs_repeat_for_a_seed_and_differ_between_epochs(augmentations):
    items = _segmentation_items()

    def run(threads: int) -> list[torch.Tensor]:
        generator = torch.Generator()
        batches = TrainBatches(
            items * 2,
            _plan("segmentation", augmentations, [16, 16]),
            4,
            "cpu",
            threads=threads,
            generator=generator,
        )
        out = []
        for epoch in range(2):
            generator.manual_seed(epoch)
            for batch in batches:
                assert batch["image"].shape == (4, 1, 16, 16) and batch["label"].dtype == torch.int64
                out.append(torch.cat([batch["image"], batch["label"].float()], dim=1))
        assert len(out) == 2 * len(batches) == 2 * 5
        return out

    first, again = run(1), run(1 if len(augmentations) == 2 else 4)  # worker count must not matter
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0], first[len(first) // 2])


def test_crop_keeps_label_aligned_and_pads_small_images():
    rng = np.random.default_rng(0)
    items = []
    for i, size in enumerate((12, 24, 30)):  # differing sizes; the first is smaller than the patch
        image = rng.random((1, size, size), dtype=np.float32)
        items.append({"id": str(i), "image": image, "label": (image > 0.5).astype(np.int64)})
    batches = TrainBatches(items, _plan("segmentation", ["flip", "rotate90"], [16, 16]), 3, "cpu")
    for _ in range(3):
        batch = next(iter(batches))
        assert batch["image"].shape == (3, 1, 16, 16)
        assert torch.equal(batch["label"], (batch["image"] > 0.5).long())


def test_classification_labels_are_not_transformed():
    rng = np.random.default_rng(0)
    items = [
        {"id": str(i), "image": rng.random((3, 8, 8), dtype=np.float32), "label": i % 3} for i in range(9)
    ]
    batches = TrainBatches(items, _plan("classification", ["flip", "rotate90"]), 4, "cpu")
    labels = torch.cat([b["label"] for b in batches])
    assert len(batches) == 2 and labels.shape == (8,) and labels.dtype == torch.int64


@pytest.mark.parametrize("data_path", ["memory", "stream"])
def test_fit_repeats_exactly_on_cpu(tmp_path, data_path):
    from snakescope.augment import make_plan
    from snakescope.config import TrainConfig
    from snakescope.store import write_store
    from snakescope.train import fit

    rng = np.random.default_rng(0)
    ids = [f"s{i}" for i in range(12)]
    with write_store(tmp_path / "arrays.zarr") as store:
        for sample_id in ids:
            store.add(sample_id, rng.gamma(4.0, 50.0, (1, 40, 40)).astype(np.float32),
                      rng.integers(0, 2, (40, 40)).astype(np.int64))
    pd.DataFrame({"id": ids, "label": [""] * 12, "label_index": [-1] * 12}).to_csv(
        tmp_path / "samples.tsv", sep="\t", index=False
    )
    (tmp_path / "split.json").write_text(json.dumps({"train": ids[:8], "val": ids[8:], "test": []}))
    fingerprint = {
        "dataset": "t",
        "spatial_dims": 2,
        "channels": 1,
        "num_classes": 2,
        "intensity": [{"mean": 200.0, "std": 100.0}],
    }
    (tmp_path / "fingerprint.json").write_text(json.dumps(fingerprint))
    settings = {
        "task": "segmentation",
        "normalisation": "percentile",
        "seed": 3,
        "patch_size": [32, 32],
        "augmentations": ["flip", "rotate90"],
        "data_path": data_path,
    }
    (tmp_path / "plan.json").write_text(json.dumps(make_plan(settings, fingerprint)))
    cfg = TrainConfig(
        task="segmentation",
        model="unet",
        seed=3,
        batch_size=4,
        epochs=2,
        patience=5,
        learning_rate=1e-3,
        loss="dice_cross_entropy",
        augmentations=("flip", "rotate90"),
        normalisation="percentile",
        patch_size=(32, 32),
        dropout=0.1,
        device="cpu",
    )
    histories = []
    for run in ("a", "b"):
        out = tmp_path / run
        out.mkdir()
        fit(
            str(tmp_path / "arrays.zarr"),
            str(tmp_path / "samples.tsv"),
            str(tmp_path / "split.json"),
            str(tmp_path / "plan.json"),
            str(tmp_path / "fingerprint.json"),
            cfg,
            str(out / "model.pt"),
            str(out / "history.csv"),
            str(out / "card.json"),
            work_dir=str(out / "work"),
        )
        histories.append(pd.read_csv(out / "history.csv")[["train_loss", "val_loss"]].to_numpy())
    assert np.array_equal(histories[0], histories[1])
    training = json.loads((tmp_path / "a" / "card.json").read_text())["training"]
    assert training["data_path"] == data_path and training["data_path_reason"].startswith(f"data_path: {data_path}")


@pytest.mark.parametrize("augmentations", [["flip", "rotate90"], ["flip", "rotate90", "gaussian_noise"]])
def test_process_shards_of_a_global_batch_are_exactly_its_batch(augmentations):
    """Data parallel: each of 2 processes gets its half of every global batch, crops and augmentations
    included, so together they train on exactly what one process would."""
    items, plan = _segmentation_items(n=9), _plan("segmentation", augmentations, [16, 16])

    def epoch(shard: tuple[int, int]) -> list[torch.Tensor]:
        generator = torch.Generator().manual_seed(3)
        batches = TrainBatches(items * 2, plan, 6, "cpu", generator=generator, shard=shard)
        return [torch.cat([b["image"], b["label"].float()], dim=1) for b in batches]

    whole, first, second = epoch((0, 1)), epoch((0, 2)), epoch((1, 2))
    assert len(whole) == len(first) == len(second) == 18 // 6
    for batch, a, b in zip(whole, first, second, strict=True):
        assert a.shape[0] == b.shape[0] == 3
        assert torch.equal(batch, torch.cat([a, b]))
    with pytest.raises(ValueError, match="batch_size 6 .* does not split into 4 training processes"):
        TrainBatches(items * 2, plan, 6, "cpu", shard=(0, 4))


def test_streamed_items_are_the_loaded_items_and_give_the_same_batches(tmp_path):
    """StoredItems reads from the store what load_items loads, and an epoch streamed through the
    DataLoader is exactly the epoch of the same items held in memory (same crops and augmentations)."""
    from snakescope.engine.items import StoredItems, image_shapes, load_items
    from snakescope.store import write_store

    items = _segmentation_items(n=7, size=24)
    items[3]["image"] = np.random.default_rng(1).random((1, 30, 24), dtype=np.float32)  # sizes may differ
    items[3]["label"] = np.zeros((1, 30, 24), dtype=np.int64)
    with write_store(tmp_path / "arrays.zarr") as store:
        for item in items:
            store.add(item["id"], item["image"], item["label"][0])
    plan = _plan("segmentation", ["flip", "rotate90", "gaussian_noise"], [16, 16])
    ids = [item["id"] for item in items]

    def read_label(arrays, sample_id):
        return arrays[f"target/{sample_id}"][None].astype(np.int64)

    loaded = load_items(str(tmp_path / "arrays.zarr"), ids, plan, read_label)
    streamed = StoredItems(str(tmp_path / "arrays.zarr"), ids, plan, read_label)
    assert len(streamed) == 7 and len(streamed * 2) == 14 and [it["id"] for it in streamed[1:3]] == ["1", "2"]
    assert image_shapes(streamed) == image_shapes(loaded) == [(1, 24, 24)] * 3 + [(1, 30, 24)] + [(1, 24, 24)] * 3
    for a, b in zip(loaded, streamed, strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])

    def epoch(source) -> list[torch.Tensor]:
        batches = TrainBatches(source * 2, plan, 4, "cpu", generator=torch.Generator().manual_seed(5))
        assert batches.mode == "loader"
        return [torch.cat([b["image"], b["label"].float()], dim=1) for b in batches]

    in_memory, from_store = epoch(loaded), epoch(streamed)
    assert len(in_memory) == 14 // 4
    for a, b in zip(in_memory, from_store, strict=True):
        assert torch.equal(a, b)
    # without per-image augmentations both take the tensor path (crops, flips and turns batched), the
    # streamed one reading each batch's images from the store: again the same batches
    plain = _plan("segmentation", ["flip", "rotate90"], [16, 16])

    def tensor_epoch(source) -> list[torch.Tensor]:
        batches = TrainBatches(source * 2, plain, 4, "cpu", generator=torch.Generator().manual_seed(6))
        assert batches.mode == "tensor"
        return [torch.cat([b["image"], b["label"].float()], dim=1) for b in batches]

    streamed_plain = StoredItems(str(tmp_path / "arrays.zarr"), ids, plain, read_label)
    for a, b in zip(tensor_epoch(loaded), tensor_epoch(streamed_plain), strict=True):
        assert torch.equal(a, b)


def test_data_path_is_chosen_from_the_dataset_size_and_the_memory_of_the_job():
    from snakescope.augment import plan_data_path
    from snakescope.engine.items import choose_data_path

    fingerprint = {"n_images": 100, "shape_median": [512, 512], "channels": 3}
    planned = plan_data_path("auto", fingerprint, dense=True)
    assert planned == {"mode": "auto", "dataset_bytes": 100 * 512 * 512 * 13}  # float32 RGB + uint8 mask
    assert plan_data_path("auto", fingerprint, dense=False)["dataset_bytes"] == 100 * 512 * 512 * 12
    # 0.32 GiB: in memory where a quarter of the job's memory holds it, streamed where it does not
    mode, reason = choose_data_path({"data_path": planned}, usable_bytes=2 * 2**30)
    assert mode == "memory" and reason == (
        "the dataset takes about 0.32 GiB in memory, at most 25% of the 2.0 GiB this job may use")
    mode, reason = choose_data_path({"data_path": planned}, usable_bytes=2**30)
    assert mode == "stream" and reason.endswith("more than 25% of the 1.0 GiB this job may use")
    forced = {"data_path": plan_data_path("memory", fingerprint, dense=True)}
    assert choose_data_path(forced, usable_bytes=2**30)[0] == "memory"
    assert choose_data_path({}, usable_bytes=2**30)[0] == "memory"  # a plan from before streaming
