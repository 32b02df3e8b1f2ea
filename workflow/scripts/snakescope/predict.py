"""predict: apply a trained model to the test set.

* classification -> ``predictions.csv``: id, filename, predicted label, one probability column per class.
* segmentation -> per image ``<id>_prob.tif`` (float32 probabilities: YX foreground for two classes,
  CYX otherwise) and ``<id>_mask.tif`` (uint8 class indices, YX), plus ``predictions.csv`` listing them.
  Two-class masks are thresholded with Otsu's method on the foreground probability, as InstantDL
  does, or at a fixed threshold from the config; more classes take the most probable one.
* instance_segmentation -> per image ``<id>_instances.tif`` (uint16/uint32 object ids, YX), plus
  ``predictions.csv`` (`snakescope.instances`).
* regression -> per image ``<id>_pred.tif`` (float32, in the target's units: YX, or CYX for several
  target channels; ZYX/CZYX for volumes), plus ``predictions.csv`` (`snakescope.regression`).
* every task -> ``timing.json``: inference speed, peak memory, hardware, versions (`snakescope.timing`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from snakescope.data import load_items, read_samples
from snakescope.io import read_json, write_table, write_tiff
from snakescope.regression import denormalise_target, write_regression
from snakescope.runtime import autocast_dtype, select_device
from snakescope.timing import write_timing
from snakescope.train import load_trained, predict_logits

log = logging.getLogger(__name__)


def otsu_threshold(probability: np.ndarray) -> float:
    """Otsu's threshold (scikit-image) of a probability map; 0.5 when the map is constant."""
    from skimage.filters import threshold_otsu

    if np.ptp(probability) < 1e-6:
        return 0.5
    return float(threshold_otsu(probability))


def predict_dataset(model_pt: str, arrays_npz: str, samples_tsv: str, split_json: str, out_dir: str,
                    threshold: str | float = "otsu", device: str = "auto", threads: int = 1) -> pd.DataFrame:
    """Predict every test image (labelled or not) and write the outputs described in the module doc."""
    torch.set_num_threads(max(1, threads))
    torch_device = select_device(device)
    model, payload = load_trained(model_pt, torch_device)
    plan = payload["plan"]
    if plan["task"] == "instance_segmentation":  # instance label images (snakescope.instances)
        from snakescope.instances import predict_instances

        return predict_instances(model, payload, arrays_npz, samples_tsv, split_json, out_dir, threshold, torch_device)
    split = read_json(split_json)
    samples = read_samples(samples_tsv)
    ids = split["test"] + split.get("unlabelled_test", [])
    items = load_items(arrays_npz, samples, ids, plan)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    amp_dtype = autocast_dtype(torch_device)
    files = samples.set_index("id")["image"]
    rows = []
    started = time.perf_counter()
    with torch.no_grad():
        if plan["task"] == "classification":
            classes = payload["classes"]
            for start in range(0, len(items), 64):
                chunk = items[start:start + 64]
                image = torch.as_tensor(np.stack([it["image"] for it in chunk])).to(torch_device)
                with torch.autocast(torch_device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                    probabilities = torch.softmax(model(image).float(), dim=1).cpu().numpy()
                for item, p in zip(chunk, probabilities):
                    row = {"id": item["id"], "filename": Path(files[item["id"]]).name,
                           "predicted_label": classes[int(p.argmax())]}
                    row.update({f"prob_{c}": float(v) for c, v in zip(classes, p)})
                    rows.append(row)
        else:
            for index, item in enumerate(items):
                image = torch.as_tensor(item["image"][None]).to(torch_device)
                # Regression runs in float32: bf16 keeps ~3 significant digits, visible in PSNR.
                regression = plan["task"] == "regression"
                with torch.autocast(torch_device.type, dtype=amp_dtype or torch.float32,
                                    enabled=amp_dtype is not None and not regression):
                    logits = predict_logits(model, image, plan).float()
                if regression:
                    output = denormalise_target(logits[0].cpu().numpy(), plan["target_normalisation"])
                    row = write_regression(item["id"], output, out)
                else:
                    probabilities = torch.softmax(logits, dim=1)[0].cpu().numpy()
                    row = write_segmentation(item["id"], probabilities, out, threshold)
                row["filename"] = Path(files[item["id"]]).name
                rows.append(row)
                if (index + 1) % 10 == 0:
                    log.info("predicted %d/%d images", index + 1, len(items))
    seconds = time.perf_counter() - started
    log.info("predicted %d images in %.1f s (%.3f s per image)", len(items), seconds, seconds / max(len(items), 1))
    table = pd.DataFrame(rows)
    write_table(table, out / "predictions.csv")
    write_timing(model, plan, items, torch_device, out / "timing.json", amp_dtype)
    return table


def write_segmentation(sample_id: str, probabilities: np.ndarray, out: Path, threshold: str | float) -> dict:
    """Threshold (two classes) or argmax (more) a (K, *spatial) probability map and write both TIFFs."""
    axes = "YX" if probabilities.ndim == 3 else "ZYX"
    if probabilities.shape[0] == 2:
        foreground = probabilities[1].astype(np.float32)
        cut = otsu_threshold(foreground) if threshold == "otsu" else float(threshold)
        mask = (foreground > cut).astype(np.uint8)
        write_tiff(foreground, out / f"{sample_id}_prob.tif", axes=axes)
    else:
        cut = float("nan")
        mask = probabilities.argmax(0).astype(np.uint8)
        write_tiff(probabilities.astype(np.float32), out / f"{sample_id}_prob.tif", axes="C" + axes)
    write_tiff(mask, out / f"{sample_id}_mask.tif", axes=axes)
    return {"id": sample_id, "prob": f"{sample_id}_prob.tif", "mask": f"{sample_id}_mask.tif", "threshold": cut}
