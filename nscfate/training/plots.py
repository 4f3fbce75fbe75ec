"""Figures people would rather look at than numbers: confusion matrix, accuracy by day, fate fractions."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from nscfate.data.schema import CLASSES  # noqa: E402


def confusion_figure(matrix: np.ndarray, title: str = "test confusion matrix") -> Figure:
    """Row-normalised confusion matrix with counts."""
    fig, ax = plt.subplots(figsize=(4.6, 4))
    share = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i, j in np.ndindex(matrix.shape):
        ax.text(
            j,
            i,
            f"{matrix[i, j]}\n{share[i, j]:.0%}",
            ha="center",
            va="center",
            color="white" if share[i, j] > 0.6 else "black",
            fontsize=9,
        )
    ax.set_xticks(range(len(CLASSES)), CLASSES, rotation=20)
    ax.set_yticks(range(len(CLASSES)), CLASSES)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def accuracy_by_day_figure(
    accuracy: dict[float, float], oracle: dict[float, float] | None = None
) -> Figure:
    """Test accuracy per culture day (and the latent oracle's, when known)."""
    fig, ax = plt.subplots(figsize=(4.6, 3.4))
    days = sorted(accuracy)
    ax.plot(days, [accuracy[d] for d in days], "o-", label="model")
    if oracle:
        od = sorted(oracle)
        ax.plot(od, [oracle[d] for d in od], "s--", color="grey", label="oracle (latents)")
    ax.axhline(1 / len(CLASSES), color="red", lw=0.8, ls=":", label="chance")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("day of culture")
    ax.set_ylabel("test accuracy")
    ax.set_title("accuracy by day")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def fate_fraction_figure(fractions: pd.DataFrame) -> Figure:
    """Predicted vs true fraction of each fate, one group of bars per independent condition."""
    conditions = list(fractions["condition"])
    fig, axes = plt.subplots(
        1, len(conditions), figsize=(2.6 * len(conditions) + 0.6, 3.2), squeeze=False, sharey=True
    )
    x = np.arange(len(CLASSES))
    for ax, row in zip(axes[0], fractions.to_dict("records"), strict=True):
        ax.bar(
            x - 0.2, [row[f"true_frac_{c}"] for c in CLASSES], 0.4, label="true", color="lightgrey"
        )
        ax.bar(
            x + 0.2,
            [row[f"pred_frac_{c}"] for c in CLASSES],
            0.4,
            label="predicted",
            color="tab:blue",
        )
        ax.set_xticks(x, [c[:5] for c in CLASSES])
        ax.set_title(f"{row['condition']} (n={row['n_cells']})", fontsize=9)
    axes[0, 0].set_ylabel("fraction of cells")
    axes[0, 0].set_ylim(0, 1)
    axes[0, -1].legend(fontsize=8)
    fig.suptitle("fate fractions by condition")
    fig.tight_layout()
    return fig


def close(fig: Figure) -> None:
    """Release a figure once it has been saved or logged."""
    plt.close(fig)
