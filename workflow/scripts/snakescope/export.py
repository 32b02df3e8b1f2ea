"""export: a trained model as a bioimage.io model package (format 0.5), with TorchScript and ONNX weights.

The package is what napari, Fiji (deepImageJ) and ilastik users open: ``rdf.yaml`` with the input and
output described axis by axis, the normalisation the model was trained with as the specification's own
preprocessing (`scale_range` for percentile and min-max, `zero_mean_unit_variance` per image,
`fixed_zero_mean_unit_variance` for a dataset-wide z-score) and its output step as postprocessing
(softmax over classes, or `scale_linear` back to a regression target's units), TorchScript weights (the
network traced) and ONNX weights (exported from the same network, checked against it), test input and
output tensors from a real test image, a cover, and authors, citations and licence from the config. The
package is tested with bioimage.io's own test (`bioimageio.core.test_model`) before the rule finishes.

Dense networks take any size on their grid (`ParameterizedSize`: the registry's smallest side and
multiple), so tools can tile large images; classifiers take the size they were trained at.

Not exportable: detectors (Mask R-CNN: list outputs that the specification cannot describe), and the
watershed of U-Net instance segmentation (the package holds the U-Net's three-class probabilities;
the README says so).
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from snakescope.engine.models import MODELS
from snakescope.engine.transforms import normalise
from snakescope.io import UserError, atomic_path, read_json, save_figure, write_json
from snakescope.plots import displayable
from snakescope.store import open_store
from snakescope.tasks import get_task, load_trained

log = logging.getLogger(__name__)

ONNX_OPSET = 17  # torch's TorchScript-based exporter (dynamo=False): one self-contained .onnx file
ONNX_TOLERANCE = 1e-4  # largest |ONNX - PyTorch| accepted on the test input
INSTANTDL = ("Waibel et al. InstantDL: an easy-to-use deep learning pipeline for image segmentation and "
             "classification. BMC Bioinformatics 22, 103 (2021)", "10.1186/s12859-021-04037-3")


class NotExportable(UserError):
    """The model has no bioimage.io description (a detector); the rule records why instead."""


def export_model(model_pt: str, arrays_store: str, split_json: str, settings: dict, out_dir: str,
                 metrics_json: str | None = None, run_info: dict | None = None, test: bool = True) -> dict:
    """Write ``package.zip`` (the bioimage.io package), ``model.onnx``, ``cover.png`` and ``export.json`` into
    `out_dir`.

    Args:
        settings: the dataset's export settings (authors, licence, citations; snakescope.config).
        metrics_json: the run's test metrics, quoted in the package's README.
        test: run bioimage.io's test on the package (its result goes to export.json).
    Returns:
        the export.json record: the package, the ONNX check, the test's status.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model, payload = load_trained(model_pt, torch.device("cpu"))  # in eval mode: dropout off for tracing
    name = payload["spec"]["name"]
    run_info = run_info or {}
    record = {**run_info, "model": name}
    if MODELS[name].detector:
        record["exported"] = False
        record["reason"] = f"{name} is a detector: its outputs (a list of boxes and masks) have no bioimage.io description"
        write_json(record, out / "export.json")
        log.warning("%s", record["reason"])
        return record
    work = Path(tempfile.mkdtemp(prefix=".package-", dir=out))  # the package's files until they are zipped
    try:
        return _export(model, payload, arrays_store, split_json, settings, out, work, metrics_json, run_info, record,
                       test)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _export(model, payload: dict, arrays_store: str, split_json: str, settings: dict, out: Path, work: Path,
            metrics_json: str | None, run_info: dict, record: dict, test: bool) -> dict:
    plan, name = payload["plan"], payload["spec"]["name"]
    split = read_json(split_json)
    raw = _test_input(arrays_store, split, plan, name)  # (1, C, *spatial), native units
    x = torch.as_tensor(normalise(raw[0], plan)[None])
    with torch.no_grad():
        logits = model(x)
    task = get_task(plan["task"])
    output = task.export_output(logits, payload).numpy().astype(np.float32)  # what the package's steps give

    torchscript, onnx_path = work / "weights_torchscript.pt", out / "model.onnx"
    with torch.no_grad():
        torch.jit.trace(model, x, check_trace=False).save(str(torchscript))
    spatial = [f"s{i}" for i in range(raw.ndim - 2)]
    dynamic = {0: "batch", **({i + 2: s for i, s in enumerate(spatial)} if task.dense else {})}
    with atomic_path(onnx_path) as tmp, torch.no_grad():
        torch.onnx.export(model, (x,), str(tmp), dynamo=False, opset_version=ONNX_OPSET, input_names=["input"],
                          output_names=["output"], dynamic_axes={"input": dynamic, "output": dynamic})
    record["onnx_max_abs_difference"] = onnx_difference(model, onnx_path, [x.numpy(), _other_input(x, task, name)])
    if record["onnx_max_abs_difference"] > ONNX_TOLERANCE:
        raise RuntimeError(f"ONNX output differs from PyTorch's by {record['onnx_max_abs_difference']:.2e} "
                           f"(more than {ONNX_TOLERANCE:g}); the ONNX export of {name} is not faithful")

    np.save(work / "test_input.npy", raw.astype(np.float32))
    np.save(work / "test_output.npy", output)
    _cover(raw, output, task, work / "cover.png")
    with atomic_path(out / "cover.png") as tmp:  # shown in the report beside the package's path
        shutil.copyfile(work / "cover.png", tmp)
    (work / "README.md").write_text(_readme(payload, task, settings, metrics_json, run_info))
    applied = {key: payload.get(key) for key in ("spec", "plan", "classes", "mask_values", "input_size")}
    applied.update(task.export_settings(arrays_store, split))
    descr = _description(payload, task, settings, raw, work, torchscript, onnx_path, run_info, applied)
    from bioimageio.spec import save_bioimageio_package

    with atomic_path(out / "package.zip") as tmp:
        save_bioimageio_package(descr, output_path=tmp)
    record.update({"exported": True, "package": "package.zip", "onnx": "model.onnx",
                   "weights": ["torchscript", "onnx"]})
    if test:
        record["bioimageio_test"] = test_package(out / "package.zip")
    write_json(record, out / "export.json")
    return record


