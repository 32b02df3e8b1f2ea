"""data: training batches from the items of snakescope.engine.items, held in memory or streamed.

The training data path is built so the GPU never waits for it (docs/performance.md has the figures):

* when it fits (snakescope.engine.items.choose_data_path) the training set is held in memory as
  tensors; otherwise it is streamed: each batch's images are read from the store (`StoredItems`) when
  the batch is gathered, or by the DataLoader workers when per-image augmentations run, so memory
  does not grow with the dataset, and the batches are the same as in memory;
* in memory, the training set is held as tensors (on the GPU when it fits in a quarter of its free
  memory, else in pinned host memory copied to the GPU without blocking);
* flips and 90-degree rotations, the default augmentations, run on the GPU on the whole batch with
  one random draw per image: flipping and rotating by quarter turns move pixels without
  interpolation, so the batched version is exactly the per-image transform;
* only the remaining augmentations (rotate, zoom, intensity, noise, blur) run per image with MONAI in
  DataLoader workers on the CPU, and only when the plan asks for them.

Moving flips and quarter turns after the other augmentations does not change the distribution of the
augmented images: each of the others is either pointwise or draws its parameters from a range that is
symmetric under flips and quarter turns (a random crop position, a rotation angle in [-a, a], an
isotropic zoom, independent noise, blur with the same sigma range on every axis).

Every random choice of an epoch (order, crop positions, flips, turns, and a seed for each image's
MONAI transform) is drawn up front from one `torch.Generator`, so results on the CPU repeat exactly for
a seed, whatever the number of workers.
"""

from __future__ import annotations

import numpy as np
import torch

from snakescope.engine.items import StoredItems, image_shapes
from snakescope.engine.transforms import build_train_transforms

BATCH_AUGMENTATIONS = ("flip", "rotate90")  # exact as batched tensor ops; run on the training device
DEVICE_MEMORY_SHARE = 0.25  # keep the training set on the GPU when it takes at most this share of free memory


class ItemDataset(torch.utils.data.Dataset):
    """In-memory items with an optional (random) MONAI transform; a dataset of a few GB fits in RAM.

    An index may be an int, or an (int, seed) pair: the transform is then re-seeded with `seed` before
    it runs, so an image's augmentation depends on the seed alone, not on which worker draws it.
    """

    def __init__(self, items: list[dict], transform=None):
        self.items = items
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index) -> dict:
        seed = None
        if isinstance(index, tuple | list):
            index, seed = index
        item = self.items[int(index)]
        data = {"image": item["image"]}
        if "label" in item:
            data["label"] = item["label"]
        if self.transform is not None:
            if seed is not None:
                self.transform.set_random_state(seed=int(seed))
            data = self.transform(data)
        image = torch.as_tensor(np.ascontiguousarray(data["image"]), dtype=torch.float32)
        out = {"image": image}
        if "label" in data:
            label = data["label"]
            label = torch.as_tensor(np.ascontiguousarray(label) if not np.isscalar(label) else label)
            out["label"] = label if label.is_floating_point() else label.long()  # float: regression targets
        return out


