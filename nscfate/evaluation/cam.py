"""Class activation maps (Grad-CAM, pytorch-grad-cam): where in a crop the network found the
evidence for the fate it predicts. A gallery of a few test cells per true fate x day for a run,
and one overlay per crop for ``nscfate-predict ... cam=true``."""

from __future__ import annotations

import copy
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from torch import nn  # noqa: E402

from nscfate.data.datamodule import CellCrops  # noqa: E402
from nscfate.data.schema import CLASSES  # noqa: E402
from nscfate.data.splits import TEST  # noqa: E402
from nscfate.errors import NscfateError  # noqa: E402
from nscfate.files import atomic_write  # noqa: E402


def cam_layer(net: nn.Module) -> nn.Module:
    """The network's last convolution: the layer Grad-CAM weighs (any nscfate or timm model)."""
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise NscfateError(f"{type(net).__name__} has no convolution: no activation map")
    return convs[-1]


def activation_maps(
    net: nn.Module, x: torch.Tensor, targets: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM for every crop of ``x`` (N x 1 x H x W, normalised) of the class in ``targets``
    (default: the network's prediction): maps N x H x W in [0, 1] and the classes explained.
    ``net`` itself is left untouched."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    net = copy.deepcopy(net).float().cpu().eval()
    x = x.float().cpu().contiguous()
    if targets is None:
        with torch.no_grad():
            targets = net(x).argmax(1).numpy()
    with GradCAM(model=net, target_layers=[cam_layer(net)]) as cam:
        maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(c)) for c in targets])
    return np.asarray(maps, dtype=np.float32), np.asarray(targets)


def sample_test_cells(cells: pd.DataFrame, per_group: int, seed: int = 0) -> pd.DataFrame:
    """Up to ``per_group`` labelled test cells per true fate x day, sorted by fate then day."""
    test = cells[(cells["split"] == TEST) & (cells["label"] != "")]
    groups = [
        g.sample(min(per_group, len(g)), random_state=seed)
        for _, g in test.groupby(["label", "day"])
    ]
    picked = pd.concat(groups) if groups else test
    order = picked["label"].map(CLASSES.index)
    return picked.assign(_o=order).sort_values(["_o", "day"]).drop(columns="_o")


def store_crops(datamodule: object, rows: np.ndarray) -> torch.Tensor:
    """The crops of store ``rows`` as the network sees them in evaluation (N x 1 x H x W)."""
    crops = CellCrops(
        datamodule.store.path,
        np.asarray(rows, dtype=np.int64),
        np.zeros(len(rows), dtype=np.int64),
        datamodule.eval_transform,
        datamodule.input_size,
    )
    return crops.__getitems__(list(range(len(rows))))["image"]


def _show(ax: plt.Axes, image: np.ndarray, heat: np.ndarray, title: str, color: str) -> None:
    lo, hi = np.percentile(image, [1, 99])
    ax.imshow(np.clip((image - lo) / max(hi - lo, 1e-6), 0, 1), cmap="gray")
    ax.imshow(heat, cmap="jet", alpha=0.35, vmin=0, vmax=1)
    ax.set_title(title, fontsize=7, color=color)
    ax.axis("off")


def gallery_figure(images: np.ndarray, maps: np.ndarray, cells: pd.DataFrame) -> Figure:
    """One row per true fate, crops ordered by day; each tile the crop under its Grad-CAM, titled
    with its day and the predicted fate (red when wrong)."""
    rows = [f for f in CLASSES if (cells["label"] == f).any()]
    per_row = max(int((cells["label"] == f).sum()) for f in rows)
    fig, axes = plt.subplots(
        len(rows), per_row, figsize=(max(1.3 * per_row, 4.0), 1.55 * len(rows) + 0.3), squeeze=False
    )
    for ax in axes.flat:
        ax.axis("off")
    for r, fate in enumerate(rows):
        where = np.flatnonzero((cells["label"] == fate).to_numpy())
        for c, i in enumerate(where):
            cell = cells.iloc[i]
            ok = cell["predicted"] == cell["label"]
            title = f"d{cell['day']:g} -> {cell['predicted'][:5]}"
            _show(axes[r, c], images[i], maps[i], title, "black" if ok else "red")
        axes[r, 0].text(
            -0.15,
            0.5,
            fate,
            rotation=90,
            va="center",
            ha="right",
            transform=axes[r, 0].transAxes,
            fontsize=8,
        )
    fig.suptitle("Grad-CAM of the fate given\n(rows: true fate; red: wrong)", fontsize=8)
    fig.tight_layout()
    return fig


def save_overlays(
    images: np.ndarray, maps: np.ndarray, names: list[str], titles: list[str], out_dir: Path
) -> list[Path]:
    """One PNG per crop (the crop under its map) in ``out_dir``, each written atomically."""
    written = []
    for image, heat, name, title in zip(images, maps, names, titles, strict=True):
        fig, ax = plt.subplots(figsize=(2.2, 2.4))
        _show(ax, image, heat, title, "black")
        fig.tight_layout()
        with atomic_write(out_dir / f"{name}.png") as tmp:
            fig.savefig(tmp, dpi=100)
        plt.close(fig)
        written.append(out_dir / f"{name}.png")
    return written


def cam_gallery(
    net: nn.Module, datamodule: object, cells: pd.DataFrame, per_group: int, seed: int = 0
) -> Figure | None:
    """The run's gallery: ``per_group`` test cells per true fate x day under the Grad-CAM of the
    fate they were given (None when there is no labelled test cell)."""
    picked = sample_test_cells(cells, per_group, seed)
    if not len(picked):
        return None
    x = store_crops(datamodule, picked["row"].to_numpy())
    maps, _ = activation_maps(net, x, picked["predicted"].map(CLASSES.index).to_numpy())
    return gallery_figure(x[:, 0].numpy(), maps, picked)
