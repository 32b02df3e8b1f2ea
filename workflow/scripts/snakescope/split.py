"""split: a seeded train / validation / test split, written once to JSON that the user may replace.

A test set the user made (InstantDL ``test/`` folder) is kept as it is. Classification splits are
stratified by class; when `group_column` names a grouping (patient, slide, field of view), no group
spans two splits.
"""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np
import pandas as pd

from snakescope.io import InputError, read_json, write_json

log = logging.getLogger(__name__)

MIN_PER_CLASS_FOR_STRATIFY = 3  # a class needs a member in train, validation and test to be stratified


def make_split(samples: pd.DataFrame, test_fraction: float, val_fraction: float, seed: int, stratify: bool) -> dict:
    """Assign every sample to train, val or test.

    Args:
        samples: the `samples.tsv` table of `convert` (columns id, label, subset, group).
        test_fraction: share held out for testing when the user gave no test set.
        val_fraction: share of the remaining samples used for validation / early stopping.
        seed: random seed; the same seed and samples give the same split.
        stratify: keep class proportions (classification).

    Returns:
        ``{"seed", "train", "val", "test", "unlabelled_test"}`` with sorted lists of sample ids.
    """
    from sklearn.model_selection import GroupShuffleSplit, train_test_split

    samples = samples.fillna("")
    has_truth = (samples["label"].astype(str) != "") | (samples["target"].astype(str) != "")
    user_test = samples[(samples["subset"] == "test") & has_truth]["id"].tolist()
    unlabelled = samples[(samples["subset"] == "test") & ~has_truth]["id"].tolist()
    pool = samples[samples["subset"] != "test"]
    if len(pool) < 3:
        raise InputError(
            f"only {len(pool)} training image(s); at least 3 are needed for train, validation and test. Add images."
        )

    def split_off(frame: pd.DataFrame, fraction: float, salt: int) -> tuple[pd.DataFrame, pd.DataFrame]:
        rng_seed = seed * 1000 + salt
        groups = frame["group"].astype(str)
        if (groups != "").all() and groups.nunique() >= 2:
            splitter = GroupShuffleSplit(n_splits=1, test_size=fraction, random_state=rng_seed)
            keep, held = next(splitter.split(frame, groups=groups))
            return frame.iloc[keep], frame.iloc[held]
        n_held = max(1, int(round(fraction * len(frame))))
        labels = frame["label"].astype(str)
        counts = Counter(labels)
        if stratify and len(counts) > 1:
            # Rare classes cannot be stratified; they stay in training (where they are most useful)
            # and the user is told, rather than failing the split.
            rare = labels.map(counts) < MIN_PER_CLASS_FOR_STRATIFY
            if rare.any():
                log.warning("classes %s have fewer than %d images; all of them stay in the training split",
                            sorted(set(labels[rare])), MIN_PER_CLASS_FOR_STRATIFY)
            common = frame[~rare]
            n_held = min(n_held, len(common) - 1)
            strat = common["label"].astype(str)
            if n_held < strat.nunique():
                keep, held = train_test_split(np.arange(len(common)), test_size=n_held, random_state=rng_seed)
            else:
                keep, held = train_test_split(np.arange(len(common)), test_size=n_held, random_state=rng_seed,
                                              stratify=strat)
            return pd.concat([common.iloc[keep], frame[rare]]), common.iloc[held]
        keep, held = train_test_split(np.arange(len(frame)), test_size=n_held, random_state=rng_seed)
        return frame.iloc[keep], frame.iloc[held]

    if user_test:
        rest, test_ids = pool, user_test
    else:
        rest, test = split_off(pool, test_fraction, salt=1)
        test_ids = test["id"].tolist()
    train, val = split_off(rest, val_fraction, salt=2)
    split = {
        "seed": seed,
        "train": sorted(train["id"]),
        "val": sorted(val["id"]),
        "test": sorted(test_ids),
        "unlabelled_test": sorted(unlabelled),
    }
    for name in ("train", "val", "test"):
        if not split[name]:
            raise InputError(f"the {name} split is empty; add images or change test_fraction/val_fraction.")
    return split


def write_split(samples_tsv: str, settings: dict, split_out: str) -> dict:
    samples = pd.read_csv(samples_tsv, sep="\t", dtype=str, keep_default_na=False)
    split = make_split(
        samples,
        test_fraction=settings["test_fraction"],
        val_fraction=settings["val_fraction"],
        seed=settings["seed"],
        stratify=settings["task"] == "classification",
    )
    log.info("split: %d train, %d val, %d test", len(split["train"]), len(split["val"]), len(split["test"]))
    write_json(split, split_out)
    return split


def load_split(path: str, known_ids: set[str] | None = None) -> dict:
    """Read a split JSON (ours or the user's), checking that it names known samples only once."""
    split = read_json(path)
    seen: Counter = Counter()
    for name in ("train", "val", "test"):
        if name not in split:
            raise InputError(f"{path}: no '{name}' list. A split file needs train, val and test lists of sample ids.")
        seen.update(split[name])
    twice = [k for k, n in seen.items() if n > 1]
    if twice:
        raise InputError(f"{path}: sample(s) {twice[:5]} appear in more than one split. Each belongs to one.")
    if known_ids is not None:
        unknown = sorted(set(seen) - known_ids)
        if unknown:
            raise InputError(f"{path}: unknown sample id(s) {unknown[:5]}; ids are the image file stems in samples.tsv.")
    return split