class BatchAugment:
    """The plan's flips and quarter turns, applied to a whole batch (N, C, *spatial) at once.

    Equals MONAI's `RandFlipd(prob, spatial_axis=a)` for each spatial axis a, then
    `RandRotate90d(prob, max_k=3)` over the last two axes, drawn independently per image. On a batch
    whose last two axes differ in length, a quarter turn would change the shape, so a turn is then always
    a half turn.
    """

    def __init__(self, plan: dict):
        self.spatial_dims = plan["spatial_dims"]
        by_name = {aug["name"]: aug for aug in plan.get("augmentations", [])}
        self.flip_prob = float(by_name["flip"]["prob"]) if "flip" in by_name else 0.0
        self.rotate90_prob = float(by_name["rotate90"]["prob"]) if "rotate90" in by_name else 0.0

    @property
    def active(self) -> bool:
        return self.flip_prob > 0 or self.rotate90_prob > 0

    def draw(self, n: int, generator: torch.Generator) -> dict:
        """Random choices for `n` images, drawn on the CPU from `generator`."""
        flips = torch.rand(n, self.spatial_dims, generator=generator) < self.flip_prob
        turn = torch.rand(n, generator=generator) < self.rotate90_prob
        k = torch.randint(1, 4, (n,), generator=generator)
        return {"flips": flips, "k": torch.where(turn, k, torch.zeros_like(k))}

    def __call__(
        self, tensors: list[torch.Tensor], params: dict, on_device: dict | None = None
    ) -> list[torch.Tensor]:
        """Apply the choices `params` (from `draw`, one row per image) to each tensor of the batch alike.

        `on_device`: the same choices already on the tensors' device (saves a small copy per batch).
        """
        if not self.active:
            return tensors
        device = tensors[0].device
        if on_device is None:
            on_device = {key: value.to(device, non_blocking=True) for key, value in params.items()}
        flips = on_device["flips"]
        out = list(tensors)
        for axis in range(self.spatial_dims):
            if bool(params["flips"][:, axis].any()):
                dim = out[0].ndim - self.spatial_dims + axis
                out = [torch.where(_per_image(flips[:, axis], t), t.flip(dim), t) for t in out]
        if bool(params["k"].any()):
            turns, k = params["k"], on_device["k"]
            if out[0].shape[-1] != out[0].shape[-2]:
                turns, k = (turns > 0).long() * 2, (k > 0).long() * 2
            for quarter in sorted(set(turns.tolist()) - {0}):
                out = [
                    torch.where(_per_image(k == quarter, t), torch.rot90(t, quarter, dims=(-2, -1)), t)
                    for t in out
                ]
        return out