def onnx_difference(model, onnx_path: Path, inputs: list[np.ndarray]) -> float:
    """Largest |onnxruntime - PyTorch| over `inputs` (each (N, C, *spatial) float32)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for array in inputs:
        with torch.no_grad():
            expected = model(torch.as_tensor(array)).numpy()
        got = session.run(None, {"input": array})[0]
        worst = max(worst, float(np.abs(got - expected).max()))
    return worst


def test_package(package: Path) -> dict:
    """bioimage.io's test of a package (every weight format, batch sizes 1 and 2, several sizes)."""
    from bioimageio.core import test_model

    started = time.perf_counter()
    summary = test_model(package)
    failed = [f"{d.name}: {e.msg}" for d in summary.details for e in d.errors]
    result = {"status": summary.status, "seconds": time.perf_counter() - started, "errors": failed[:10]}
    log.info("bioimageio test of %s: %s (%.1f s)", package, summary.status, result["seconds"])
    if summary.status != "passed":
        raise RuntimeError(f"{package}: bioimage.io's test failed: {failed[:3]}")
    return result


# -- the pieces of the package --------------------------------------------------------------------------


def _test_input(arrays_store: str, split: dict, plan: dict, name: str) -> np.ndarray:
    """A test image (native units) at a size the network takes: whole for classifiers, else one patch."""
    from snakescope.engine.models import fit_patch

    sample_id = (split.get("test") or split["val"])[0]
    with open_store(arrays_store) as arrays:
        image = arrays[f"image/{sample_id}"].astype(np.float32)
    if plan.get("patch_size"):
        patch = fit_patch(name, [min(p, s) for p, s in zip(plan["patch_size"], image.shape[1:], strict=True)])
        multiple = MODELS[name].patch_multiple
        # every side at least what the package declares (`_axes`), though the network needs it of one side
        patch = [-(-max(p, _smallest_side(name)) // multiple) * multiple for p in patch]
        pad = [(0, 0)] + [(0, max(0, p - s)) for p, s in zip(patch, image.shape[1:], strict=True)]
        image = np.pad(image, pad, mode="reflect")[(slice(None), *(slice(0, p) for p in patch))]
    return image[None]


def _smallest_side(name: str) -> int:
    """The smallest side the package declares on every axis: bioimage.io cannot say "one side at least
    min_largest_side", so every side must be."""
    return max(MODELS[name].min_side, MODELS[name].min_largest_side)


def _other_input(x: torch.Tensor, task, name: str) -> np.ndarray:
    """A second ONNX check input: two images, and for dense networks another size on their grid."""
    if not task.dense:
        return torch.cat([x, x.flip(-1)]).numpy()
    entry = MODELS[name]
    sizes = [s + entry.patch_multiple for s in x.shape[2:]]
    return np.random.default_rng(0).standard_normal((2, x.shape[1], *sizes)).astype(np.float32)


def _axes(v0_5, raw: np.ndarray, task, name: str, channel_names: list[str]) -> list:
    spatial = ["z", "y", "x"][-(raw.ndim - 2):]
    axes = [v0_5.BatchAxis(), v0_5.ChannelAxis(channel_names=channel_names)]
    entry = MODELS[name]
    for axis, size in zip(spatial, raw.shape[2:], strict=True):
        shape = v0_5.ParameterizedSize(min=_smallest_side(name), step=entry.patch_multiple) if task.dense else int(size)
        axes.append(v0_5.SpaceInputAxis(id=v0_5.AxisId(axis), size=shape))
    return axes


def _preprocessing(v0_5, plan: dict, spatial: list[str]) -> list:
    method = plan["normalisation"]
    axes = [v0_5.AxisId(a) for a in spatial]  # statistics per image and channel
    if method == "percentile":
        return [v0_5.ScaleRangeDescr(kwargs=v0_5.ScaleRangeKwargs(axes=axes, min_percentile=1.0, max_percentile=99.0))]
    if method == "minmax":
        return [v0_5.ScaleRangeDescr(kwargs=v0_5.ScaleRangeKwargs(axes=axes, min_percentile=0.0, max_percentile=100.0))]
    if method == "zscore":
        return [v0_5.ZeroMeanUnitVarianceDescr(kwargs=v0_5.ZeroMeanUnitVarianceKwargs(axes=axes))]
    if method == "dataset_zscore":
        kwargs = v0_5.FixedZeroMeanUnitVarianceAlongAxisKwargs(
            axis=v0_5.AxisId("channel"), mean=[float(m) for m in plan["dataset_mean"]],
            std=[max(float(s), 1e-6) for s in plan["dataset_std"]])
        return [v0_5.FixedZeroMeanUnitVarianceDescr(kwargs=kwargs)]
    return []


def _description(payload: dict, task, settings: dict, raw: np.ndarray, work: Path, torchscript: Path,
                 onnx_path: Path, run_info: dict, applied: dict):
    """The package's description; `applied` (config.snakescope) is what snakescope.apply needs to apply it."""
    from bioimageio.spec.model import v0_5

    plan, name = payload["plan"], payload["spec"]["name"]
    spatial = ["z", "y", "x"][-(raw.ndim - 2):]
    postprocessing, output_names = task.export_postprocessing(payload, v0_5)
    inputs = v0_5.InputTensorDescr(
        id=v0_5.TensorId("input"), axes=_axes(v0_5, raw, task, name, [f"channel{c}" for c in range(raw.shape[1])]),
        test_tensor=v0_5.FileDescr(source=work / "test_input.npy"),
        data=v0_5.IntervalOrRatioDataDescr(type="float32"), preprocessing=_preprocessing(v0_5, plan, spatial))
    output_axes = [v0_5.BatchAxis(), v0_5.ChannelAxis(channel_names=output_names)]
    if task.dense:
        halo = _smallest_side(name) // 4
        for a in spatial:
            size = v0_5.SizeReference(tensor_id=v0_5.TensorId("input"), axis_id=v0_5.AxisId(a))
            # a network without downsampling (min_side 1) needs no halo, and bioimage.io wants a halo >= 1
            output_axes.append(v0_5.SpaceOutputAxisWithHalo(id=v0_5.AxisId(a), halo=halo, size=size) if halo
                               else v0_5.SpaceOutputAxis(id=v0_5.AxisId(a), size=size))
    outputs = v0_5.OutputTensorDescr(id=v0_5.TensorId("output"), axes=output_axes,
                                     test_tensor=v0_5.FileDescr(source=work / "test_output.npy"),
                                     postprocessing=postprocessing)
    version = v0_5.Version(torch.__version__.split("+")[0])
    cite = [v0_5.CiteEntry(text=INSTANTDL[0], doi=v0_5.Doi(INSTANTDL[1]))]
    cite += [v0_5.CiteEntry(text=entry["text"], **({"doi": v0_5.Doi(entry["doi"])} if entry.get("doi")
                                                   else {"url": entry["url"]}))
             for entry in settings.get("export_cite") or []]
    return v0_5.ModelDescr(
        name=re.sub(r"[^A-Za-z0-9_+\- ()]", "-",  # the characters bioimage.io allows in a name
                    f"snakescope {task.name.replace('_', ' ')} {name} ({run_info.get('dataset', 'dataset')})"),
        description=f"{MODELS[name].description}, trained by snakescope for {task.name.replace('_', ' ')}",
        authors=[v0_5.Author(name=author) for author in settings.get("export_authors") or ["snakescope user"]],
        cite=cite, license=v0_5.LicenseId(settings.get("export_license") or "MIT"),
        documentation=v0_5.FileDescr(source=work / "README.md"), covers=[v0_5.FileDescr(source=work / "cover.png")],
        tags=["snakescope", task.name.replace("_", "-"), f"{raw.ndim - 2}d", "pytorch"],
        inputs=[inputs], outputs=[outputs], config=v0_5.Config(snakescope=applied),
        weights=v0_5.WeightsDescr(
            torchscript=v0_5.TorchscriptWeightsDescr(source=torchscript, pytorch_version=version),
            onnx=v0_5.OnnxWeightsDescr(source=onnx_path, opset_version=ONNX_OPSET, parent="torchscript")),
    )


def _readme(payload: dict, task, settings: dict, metrics_json: str | None, run_info: dict) -> str:
    plan, name = payload["plan"], payload["spec"]["name"]
    lines = [f"# {name} for {task.name.replace('_', ' ')}", "",
             f"Trained by snakescope on the dataset `{run_info.get('dataset', '?')}` (seed {run_info.get('seed', '?')}); "
             f"{MODELS[name].description}.", "",
             f"Input: {payload['spec']['in_channels']} channel(s), normalised as in training ({plan['normalisation']}); "
             f"the package's preprocessing does it.", ""]
    lines += task.export_notes(payload)
    lines += ["", "## Validation", ""]
    if metrics_json and Path(metrics_json).is_file():
        metrics = read_json(metrics_json)
        shown = {k: v for k, v in metrics.items() if isinstance(v, float) and not k.startswith("baseline_")}
        lines += [f"Test set of snakescope's split ({metrics.get('n_test', '?')} images):", ""]
        lines += [f"* {k}: {v:.4f} (a model that learned nothing: {metrics.get('baseline_' + k, float('nan')):.4f})"
                  for k, v in list(shown.items())[:8]]
    else:
        lines += ["Not evaluated in this run (`evaluate: false`)."]
    return "\n".join(lines) + "\n"


def _cover(raw: np.ndarray, output: np.ndarray, task, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(6, 3))  # bioimage.io asks for 2:1 covers
    axes[0].imshow(displayable(raw[0]))
    axes[0].set_title("input", fontsize=9)
    if task.dense:
        shown = output[0]
        shown = shown[:, shown.shape[1] // 2] if shown.ndim == 4 else shown
        axes[1].imshow(shown.argmax(0) if task.label_is_class_map else shown[0], cmap="viridis")
    else:
        axes[1].bar(range(output.shape[1]), output[0])
    axes[1].set_title("output", fontsize=9)
    for axis in axes:
        axis.set_axis_off() if task.dense or axis is axes[0] else None
    save_figure(figure, path, dpi=80)
