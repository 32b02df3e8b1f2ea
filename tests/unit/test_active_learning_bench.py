"""bench/active_learning.py: its picking and summary by hand, and one tiny simulation end to end."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from benches import load_bench


@pytest.fixture(scope="module")
def bench():
    return load_bench("active_learning")


def test_pick_takes_the_most_uncertain_or_random_images(bench):
    pool = ["a", "b", "c", "d"]
    scores = pd.Series({"a": 0.1, "b": 0.9, "c": 0.5, "d": 0.9})
    assert bench.pick(pool, scores, 3, np.random.default_rng(0)) == ["b", "d", "c"]
    random = bench.pick(pool, None, 2, np.random.default_rng(0))
    assert len(set(random)) == 2 and set(random) <= set(pool)
    assert random == bench.pick(pool, None, 2, np.random.default_rng(0))  # seeded


def test_every_round_trains_about_as_many_steps(bench):
    assert bench.epochs_for(150, 20, {"batch_size": 16}) == 75  # 2 batches an epoch
    assert bench.epochs_for(150, 100, {"batch_size": 16}) == 22  # 7 batches: 154 steps
    assert bench.epochs_for(60, 10, {"batch_size": 8, "max_batches_per_epoch": 6}) == 30


def test_summary_of_three_learning_curves_by_hand(bench):
    rows = []
    for seed, gains in ((0, (0.0, 0.10, 0.10)), (1, (0.0, 0.0, 0.04))):
        for round_, (n, random_score) in enumerate(((10, 0.5), (20, 0.6), (30, 0.7)), start=1):
            rows.append({"seed": seed, "strategy": "random", "round": round_, "n_labelled": n, "metric": random_score})
            rows.append({"seed": seed, "strategy": "uncertainty", "round": round_, "n_labelled": n,
                         "metric": random_score + gains[round_ - 1]})
            rows.append({"seed": seed, "strategy": "bald", "round": round_, "n_labelled": n,
                         "metric": 0.5 if round_ == 1 else 0.75})
    curves, summary = bench.summarise(pd.DataFrame(rows))
    # rounds 2-3: seed 0 gains 0.10 on average, seed 1 0.02
    assert summary["uncertainty_area_between_curves"] == pytest.approx(0.06)
    assert summary["uncertainty_area_between_curves_std"] == pytest.approx(np.std([0.10, 0.02], ddof=1))
    # random ends at 0.7 with 30 labels; uncertainty averages 0.65 at 20 labels, 0.77 at 30
    assert summary["random_final"] == pytest.approx(0.7) and summary["uncertainty_labels_to_match"] == 30
    assert summary["uncertainty_label_share"] == 1.0
    # bald: 0.75 from 20 labels on, gains 0.15 and 0.05 on both seeds, reaches 0.7 with 2/3 of the labels
    assert summary["bald_area_between_curves"] == pytest.approx(0.10)
    assert summary["bald_area_between_curves_std"] == pytest.approx(0.0)
    assert summary["bald_label_share"] == pytest.approx(2 / 3)
    assert curves.loc[(curves["strategy"] == "uncertainty") & (curves["round"] == 2), "mean"].item() == pytest.approx(0.65)


TINY = {
    "classification": {"config": {"task": "classification", "resize": [32, 32], "batch_size": 4},
                       "model": "mobilenet_v2", "metric": "accuracy"},
    "segmentation": {"config": {"task": "segmentation", "patch_size": [32, 32], "batch_size": 4},
                     "model": "unet_small", "metric": "iou"},
}


@pytest.mark.parametrize("task", sorted(TINY))
def test_a_tiny_simulation_runs_end_to_end(bench, tmp_path, task):
    from snakescope.synthetic import write_demo_dataset

    data = write_demo_dataset(tmp_path / "cells", n_images=24, size=32, seed=0)
    spec = {**TINY[task], "config": {**TINY[task]["config"], "data_dir": str(data)},
            "start": 4, "add": 4, "rounds": 2, "steps": 2}
    rounds = bench.simulate("demo", spec, tmp_path / "out", seeds=[0], mc_samples=2,
                            strategies=["uncertainty", "bald", "random"])
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "out/rounds.tsv", sep="\t"), rounds)
    assert list(rounds["n_labelled"]) == [4, 4, 4, 8, 8, 8] and list(rounds["round"]) == [1, 1, 1, 2, 2, 2]
    first = rounds[rounds["round"] == 1]
    assert first["metric"].nunique() == 1  # the first round is shared by the strategies
    assert rounds["metric"].between(0, 1).all()
