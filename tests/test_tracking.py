"""A tracked run in a real SQLite MLflow store: what it logs, eval parity, the pyfunc model."""

from __future__ import annotations

import json
import subprocess
import sys

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient
from PIL import Image

from nscfate.data.schema import CLASSES
from nscfate.errors import NscfateError

from .conftest import compose_train


@pytest.fixture(scope="module")
def tracked(tracked_run):
    cfg, result, _ = tracked_run
    client = MlflowClient(cfg.tracking.uri)
    return cfg, result, client, client.get_run(result.run_id)


def _artifacts(client, run_id, path=""):
    out = []
    for a in client.list_artifacts(run_id, path):
        out += _artifacts(client, run_id, a.path) if a.is_dir else [a.path]
    return out


def test_run_records_params_metrics_and_artifacts(tracked):
    cfg, result, client, run = tracked
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert (
        len(params) >= 20
        and params["model.name"] == "small_cnn"
        and params["optimizer.lr"] == "0.002"
    )
    metrics = run.data.metrics
    need = [
        "train/loss",
        "val/loss",
        "val/acc",
        "val/f1_macro",
        "val/f1_macro_best",
        "test/acc",
        "test/f1_macro",
        "test/auroc",
        "test/ece",
        "test/ece_uncalibrated",
        "test/ece_floor",
        "test/ood_frac",
        "test/acc_day1",
        "test/acc_day7",
        "indep/frac_mae_raw",
        "indep/frac_mae",
        "indep/frac_max_err",
    ]
    assert not [k for k in need if k not in metrics]
    for c in ("NT3", "CNTF", "T3", "nanoparticle"):
        base = f"indep/{c}"
        assert {f"{base}/pred_frac_neuron", f"{base}/true_frac_neuron", f"{base}/ood_frac"} <= set(
            metrics
        )
        est, lo, hi = (metrics[f"{base}/est_frac_neuron{s}"] for s in ("", "_lo", "_hi"))
        assert 0 <= lo <= est <= hi <= 1
        assert sum(metrics[f"{base}/est_frac_{k}"] for k in CLASSES) == pytest.approx(1.0)
    maes = [
        abs(metrics[f"indep/{c}/est_frac_{k}"] - metrics[f"indep/{c}/true_frac_{k}"])
        for c in ("NT3", "CNTF", "T3", "nanoparticle")
        for k in CLASSES
    ]
    assert metrics["indep/frac_mae"] == pytest.approx(np.mean(maes))
    assert metrics["indep/frac_max_err"] == pytest.approx(max(maes))
    assert len(client.get_metric_history(run.info.run_id, "val/f1_macro")) == 3  # per epoch
    assert result.objective == pytest.approx(metrics["val/f1_macro_best"])
    arts = _artifacts(client, run.info.run_id)
    assert {
        "config.yaml",
        "plots/confusion_matrix.png",
        "plots/accuracy_by_day.png",
        "plots/fate_fractions.png",
        "plots/reliability.png",
        "predictions/cells.csv",
        "predictions/fate_fractions.csv",
    } <= set(arts)
    assert any(a.startswith("checkpoints/") and a.endswith(".ckpt") for a in arts)
    assert "mlflow.source.git.commit" in run.data.tags


def test_dataset_and_split_digests_are_inputs(tracked):
    cfg, result, client, run = tracked
    contexts = {
        t.value for i in run.inputs.dataset_inputs for t in i.tags if t.key == "mlflow.data.context"
    }
    assert contexts == {"dataset", "split"}
    tags = run.data.tags
    assert len(tags["nscfate.dataset_digest"]) == 64 and len(tags["nscfate.split_digest"]) == 64
    digests = {i.dataset.digest for i in run.inputs.dataset_inputs}
    assert {tags["nscfate.dataset_digest"][:16], tags["nscfate.split_digest"][:16]} == digests


