"""apply: a trained model on a folder of new images that have no ground truth.

Writes what `predict` and `uncertainty` write for test images (the task's prediction files and
``predictions.csv``; MC-dropout uncertainty maps and ``uncertainty.csv``), then ranks the images by their
uncertainty: ``ranking.tsv`` and ``ranking.png`` put the images the model is least sure about first,
the ones to look at (or annotate) before trusting the rest.

The model comes from a run of this workflow (its folder ``results/<dataset>/<model>/seed<seed>`` or its
``train/model.pt``), or from a bioimage.io package that snakescope exported (``package.zip``). A
package holds the traced network, whose dropout is fixed off: its uncertainty is the entropy of a
single pass for classes (no spread for regression), and the ranking says so.

Images are checked (readable, the dimensionality, channels and size the model takes) before anything
is written, every problem reported at once, then read and predicted one at a time, so memory does not
grow with the folder; an image larger than its training patch goes through the sliding window of that
patch. A TIFF or OME-Zarr image too large to predict whole in the memory the job may use (a whole-slide
image) is read and predicted block by block (`snakescope.engine.tiled`; segmentation and regression), its
outputs written as OME-Zarr, its uncertainty the entropy of one pass rather than MC-dropout samples.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from snakescope.convert import read_sample_image
from snakescope.convert.samples import image_files
from snakescope.convert.validate import raise_if_any
from snakescope.engine.runtime import select_device
from snakescope.engine.tiled import fits_whole
from snakescope.engine.transforms import normalise
from snakescope.images import resize_image, to_channels_first
from snakescope.io import (
    IMAGE_SUFFIXES,
    InputError,
    is_zarr_group,
    natural_key,
    read_json,
    write_json,
    write_table,
)
from snakescope.lazy_images import LazyImage, open_lazily
from snakescope.logs import PROGRESS
from snakescope.tasks import get_task, load_trained
from snakescope.tasks.base import InferenceData
from snakescope.uncertainty import rank_images, ranking_figure

log = logging.getLogger(__name__)



def load_source(source: str | Path, device: torch.device) -> tuple[torch.nn.Module, dict, str]:
    """(network in eval mode, payload as training saves it, "run" or "package") for a model source.

    Raises:
        InputError when the source is neither a snakescope model file, a run folder nor a package of ours.
    """
    path = Path(source)
    if path.is_dir():  # a run folder, or the train/ folder in it
        path = next((p for p in (path / "train" / "model.pt", path / "model.pt") if p.is_file()), path)
    if path.suffix == ".pt" and path.is_file():
        model, payload = load_trained(str(path), device)
        return model, payload, "run"
    if path.suffix == ".zip" or path.name.endswith(("rdf.yaml", "bioimageio.yaml")):
        return (*_load_package(path, device), "package")
    raise InputError(
        f"{source}: not a trained model. Give a run folder of this workflow (results/<dataset>/<model>/"
        "seed<seed>), its train/model.pt, or a package.zip exported by snakescope."
    )


def _load_package(path: Path, device: torch.device) -> tuple[torch.nn.Module, dict]:
    from bioimageio.spec import InvalidDescr, load_model_description

    if not path.exists():
        raise InputError(f"{path}: no such file. Give the path of a package.zip exported by snakescope.")
    descr = load_model_description(path, perform_io_checks=False)
    if isinstance(descr, InvalidDescr):
        raise InputError(f"{path}: not a valid bioimage.io model package ({descr.validation_summary.status}).")
    extra = (descr.config.model_extra or {}) if descr.config is not None else {}
    payload = extra.get("snakescope")
    if not payload or descr.weights.torchscript is None:
        raise InputError(
            f"{path}: a bioimage.io model that snakescope did not export (no config.snakescope entry or no "
            "TorchScript weights). Apply it with bioimage.io's own tool (`bioimageio predict`), napari or Fiji."
        )
    model = torch.jit.load(descr.weights.torchscript.get_reader(), map_location=device)
    model.eval()
    return model, payload


def new_image_files(folder: str | Path) -> list[Path]:
    """The image files (and OME-Zarr image folders) directly in `folder`, in natural order.

    Raises:
        InputError when the folder is missing or holds no images, or two files share a name.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: no such folder. Set `images` of the apply entry to the folder of new images.")
    files = image_files(folder) + [p for p in folder.iterdir() if not p.name.startswith(".") and is_zarr_group(p)]
    if not files:
        others = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
        held = f"it holds {', '.join(others[:5])}" if others else "it is empty"
        raise InputError(f"{folder}: no image files ({held}). Supported: {', '.join(IMAGE_SUFFIXES)} files and "
                         "OME-Zarr folders.")
    twice = [stem for stem, n in Counter(p.stem for p in files).items() if n > 1]
    if twice:
        raise InputError(f"{folder}: several files share the name(s) {twice[:5]} with different extensions; "
                         "keep one file per image, since the outputs are named after it.")
    return sorted(files, key=lambda p: natural_key(p.name))


