"""Tests for snakescope.io: image reading with clear errors, atomic writes."""

from __future__ import annotations

import hashlib
import os
import stat

import numpy as np
import pytest
import tifffile
from PIL import Image

from snakescope import io as sio
from snakescope.io import (
    InputError,
    atomic_path,
    file_checksum,
    read_image,
    read_json,
    write_json,
    write_table,
    write_tiff,
)


def gradient(shape=(32, 40), dtype=np.uint8) -> np.ndarray:
    size = int(np.prod(shape))
    return (np.arange(size).reshape(shape) % 251).astype(dtype)


# ---------------------------------------------------------------------------------------------------
# reading good files


def test_read_tiff_keeps_dtype_and_values(tmp_path):
    array = gradient(dtype=np.uint16) * 200
    tifffile.imwrite(tmp_path / "a.tif", array)
    out = read_image(tmp_path / "a.tif")
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, array)


@pytest.mark.parametrize("suffix", [".png", ".bmp"])
def test_read_rgb_pillow_formats_as_yxc(tmp_path, suffix):
    rgb = np.stack([gradient(), gradient()[::-1], np.full((32, 40), 7, np.uint8)], axis=-1)
    Image.fromarray(rgb).save(tmp_path / f"a{suffix}")
    out = read_image(str(tmp_path / f"a{suffix}"))
    assert out.shape == (32, 40, 3)
    np.testing.assert_array_equal(out, rgb)


# ---------------------------------------------------------------------------------------------------
# bad files: one clear message naming the file and what to do


def test_missing_file(tmp_path):
    path = tmp_path / "nope.tif"
    with pytest.raises(InputError, match="file not found") as info:
        read_image(path)
    assert str(path) in str(info.value)


def test_folder_instead_of_file(tmp_path):
    folder = tmp_path / "x.tif"
    folder.mkdir()
    with pytest.raises(InputError, match="is a folder"):
        read_image(folder)


def test_empty_file(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(InputError, match=r"empty \(0 bytes\)"):
        read_image(tmp_path / "empty.png")


def test_unsupported_suffix(tmp_path):
    (tmp_path / "scan.czi").write_bytes(b"ZISRAWFILE")
    with pytest.raises(InputError, match=r"unsupported file type '\.czi'.*Convert"):
        read_image(tmp_path / "scan.czi")


def test_unreadable_file_permission_denied(tmp_path, monkeypatch):
    path = tmp_path / "locked.tif"
    tifffile.imwrite(path, gradient())

    def deny(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(sio, "open", deny, raising=False)
    with pytest.raises(InputError, match="permission denied.*chmod") as info:
        read_image(path)
    assert str(path) in str(info.value)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file_mode_000(tmp_path):
    path = tmp_path / "locked.tif"
    tifffile.imwrite(path, gradient())
    path.chmod(0)
    try:
        with pytest.raises(InputError, match="permission denied"):
            read_image(path)
    finally:
        path.chmod(stat.S_IRUSR | stat.S_IWUSR)


@pytest.mark.parametrize("compression", [None, "zlib"])
@pytest.mark.parametrize("keep", [0.1, 0.5, 0.95])
def test_truncated_tiff(tmp_path, compression, keep):
    path = tmp_path / "cut.tif"
    tifffile.imwrite(path, gradient((64, 64)), compression=compression)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(InputError, match="truncated or corrupt") as info:
        read_image(path)
    assert str(path) in str(info.value)
    assert "copy it again" in str(info.value)


def test_truncated_multipage_tiff_is_not_read_as_one_page(tmp_path):
    # tifffile reads this file without raising, returning only the first page and logging an error.
    path = tmp_path / "stack.tif"
    stack = np.random.default_rng(0).integers(0, 255, (5, 64, 64), dtype=np.uint8)
    tifffile.imwrite(path, stack, compression="zlib")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 5])
    with pytest.raises(InputError, match="truncated or corrupt") as info:
        read_image(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda b: b[: len(b) // 2], id="truncated"),
        pytest.param(lambda b: b[:100] + b"x" * 40 + b[140:], id="garbled"),
        pytest.param(lambda b: b[:8] + b"\0" * 50, id="signature-only"),
    ],
)
def test_corrupt_png(tmp_path, damage):
    path = tmp_path / "bad.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64), dtype=np.uint8)).save(path)
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(InputError, match="cannot be read as an image.*truncated or corrupt") as info:
        read_image(path)
    assert str(path) in str(info.value)


