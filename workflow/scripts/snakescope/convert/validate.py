"""validate: checks across the whole dataset, and one error listing every problem found.

Every problem is collected before anything is raised, so a user fixes the data in one pass rather than
one file per run.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

from snakescope.io import InputError

MAX_ERRORS_SHOWN = 20


def raise_if_any(errors: list[str]) -> None:
    if errors:
        shown = "\n  - ".join(errors[:MAX_ERRORS_SHOWN])
        more = f"\n  ... and {len(errors) - MAX_ERRORS_SHOWN} more" if len(errors) > MAX_ERRORS_SHOWN else ""
        raise InputError(f"{len(errors)} problem(s) in the input data:\n  - {shown}{more}")


def channel_count_errors(samples: list, summaries: Mapping) -> list[str]:
    """One message per image whose channel count differs from most images' (`summaries`: per image id,
    snakescope.convert.fingerprint.ImageSummary)."""
    channel_counts = Counter(summary.shape[0] for summary in summaries.values())
    if len(channel_counts) <= 1:
        return []
    majority = channel_counts.most_common(1)[0][0]
    return [
        f"{sample.image}: {summaries[sample.id].shape[0]} channel(s) where most images have "
        f"{majority}. Save all images with the same channels."
        for sample in samples
        if sample.id in summaries and summaries[sample.id].shape[0] != majority
    ]


def constant_images(samples: list, summaries: Mapping) -> tuple[list[str], list[str]]:
    """(errors, warnings) about images whose every pixel has one value (blank, or a failed acquisition):
    an error when every image is constant, else one warning per constant image (kept, but it carries no
    information). `summaries`: per image id, snakescope.convert.fingerprint.ImageSummary."""
    constant = [s for s in samples if s.id in summaries and summaries[s.id].constant]
    if not constant:
        return [], []
    if len(constant) == len(summaries):
        value = summaries[constant[0].id].first_value
        return [
            f"every one of the {len(summaries)} images is constant (each has a single value, e.g. {value:g} in "
            f"{constant[0].image}): there is nothing to learn. Check the export (all-black or all-white files?) "
            "and layout.images."
        ], []
    return [], [
        f"{s.image}: the image is constant (every pixel {summaries[s.id].first_value:g}): blank or a failed "
        "acquisition? It is kept but carries no information; remove it if it should not be there."
        for s in constant
    ]


def label_spelling_errors(samples: list) -> list[str]:
    """One message per group of class labels that differ only in case or spaces ('B' among 'b')."""
    by_spelling: dict[str, Counter] = {}
    for sample in samples:
        if sample.label:
            key = " ".join(sample.label.split()).casefold()
            by_spelling.setdefault(key, Counter())[sample.label] += 1
    errors = []
    for spellings in by_spelling.values():
        if len(spellings) > 1:
            listed = ", ".join(f"'{label}' ({n} image{'s' * (n > 1)})" for label, n in spellings.most_common())
            rarest = spellings.most_common()[-1][0]
            example = next(s.image for s in samples if s.label == rarest)
            errors.append(
                f"labels {listed} differ only in upper/lower case or spaces, so they would become different "
                f"classes (e.g. {example} is '{rarest}'). Write one spelling in the label file, or list the "
                "classes you mean in `classes:`."
            )
    return errors