def smallest_side(patch: int) -> int:
    """The smallest image side a sliding window of `patch` takes: it pads by reflection, which needs a
    margin narrower than the image."""
    return next(side for side in range(1, patch + 1) if patch - side - (patch - side) // 2 < side)


def prepare_image(path: Path, payload: dict) -> np.ndarray:
    """One new image as the model takes it: float32 C+spatial, resized as in training, normalised.

    Raises:
        InputError naming the file and the fix when its dimensionality, channels or size do not fit.
    """
    spec, plan = payload["spec"], payload["plan"]
    image = to_channels_first(read_sample_image(str(path)), str(path), spec["spatial_dims"])
    _check_fits_model(path, image.shape, payload)
    if payload.get("input_size"):
        image = resize_image(image, payload["input_size"])
    return normalise(image, plan)


def _check_fits_model(path: Path, shape: tuple[int, ...], payload: dict) -> None:
    """An image's C+spatial `shape` against the channels and smallest size the model takes."""
    spec, plan = payload["spec"], payload["plan"]
    if shape[0] != spec["in_channels"]:
        raise InputError(
            f"{path}: {shape[0]} channel(s), but the model was trained on images with {spec['in_channels']}. "
            "Give images with the channels of the training images (same colour mode and channel order)."
        )
    if plan.get("patch_size"):
        need = [smallest_side(p) for p in plan["patch_size"]]
        if any(s < n for s, n in zip(shape[1:], need, strict=True)):
            raise InputError(
                f"{path}: {'x'.join(map(str, shape[1:]))} pixels, smaller than the model takes "
                f"(at least {'x'.join(map(str, need))} for its {'x'.join(map(str, plan['patch_size']))} patch). "
                "Give larger images (or pad them)."
            )


def large_image(path: Path, payload: dict, predictor, mc_samples: int, memory_budget: int | None = None
                ) -> LazyImage | None:
    """A TIFF or OME-Zarr image opened lazily when it is too large to predict whole (`fits_whole`), else
    None (PNG and JPEG are always predicted whole).

    Raises:
        InputError naming the file and the fix when it does not fit the model or cannot be predicted in
        blocks (a task that needs the whole image, a model trained on resized images).
    """
    spec, plan = payload["spec"], payload["plan"]
    image = open_lazily(path, spec["spatial_dims"])
    if image is None:  # PNG, JPEG, or axes it cannot place: the whole-image reader says what is wrong
        return None
    with image:
        shape = image.shape
    if payload.get("input_size"):  # resized to the training size first: only the image as read counts
        whole = fits_whole(shape, 0, 0, 0, memory_budget)
    else:
        rows_per_pass = predictor.task.mc_rows_per_pass if mc_samples > 1 else 1
        whole = fits_whole(shape, spec["out_channels"], mc_samples, rows_per_pass, memory_budget)
    if whole:
        return None
    size = "x".join(map(str, shape[1:]))
    if not predictor.predicts_in_blocks:
        raise InputError(
            f"{path}: {size} pixels, too large to predict whole in the memory this job may use, and a "
            f"{plan['task']} model needs the whole image (semantic segmentation and regression predict block "
            "by block). Cut the image into smaller images, or give the job more memory."
        )
    if payload.get("input_size") or not plan.get("patch_size"):
        raise InputError(
            f"{path}: {size} pixels, too large to predict whole in the memory this job may use, and the model "
            "was trained on resized whole images, so it cannot predict block by block. Cut the image into "
            "images of the training size, or train without resize."
        )
    _check_fits_model(path, shape, payload)
    return LazyImage(path, spec["spatial_dims"])  # held open until apply_model closes it


def apply_model(source: str, images_dir: str, out_dir: str, training: InferenceData | None = None,
                mc_samples: int = 20, threshold: str | float = "otsu", device: str = "auto", threads: int = 1,
                seed: int = 0, memory_budget: int | None = None) -> pd.DataFrame:
    """Predict, sample and rank every image of `images_dir`; returns the ranking (most uncertain first).

    Args:
        source: a run folder, model.pt or package.zip (see `load_source`).
        training: the run's packed data and split; instance segmentation tunes its post-processing on
            the validation images with it, as `predict` does (None: defaults, logged).
        memory_budget: bytes an image may take to be predicted whole (None: a share of the memory this
            process may use, see `snakescope.engine.tiled.fits_whole`); larger ones are predicted in blocks.
    """
    torch.set_num_threads(max(1, threads))
    torch_device = select_device(device)
    model, payload, kind = load_source(source, torch_device)
    task = get_task(payload["plan"]["task"])
    files = new_image_files(images_dir)
    predictor = task.predictor(model, payload, training, threshold, torch_device)
    sampled = mc_samples if kind == "run" else 1  # a package's traced network has no dropout to sample
    errors, large = [], {}
    for path in files:  # check them all before writing anything
        try:
            image = large_image(path, payload, predictor, sampled, memory_budget)
            if image is None:
                prepare_image(path, payload)
            else:
                large[path.stem] = image
        except InputError as error:
            errors.append(str(error))
    raise_if_any(errors)
    out = Path(out_dir)
    predictions_dir, uncertainty_dir = out / "predictions", out / "uncertainty"
    predictions_dir.mkdir(parents=True, exist_ok=True)
    uncertainty_dir.mkdir(exist_ok=True)
    names = {path.stem: path.name for path in files}
    whole = [path for path in files if path.stem not in large]
    started = time.perf_counter()

    rows, large_uncertainty = [], []
    for index, path in enumerate(files, start=1):
        if path.stem in large:
            image = large[path.stem]
            log.info("%s: %s pixels, predicted block by block", path.name, "x".join(map(str, image.spatial_shape)))
            row, uncertainty_row = predictor.predict_large(image, path.stem, predictions_dir, uncertainty_dir)
            image_rows = [row]
            large_uncertainty += [uncertainty_row] if uncertainty_row else []
        else:
            item = {"id": path.stem, "image": prepare_image(path, payload)}
            image_rows = predictor.predict([item], predictions_dir)
        rows += [{"id": row.pop("id"), "filename": names[path.stem], **row} for row in image_rows]
        _progress("predicted", index, len(files))
    predictions = pd.DataFrame(rows)
    write_table(predictions, predictions_dir / "predictions.csv")

    torch.manual_seed(seed)
    frame = pd.DataFrame()
    if whole:
        frame, _ = task.uncertainty(model, payload, _items(whole, payload, "sampled"), training, sampled,
                                    torch_device, uncertainty_dir, threshold)
    frame = pd.concat([frame, pd.DataFrame(large_uncertainty)], ignore_index=True) if large_uncertainty else frame
    write_table(frame, uncertainty_dir / "uncertainty.csv")
    ranking = rank_images(frame if len(frame) else pd.DataFrame({"id": [], "uncertainty": []}), predictions)
    write_table(ranking, out / "ranking.tsv")
    by_id = {path.stem: path for path in files}
    spatial_dims = payload["spec"]["spatial_dims"]
    ranking_figure(ranking, lambda i: large[i].thumbnail() if i in large
                   else to_channels_first(read_sample_image(str(by_id[i])), str(by_id[i]), spatial_dims),
                   uncertainty_dir, out / "ranking.png")
    for image in large.values():
        image.close()
    seconds = time.perf_counter() - started
    write_json({"source": str(source), "kind": kind, "model": payload["spec"]["name"], "task": task.name,
                "n_images": len(files), "mc_samples": sampled, "seconds": seconds,
                "uncertainty": ("MC dropout" if kind == "run" else "one pass (package: no dropout sampling)")
                + (f"; one pass for the {len(large)} image(s) predicted in blocks" if large else ""),
                "predicted_in_blocks": sorted(large, key=natural_key)},
               out / "summary.json")
    log.info("applied %s to %d images in %.1f s; most uncertain: %s", payload["spec"]["name"], len(files), seconds,
             ", ".join(ranking["filename"].head(3)))
    return ranking


def _items(files: list[Path], payload: dict, done: str = "") -> Iterator[dict]:
    """The images one at a time, as the model takes them (a generator: one image in memory); logs
    "<done> i/n images" as each is handed back for the next."""
    for index, path in enumerate(files, start=1):
        yield {"id": path.stem, "image": prepare_image(path, payload)}
        if done:
            _progress(done, index, len(files))


def _progress(verb: str, done: int, total: int) -> None:
    if done % 10 == 0 or done == total:
        log.info("%s %d/%d images", verb, done, total, extra=PROGRESS)


def training_data(arrays_store: str | None, samples_tsv: str | None, split_json: str | None) -> InferenceData | None:
    """The run's packed data, as the apply rule passes it (None without)."""
    if not arrays_store:
        return None
    from snakescope.io import read_samples

    return InferenceData(arrays_store, read_samples(samples_tsv), read_json(split_json))
