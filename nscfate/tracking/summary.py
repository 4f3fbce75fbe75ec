"""The end-of-run summary printed to the terminal: accuracy by day, fate fractions, where to look."""

from __future__ import annotations

from omegaconf import DictConfig
from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from nscfate.evaluation.evaluate import (
    FRAC_MAE,
    FRAC_MAE_RAW,
    FRAC_MAX_ERR,
    ORACLE_ACC,
    ORACLE_F1,
    ORACLE_FRAC_MAE,
    ORACLE_FRAC_MAX_ERR,
    TEST_ACC,
    TEST_AUROC,
    TEST_ECE,
    TEST_ECE_FLOOR,
    TEST_ECE_RAW,
    TEST_F1,
    TEST_OOD,
)
from nscfate.redact import redact


def ui_command(uri: str) -> str:
    """The command that opens the MLflow UI on ``uri``, bound to this machine only."""
    return f"mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000"


def print_summary(cfg: DictConfig, result) -> None:
    """Print what a tracked run measured and how to open it in the MLflow UI."""
    m = result.metrics
    console = Console(stderr=False, width=110)
    by_day = Table(title="Test accuracy by day of culture", title_justify="left")
    by_day.add_column("day", justify="right")
    by_day.add_column("model", justify="right")
    by_day.add_column("oracle (latents)", justify="right")
    for d, acc in sorted(result.accuracy_by_day.items()):
        oracle = result.oracle_by_day.get(d)
        by_day.add_row(f"{d:g}", f"{acc:.3f}", "-" if oracle is None else f"{oracle:.3f}")
    console.print(by_day)
    if len(result.fractions):
        console.print(fraction_table(result.fractions, "Fate fractions per independent condition"))
        if FRAC_MAE in m:
            console.print(
                f"fraction error over conditions x fates: counted {m[FRAC_MAE_RAW]:.3f}"
                f" | estimated {m[FRAC_MAE]:.3f} (worst {m[FRAC_MAX_ERR]:.3f})"
            )
    if ORACLE_F1 in m:
        console.print(
            f"latent oracle on the same test cells: acc {m[ORACLE_ACC]:.3f} | macro-F1 {m[ORACLE_F1]:.3f}"
            + (
                f" | fraction error {m[ORACLE_FRAC_MAE]:.3f} (worst {m[ORACLE_FRAC_MAX_ERR]:.3f})"
                if ORACLE_FRAC_MAE in m
                else ""
            )
        )
    nan = float("nan")
    console.print(
        f"test acc {m.get(TEST_ACC, nan):.3f} | test macro-F1 {m.get(TEST_F1, nan):.3f}"
        f" | AUROC {m.get(TEST_AUROC, nan):.3f} | ECE {m.get(TEST_ECE, nan):.3f}"
        f" (uncalibrated {m.get(TEST_ECE_RAW, nan):.3f}; perfect calibration would measure"
        f" {m.get(TEST_ECE_FLOOR, nan):.3f} on these cells)"
        f" | OOD-flagged {m.get(TEST_OOD, nan):.1%}"
        f" | objective {cfg.objective} = {result.objective:.4f}"
    )
    print_warnings(console, result.warnings)
    if result.run_id is None:
        console.print("Not tracked (tracking=none): nothing was logged to MLflow.")
        return
    uri = redact(cfg.tracking.uri)
    console.print(f"MLflow run {result.run_id} in experiment '{cfg.tracking.experiment}' ({uri})")
    console.print(f"Open the MLflow UI: {ui_command(uri)}  (or: make ui)")


def fraction_table(fractions, title: str) -> Table:
    """A fractions table (one row per group x fate) as a terminal table: per group and fate the
    estimate [95 % interval], the count, the truth where known, the OOD share."""
    keys = [k for k in ("condition", "day") if k in fractions]
    has_truth = "true_frac" in fractions and fractions["true_frac"].notna().any()
    table = Table(title=title, title_justify="left")
    for k in [*keys, "fate", "n", "estimated [95% CI]", "counted"]:
        table.add_column(k, justify="left" if k in ("condition", "fate") else "right")
    if has_truth:
        table.add_column("true", justify="right")
    table.add_column("OOD", justify="right")
    for row in fractions.to_dict("records"):
        group = [str(row["condition"])]
        if "day" in keys:
            group.append(f"{row['day']:g}" if row["day"] == row["day"] else "?")
        cells = [
            *group,
            row["fate"],
            str(row["n_cells"]),
            f"{row['est_frac']:.3f} [{row['ci_low']:.3f}, {row['ci_high']:.3f}]",
            f"{row['raw_frac']:.3f}",
        ]
        if has_truth:
            cells.append(f"{row['true_frac']:.3f}" if row["true_frac"] == row["true_frac"] else "")
        ood = row["ood_frac"]
        cells.append(f"{ood:.0%}" if ood == ood else "-")
        table.add_row(*cells)
    return table


def print_warnings(console: Console, warnings) -> None:
    """A run that learned nothing says so loudly: what happened, then what to try."""
    if not warnings:
        return
    lines = [f"[bold]{w.message}[/bold]" for w in warnings]
    lines += [f"What to try: {warnings[0].advice}.", "(MLflow tag nscfate.warnings)"]
    console.print(
        Panel("\n".join(lines), title="WARNING: this model learned nothing useful", style="red")
    )


def print_fractions(fractions) -> None:
    """Fate fractions per condition (and day) as ``nscfate-predict`` wrote them."""
    Console(width=110).print(fraction_table(fractions, "Fate fractions"))


def print_alarm(message: str) -> None:
    """A loud red panel (most of a plate, or of one of its cultures, is out of distribution)."""
    Console(width=110).print(Panel(message, title="WARNING: out of distribution", style="red"))


def print_promotion(name: str, candidate, decision) -> None:
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
