"""The LightningDataModule: a memory-mapped dataset store, split, normalised and augmented.

Batches are dicts ``{"image": float32 N x 1 x H x W, "label": int64 (-1 when unknown), "row":
int64}``; ``row`` is the cell's position in the store's index, so any per-cell column (day,
condition, batch) can be joined back to predictions. A batch is read from the store in one go and
normalised (and, for policies with a batched twin, augmented) as a batch, in torch: in the loader
workers, or on the training device with ``transform_on=device`` (see :class:`CellCrops`).

Non-square crops (a lab export's 57x60, the paper's 45x30) are padded to a square with their own
background level by default (``pad_to_square``), so that 90° rotations and any other augmentation
keep every crop's shape and no cell pixel is cut away.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from nscfate.augment import build_augmentation, check_keeps_shape, seed_policy
from nscfate.augment.batched import BatchedPolicy, batched_policy
from nscfate.data.imageio import fit_to_size
from nscfate.data.normalize import Normalizer, apply_per_image, per_image_stats, to_unit_float
from nscfate.data.schema import CLASSES
from nscfate.data.splits import (
    INDEP,
    TEST,
    TRAIN,
    VAL,
    SplitSpec,
    make_split,
    rows_of,
    split_digest,
)
from nscfate.data.store import IMAGES, DatasetStore, open_store
from nscfate.data.synthetic_cache import generate_synthetic_store, synthetic_slug
from nscfate.errors import NscfateError
from nscfate.files import atomic_write

log = logging.getLogger(__name__)
#: How many training crops ``data.normalize=dataset`` reads to estimate its mean and std.
DATASET_STATS_SAMPLE = 4096
#: Where a training batch is finished (``data.transform_on``).
TRANSFORM_ON = ("workers", "device")


class BatchTransform:
    """What a batch of crops goes through once it is a batch: to float in [0, 1] (integer crops, by
    the store's white level), the batched augmentation (training crops only) and normalisation, in
    torch on whatever device holds the batch. Returns float32 N x 1 x H x W.

    ``known``: per-image normalisation statistics of these crops as read (N x 2, NaN where not yet
    known), filled in place. A crop that augmentation only flipped or turned keeps them exactly, so
    a loader that keeps them per crop finds each crop's quantiles once, not every epoch."""

    def __init__(
        self, white_level: int, normalizer: Normalizer, augment: BatchedPolicy | None = None
    ) -> None:
        self.white_level, self.normalizer, self.augment = white_level, normalizer, augment

    def __call__(
        self,
        images: torch.Tensor,
        generator: torch.Generator | None,
        known: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = images if images.is_floating_point() else images.float().div_(self.white_level)
        augment = self.augment if generator is not None else None
        if known is None or self.normalizer.mode != "per_image":
            x = augment(x, generator) if augment is not None else x
            return self.normalizer.torch(x)[:, None].contiguous()
        missing = known[:, 0].isnan().nonzero()[:, 0]
        if len(missing):
            known[missing] = per_image_stats(x.index_select(0, missing))
        stats = known
        if augment is not None:
            x, resampled = augment.apply(x, generator)
            moved = resampled.nonzero()[:, 0]
            if len(moved):  # a resampled crop has statistics of its own
                stats = known.clone()
                stats[moved] = per_image_stats(x.index_select(0, moved))
        return apply_per_image(x, stats)[:, None].contiguous()


class CellCrops(Dataset):
    """Crops of some rows of a store, served a batch at a time (``__getitems__``): one read of the
    memory-mapped rows, then per crop only what must be per crop (padding a non-square crop with its
    own background, a per-sample albumentations policy), then :class:`BatchTransform` for the
    batch, in the loader worker, or later on the training device when ``on_device``."""

    def __init__(
        self,
        store_path: Path,
        rows: np.ndarray,
        labels: np.ndarray,
        transform: BatchTransform,
        size: tuple[int, int],
        augment: Any = None,
        on_device: bool = False,
    ) -> None:
        self.store_path, self.rows, self.labels = store_path, rows, labels
        self.transform, self.size, self.augment = transform, size, augment
        self.on_device = on_device
        #: Draws the batched augmentation in a worker (seeded per worker by ``_seed_worker``).
        self.generator = torch.Generator().manual_seed(0)
        self._images: np.ndarray | None = None  # opened lazily: a memmap must not cross processes
        #: Each crop's per-image normalisation statistics as read (NaN until its first batch), kept
        #: by each process that finishes batches: the quantiles of a crop cost more than the rest
        #: of its batch work, and only a resampled (Affine) crop needs new ones.
        self._stats: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[0] for k, v in self.__getitems__([i]).items()}

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        if self._images is None:
            self._images = np.load(self.store_path / IMAGES, mmap_mode="r")
        where = np.asarray(indices, dtype=np.int64)
        rows = self.rows[where]
        raw = self._images[rows]
        if raw.shape[1:] != self.size or self.augment is not None:
            unit = to_unit_float(raw, self.transform.white_level)
            crops = [fit_to_size(c, *self.size) for c in unit]
            if self.augment is not None:
                crops = [self.augment(image=c)["image"] for c in crops]
            images = torch.from_numpy(np.stack(crops).astype(np.float32, copy=False))
        else:  # the common case: no per-crop Python at all
            images = torch.from_numpy(raw.astype(np.int32) if raw.dtype == np.uint16 else raw)
        if not self.on_device:
            gen = self.generator if self.transform.augment is not None else None
            if self.augment is not None:  # crops augmented one by one: statistics of their own
                images = self.transform(images, gen)
            else:
                if self._stats is None:
                    self._stats = torch.full((len(self.rows), 2), float("nan"))
                known = self._stats[where]
                images = self.transform(images, gen, known)
                self._stats[where] = known
        return {
            "image": images,
            "label": torch.from_numpy(self.labels[where]),
            "row": torch.from_numpy(rows.astype(np.int64, copy=False)),
        }


def as_batch(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The loader's collate function: ``__getitems__`` already returns the batch."""
    return batch


def _seed_worker(worker_id: int) -> None:
    """Give each loader worker its own augmentation streams, derived from the loader's seed."""
    info = torch.utils.data.get_worker_info()
    dataset = info.dataset
    if getattr(dataset, "augment", None) is not None:
        seed_policy(dataset.augment, info.seed % 2**32)
    dataset.generator = torch.Generator().manual_seed(info.seed % 2**63)


def spread_subset(dataset: Dataset, limit_batches: int | float, batch_size: int) -> Dataset:
    """``dataset``, or an evenly spaced subset of it when ``limit_batches`` (an int: batches of
    ``batch_size``, a float: a share) asks for fewer crops: every day and culture of a split
    stays represented, where its first batches would hold only some."""
    n = len(dataset)
    keep = limit_batches * batch_size if isinstance(limit_batches, int) else n * limit_batches
    keep = max(1, round(keep))
    if keep >= n:
        return dataset
    return Subset(dataset, np.linspace(0, n - 1, keep).round().astype(int).tolist())


class CellDataModule(L.LightningDataModule):
    """Serve a dataset store (or a synthetic one it generates on first use) to a Trainer.

    Args:
        path: the dataset store, or for ``synthetic`` data the folder that holds generated stores.
        synthetic: generator settings (``nscfate.data.synthetic.SynthSettings`` fields); when given,
            the store ``<path>/<settings slug>`` is generated on first use and reused afterwards.
        normalize: ``per_image`` (default), ``dataset`` or ``none``.
        augmentation: an ``augmentation`` config node (applied to training crops only).
        pad_to_square: pad non-square crops to a square with their own background, so rotations
            keep their shape (false keeps the store's shape; a shape-changing policy is then an error).
        split: ``SplitSpec`` fields: val, test, seed, group_by, holdout_conditions.
        batch_size: training batch size, or ``auto`` (set by ``nscfate.training.train.prepare``).
        transform_on: where a training or validation batch is normalised and (for policies with a
            batched twin, ``nscfate.augment.batched``) augmented: ``workers`` (the loader workers,
            beside the training process: best on a CPU) or ``device`` (the device that trains, in
            ``on_after_batch_transfer``: a GPU). Evaluation loaders always finish in the loader.
    """

    def __init__(
        self,
        path: str,
        synthetic: Mapping[str, Any] | None = None,
        normalize: str = "per_image",
        augmentation: Mapping[str, Any] | None = None,
        pad_to_square: bool = True,
        split: Mapping[str, Any] | None = None,
        batch_size: int | str = 128,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        seed: int = 0,
        transform_on: str = "workers",
    ) -> None:
        super().__init__()
        if transform_on not in TRANSFORM_ON:
            raise NscfateError(
                f"data.transform_on={transform_on!r}: expected one of {', '.join(TRANSFORM_ON)}"
            )
        self.transform_on = transform_on
        self.synthetic = dict(synthetic) if synthetic else None
        self.store_path = (
            Path(path) if not self.synthetic else Path(path) / synthetic_slug(self.synthetic)
        )
        self.normalizer = Normalizer(normalize)
        self.augmentation_cfg, self.pad_to_square = augmentation, pad_to_square
        split = dict(split or {})
        split["holdout_conditions"] = tuple(split.get("holdout_conditions") or ())
        self.split_spec = SplitSpec(**split)
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.num_workers, self.pin_memory, self.seed = num_workers, pin_memory, seed
        self.persistent_workers = persistent_workers and num_workers > 0
        self.store: DatasetStore | None = None
        self.split: pd.Series | None = None
        self.split_digest: str | None = None
        self.datasets: dict[str, CellCrops] = {}
        self._device_generator: torch.Generator | None = None

    # ----------------------------------------------------------------------------- preparation
    def prepare_data(self) -> None:
        """Generate the synthetic store if it is missing (rank 0 only, as Lightning calls it)."""
        if self.synthetic and not (self.store_path / "dataset.json").is_file():
            generate_synthetic_store(self.synthetic, self.store_path, reuse_existing=True)

    def setup(self, stage: str | None = None) -> None:
        """Open the store, split it, fit the normaliser and build the per-split datasets."""
        if self.store is not None:
            return
        if not self.store_path.exists() and self.synthetic:
            self.prepare_data()  # a bare setup() call outside a Trainer
        self.store = open_store(self.store_path)
        index = self.store.index
        self.split = make_split(index, self.split_spec)
        self.split_digest = split_digest(index, self.split)
        self._save_split(index)
        if self.normalizer.mode == "dataset":
            self._fit_normalizer()
        self.datasets = {part: self._dataset(part) for part in self.parts}

    @property
    def input_size(self) -> tuple[int, int]:
        """(height, width) of the crops the model sees: the store's, squared by ``pad_to_square``."""
        assert self.store is not None, "call setup() first"
        h, w = self.store.meta["shape"][1:]
        return (max(h, w),) * 2 if self.pad_to_square else (h, w)

    @property
    def parts(self) -> list[str]:
        """Every non-empty split: train, val, test and one ``indep:<condition>`` per held-out condition."""
        assert self.split is not None, "call setup() first"
        names = [TRAIN, VAL, TEST] + sorted(p for p in set(self.split) if p.startswith(INDEP))
        return [p for p in names if (self.split == p).any()]

    @property
    def independent_conditions(self) -> list[str]:
        """Names of the held-out (independent test) conditions present."""
        return [p.removeprefix(INDEP) for p in self.parts if p.startswith(INDEP)]

    def _dataset(self, part: str) -> CellCrops:
        rows = rows_of(self.split, part)
        labels = self.store.index["label"].map({c: i for i, c in enumerate(CLASSES)}).fillna(-1)
        augment, batched = None, None
        if part == TRAIN:
            augment = build_augmentation(self.augmentation_cfg, seed=self.seed)
            name = (self.augmentation_cfg or {}).get("name", "?")
            check_keeps_shape(augment, self.input_size, name)
            batched = batched_policy(augment)
            if augment is not None:
                how = "per batch (torch)" if batched else "per crop (albumentations)"
                log.info("augmentation=%s runs %s", name, how)
        dataset = CellCrops(
            self.store_path,
            rows,
            labels.to_numpy(dtype=np.int64)[rows],
            BatchTransform(self.store.white_level, self.normalizer, batched),
            self.input_size,
            None if batched else augment,
        )
        dataset.generator.manual_seed(self.seed)
        return dataset

    def _fit_normalizer(self) -> None:
        rows = rows_of(self.split, TRAIN)
        rng = np.random.default_rng(self.seed)
        sample = np.sort(rng.choice(rows, size=min(len(rows), DATASET_STATS_SAMPLE), replace=False))
        crops = to_unit_float(self.store.images[sample], self.store.white_level)
        self.normalizer.fit(np.stack([fit_to_size(c, *self.input_size) for c in crops]))

    def _save_split(self, index: pd.DataFrame) -> None:
        """Keep the split next to the data (``splits/<digest>.csv``), written atomically."""
        target = self.store_path / "splits" / f"{self.split_digest[:16]}.csv"
        if target.exists():
            return
        try:
            with atomic_write(target) as tmp:
                table = pd.DataFrame({"source": index["source"], "split": self.split})
                table.to_csv(tmp, index=False)
        except OSError as err:  # a read-only store still trains; the digest is what matters
            log.warning("could not save the split next to the store: %s", err)

    # ------------------------------------------------------------------------------- loaders
    def loader(
        self,
        part: str,
        shuffle: bool = False,
        augmented: bool = True,
        on_device: bool = False,
        workers: int | None = None,
        limit_batches: int | float = 1.0,
    ) -> DataLoader:
        """A DataLoader over one split (``train``, ``val``, ``test`` or ``indep:<condition>``).

        ``augmented=False`` gives the training crops as evaluation sees crops (no augmentation).
        ``on_device``: the batches come raw and :meth:`on_after_batch_transfer` finishes them.
        ``workers``: loader workers instead of ``num_workers`` (0: read in this process, as a
        one-pass evaluation does: a batch is one read, and starting workers costs seconds).
        ``limit_batches``: as Lightning's ``limit_test_batches`` (an int: that many batches, a
        float: that share of the crops), the crops kept spread evenly over the split.
        """
        workers = self.num_workers if workers is None else workers
        if part not in self.datasets:
            raise NscfateError(
                f"no split {part!r} in {self.store_path} (splits: {', '.join(self.datasets)})"
            )
        # an unaugmented pass (the OOD fit) is an evaluation: evaluation batches
        batch_size = self.batch_size if part == TRAIN and augmented else self.eval_batch_size
        if not isinstance(batch_size, int):
            raise NscfateError(
                f"data.batch_size={batch_size}: 'auto' is resolved from the training-set size when "
                "training starts; give a number to use the datamodule on its own"
            )
        dataset = self.datasets[part]
        if on_device or not augmented:
            dataset = copy.copy(dataset)
            dataset.on_device = on_device
        if not augmented:
            dataset.augment = None
            dataset.transform = self.eval_transform
        dataset = spread_subset(dataset, limit_batches, batch_size)
        return DataLoader(
            dataset,
            batch_size=batch_size,
            collate_fn=as_batch,
            shuffle=shuffle,
            drop_last=shuffle and self._per_rank(part) >= 2 * self.batch_size,
            num_workers=workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers and workers > 0,
            worker_init_fn=_seed_worker if workers else None,
            generator=torch.Generator().manual_seed(self.seed),
        )

    def _per_rank(self, part: str) -> int:
        """Crops each process sees; dropping a ragged last batch only pays off when there are many."""
        world = self.trainer.world_size if self.trainer is not None else 1
        return len(self.datasets[part]) // max(world, 1)

    def train_dataloader(self) -> DataLoader:
        return self.loader(TRAIN, shuffle=True, on_device=self.transform_on == "device")

    def val_dataloader(self) -> DataLoader:
        return self.loader(VAL, on_device=self.transform_on == "device")

    @property
    def eval_transform(self) -> BatchTransform:
        """The transform of crops that are not augmented (any split but a training batch)."""
        assert self.store is not None, "call setup() first"
        return BatchTransform(self.store.white_level, self.normalizer)

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        """Finish a raw batch (``transform_on=device``: N x H x W, not yet N x 1 x H x W) on the
        device that trains: augmentation for training batches, normalisation for all."""
        if batch["image"].ndim != 3:
            return batch  # finished in the loader workers
        training = self.trainer is not None and self.trainer.training
        transform = self.datasets[TRAIN].transform if training else self.eval_transform
        return batch | {"image": transform(batch["image"], self._generator_on(batch["image"]))}

    def _generator_on(self, like: torch.Tensor) -> torch.Generator:
        """The device's augmentation stream: seeded once, different on every DDP rank."""
        if self._device_generator is None or self._device_generator.device != like.device:
            rank = self.trainer.global_rank if self.trainer is not None else 0
            self._device_generator = torch.Generator(like.device).manual_seed(self.seed + rank)
        return self._device_generator