def test_eval_cli_reproduces_test_metrics(tracked, tmp_path):
    cfg, result, client, run = tracked
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "nscfate.cli.evaluate",
            f"run_id={run.info.run_id}",
            f"tracking.uri={cfg.tracking.uri}",
            f"paths.data_dir={cfg.paths.data_dir}",
            f"hydra.run.dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout[proc.stdout.index("{") :])
    logged = run.data.metrics
    test_keys = [k for k in report["metrics"] if k.startswith(("test/", "indep/"))]
    assert len(test_keys) >= 10
    for k in test_keys:
        assert report["metrics"][k] == pytest.approx(logged[k], abs=1e-6), k
    assert report["max_abs_diff_vs_run"] <= 1e-6


def test_checkpoint_eval_and_wrong_architecture(tracked, tmp_path):
    from omegaconf import OmegaConf

    from nscfate.evaluation.checkpoint import evaluate_checkpoint
    from nscfate.tracking.fetch import run_checkpoint

    cfg, result, client, run = tracked
    ckpt = run_checkpoint(client, run.info.run_id, tmp_path)
    evaluation, run_cfg = evaluate_checkpoint(ckpt)
    for key in (
        "test/acc",
        "test/ece",
        "test/ood_frac",
        "indep/frac_mae",
        "indep/NT3/est_frac_neuron_hi",
    ):
        assert evaluation.metrics[key] == pytest.approx(run.data.metrics[key], abs=1e-6), key
    # the checkpoint carries the calibration/OOD/correction state; one without it gets it refit
    import torch

    from nscfate.estimation import ESTIMATION_KEY

    state = torch.load(ckpt, weights_only=True)
    assert state[ESTIMATION_KEY]["calibration"]["method"] == "bcts"
    del state[ESTIMATION_KEY]
    torch.save(state, tmp_path / "old.ckpt")
    refit, _ = evaluate_checkpoint(tmp_path / "old.ckpt")
    assert refit.metrics["indep/frac_mae"] == pytest.approx(evaluation.metrics["indep/frac_mae"])
    with pytest.raises(NscfateError, match="holds a 'small_cnn' network, not model='resnet18'"):
        evaluate_checkpoint(ckpt, model=OmegaConf.create({"name": "resnet18"}))
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(NscfateError, match="unreadable"):
        evaluate_checkpoint(tmp_path / "junk.ckpt")


def test_pyfunc_takes_raw_crops_of_any_size_and_depth(tracked, sample_pngs):
    cfg, result, client, run = tracked
    mlflow.set_tracking_uri(cfg.tracking.uri)
    model = mlflow.pyfunc.load_model(run.data.tags["nscfate.model_uri"])
    assert model.metadata.signature is not None
    real = np.stack([np.asarray(Image.open(p)) for p in sample_pngs])  # 6 x 45 x 30 uint8
    for crops in (real, real.astype(np.uint16) * 16, real.astype(np.float32) / 255):
        out = model.predict(crops.astype(np.float32))
        logits = [f"logit_{c}" for c in CLASSES]
        assert list(out.columns) == [*CLASSES, "fate", *logits, "ood_score", "ood"]
        assert len(out) == 6 and out["ood_score"].notna().all()
        assert np.allclose(out[list(CLASSES)].sum(axis=1), 1.0, atol=1e-5)
    # per-image normalisation makes the bit depth irrelevant
    a = model.predict(real.astype(np.float32))[list(CLASSES)].to_numpy()
    b = model.predict(real.astype(np.float32) / 255)[list(CLASSES)].to_numpy()
    assert np.allclose(a, b, atol=1e-5)


def test_pyfunc_matches_training_predictions(tracked):
    import pandas as pd

    from nscfate.data.store import open_store

    cfg, result, client, run = tracked
    mlflow.set_tracking_uri(cfg.tracking.uri)
    model = mlflow.pyfunc.load_model(run.data.tags["nscfate.model_uri"])
    cells = pd.read_csv(client.download_artifacts(run.info.run_id, "predictions/cells.csv"))
    store = open_store(run.data.tags["nscfate.dataset_path"])
    rows = cells["row"].to_numpy()[:40]
    crops = np.asarray(store.images[rows]).astype(np.float32)
    days = cells["day"].to_numpy(dtype=np.float64)[:40].tolist()
    out = model.predict(crops, params={"days": days})  # each crop through its day's calibration
    assert np.allclose(
        out[list(CLASSES)].to_numpy(), cells[[f"p_{c}" for c in CLASSES]].to_numpy()[:40], atol=1e-5
    )  # calibrated the same way
    with pytest.raises(Exception, match="expected one day per crop"):
        model.predict(crops, params={"days": days[:3]})
    # with a calibration per day (this tiny run's validation split is too small for one), the
    # days passed through MLflow's predict pick each crop's map
    from nscfate.estimation import EstimationSettings, fit_estimator
    from tests.test_estimation import simulate_days

    inner = model.unwrap_python_model()
    z, y, d = simulate_days(300, np.random.default_rng(0))
    inner.estimator = fit_estimator(EstimationSettings(n_boot=0), z, y, val_days=d)
    day1, pooled = model.predict(crops, params={"days": [1.0] * 40}), model.predict(crops)
    logits = out[[f"logit_{c}" for c in CLASSES]].to_numpy()
    expected = inner.estimator.probabilities(logits, np.ones(40))
    assert np.allclose(day1[list(CLASSES)].to_numpy(), expected, atol=1e-6)
    assert not np.allclose(day1[list(CLASSES)].to_numpy(), pooled[list(CLASSES)].to_numpy())
    assert np.allclose(out["ood_score"], cells["ood_score"].to_numpy()[:40], rtol=1e-4)
    assert (out["ood"].to_numpy() == cells["ood"].to_numpy()[:40]).all()


def test_unreachable_or_file_tracking_uri_fails_before_any_run(tmp_path, data_dir):
    from nscfate.tracking.run import tracked_train

    with pytest.raises(NscfateError, match="tracking.uri=http://127.0.0.1:9 is unreachable"):
        tracked_train(compose_train(tmp_path, data_dir, "tracking.uri=http://127.0.0.1:9"))
    with pytest.raises(NscfateError, match="file store is not supported"):
        tracked_train(compose_train(tmp_path, data_dir, f"tracking.uri=file://{tmp_path}/mlruns"))
    assert not (tmp_path / "mlruns").exists()


def test_dataset_input_survives_a_concurrent_insert(monkeypatch):
    """Two sweep workers logging one dataset collide on MLflow's unique key; the retry recovers."""
    from mlflow.exceptions import MlflowException

    from nscfate.tracking import record

    calls = []

    def flaky(dataset, context, tags):
        calls.append(context)
        if len(calls) == 1:
            raise MlflowException(
                "(sqlite3.IntegrityError) UNIQUE constraint failed: datasets.digest"
            )

    monkeypatch.setattr(record.mlflow, "log_input", flaky)
    record._log_input(object(), "dataset", {})
    assert calls == ["dataset", "dataset"]
    monkeypatch.setattr(
        record.mlflow,
        "log_input",
        lambda *a, **k: (_ for _ in ()).throw(MlflowException("boom")),
    )
    with pytest.raises(MlflowException, match="boom"):
        record._log_input(object(), "dataset", {})


def test_model_logging_is_warmed_off_the_critical_path():
    """The environment scan MLflow does when it logs a model (every installed distribution's file
    list) runs in a thread started with the run, so it overlaps training instead of following it."""
    from mlflow.utils import requirements_utils

    from nscfate.tracking.pyfunc import warm_model_logging

    requirements_utils._MODULES_TO_PACKAGES = None
    thread = warm_model_logging()
    assert thread is not None and thread.daemon
    thread.join(timeout=120)
    assert "torch" in requirements_utils._MODULES_TO_PACKAGES
