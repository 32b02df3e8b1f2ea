"""images: the user's pixels brought to the arrays the workflow computes on, checked on the way.

`snakescope.io.read_image` reads a file as stored; here an image becomes float32 channels-first (CYX or
CZYX) and a mask an integer label image of its image's shape, each with an `InputError` that names the
file and the fix when it cannot.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from snakescope.io import InputError, is_zarr_group, ome_zarr_axes, read_image
from snakescope.lazy_images import LazyImage

log = logging.getLogger(__name__)


def _stored_axes(path: str) -> str:
    """The axes of a TIFF's metadata as tifffile reads them (e.g. 'ZYX', 'CYX', 'YXS'), or of an OME-Zarr
    image as `read_image` returns it; '' when unknown."""
    if is_zarr_group(path):
        return ome_zarr_axes(path)
    if not str(path).lower().endswith((".tif", ".tiff")):
        return ""
    try:
        import tifffile

        with tifffile.TiffFile(path) as tif:
            return tif.series[0].axes
    except Exception:  # the pixels were read already; metadata is only a hint
        return ""


def to_channels_first(array: np.ndarray, path: str, spatial_dims: int = 2) -> np.ndarray:
    """Bring an image read by `read_image` to float32 C + spatial axes (CYX for 2D, CZYX for 3D).

    Colour images stored channels-last (YXC, RGB or RGBA) are moved to CYX; a constant alpha channel is
    dropped (it carries no information and would change the channel count between files).

    Raises:
        InputError when the dimensionality does not fit the task (e.g. a Z-stack given to a 2D task) or
        the pixels contain NaN or infinity.
    """
    colour_last = False
    if spatial_dims == 2:
        axes = _stored_axes(path) if array.ndim >= 3 else ""
        stacked = [
            (axis, size) for axis, size in zip(axes, array.shape, strict=False) if axis in "ZTQI" and size > 1
        ]
        if array.ndim == 3 and stacked and stacked[0][0] in "ZT":
            axis, size = stacked[0]
            kind = "Z-stack" if axis == "Z" else "time series"
            raise InputError(
                f"{path}: a {kind} of {size} planes (shape {array.shape}, axes {axes}) given to a 2D task. "
                "Save one plane (or a projection) per file, or for 3D data give patch_size three values "
                "(e.g. [32, 128, 128])."
            )
        if array.ndim == 2:
            out = array[None]
        elif array.ndim == 3 and array.shape[-1] in (2, 3, 4) and array.shape[0] > 4:
            out = np.moveaxis(array, -1, 0)
            colour_last = True
        elif array.ndim == 3 and array.shape[0] <= 16 < min(array.shape[1:]):
            out = array
            if stacked and stacked[0][0] in "QI":  # pages whose meaning the file does not say
                log.warning(
                    "%s: %d pages without axis metadata, read as %d channels (CYX). If they are Z planes, give "
                    "patch_size three values; if time points, save one file per frame; if channels, save the "
                    "file with axes metadata (e.g. tifffile's metadata={'axes': 'CYX'}, or Fiji) to silence this.",
                    path, array.shape[0], array.shape[0],
                )
        else:
            raise InputError(
                f"{path}: shape {array.shape} is not a 2D image (expected YX, YXC with 2-4 colours, or CYX "
                "with at most 16 channels); it looks like a Z-stack or time series. Save one plane per file, "
                "or for 3D data give patch_size three values (e.g. [32, 128, 128])."
            )
    else:
        if not str(path).lower().endswith((".tif", ".tiff")) and not is_zarr_group(path):
            raise InputError(
                f"{path}: a {Path(path).suffix} file holds a 2D image, but the task is 3D (patch_size has three "
                "values). Give 2D images a two-value patch_size, or save each volume as one multi-page TIFF."
            )
        if array.ndim == 3:
            out = array[None]
        elif array.ndim == 4:
            out = array if array.shape[0] <= 16 else np.moveaxis(array, 1, 0)
        else:
            raise InputError(
                f"{path}: shape {array.shape} is not a 3D volume (expected ZYX or CZYX) but the task is 3D "
                "(patch_size has three values). Give 2D images a two-value patch_size, or save the planes of "
                "each volume in one multi-page TIFF."
            )
    if colour_last and out.shape[0] in (2, 4) and np.ptp(out[-1]) == 0:
        out = out[:-1]  # constant alpha
    out = out.astype(np.float32)
    finite = np.isfinite(out)
    if not finite.all():
        bad = int((~finite).sum())
        raise InputError(
            f"{path}: {bad} of {out.size} pixel values are NaN or infinite. Replace them (e.g. with 0; Fiji: "
            "Process > Math > Remove NaNs) or remove the image before training."
        )
    return out


def read_mask(path: str, spatial_shape: tuple[int, ...]) -> np.ndarray:
    """Read a label mask as integers with the image's spatial shape (YX or ZYX).

    A colour mask whose channels agree (as some tools save them) is reduced to one channel.
    """
    return mask_labels(read_image(path), path, spatial_shape)


def read_mask_region(mask: LazyImage, region: tuple[slice, ...]) -> np.ndarray:
    """`read_mask` for one spatial `region` of a mask opened lazily (checked as `read_mask` checks a whole
    mask; `check_mask_shape` checks the whole mask's shape once)."""
    pixels = mask.read_stored(region)
    pixels = np.moveaxis(pixels, 0, -1) if pixels.shape[0] > 1 else pixels[0]
    return mask_labels(pixels, str(mask.path), tuple(r.stop - r.start for r in region))


def check_mask_shape(path: str, shape: tuple[int, ...], spatial_shape: tuple[int, ...], what: str = "mask") -> None:
    """Raises InputError when the spatial `shape` of a mask (or other ground truth: `what`) is not its
    image's."""
    if tuple(shape) != tuple(spatial_shape):
        raise InputError(
            f"{path}: {what} shape {tuple(shape)} differs from its image's {tuple(spatial_shape)}. "
            f"The {what} must have the same height and width (and depth) as the image: check that it belongs "
            "to this image and was not resized or cropped."
        )


def mask_labels(array: np.ndarray, path: str, spatial_shape: tuple[int, ...]) -> np.ndarray:
    """A mask's pixels as read (spatial, or spatial + colour) as int64 labels, checked (see `read_mask`)."""
    if array.ndim == len(spatial_shape) + 1 and array.shape[-1] in (2, 3, 4):
        colours = array[..., :3] if array.shape[-1] >= 3 else array[..., :1]
        if not (colours == colours[..., :1]).all():
            raise InputError(
                f"{path}: a colour mask whose channels differ (shape {array.shape}). Masks must hold one "
                "class index (or one object id) per pixel: save it as a single-channel label image (8- or "
                "16-bit grey PNG/TIFF), not a colour-coded picture."
            )
        array = array[..., 0]
    check_mask_shape(path, array.shape, spatial_shape)
    if array.dtype.kind == "f":
        if not np.isfinite(array).all():
            raise InputError(f"{path}: the mask has NaN or infinite values. Masks must hold integer labels.")
        if not np.all(array == np.round(array)):
            raise InputError(
                f"{path}: the mask has fractional values (e.g. {array[array != np.round(array)].flat[0]}). "
                "Masks must hold integer labels; for continuous targets use task: regression."
            )
    return array.astype(np.int64)


def resize_image(image: np.ndarray, size: list[int] | tuple[int, ...], is_mask: bool = False) -> np.ndarray:
    """Resize the spatial axes of CYX/YX (or CZYX/ZYX) arrays; masks with nearest neighbour."""
    from skimage.transform import resize

    size = tuple(size)
    if is_mask:
        return resize(image, size, order=0, preserve_range=True, anti_aliasing=False).astype(image.dtype)
    channels = image.shape[0]
    return resize(image, (channels, *size), order=1, preserve_range=True, anti_aliasing=True).astype(
        np.float32
    )


def object_areas(labels: np.ndarray) -> np.ndarray:
    """Pixel areas of the objects of a label image (ids need not be consecutive)."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64).ravel())
    return counts[1:][counts[1:] > 0]
