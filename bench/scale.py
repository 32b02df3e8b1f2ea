"""How memory and disk grow with the number of images: convert, train and predict on synthetic sets.

For each size, a synthetic segmentation set of RGB images with their masks (the demo generator,
snakescope.synthetic, at --side pixels) is converted, split, trained for one batch (unet_small) and
predicted; each stage runs in its own process, whose peak RSS is read from the kernel (wait4). The
table gives the image files' bytes on disk, the raw pixel bytes (uint8 image + uint8 mask), the converted
store's bytes and its ratio to the raw bytes, and each stage's peak RSS.

    .venv/bin/python bench/scale.py --sizes 100 400 1600 --side 512 --memory-cap-gb 3 --out /tmp/scale

Each stage plans what it holds from the memory it may use (snakescope.resources): under the 3 GB cgroup,
convert spills what it reads beyond 0.375 GB to disk and training streams from the store.

With --slide-side, it applies the model trained on the smallest set instead to one whole-slide image of
that side (RGB, a tiled TIFF mosaicked from the demo images, written one tile at a time), under the same
cap: `apply` reads it lazily and predicts it block by block (snakescope.engine.tiled).

    .venv/bin/python bench/scale.py --sizes 100 --side 512 --slide-side 20000 --memory-cap-gb 3 --out /tmp/scale

With --shard-size, convert runs as the workflow runs a dataset larger than convert_shard_size: one
process per shard (snakescope.convert.convert_shard, one after the other here; separate jobs in the
workflow), then the gather step (gather_shards); the row adds the largest shard's peak RSS and time, the
shards' total time and the gather step's.

    .venv/bin/python bench/scale.py --sizes 1600 --side 512 --shard-size 400 --memory-cap-gb 3 --out /tmp/scale

(--convert-only stops after convert: the shards and the gather step, or the one convert job.)

With --mosaic-of, the images are mosaics of a pool of 64 demo images of that side (and their masks), which
writes a set of many gigabytes in minutes rather than drawing every cell: for a dataset several times the
memory cap.

    .venv/bin/python bench/scale.py --sizes 3200 --side 1024 --mosaic-of 512 --shard-size 200 --memory-cap-gb 3 --out /tmp/scale

With --slide-dataset, the dataset is one RGB slide of that side with its mask (tiled TIFFs mosaicked from
the demo images), cut into 512² training tiles (layout.tile_size; the rightmost fifth is the test set):
`convert` reads it tile by tile (snakescope.convert.read.read_tiles), then it trains and predicts.

    .venv/bin/python bench/scale.py --slide-dataset 20000 --memory-cap-gb 3 --out /tmp/scale

With --volume-side, it trains unet_small in 3D (one batch, 64³ patches) on 8 synthetic 96³ volumes of
balls, then applies it to one grey volume of that side (a 3D TIFF written plane by plane), which
`apply` reads lazily and predicts block by block, under the same cap.

    .venv/bin/python bench/scale.py --volume-side 512 --memory-cap-gb 3 --out /tmp/volume
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from benchlib import print_table  # noqa: E402


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def memory_cgroup(cap_gb: float) -> Path:
    """A new memory cgroup limited to `cap_gb` (needs root; cgroup v2, else v1's memory controller)."""
    name = f"snakescope_scale_{os.getpid()}"
    unified, v1 = Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/memory")
    group = v1 / name if v1.is_dir() else unified / name
    group.mkdir()
    limit = str(int(cap_gb * 2**30))
    (group / ("memory.limit_in_bytes" if v1.is_dir() else "memory.max")).write_text(limit)
    if (group / "memory.memsw.limit_in_bytes").exists():  # swap counts too, where it is accounted
        (group / "memory.memsw.limit_in_bytes").write_text(limit)
    return group


def run_stage(stage: str, work: Path, data_path: str, cgroup: Path | None = None,
              shard: tuple[int, int] = (0, 0), tile_size: int = 0, spatial_dims: int = 2) -> tuple[float, float]:
    """Run `stage` in a child process (inside `cgroup` when given): (peak RSS in GiB, seconds).
    `shard`: (index, size) for the convert_shard and gather stages; `tile_size`: cut the images into
    tiles of that side (layout.tile_size); `spatial_dims` 3: the set is of volumes."""
    started = time.perf_counter()
    enter = (lambda: (cgroup / "cgroup.procs").write_text(str(os.getpid()))) if cgroup else None
    child = subprocess.Popen([sys.executable, __file__, "--stage", stage, "--out", str(work), "--data-path", data_path,
                              "--shard", str(shard[0]), "--shard-size", str(shard[1]), "--tile-size", str(tile_size),
                              "--spatial-dims", str(spatial_dims)],
                             preexec_fn=enter)
    _, status, usage = os.wait4(child.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"stage {stage} failed for {work}")
    return usage.ru_maxrss / 2**20, time.perf_counter() - started  # ru_maxrss is in KiB on Linux


def stage(name: str, work: Path, data_path: str, shard: int = 0, shard_size: int = 0, tile_size: int = 0,
          spatial_dims: int = 2) -> None:
    """One stage, run in a child process (see `run_stage`)."""
    sys.path.insert(0, str(HERE.parent / "workflow" / "scripts"))
    import logging

    from snakescope.augment import make_plan
    from snakescope.config import TrainConfig, resolve_datasets, stage_settings
    from snakescope.io import read_json, write_json

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    config = {"task": "segmentation", "data_dir": str(work / "data"), "epochs": 1, "batch_size": 4,
              "augmentations": ["flip"], "device": "cpu", "patch_size": [256, 256] if spatial_dims == 2 else [64] * 3,
              "data_path": data_path}
    if tile_size:
        config["layout"] = {"tile_size": [tile_size, tile_size], "test_right_fraction": 0.2}
    (settings,) = resolve_datasets(config).values()
    out = work / "prepared"
    if name == "convert_shard":
        from snakescope.convert import convert_shard, shard_count

        shards = shard_count(len(list((work / "data" / "image").iterdir())), shard_size)
        convert_shard(stage_settings(settings, "convert"), shard, shards, shard_size, out / "shards" / str(shard))
    elif name in ("convert", "gather"):
        from snakescope.convert import convert_dataset, gather_shards
        from snakescope.split import write_split

        outputs = out / "arrays.zarr", out / "samples.tsv", out / "fingerprint.json"
        if name == "gather":
            gather_shards(stage_settings(settings, "convert"), sorted((out / "shards").iterdir(), key=lambda p: int(p.name)),
                          *outputs)
        else:
            convert_dataset(stage_settings(settings, "convert"), *outputs)
        write_split(str(out / "samples.tsv"), stage_settings(settings, "split"), str(out / "splits.json"))
        write_json(make_plan(settings, read_json(out / "fingerprint.json")), out / "plan.json")
    elif name == "train":
        from snakescope.train import fit

        cfg = TrainConfig.from_settings(settings, model="unet_small", seed=0)
        cfg = TrainConfig(**{**cfg.__dict__, "max_batches_per_epoch": 1})
        fit(str(out / "arrays.zarr"), str(out / "samples.tsv"), str(out / "splits.json"), str(out / "plan.json"),
            str(out / "fingerprint.json"), cfg, str(work / "model.pt"), str(work / "history.tsv"),
            str(work / "card.json"), str(work / "train"), threads=2)
    elif name == "predict":
        from snakescope.predict import predict_dataset

        predict_dataset(str(work / "model.pt"), str(out / "arrays.zarr"), str(out / "samples.tsv"),
                        str(out / "splits.json"), str(work / "predict"), device="cpu", threads=2)
    elif name == "apply":
        from snakescope.apply import apply_model

        apply_model(str(work.parent), str(work / "slide"), str(work / "applied"), device="cpu", threads=2)


def write_mosaic_dataset(out: Path, n_images: int, side: int, pool: Path) -> Path:
    """`n_images` RGB images of side² with their masks (TIFF, the demo layout), each a mosaic of the demo
    images in `pool` and their masks; left alone if complete."""
    import numpy as np
    import tifffile

    if (out / "image").is_dir() and len(list((out / "image").iterdir())) == n_images:
        return out
    names = sorted(p.name for p in (pool / "image").glob("*.tif"))
    tiles = [(tifffile.imread(pool / "image" / n), tifffile.imread(pool / "groundtruth" / n)) for n in names]
    tile = tiles[0][0].shape[0]
    per_side = side // tile
    for folder in ("image", "groundtruth"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    for i in range(n_images):
        picked = [tiles[(i * 7 + k * 3) % len(tiles)] for k in range(per_side**2)]
        image = np.block([[[picked[r * per_side + c][0]] for c in range(per_side)] for r in range(per_side)])
        mask = np.block([[picked[r * per_side + c][1] for c in range(per_side)] for r in range(per_side)])
        tifffile.imwrite(out / "image" / f"mosaic_{i:05d}.tif", image.reshape(side, side, 3))
        tifffile.imwrite(out / "groundtruth" / f"mosaic_{i:05d}.tif", mask)
    return out


def measure(n_images: int, side: int, root: Path, data_path: str, cgroup: Path | None = None,
            shard_size: int = 0, mosaic_of: int = 0, convert_only: bool = False) -> dict:
    sys.path.insert(0, str(HERE.parent / "workflow" / "scripts"))
    from snakescope.convert import shard_count
    from snakescope.synthetic import write_demo_dataset

    work = root / f"n{n_images}_side{side}"
    if mosaic_of:
        pool = write_demo_dataset(root / f"pool_side{mosaic_of}", n_images=64, size=mosaic_of)
        data = write_mosaic_dataset(work / "data", n_images, side, pool)
    else:
        data = write_demo_dataset(work / "data", n_images=n_images, size=side)
    row = {"images": n_images, "side": side, "data_path": data_path, "files_MB": folder_bytes(data) / 1e6,
           "raw_MB": n_images * side * side * 4 / 1e6}  # RGB uint8 image + uint8 mask
    if shard_size:  # convert as shards, then gather (convert_GiB: the most of any of them; convert_s: all)
        shards = [run_stage("convert_shard", work, data_path, cgroup, (k, shard_size))
                  for k in range(shard_count(n_images, shard_size))]
        row["shards"] = len(shards)
        row["shard_GiB"], row["shard_s"] = max(rss for rss, _ in shards), max(s for _, s in shards)
        row["shards_s"] = sum(s for _, s in shards)
        row["gather_GiB"], row["gather_s"] = run_stage("gather", work, data_path, cgroup, (0, shard_size))
        row["convert_GiB"], row["convert_s"] = max(row["shard_GiB"], row["gather_GiB"]), row["shards_s"] + row["gather_s"]
    stages = ("train", "predict") if shard_size else ("convert", "train", "predict")
    if convert_only:
        stages = () if shard_size else ("convert",)
    for name in stages:
        row[f"{name}_GiB"], row[f"{name}_s"] = run_stage(name, work, data_path, cgroup)
    if not convert_only:
        row["train_read"] = json.loads((work / "card.json").read_text())["training"]["data_path"]  # memory or stream
    row["store_MB"] = folder_bytes(work / "prepared" / "arrays.zarr") / 1e6
    row["store_per_raw"] = row["store_MB"] / row["raw_MB"]
    return row


def write_slide(path: Path, side: int, images: Path, tile: int = 512) -> None:
    """A side x side tiled TIFF, its tiles the demo images (RGB) or their masks (grey) in `images`, in turn,
    one tile in memory at a time; the masks of a folder of masks line up with its images' slide."""
    import numpy as np
    import tifffile

    sources = [tifffile.imread(p)[:tile, :tile] for p in sorted(images.glob("*.tif"))[:16]]
    per_row = -(-side // tile)
    tiles = (sources[(row * 7 + column) % len(sources)] for row in range(per_row) for column in range(per_row))
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, tiles, shape=(side, side, *sources[0].shape[2:]), dtype=np.uint8, tile=(tile, tile),
                     photometric="rgb" if sources[0].ndim == 3 else "minisblack", bigtiff=True)


def measure_slide(slide_side: int, work: Path, cgroup: Path | None = None) -> dict:
    """Apply the model trained in `work` (by `measure`) to one slide_side² RGB image."""
    folder = work / f"slide{slide_side}"  # the apply stage's work folder; the model is in `work`
    slide = folder / "slide" / f"slide{slide_side}.tif"
    if not slide.exists():
        write_slide(slide, slide_side, work / "data" / "image")
    row = {"slide_side": slide_side, "raw_GB": slide_side**2 * 3 / 1e9, "file_GB": slide.stat().st_size / 1e9}
    return measure_apply(folder, row, cgroup)


def measure_apply(folder: Path, row: dict, cgroup: Path | None = None, spatial_dims: int = 2) -> dict:
    """`row` with the apply stage's peak RSS, time and output size, for the image in `folder`/slide (the
    model in `folder`'s parent), its earlier outputs removed first."""
    import shutil

    shutil.rmtree(folder / "applied", ignore_errors=True)
    row["apply_GiB"], row["apply_s"] = run_stage("apply", folder, "auto", cgroup, spatial_dims=spatial_dims)
    row["output_GB"] = folder_bytes(folder / "applied") / 1e9
    return row


def write_ball_volumes(out: Path, n_volumes: int = 8, side: int = 96, seed: int = 0) -> Path:
    """`n_volumes` grey side³ volumes of bright balls on a noisy background with their 0/1 masks (3D TIFFs,
    the demo layout: image/ and groundtruth/); left alone if complete."""
    import numpy as np
    import tifffile

    if (out / "image").is_dir() and len(list((out / "image").iterdir())) == n_volumes:
        return out
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(side)] * 3, indexing="ij"), axis=-1)
    for folder in ("image", "groundtruth"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    for i in range(n_volumes):
        mask = np.zeros((side,) * 3, bool)
        for _ in range(30):
            centre, radius = rng.uniform(0, side, 3), rng.uniform(4, 10)
            mask |= ((grid - centre) ** 2).sum(-1) < radius**2
        image = np.clip(60 + 120 * mask + rng.normal(0, 25, mask.shape), 0, 255).astype(np.uint8)
        tifffile.imwrite(out / "image" / f"volume_{i:02d}.tif", image)
        tifffile.imwrite(out / "groundtruth" / f"volume_{i:02d}.tif", mask.astype(np.uint8))
    return out


def write_volume(path: Path, side: int, volumes: Path) -> None:
    """A side³ grey 3D TIFF, written plane by plane: each plane the matching plane of the first volume in
    `volumes`, repeated across Y and X."""
    import numpy as np
    import tifffile

    source = tifffile.imread(sorted(volumes.glob("*.tif"))[0])
    reps = -(-side // source.shape[1])
    planes = (np.tile(source[z % len(source)], (reps, reps))[:side, :side] for z in range(side))
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, planes, shape=(side, side, side), dtype=np.uint8, bigtiff=True)


def measure_volume(side: int, root: Path, cgroup: Path | None = None) -> dict:
    """Convert and train (one batch, unet_small, 64³ patches) on 8 synthetic 96³ volumes, then apply the
    model to one side³ volume, each stage in its own process (inside `cgroup` when given)."""
    work = root / "volumes96"
    write_ball_volumes(work / "data")
    if not (work / "model.pt").exists():
        for name in ("convert", "train"):
            run_stage(name, work, "auto", cgroup, spatial_dims=3)
    folder = work / f"volume{side}"
    volume = folder / "slide" / f"volume{side}.tif"
    if not volume.exists():
        write_volume(volume, side, work / "data" / "image")
    row = {"volume_side": side, "raw_GB": side**3 / 1e9, "file_GB": volume.stat().st_size / 1e9}
    return measure_apply(folder, row, cgroup, spatial_dims=3)


def measure_slide_dataset(slide_side: int, root: Path, cgroup: Path | None = None, tile: int = 512) -> dict:
    """Convert (tile by tile), train and predict a dataset of one slide_side² RGB slide with its mask, cut
    into training tiles of `tile`² (layout.tile_size; the rightmost fifth of the tiles is the test set)."""
    sys.path.insert(0, str(HERE.parent / "workflow" / "scripts"))
    from snakescope.synthetic import write_demo_dataset

    work = root / f"slide_dataset{slide_side}"
    pool = write_demo_dataset(root / f"pool_side{tile}", n_images=16, size=tile)
    for folder in ("image", "groundtruth"):
        if not (work / "data" / folder / "slide.tif").exists():
            write_slide(work / "data" / folder / "slide.tif", slide_side, pool / folder, tile)
    row = {"slide_side": slide_side, "raw_GB": slide_side**2 * 4 / 1e9,  # RGB uint8 image + uint8 mask
           "files_GB": folder_bytes(work / "data") / 1e9}
    for name in ("convert", "train", "predict"):
        row[f"{name}_GiB"], row[f"{name}_s"] = run_stage(name, work, "auto", cgroup, tile_size=tile)
    row["tiles"] = (work / "prepared" / "samples.tsv").read_text().count("\n") - 1
    row["train_read"] = json.loads((work / "card.json").read_text())["training"]["data_path"]
    row["store_per_raw"] = folder_bytes(work / "prepared" / "arrays.zarr") / 1e9 / row["raw_GB"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 400])
    parser.add_argument("--side", type=int, default=512)
    parser.add_argument("--out", type=Path, default=Path("/tmp/snakescope_scale"))
    parser.add_argument("--stage", choices=["convert", "convert_shard", "gather", "train", "predict", "apply"],
                        help=argparse.SUPPRESS)
    parser.add_argument("--shard", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--shard-size", type=int, default=0,
                        help="convert in shards of this many images, then gather (the workflow's convert_shard_size)")
    parser.add_argument("--data-path", choices=["auto", "memory", "stream"], default="auto",
                        help="how training reads its images (the config's data_path)")
    parser.add_argument("--memory-cap-gb", type=float,
                        help="run every stage in a memory cgroup of this size (root only)")
    parser.add_argument("--slide-side", type=int,
                        help="then apply the model of the first size to one RGB image of this side")
    parser.add_argument("--mosaic-of", type=int, default=0,
                        help="build the images as mosaics of 64 demo images of this side (fast, for large sets)")
    parser.add_argument("--slide-dataset", type=int,
                        help="instead: convert, train and predict one RGB slide of this side with its mask, in tiles")
    parser.add_argument("--tile-size", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--spatial-dims", type=int, default=2, help=argparse.SUPPRESS)
    parser.add_argument("--volume-side", type=int,
                        help="instead: apply a 3D U-Net to one grey volume of this side (a 3D TIFF), in blocks")
    parser.add_argument("--convert-only", action="store_true", help="measure convert (shards and gather) alone")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    if args.stage:
        stage(args.stage, args.out, args.data_path, args.shard, args.shard_size, args.tile_size, args.spatial_dims)
        return
    cgroup = memory_cgroup(args.memory_cap_gb) if args.memory_cap_gb else None
    try:
        if args.volume_side:
            rows = [measure_volume(args.volume_side, args.out, cgroup)]
        elif args.slide_dataset:
            rows = [measure_slide_dataset(args.slide_dataset, args.out, cgroup)]
        elif args.slide_side:
            work = args.out / f"n{args.sizes[0]}_side{args.side}"
            if not (work / "model.pt").exists():
                measure(args.sizes[0], args.side, args.out, args.data_path, cgroup)
            rows = [measure_slide(args.slide_side, work, cgroup)]
        else:
            rows = [measure(n, args.side, args.out, args.data_path, cgroup, args.shard_size, args.mosaic_of,
                            args.convert_only) for n in args.sizes]
    finally:
        if cgroup:
            cgroup.rmdir()
    print_table(rows, list(rows[0]))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