def _per_image(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return mask.view(-1, *([1] * (like.ndim - 1)))


class _EpochSampler(torch.utils.data.Sampler):
    """Yields the (index, seed) pairs set for the current epoch; lives in the main process."""

    def __init__(self, n: int):
        self.pairs: list[tuple[int, int]] = [(i, 0) for i in range(n)]

    def __iter__(self):
        return iter(self.pairs)

    def __len__(self) -> int:
        return len(self.pairs)


class TrainBatches:
    """The training batches of one epoch per iteration: dicts of "image" and "label" on `device`, augmented.

    Args:
        items: from `load_items`, all with a "label"; an item may be listed more than once (several
            patches of one image per epoch), it is then held in memory once. `StoredItems` are streamed:
            each batch's items are read when it is gathered (or by the DataLoader), never all held.
        plan: the augmentation plan (patch size and random augmentations).
        batch_size: images per batch; the last, incomplete batch is dropped when there is more than one.
        device: where the batches are delivered (and flips/turns computed).
        threads: CPU threads of the job; sets the DataLoader workers when MONAI augmentations run per image.
        generator: the source of every random choice; re-seed it before each epoch to repeat a run.
        on_device: keep the training set in GPU memory (None: when it fits, see DEVICE_MEMORY_SHARE).
        shard: (rank, processes) of data-parallel training: `batch_size` is the global batch, and this
            process gets its equal slice of each one. Every process draws the same epoch (order, crops,
            augmentations) from its identically seeded generator, so the slices together are exactly the
            batches of one process.
    """

    def __init__(
        self,
        items: list[dict],
        plan: dict,
        batch_size: int,
        device: torch.device | str,
        threads: int = 1,
        generator: torch.Generator | None = None,
        on_device: bool | None = None,
        shard: tuple[int, int] = (0, 1),
    ):
        if not items:
            raise ValueError("no training images")
        self.device = torch.device(device)
        self.generator = generator if generator is not None else torch.Generator()
        self.n = len(items)
        self.batch_size = min(batch_size, self.n)
        self.drop_last = self.n > batch_size
        self.rank, self.processes = shard
        if self.batch_size % self.processes:
            raise ValueError(
                f"batch_size {self.batch_size} (the global batch{', all training samples' if self.n < batch_size else ''}) "
                f"does not split into {self.processes} training processes; make it a multiple of train_processes."
            )
        self.local_batch = self.batch_size // self.processes
        self.augment = BatchAugment(plan)
        self.patch_size = list(plan["patch_size"]) if plan.get("patch_size") else None
        self.has_label = "label" in items[0]
        self.streamed = None  # the items of the tensor path when they are streamed (_StreamedTensors)
        cpu_plan = {
            **plan,
            "augmentations": [
                a for a in plan.get("augmentations", []) if a["name"] not in BATCH_AUGMENTATIONS
            ],
        }
        self.mode = "loader" if cpu_plan["augmentations"] else "tensor"
        if self.mode == "loader":
            self._init_loader(items, cpu_plan, threads)
        else:
            self._init_tensors(items, on_device)

    # -- per-image MONAI transforms in DataLoader workers (patch crop included) ---------------------

    def _init_loader(self, items: list[dict], cpu_plan: dict, threads: int) -> None:
        # a class index per image (classification) is not a map to crop and turn with the image
        transform = build_train_transforms(cpu_plan, has_mask=np.ndim(items[0].get("label", 0)) > 0)
        self.sampler = _EpochSampler(self.n)
        cuda = self.device.type == "cuda"
        # On the CPU, workers only compete with the training threads unless there are spare cores; on a
        # GPU the main process mostly waits, so all but one thread prepare images.
        self.num_workers = min(16, max(1, threads - 1)) if cuda else max(0, threads - 2)
        self.loader = torch.utils.data.DataLoader(
            ItemDataset(items, transform),
            batch_size=self.local_batch,
            sampler=self.sampler,
            drop_last=False,  # the sampler holds whole batches only (see __iter__)
            num_workers=self.num_workers,
            pin_memory=cuda,
            persistent_workers=self.num_workers > 0,
            prefetch_factor=4 if self.num_workers > 0 else None,
        )

    # -- whole training set as tensors, crop and flips/turns batched ---------------------------------

    def _init_tensors(self, items: list[dict], on_device: bool | None) -> None:
        if isinstance(items, StoredItems):
            return self._init_streamed_tensors(items)
        # An item listed several times (several patches per image and epoch) is stored once.
        first: dict[int, int] = {}
        self.storage_index = torch.tensor([first.setdefault(id(item), len(first)) for item in items])
        unique = list({id(item): item for item in items}.values())
        images, labels = [], []
        for item in unique:
            image, label = item["image"], item.get("label")
            if self.patch_size:
                image, label = _pad_to(image, label, self.patch_size)
            images.append(torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)))
            if label is not None:
                labels.append(
                    torch.as_tensor(np.ascontiguousarray(label))
                    if not np.isscalar(label)
                    else torch.tensor(int(label))
                )
        labels = _compact_labels(labels) if labels else []
        self.same_shape = len({tuple(t.shape) for t in images}) == 1
        if not self.same_shape and not self.patch_size:
            raise ValueError("training images differ in size and the plan has no patch_size to crop them to")
        nbytes = sum(t.numel() * t.element_size() for t in images + labels)
        cuda = self.device.type == "cuda"
        if on_device is None:
            on_device = cuda and nbytes <= DEVICE_MEMORY_SHARE * torch.cuda.mem_get_info(self.device)[0]
        self.storage = self.device if (cuda and on_device) else torch.device("cpu")
        self.pinned = cuda and self.storage.type == "cpu"

        def place(tensors: list[torch.Tensor]):
            if self.same_shape:
                stacked = torch.stack(tensors)
                return stacked.pin_memory() if self.pinned else stacked.to(self.storage)
            return [t.pin_memory() if self.pinned else t.to(self.storage) for t in tensors]

        self.images = place(images)
        self.labels = place(labels) if labels else None
        self._buffers: dict = {}
        self._events: dict = {}
        self._slot = 0
        self._copy_stream = torch.cuda.Stream(self.device) if self.pinned else None

    def _init_streamed_tensors(self, items: StoredItems) -> None:
        """The tensor path over streamed items: each batch's images are read from the store when it is
        gathered, then cropped, flipped and turned exactly as in memory (the same batches)."""
        first: dict[str, int] = {}
        self.storage_index = torch.tensor([first.setdefault(sample_id, len(first)) for sample_id in items.ids])
        unique = items.with_ids(list(first))
        self.same_shape = len(set(image_shapes(unique))) == 1
        if not self.same_shape and not self.patch_size:
            raise ValueError("training images differ in size and the plan has no patch_size to crop them to")
        self.storage = torch.device("cpu")
        self.pinned = self.device.type == "cuda"
        streamed = _StreamedTensors(unique, self.patch_size)
        self.streamed = streamed
        self.images = _StreamedView(streamed, 0)
        self.labels = _StreamedView(streamed, 1) if self.has_label else None
        self._buffers, self._events, self._slot = {}, {}, 0
        self._copy_stream = torch.cuda.Stream(self.device) if self.pinned else None

    def __len__(self) -> int:
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)

    def __iter__(self):
        order = torch.randperm(self.n, generator=self.generator)
        seeds = torch.randint(0, 2**31 - 1, (self.n,), generator=self.generator)
        params = self.augment.draw(self.n, self.generator)
        crop = torch.rand(self.n, len(self.patch_size or []), generator=self.generator)
        starts = [(i, i + self.batch_size) for i in range(0, self.n, self.batch_size)][: len(self)]
        # this process's slice of each global batch
        starts = [(a + self.rank * self.local_batch, a + (self.rank + 1) * self.local_batch) for a, _ in starts]
        positions = self.storage_index[order] if self.mode == "tensor" else order
        device_params = device_positions = None
        if self.device.type == "cuda":
            # The epoch's choices go to the GPU in one copy from pinned memory: a small blocking copy per
            # batch would make every step wait for the previous one to finish (about 1 % on an H200).
            device_params = {key: _to_device(value, self.device) for key, value in params.items()}
            if self.mode == "tensor" and not self.pinned:
                device_positions = _to_device(positions, self.device)
        if self.mode == "loader":
            pairs = list(zip(order.tolist(), seeds.tolist(), strict=True))
            self.sampler.pairs = [pair for start, stop in starts for pair in pairs[start:stop]]
            batches = iter(self.loader)
        for start, stop in starts:
            if self.mode == "loader":
                batch = next(batches)
                tensors = [batch["image"].to(self.device, non_blocking=True)]
                if "label" in batch:
                    tensors.append(batch["label"].to(self.device, non_blocking=True))
            else:
                tensors = self._gather(
                    positions[start:stop],
                    crop[start:stop],
                    None if device_positions is None else device_positions[start:stop],
                )
            # class maps follow the image's flips and turns; class indices and other labels do not
            spatial = [t for t in tensors if t.ndim == tensors[0].ndim]
            other = tensors[len(spatial) :]
            batch_params = {key: value[start:stop] for key, value in params.items()}
            batch_device_params = (
                None
                if device_params is None
                else {key: value[start:stop] for key, value in device_params.items()}
            )
            tensors = self.augment(spatial, batch_params, batch_device_params) + other
            out = {"image": tensors[0]}
            if len(tensors) > 1:
                out["label"] = tensors[1] if tensors[1].is_floating_point() else tensors[1].long()
            yield out

    def _gather(
        self, index: torch.Tensor, crop: torch.Tensor, device_index: torch.Tensor | None
    ) -> list[torch.Tensor]:
        if self.streamed is not None:
            self.streamed.batch.clear()
        sources = [self.images] + ([self.labels] if self.labels is not None else [])
        if not self.pinned:
            return [self._select(source, index, crop, device_index=device_index) for source in sources]
        # Pinned host data: gather into one of two pinned buffers per source, copy it on a side stream
        # so the copy overlaps the previous step's compute, and make the training stream wait for it.
        main = torch.cuda.current_stream(self.device)
        out = []
        for key, source in enumerate(sources):
            shape = self._batch_shape(source, len(index))
            slot = (key, shape, self._slot)
            if slot in self._events:
                self._events[slot].synchronize()  # its copy from two batches ago is done
            else:
                self._buffers[slot] = torch.empty(shape, dtype=self._dtype(source)).pin_memory()
            buffer = self._buffers[slot]
            self._select(source, index, crop, out=buffer)
            with torch.cuda.stream(self._copy_stream):
                on_device = buffer.to(self.device, non_blocking=True)
                event = torch.cuda.Event()
                event.record(self._copy_stream)
            self._events[slot] = event
            main.wait_stream(self._copy_stream)
            on_device.record_stream(main)
            out.append(on_device)
        self._slot ^= 1
        return out

    def _dtype(self, source) -> torch.dtype:
        return source.dtype if isinstance(source, torch.Tensor) else source[0].dtype

    def _batch_shape(self, source, n: int) -> tuple[int, ...]:
        first = source[0]
        if self.patch_size:
            return (n, first.shape[0], *self.patch_size)
        return (n, *first.shape)

    def _select(
        self,
        source,
        index: torch.Tensor,
        crop: torch.Tensor,
        out: torch.Tensor | None = None,
        device_index: torch.Tensor | None = None,
    ):
        """The batch `index` of `source`, each image cropped at its drawn position to the patch size."""
        if self.patch_size is None and not isinstance(source, _StreamedView):
            if out is not None:
                return torch.index_select(source, 0, index, out=out)
            return source.index_select(
                0, device_index if device_index is not None else index.to(source.device)
            )
        pieces = []
        for i, u in zip(index.tolist(), crop.tolist(), strict=True):
            image = source[i]
            if self.patch_size:
                slices = [slice(None)]
                for size, patch, draw in zip(image.shape[1:], self.patch_size, u, strict=True):
                    begin = min(int(draw * (size - patch + 1)), size - patch)
                    slices.append(slice(begin, begin + patch))
                image = image[tuple(slices)]
            pieces.append(image)
        return torch.stack(pieces, out=out) if out is not None else torch.stack(pieces)


