"""split: a seeded train / validation / test split, written once to JSON that the user may replace.

A test set the user made (InstantDL ``test/`` folder) is kept as it is. Classification splits are
stratified by class; when `group_column` names a grouping (patient, slide, field of view), no group
spans two splits. The tiles of a single image (layout.tile_size) are split in bands from the right,
so that validation (and test, when the layout gives none) borders training along one edge only.
"""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np
import pandas as pd

from snakescope.io import InputError, read_json, write_json
from snakescope.tasks import get_task

log = logging.getLogger(__name__)

MIN_PER_CLASS_FOR_STRATIFY = 3  # a class needs a member in train, validation and test to be stratified


def make_split(
    samples: pd.DataFrame,
    test_fraction: float,
    val_fraction: float,
    seed: int,
    stratify: bool,
    *,
    require_groups: bool = False,
) -> dict:
    """Assign every sample to train, val or test.

    Args:
        samples: the `samples.tsv` table of `convert` (columns id, label, target, subset, group).
        test_fraction: share held out for testing when the user gave no test set.
        val_fraction: share of the remaining samples used for validation / early stopping.
        seed: random seed; the same seed and samples give the same split.
        stratify: keep class proportions (classification). Classes with fewer than 3 images stay in
            training.
        require_groups: the user named a `group_column`: too few groups for whole groups in train,
            validation and test is an error. Otherwise groups (e.g. the tiles of one image) are kept
            apart where there are enough of them, and the split falls back to single images (logged)
            where there are not.

    Returns:
        ``{"seed", "train", "val", "test", "unlabelled_test"}`` with sorted lists of sample ids.

    Raises:
        InputError when there are too few images (or groups) for a train, validation and test split.
    """
    from sklearn.model_selection import GroupShuffleSplit, train_test_split

    if "id" not in samples.columns:
        raise InputError(f"the samples table has no 'id' column (columns: {list(samples.columns)}).")
    samples = samples.copy()
    for column in ("label", "target", "subset", "group"):
        if column not in samples.columns:
            samples[column] = ""
    samples = samples.fillna("")
    samples["id"] = samples["id"].astype(str)
    has_truth = (samples["label"].astype(str) != "") | (samples["target"].astype(str) != "")
    is_test = samples["subset"] == "test"
    user_test = samples[is_test & has_truth]["id"].tolist()
    unlabelled = samples[~has_truth]["id"].tolist()
    pool = samples[~is_test & has_truth]
    needed = 2 if user_test else 3
    parts = "train and validation" if user_test else "train, validation and test"
    if len(pool) < needed:
        raise InputError(
            f"only {len(pool)} image(s) with ground truth to train on; at least {needed} are needed for {parts}. "
            "Add images (a few dozen per class is a sensible minimum)."
        )

    groups = pool["group"].astype(str)
    grouped = bool((groups != "").any())
    if grouped:
        no_group = pool["id"][groups == ""].tolist()
        if no_group:
            raise InputError(
                f"{len(no_group)} image(s) have no group (e.g. '{no_group[0]}') while others have one. Give every "
                "image its group in the group_column of the label CSV, or remove group_column from the config."
            )
        if require_groups and groups.nunique() < needed:
            raise InputError(
                f"only {groups.nunique()} group(s) {sorted(groups.unique())[:5]}; at least {needed} are needed so "
                f"that {parts} each get whole groups. Add images from more groups (patients, slides) or remove "
                "group_column from the config."
            )
        if user_test:
            test_groups = set(samples[samples["id"].isin(user_test)]["group"].astype(str)) - {""}
            shared = sorted(test_groups & set(groups))
            if shared and _all_tiles(samples[samples["group"].astype(str).isin(shared)]):
                # only layout.test_right_fraction puts one image's tiles in both: a band, by design
                log.info("image(s) %s: the test tiles are the band layout.test_right_fraction holds out on "
                         "the right; training tiles border it along one edge", shared[:5])
            elif shared:
                log.warning(
                    "groups %s have images both in the given test set and in training; test results may "
                    "be optimistic",
                    shared[:5],
                )

    def split_off(frame: pd.DataFrame, fraction: float, salt: int) -> tuple[pd.DataFrame, pd.DataFrame]:
        rng_seed = seed * 1000 + salt
        frame_groups = frame["group"].astype(str)
        n_groups = frame_groups.nunique()
        n_held = min(len(frame) - 1, max(1, round(fraction * len(frame))))  # images, when split as single ones
        if grouped and n_groups < 2 and _all_tiles(frame):
            return _band_from_the_right(frame, n_held)
        if grouped and n_groups < 2:
            log.warning(
                "only %d group(s) %s left to split %d images; splitting them as single images, so one group "
                "spans two splits",
                n_groups,
                sorted(frame_groups.unique())[:5],
                len(frame),
            )
        elif grouped:
            n_held_groups = min(n_groups - 1, max(1, round(fraction * n_groups)))
            splitter = GroupShuffleSplit(n_splits=1, test_size=n_held_groups, random_state=rng_seed)
            keep, held = next(splitter.split(frame, groups=frame_groups))
            return frame.iloc[keep], frame.iloc[held]
        labels = frame["label"].astype(str)
        counts = Counter(labels)
        if stratify and len(counts) > 1:
            # Rare classes cannot be stratified; they stay in training (where they are most useful)
            # and the user is told, rather than failing the split.
            rare = labels.map(counts) < MIN_PER_CLASS_FOR_STRATIFY
            if rare.any():
                log.warning(
                    "classes %s have fewer than %d images; all of them stay in the training split",
                    sorted(set(labels[rare])),
                    MIN_PER_CLASS_FOR_STRATIFY,
                )
            common = frame[~rare]
            n_held_common = min(n_held, len(common) - 1)
            if n_held_common >= 1:
                strat = common["label"].astype(str)
                n_classes = strat.nunique()
                feasible = n_classes > 1 and min(n_held_common, len(common) - n_held_common) >= n_classes
                keep, held = train_test_split(
                    np.arange(len(common)),
                    test_size=n_held_common,
                    random_state=rng_seed,
                    stratify=strat if feasible else None,
                )
                return pd.concat([common.iloc[keep], frame[rare]]), common.iloc[held]
            log.warning(
                "too few images in classes with %d or more images to stratify; splitting at random",
                MIN_PER_CLASS_FOR_STRATIFY,
            )
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
            raise InputError(
                f"the {name} split is empty ({len(pool)} images to split, test_fraction {test_fraction}, "
                f"val_fraction {val_fraction}); add images or raise the fraction."
            )
    return split


