"""Figures people would rather look at than numbers: confusion matrix, accuracy by day, reliability,
fate fractions."""

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
    accuracy: dict[float, float],
    oracle: dict[float, float] | None = None,
    interval: tuple[dict[float, float], dict[float, float]] | None = None,
    level: float = 0.95,
) -> Figure:
    """Test accuracy per culture day (and the latent oracle's, when known); ``interval`` (low and
    high per day) draws the model's ``level`` interval as error bars."""
    fig, ax = plt.subplots(figsize=(4.6, 3.4))
    days = sorted(accuracy)
    acc = np.array([accuracy[d] for d in days])
    if interval is None:
        ax.plot(days, acc, "o-", label="model")
    else:
        low, high = (np.array([bound[d] for d in days]) for bound in interval)
        err = [acc - low, high - acc]
        ax.errorbar(days, acc, yerr=err, fmt="o-", capsize=4, label=f"model ({level:.0%} interval)")
    if oracle:
        od = sorted(oracle)
        ax.plot(od, [oracle[d] for d in od], "s--", color="grey", label="oracle (latents)")
    ax.axhline(1 / len(CLASSES), color="red", lw=0.8, ls=":", label="chance")
    ax.set_ylim(0, 1.02)
    ax.set_xticks(days)
    ax.set_xlabel("day of culture")
    ax.set_ylabel("test accuracy")
    ax.set_title("accuracy by day")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def fate_fraction_figure(fractions: pd.DataFrame) -> Figure:
    """Per independent condition: counted and corrected fraction of each fate (with its 95 %
    interval), next to the true fraction where it is known."""
    conditions = list(dict.fromkeys(fractions["condition"]))
    fig, axes = plt.subplots(
        1, len(conditions), figsize=(2.8 * len(conditions) + 0.6, 3.4), squeeze=False, sharey=True
    )
    x = np.arange(len(CLASSES))
    for ax, cond in zip(axes[0], conditions, strict=True):
        rows = fractions[fractions["condition"] == cond].set_index("fate").loc[list(CLASSES)]
        if rows["true_frac"].notna().all():
            ax.bar(x - 0.27, rows["true_frac"], 0.27, label="true", color="lightgrey")
        ax.bar(x, rows["raw_frac"], 0.27, label="counted", color="tab:orange", alpha=0.7)
        ax.bar(
            x + 0.27,
            rows["est_frac"],
            0.27,
            yerr=[rows["est_frac"] - rows["ci_low"], rows["ci_high"] - rows["est_frac"]],
            capsize=2,
            label="estimated (95 % CI)",
            color="tab:blue",
        )
        ax.set_xticks(x, [c[:5] for c in CLASSES])
        ood = rows["ood_frac"].iloc[0]
        extra = f", OOD {ood:.0%}" if np.isfinite(ood) else ""
        ax.set_title(f"{cond} (n={rows['n_cells'].iloc[0]}{extra})", fontsize=9)
    axes[0, 0].set_ylabel("fraction of cells")
    axes[0, 0].set_ylim(0, 1)
    axes[0, -1].legend(fontsize=7)
    fig.suptitle("fate fractions by condition")
    fig.tight_layout()
    return fig


def reliability_figure(cells: pd.DataFrame, n_bins: int = 15) -> Figure:
    """Reliability diagram of the labelled cells: accuracy against confidence, before and after
    calibration (a calibrated model follows the diagonal)."""
    from nscfate.evaluation.evaluate import LOGIT_COLUMNS, PROB_COLUMNS

    cells = cells[cells["label"] != ""]
    target = cells["label"].map(CLASSES.index).to_numpy()
    logits = cells[LOGIT_COLUMNS].to_numpy()
    raw = np.exp(logits - logits.max(axis=1, keepdims=True))
    raw /= raw.sum(axis=1, keepdims=True)
    fig, ax = plt.subplots(figsize=(4.2, 4))
    edges = np.linspace(0, 1, n_bins + 1)
    for probs, name, style in (
        (raw, "uncalibrated", "s--"),
        (cells[PROB_COLUMNS].to_numpy(), "calibrated", "o-"),
    ):
        conf, hit = probs.max(axis=1), probs.argmax(axis=1) == target
        bins = np.clip(np.digitize(conf, edges) - 1, 0, n_bins - 1)
        used = [b for b in range(n_bins) if (bins == b).any()]
        ax.plot(
            [conf[bins == b].mean() for b in used],
            [hit[bins == b].mean() for b in used],
            style,
            label=name,
            ms=4,
        )
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
    ax.set_xlabel("confidence (top probability)")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0.3, 1)
    ax.set_ylim(0.3, 1)
    ax.set_title("test reliability")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def close(fig: Figure) -> None:
    """Release a figure once it has been saved or logged."""
    plt.close(fig)