class _StreamedTensors:
    """Streamed items as the tensor path holds them in memory (padded to the patch size, tensors), read
    when asked; the current batch's items are kept (`batch`, emptied by TrainBatches before each batch),
    since its images and labels are gathered one after the other."""

    def __init__(self, items: StoredItems, patch_size: list[int] | None):
        self.items, self.patch_size = items, patch_size
        self.batch: dict[int, tuple] = {}

    def get(self, index: int) -> tuple:
        if index not in self.batch:
            item = self.items[index]
            image, label = item["image"], item.get("label")
            if self.patch_size:
                image, label = _pad_to(image, label, self.patch_size)
            if label is not None:
                label = torch.as_tensor(np.ascontiguousarray(label)) if not np.isscalar(label) else torch.tensor(int(label))
            self.batch[index] = (torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)), label)
        return self.batch[index]


class _StreamedView:
    """The images (part 0) or labels (part 1) of `_StreamedTensors`, indexed like the tensors in memory."""

    def __init__(self, streamed: _StreamedTensors, part: int):
        self.streamed, self.part = streamed, part

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.streamed.get(index)[self.part]

    def __len__(self) -> int:
        return len(self.streamed.items)


def _to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """An asynchronous copy: through pinned memory, which the caching host allocator keeps until it is done."""
    return tensor.pin_memory().to(device, non_blocking=True)


def _pad_to(image: np.ndarray, label, patch_size: list[int]):
    """Reflect-pad image (and label map) up to the patch size where smaller, as MONAI's SpatialPadd does."""
    spatial = image.shape[1:]
    if all(s >= p for s, p in zip(spatial, patch_size, strict=True)):
        return image, label
    from monai.transforms import SpatialPadd

    data = {"image": image}
    keys = ["image"]
    if label is not None and not np.isscalar(label):
        data["label"] = label
        keys.append("label")
    padded = SpatialPadd(keys=keys, spatial_size=patch_size, mode="reflect")(data)
    out_label = np.asarray(padded["label"]) if "label" in padded else label
    return np.asarray(padded["image"], dtype=np.float32), out_label


def _compact_labels(labels: list[torch.Tensor]) -> list[torch.Tensor]:
    """Class maps with values in 0..255 are kept as uint8 (an eighth of int64); batches are widened again."""
    if labels[0].ndim == 0 or labels[0].is_floating_point():
        return labels
    low = min(int(t.min()) for t in labels)
    high = max(int(t.max()) for t in labels)
    if 0 <= low and high <= 255:
        return [t.to(torch.uint8) for t in labels]
    return labels
