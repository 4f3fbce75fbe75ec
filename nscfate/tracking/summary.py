"""The end-of-run summary printed to the terminal: accuracy by day, fate fractions, where to look."""

from __future__ import annotations

import re

from omegaconf import DictConfig
from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from nscfate.data.schema import CLASSES
from nscfate.redact import redact


def ui_command(uri: str) -> str:
    """The command that opens the MLflow UI on ``uri``, bound to this machine only."""
    return f"mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000"


def print_summary(cfg: DictConfig, result) -> None:
    """Print what a tracked run measured and how to open it in the MLflow UI."""
    m = result.metrics
    console = Console(stderr=False, width=110)
    days = sorted(
        {float(k.removeprefix("test/acc_day")) for k in m if k.startswith("test/acc_day")}
    )
    by_day = Table(title="Test accuracy by day of culture", title_justify="left")
    by_day.add_column("day", justify="right")
    by_day.add_column("model", justify="right")
    by_day.add_column("oracle (latents)", justify="right")
    for d in days:
        oracle = m.get(f"oracle/acc_day{d:g}")
        by_day.add_row(
            f"{d:g}", f"{m[f'test/acc_day{d:g}']:.3f}", "-" if oracle is None else f"{oracle:.3f}"
        )
    console.print(by_day)
    conditions = sorted({k.split("/")[1] for k in m if re.match(r"^indep/[^/]+/pred_frac_", k)})
    if conditions:
        fr = Table(
            title="Fate fractions per independent condition: predicted (true)", title_justify="left"
        )
        fr.add_column("condition")
        for c in CLASSES:
            fr.add_column(c, justify="right")
        for cond in conditions:
            cells = []
            for c in CLASSES:
                true = m.get(f"indep/{cond}/true_frac_{c}")
                cells.append(
                    f"{m[f'indep/{cond}/pred_frac_{c}']:.2f}"
                    + ("" if true is None else f" ({true:.2f})")
                )
            fr.add_row(cond, *cells)
        console.print(fr)
    if "oracle/f1_macro" in m:
        console.print(
            f"latent oracle on the same test cells: acc {m['oracle/acc']:.3f} | macro-F1 {m['oracle/f1_macro']:.3f}"
        )
    console.print(
        f"test acc {m.get('test/acc', float('nan')):.3f} | test macro-F1 {m.get('test/f1_macro', float('nan')):.3f}"
        f" | AUROC {m.get('test/auroc', float('nan')):.3f} | ECE {m.get('test/ece', float('nan')):.3f}"
        f" | objective {cfg.objective} = {result.objective:.4f}"
    )
    print_warnings(console, result.warnings)
    uri = redact(cfg.tracking.uri)
    console.print(f"MLflow run {result.run_id} in experiment '{cfg.tracking.experiment}' ({uri})")
    console.print(f"Open the MLflow UI: {ui_command(uri)}  (or: make ui)")


def print_warnings(console: Console, warnings) -> None:  # noqa: ANN001
    """A run that learned nothing says so loudly: what happened, then what to try."""
    if not warnings:
        return
    lines = [f"[bold]{w.message}[/bold]" for w in warnings]
    lines += [f"What to try: {warnings[0].advice}.", "(MLflow tag nscfate.warnings)"]
    console.print(
        Panel("\n".join(lines), title="WARNING: this model learned nothing useful", style="red")
    )


def print_fractions(fractions) -> None:  # noqa: ANN001
    """Predicted fate fraction per condition (and day)."""
    console = Console(width=110)
    table = Table(title="Predicted fate fractions", title_justify="left")
    keys = [k for k in ("condition", "day") if k in fractions]
    for k in [*keys, "n_cells"]:
        table.add_column(k, justify="right" if k != "condition" else "left")
    for c in CLASSES:
        table.add_column(c, justify="right")
    for row in fractions.to_dict("records"):
        cells = [str(row["condition"])] + (
            [f"{row['day']:g}" if row["day"] == row["day"] else "?"] if "day" in keys else []
        )
        table.add_row(
            *cells, str(row["n_cells"]), *(f"{row[f'pred_frac_{c}']:.2f}" for c in CLASSES)
        )
    console.print(table)


def print_promotion(name: str, candidate, decision) -> None:  # noqa: ANN001
    """Side-by-side test metrics of the candidate and the champion, and the decision."""
    console = Console(width=110)
    before = decision.champion_before
    mine = f"candidate (run {candidate.run_id[:8]})"
    theirs = f"champion v{before.version}" if before else "champion"
    table = Table(
        title=f"{name}: {mine} vs {theirs if before else 'no champion'}", title_justify="left"
    )
    table.add_column("metric (same test split)")
    table.add_column(mine, justify="right")
    table.add_column(theirs, justify="right")
    for key, value in decision.challenger_metrics.items():
        other = decision.champion_metrics.get(key)
        mark = f" * ({'lower' if decision.direction == 'minimize' else 'higher'} wins)"
        table.add_row(
            key + (mark if key == decision.metric else ""),
            f"{value:.4f}",
            "-" if other is None else f"{other:.4f}",
        )
    console.print(table)
    origin = (
        candidate.origin
        if candidate.run_id in candidate.origin
        else f"{candidate.origin} (run {candidate.run_id})"
    )
    console.print(f"candidate: {origin}")
    if decision.promoted:
        version = decision.challenger.version
        console.print(
            f"PROMOTED: {name} v{version} is champion (and challenger) ({decision.reason})"
        )
    else:
        console.print(f"NOT promoted, nothing registered ({decision.reason})")
