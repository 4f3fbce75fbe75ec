"""Training-loader throughput: the per-crop path nscfate had against the batch path it has now.

    python benchmarks/loader_throughput.py [--policies none,light,strong] [--workers 0,2]
        [--batch-size 128] [--crops 30000] [--repeats 3]
        [--out benchmarks/results/loader_throughput.json]

The data is the demo's (``experiment=cpu_baseline``: the built-in synthetic store with 300 cells per
group, 64 x 64 px, 8-bit), its training split shuffled, batches of ``--batch-size``. Three paths,
measured alternately (A, B, C, A, B, C, ...) in one invocation, each over ``--crops`` crops after
one warm-up batch:

- ``per_crop``: the loader as it was: one ``__getitem__`` per crop (read, to float, albumentations,
  numpy per-image normalisation, tensor and dict), then the default collate;
- ``batch_workers``: ``CellDataModule``'s loader now (``data.transform_on=workers``, the default):
  one read per batch, the policy's batched twin where it has one, normalisation in torch, in the
  workers;
- ``batch_device_on_cpu``: the ``transform_on=device`` loader (raw batches) plus the transform the
  GPU would run, here run by the main process on this CPU: an upper bound of the GPU path's cost;
- ``device_loader``: the same ``transform_on=device`` loader alone: the raw 8-bit batches a GPU
  receives (``trainer=gpu``), whose finishing there is a few kernel launches per batch.

Prints crops per second (median over repeats) per policy, worker count and path.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, Dataset

from nscfate.augment import build_augmentation, seed_policy
from nscfate.data.datamodule import CellDataModule
from nscfate.data.imageio import fit_to_size
from nscfate.data.normalize import to_unit_float
from nscfate.data.splits import TRAIN
from nscfate.data.store import IMAGES
from nscfate.paths import CONF_DIR, REPO_ROOT

CONF = CONF_DIR
#: The demo's data: experiment=cpu_baseline's generator settings.
DEMO_SYNTHETIC = OmegaConf.to_container(
    OmegaConf.load(REPO_ROOT / "experiments" / "cpu_baseline.yaml").data.synthetic
)


def per_image_as_it_was(x: np.ndarray) -> np.ndarray:
    """The per-crop numpy normalisation the loader used before the batch path (border median, 99th
    percentile of the absolute deviation): the reference the batch path must reproduce (1e-5)."""
    lead = x.shape[:-2]
    frame = np.concatenate(
        [
            x[..., :2, :].reshape(*lead, -1),
            x[..., -2:, :].reshape(*lead, -1),
            x[..., 2:-2, :2].reshape(*lead, -1),
            x[..., 2:-2, -2:].reshape(*lead, -1),
        ],
        axis=-1,
    )
    d = x - np.median(frame, axis=-1)[..., None, None]
    spread = np.quantile(np.abs(d).reshape(*lead, -1), 0.99, axis=-1)
    return (d / np.maximum(spread, 1e-3)[..., None, None]).astype(np.float32)


class PerCropDataset(Dataset):
    """The training dataset as it was: every step per crop, in Python."""

    def __init__(self, dm: CellDataModule, policy: Any) -> None:
        crops = dm.datasets[TRAIN]
        self.path, self.rows, self.labels = dm.store_path / IMAGES, crops.rows, crops.labels
        self.white, self.size, self.augment = dm.store.white_level, dm.input_size, policy
        self._images: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if self._images is None:
            self._images = np.load(self.path, mmap_mode="r")
        crop = to_unit_float(self._images[int(self.rows[i])], self.white)
        if crop.shape != self.size:
            crop = fit_to_size(crop, *self.size)
        if self.augment is not None:
            crop = self.augment(image=crop)["image"]
        crop = per_image_as_it_was(crop)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(crop, dtype=np.float32))[None],
            "label": torch.tensor(int(self.labels[i]), dtype=torch.long),
            "row": torch.tensor(int(self.rows[i]), dtype=torch.long),
        }


def _seed_old_worker(worker_id: int) -> None:
    info = torch.utils.data.get_worker_info()
    if info.dataset.augment is not None:
        seed_policy(info.dataset.augment, info.seed % 2**32)


def crops_per_second(loader: DataLoader, n_crops: int, finish: Any = None) -> float:
    """Crops per second over ``n_crops`` after one warm-up batch (worker start-up excluded)."""
    seen, started = 0, None
    while True:
        for batch in loader:
            image = finish(batch)["image"] if finish else batch["image"]
            finished = image.ndim == 4 and image.dtype == torch.float32
            # device_loader: raw crops (8-bit, or float after a per-crop policy), not yet finished
            assert finished or (finish is None and image.ndim == 3)
            if started is None:
                started = time.perf_counter()
                continue
            seen += len(image)
            if seen >= n_crops:
                return seen / (time.perf_counter() - started)


def handoff_ms(batch_size: int, size: tuple[int, int], repeats: int = 50) -> dict[str, float]:
    """Milliseconds per finished float batch: writing it into fresh private memory (what the
    main process does with ``workers=0``), and writing it then moving it to shared memory (what
    a loader worker does to hand it over: a new segment, page-faulted in, and a copy)."""
    source = torch.rand(batch_size, 1, *size)

    def private() -> torch.Tensor:
        return source - 0.5

    def shared() -> torch.Tensor:
        return (source - 0.5).share_memory_()

    out = {}
    for name, fn in (("private", private), ("shared", shared)):
        fn()
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        out[name] = round((time.perf_counter() - start) / repeats * 1e3, 3)
    return out


def build(policy: str, workers: int, batch_size: int, data_dir: Path) -> dict[str, Any]:
    """The three loaders of one (policy, workers) cell."""
    cfg = OmegaConf.to_container(OmegaConf.load(CONF / "augmentation" / f"{policy}.yaml"))
    common = dict(
        path=str(data_dir),
        synthetic=DEMO_SYNTHETIC,
        augmentation=cfg,
        batch_size=batch_size,
        num_workers=workers,
        persistent_workers=workers > 0,
    )
    now = CellDataModule(**common)
    now.prepare_data()
    now.setup("fit")
    device = CellDataModule(**common, transform_on="device")
    device.setup("fit")
    old = PerCropDataset(now, build_augmentation(cfg, seed=0))
    return {
        "per_crop": (
            DataLoader(
                old,
                batch_size=batch_size,
                shuffle=True,
                num_workers=workers,
                persistent_workers=workers > 0,
                worker_init_fn=_seed_old_worker if workers else None,
            ),
            None,
        ),
        "batch_workers": (now.loader(TRAIN, shuffle=True), None),
        "batch_device_on_cpu": (
            device.loader(TRAIN, shuffle=True, on_device=True),
            lambda b: _finish_as_training(device, b),
        ),
        "device_loader": (device.loader(TRAIN, shuffle=True, on_device=True), None),
    }


def _finish_as_training(dm: CellDataModule, batch: dict) -> dict:
    transform = dm.datasets[TRAIN].transform
    return batch | {"image": transform(batch["image"], dm._generator_on(batch["image"]))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--policies", default="none,light,strong")
    ap.add_argument("--workers", default="0,2")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--crops", type=int, default=30000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--data-dir", type=Path, default=REPO_ROOT / "data")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/loader_throughput.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)  # as in a loader worker; the main process of a CPU run shares 2 cores
    results = []
    for policy in args.policies.split(","):
        for workers in (int(w) for w in args.workers.split(",")):
            loaders = build(policy, workers, args.batch_size, args.data_dir)
            rates: dict[str, list[float]] = {name: [] for name in loaders}
            for _ in range(args.repeats):
                for name, (loader, finish) in loaders.items():
                    rates[name].append(crops_per_second(loader, args.crops, finish))
            row = {"policy": policy, "workers": workers, "batch_size": args.batch_size}
            row |= {name: round(statistics.median(r)) for name, r in rates.items()}
            row["runs"] = {name: [round(v) for v in r] for name, r in rates.items()}
            row["speedup"] = round(row["batch_workers"] / row["per_crop"], 2)
            row["handoff_ms_per_batch"] = handoff_ms(args.batch_size, (64, 64))
            print(
                f"{policy:>6} workers={workers}: per_crop {row['per_crop']:>6} | batch_workers "
                f"{row['batch_workers']:>6} | batch_device_on_cpu {row['batch_device_on_cpu']:>6}"
                f" | device_loader {row['device_loader']:>6} crops/s (x{row['speedup']}); a float"
                f" batch costs {row['handoff_ms_per_batch']['shared']} ms to hand to another "
                f"process, {row['handoff_ms_per_batch']['private']} ms to keep",
                flush=True,
            )
            results.append(row)
            del loaders
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"command": "benchmarks/loader_throughput.py", "results": results}, indent=2)
        + "\n"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