def test_content_does_not_match_extension(tmp_path):
    path = tmp_path / "really_a_png.tif"
    Image.fromarray(gradient()).save(tmp_path / "x.png")
    path.write_bytes((tmp_path / "x.png").read_bytes())
    with pytest.raises(InputError, match="ends in '.tif' but the content is PNG.*Rename"):
        read_image(path)


# ---------------------------------------------------------------------------------------------------
# writing


def test_atomic_path_exception_leaves_nothing(tmp_path):
    final = tmp_path / "out" / "result.npz"
    with pytest.raises(RuntimeError, match="killed"):
        with atomic_path(final) as tmp:
            tmp.write_bytes(b"half written")
            raise RuntimeError("killed")
    assert not final.exists()
    assert list(final.parent.iterdir()) == []


def test_atomic_path_failure_keeps_previous_output(tmp_path):
    final = tmp_path / "result.json"
    final.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(final) as tmp:
            tmp.write_text("new, half")
            raise RuntimeError
    assert final.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_atomic_path_success_renames_with_umask_permissions(tmp_path):
    final = tmp_path / "result.tsv"
    with atomic_path(final) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".tsv" and tmp != final
        tmp.write_text("a\tb\n")
    assert final.read_text() == "a\tb\n"
    assert [p.name for p in tmp_path.iterdir()] == ["result.tsv"]
    assert stat.S_IMODE(final.stat().st_mode) == 0o666 & ~sio.UMASK


def test_write_json_numpy_types_round_trip(tmp_path):
    path = tmp_path / "a.json"
    write_json({"n": np.int64(3), "x": np.float32(0.5), "v": np.arange(3), "p": tmp_path}, path)
    assert read_json(path) == {"n": 3, "x": 0.5, "v": [0, 1, 2], "p": str(tmp_path)}


def test_write_json_unserialisable_leaves_nothing(tmp_path):
    with pytest.raises(TypeError, match="cannot write object"):
        write_json({"bad": object()}, tmp_path / "a.json")
    assert list(tmp_path.iterdir()) == []


def test_read_json_errors_name_the_file(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        read_json(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text('{"train": [1, 2,\n')
    with pytest.raises(InputError, match=r"bad\.json: not valid JSON .*line \d+"):
        read_json(tmp_path / "bad.json")


def test_write_tiff_round_trip_with_axes(tmp_path):
    array = gradient((3, 16, 16), np.float32)
    write_tiff(array, tmp_path / "a.tif", axes="CYX")
    np.testing.assert_array_equal(read_image(tmp_path / "a.tif"), array)
    with tifffile.TiffFile(tmp_path / "a.tif") as tif:
        assert tif.series[0].axes == "CYX"


@pytest.mark.parametrize(("name", "sep"), [("t.tsv", "\t"), ("t.csv", ",")])
def test_write_table_separator_from_suffix(tmp_path, name, sep):
    import pandas as pd

    write_table(pd.DataFrame({"id": ["a", "b"], "n": [1, 2]}), tmp_path / name)
    assert (tmp_path / name).read_text().splitlines() == [f"id{sep}n", f"a{sep}1", f"b{sep}2"]


def test_file_checksum_is_sha256(tmp_path):
    path = tmp_path / "x.bin"
    path.write_bytes(b"snakescope" * 1000)
    assert file_checksum(path, chunk_size=7) == hashlib.sha256(b"snakescope" * 1000).hexdigest()
