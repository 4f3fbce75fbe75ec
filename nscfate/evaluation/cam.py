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


#: Opacity of the activation map over the crop.
HEAT_ALPHA = 0.35
#: White pixels between gallery tiles (and above each, for its title), in crop pixels.
GAP, TITLE_ROOM = 6, 14


def overlay(image: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """The crop (stretched over its 1-99 % range, grey) under its map (jet, ``HEAT_ALPHA``) as
    one RGB array in [0, 1]: what two stacked ``imshow`` calls draw, blended once in numpy."""
    lo, hi = np.percentile(image, [1, 99])
    grey = np.clip((image - lo) / max(hi - lo, 1e-6), 0, 1)[..., None]
    jet = matplotlib.colormaps["jet"](np.clip(heat, 0, 1))[..., :3]
    return (1 - HEAT_ALPHA) * grey + HEAT_ALPHA * jet


def _show(ax: plt.Axes, image: np.ndarray, heat: np.ndarray, title: str, color: str) -> None:
    ax.imshow(overlay(image, heat))
    ax.set_title(title, fontsize=7, color=color)
    ax.axis("off")


def gallery_figure(images: np.ndarray, maps: np.ndarray, cells: pd.DataFrame) -> Figure:
    """One row per true fate, crops ordered by day; each tile the crop under its Grad-CAM, titled
    with its day and the predicted fate (red when wrong).

    The tiles are composited into one image drawn on one axes: a grid of subplots with two images
    each took 0.5 s to draw and save for 24 crops, on the critical path of every run.
    """
    rows = [f for f in CLASSES if (cells["label"] == f).any()]
    per_row = max(int((cells["label"] == f).sum()) for f in rows)
    h, w = images.shape[1:]
    step_y, step_x = h + GAP + TITLE_ROOM, w + GAP
    sheet = np.ones((len(rows) * step_y, per_row * step_x, 3))
    fig = plt.figure(figsize=(max(1.3 * per_row, 4.0) + 0.3, 1.55 * len(rows) + 0.3))
    ax = fig.add_axes((0.05, 0.0, 0.95, 1 - 0.5 / fig.get_figheight()))
    for r, fate in enumerate(rows):
        where = np.flatnonzero((cells["label"] == fate).to_numpy())
        for c, i in enumerate(where):
            cell = cells.iloc[i]
            top, left = r * step_y + TITLE_ROOM, c * step_x
            sheet[top : top + h, left : left + w] = overlay(images[i], maps[i])
            ok = cell["predicted"] == cell["label"]
            ax.text(
                left + w / 2,
                top - 2,
                f"d{cell['day']:g} -> {cell['predicted'][:5]}",
                ha="center",
                va="bottom",
                fontsize=7,
                color="black" if ok else "red",
            )
        ax.text(
            -4,
            r * step_y + TITLE_ROOM + h / 2,
            fate,
            rotation=90,
            va="center",
            ha="right",
            fontsize=8,
        )
    ax.imshow(sheet, interpolation="nearest")
    ax.axis("off")
    fig.suptitle("Grad-CAM of the fate given\n(rows: true fate; red: wrong)", fontsize=8)
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
