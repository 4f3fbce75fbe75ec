"""``nscfate-report``: one self-contained HTML file from a run, a sweep's study or an MLflow
experiment, written atomically and logged as an artifact of the run (or the study's parent run)."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from mlflow import MlflowClient
from omegaconf import DictConfig

from nscfate.errors import NscfateError
from nscfate.files import atomic_write
from nscfate.report import comparison as cmp
from nscfate.report import html as h
from nscfate.report.run_sections import run_sections
from nscfate.report.sources import experiment_runs, get_run

#: Where the report goes in the run's artifacts.
ARTIFACT_DIR = "report"


@dataclass
class Report:
    """The rendered document and the MLflow run it belongs to (None: an experiment's report)."""

    html: str
    log_to: str | None


def check_settings(cfg: DictConfig) -> None:
    """Exactly one source, a sane bootstrap: else NscfateError naming the key."""
    given = [
        k
        for k, v in (
            ("run_id", cfg.run_id),
            ("search.study", cfg.search.study),
            ("report.experiment", cfg.report.experiment),
        )
        if v
    ]
    if len(given) != 1:
        raise NscfateError(
            "give exactly one of run_id=<run id>, search.study=<study> or "
            f"report.experiment=<experiment> (got {', '.join(given) or 'none'})"
        )
    if int(cfg.report.n_boot) < 10:
        raise NscfateError(f"report.n_boot={cfg.report.n_boot}: at least 10 bootstrap rounds")
    if not 0 < float(cfg.report.level) < 1:
        raise NscfateError(f"report.level={cfg.report.level}: a probability between 0 and 1")


def build(cfg: DictConfig, client: MlflowClient) -> Report:
    """Render the report the config asks for."""
    n_boot, level = int(cfg.report.n_boot), float(cfg.report.level)
    if cfg.run_id:
        run = get_run(client, cfg.run_id)
        title = f"nscfate report: run {run.name}"
        return Report(
            h.page(title, _subtitle(run.run_id), run_sections(run, n_boot, level)), run.run_id
        )
    if cfg.search.study:
        study = cmp.load_study(cfg.search.study, cfg.search.storage)
        parent = cmp.parent_run(client, study)
        best = get_run(client, cmp.best_trial_run(study))
        table = cmp.trial_table(client, study)
        settings = sorted(study.best_trial.params)
        sections = [
            cmp.comparison_section(table, settings, f"Study {study.study_name}: every trial"),
            *cmp.study_plots(parent),
            *run_sections(best, n_boot, level),
        ]
        title = f"nscfate report: study {study.study_name} (best trial: run {best.name})"
        return Report(
            h.page(title, _subtitle(best.run_id), sections),
            parent.run_id if parent else best.run_id,
        )
    runs = experiment_runs(client, cfg.report.experiment)
    settings = ["model.name", "augmentation.policy", "data.synthetic.cells_per_group"]
    best = get_run(client, runs[0].run_id)
    sections = [
        cmp.comparison_section(
            cmp.run_table(runs, settings),
            settings,
            f"Experiment {cfg.report.experiment}: every finished run",
        ),
        *run_sections(best, n_boot, level),
    ]
    title = f"nscfate report: experiment {cfg.report.experiment} (best run {best.name})"
    return Report(h.page(title, _subtitle(best.run_id), sections), None)


def write(report: Report, output: Path, client: MlflowClient, log: bool) -> str | None:
    """Write the HTML atomically; log it to its run unless ``log`` is false. Returns the run."""
    with atomic_write(output) as tmp:
        tmp.write_text(report.html, encoding="utf-8")
    if not (log and report.log_to):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / output.name
        copy.write_text(report.html, encoding="utf-8")
        client.log_artifact(report.log_to, str(copy), ARTIFACT_DIR)
    return report.log_to


def _subtitle(run_id: str) -> str:
    return (
        f"Rendered by nscfate-report from MLflow run {run_id}; figures are embedded, the "
        "file opens offline."
    )
