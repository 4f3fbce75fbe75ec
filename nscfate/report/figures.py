"""The report's own figures, from what a run logged: accuracy by day with bootstrap intervals over
cells (from ``predictions/cells.csv``) against the latent oracle (``oracle/acc_day{d}``)."""

from __future__ import annotations

import base64
import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from nscfate.data.splits import TEST  # noqa: E402
from nscfate.evaluation.evaluate import ORACLE_PREFIX, day_metric  # noqa: E402
from nscfate.evaluation.plots import accuracy_by_day_figure  # noqa: E402


def accuracy_intervals(
    cells: pd.DataFrame, n_boot: int = 1000, level: float = 0.95, seed: int = 0
) -> pd.DataFrame:
    """Test accuracy per day with a percentile bootstrap interval over the day's labelled test
    cells: columns ``day, n_cells, accuracy, ci_low, ci_high``."""
    test = cells[(cells["split"] == TEST) & (cells["label"] != "")]
    rng = np.random.default_rng(seed)
    rows = []
    for day, group in test.groupby("day"):
        hits = (group["predicted"] == group["label"]).to_numpy(float)
        boots = rng.choice(hits, size=(n_boot, len(hits)), replace=True).mean(axis=1)
        lo, hi = np.quantile(boots, [(1 - level) / 2, (1 + level) / 2])
        rows.append((float(day), len(hits), hits.mean(), lo, hi))
    return pd.DataFrame(rows, columns=["day", "n_cells", "accuracy", "ci_low", "ci_high"])


def oracle_by_day(metrics: dict[str, float], days: list[float]) -> dict[float, float]:
    """The latent oracle's logged accuracy per day (synthetic data only; empty otherwise)."""
    return {
        d: metrics[day_metric(ORACLE_PREFIX, d)]
        for d in days
        if day_metric(ORACLE_PREFIX, d) in metrics
    }


def accuracy_figure(table: pd.DataFrame, oracle: dict[float, float], level: float) -> Figure:
    """Accuracy per day with its interval, the oracle's, and chance (the run's own figure)."""
    by_day = table.set_index("day")
    columns = [by_day[c].to_dict() for c in ("accuracy", "ci_low", "ci_high")]
    with plt.rc_context({"font.size": 9}):
        return accuracy_by_day_figure(columns[0], oracle, (columns[1], columns[2]), level)


def png_bytes(fig: Figure) -> bytes:
    """The figure as PNG bytes; the figure is closed."""
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=100)
    finally:
        plt.close(fig)
    return buffer.getvalue()


def data_uri(png: bytes) -> str:
    """A PNG as a ``data:image/png;base64,...`` URI (the report embeds every image)."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")