def _all_tiles(frame: pd.DataFrame) -> bool:
    """Whether every sample is a tile with its region in its image (layout.tile_size)."""
    return "region" in frame.columns and bool((frame["region"].astype(str) != "").all())


def _band_from_the_right(frame: pd.DataFrame, n_held: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(kept, held) tiles of one image: the `n_held` furthest right (then top to bottom) held out as one
    band, which borders the kept tiles along one edge; tiles drawn at random would each border training
    tiles on every side, and neighbouring pixels make an optimistic validation."""
    starts = [dict((part[0], int(part[1:].split(":")[0])) for part in region.split(","))
              for region in frame["region"].astype(str)]
    order = sorted(range(len(frame)), key=lambda i: (-starts[i]["x"], starts[i].get("y", 0), starts[i].get("z", 0)))
    held = sorted(order[:n_held])
    log.info("one image's %d tiles: the %d furthest right held out as one band (x from %d)", len(frame), n_held,
             min(starts[i]["x"] for i in held))
    return frame.iloc[sorted(order[n_held:])], frame.iloc[held]


def write_split(samples_tsv: str, settings: dict, split_out: str) -> dict:
    samples = pd.read_csv(samples_tsv, sep="\t", dtype=str, keep_default_na=False)
    split = make_split(
        samples,
        test_fraction=settings["test_fraction"],
        val_fraction=settings["val_fraction"],
        seed=settings["seed"],
        stratify=not get_task(settings["task"]).dense,  # keep the class balance of image-level labels
        require_groups=bool(settings.get("group_column")),
    )
    log.info("split: %d train, %d val, %d test", len(split["train"]), len(split["val"]), len(split["test"]))
    write_json(split, split_out)
    return split


def load_split(path: str, known_ids: set[str] | None = None) -> dict:
    """Read a split JSON (ours or the user's), checking that it names known samples only once."""
    split = read_json(path)
    if not isinstance(split, dict):
        raise InputError(
            f"{path}: expected a JSON object with train, val and test lists, got {type(split).__name__}."
        )
    seen: Counter = Counter()
    for name in ("train", "val", "test"):
        if name not in split:
            raise InputError(
                f"{path}: no '{name}' list. A split file needs train, val and test lists of sample ids."
            )
        if not isinstance(split[name], list) or not all(isinstance(i, str) for i in split[name]):
            raise InputError(
                f"{path}: '{name}' must be a list of sample ids (strings), got {split[name]!r:.80}."
            )
        seen.update(split[name])
    for name in ("train", "val"):
        if not split[name]:
            raise InputError(
                f"{path}: the '{name}' list is empty. Training needs images in train and in val."
            )
    twice = [k for k, n in seen.items() if n > 1]
    if twice:
        raise InputError(
            f"{path}: sample(s) {twice[:5]} appear in more than one split (or twice). Each belongs to one."
        )
    if known_ids is not None:
        unknown = sorted(set(seen) - known_ids)
        if unknown:
            raise InputError(
                f"{path}: unknown sample id(s) {unknown[:5]}; ids are the image file stems in samples.tsv."
            )
    return split
