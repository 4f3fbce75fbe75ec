"""train(cfg): fast_dev_run for every model, the objective, DDP on two CPU processes, bad input."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
from lightning.pytorch.callbacks import Callback
from mlflow import MlflowClient

from nscfate.errors import NscfateError
from nscfate.training.train import train

from .conftest import CONF, compose_train

MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml") if p.stem != "timm")


@pytest.mark.parametrize("model", MODELS)
def test_fast_dev_run_every_model(tmp_path, data_dir, model):
    cfg = compose_train(
        tmp_path,
        data_dir,
        f"model={model}",
        "debug=fdr",
        "data.batch_size=4",
        "data.eval_batch_size=64",
    )
    metrics, objects = train(cfg)
    assert objects["trainer"].fast_dev_run
    assert 0.0 <= metrics["test/acc"] <= 1.0 and math.isfinite(metrics["train/loss"])
    assert {"test/f1_macro", "test/auroc", "test/ece", "test/acc_day1"} <= set(metrics)


def test_fast_dev_run_evaluates_one_batch_of_each_split_spread_over_it(tmp_path, data_dir):
    """A quick check stays quick with a large model: fast_dev_run's one test batch (Lightning's
    limit_test_batches) holds for nscfate's own evaluation too, cells spread over every day."""
    cfg = compose_train(tmp_path, data_dir, "debug=fdr", "data.eval_batch_size=16")
    metrics, objects = train(cfg)
    cells = objects["evaluation"].cells
    test, indep = cells[cells["split"] == "test"], cells[cells["split"] != "test"]
    assert len(objects["datamodule"].datasets["test"]) > 16 and len(test) == 16
    assert sorted(test["day"].unique()) == [1, 3, 5, 7]
    assert indep.groupby("condition").size().tolist() == [16] * 4
    assert {"test/acc_day1", "test/acc_day7", "indep/frac_mae"} <= set(metrics)


def test_train_learns_and_reports_every_metric(tmp_path, data_dir):
    cfg = compose_train(
        tmp_path, data_dir, "trainer.max_epochs=6", "data.synthetic.cells_per_group=40"
    )
    metrics, objects = train(cfg)
    assert metrics["val/f1_macro_best"] >= metrics["val/f1_macro"] - 1e-9
    assert metrics["test/acc"] > 0.5  # chance is 1/3; the synthetic data is learnable
    days = {k for k in metrics if k.startswith("test/acc_day")}
    assert days == {"test/acc_day1", "test/acc_day3", "test/acc_day5", "test/acc_day7"}
    for cond in ("NT3", "CNTF", "T3", "nanoparticle"):
        pred = [
            metrics[f"indep/{cond}/pred_frac_{c}"]
            for c in ("astrocyte", "oligodendrocyte", "neuron")
        ]
        assert sum(pred) == pytest.approx(1.0)
        assert metrics[f"indep/{cond}/true_frac_neuron"] >= 0
    assert objects["best_checkpoint"].endswith(".ckpt")


def test_objective_must_be_a_logged_metric(tmp_path, data_dir):
    cfg = compose_train(tmp_path, data_dir, "objective=val/f1")
    with pytest.raises(NscfateError, match="objective='val/f1' is not a metric nscfate logs"):
        train(cfg)
    for ok in ("val/acc", "test/acc_day1", "indep/NT3/pred_frac_neuron"):
        from nscfate.training.train import check_objective

        check_objective(ok)


def test_unknown_model_and_missing_store_fail_before_training(tmp_path, data_dir):
    with pytest.raises(NscfateError, match="did you mean resnet18"):
        train(compose_train(tmp_path, data_dir, "model=timm", "model.name=resnt18"))
    with pytest.raises(NscfateError, match="dataset store .*nope does not exist"):
        train(compose_train(tmp_path, data_dir, "data=folder", f"data.path={tmp_path}/nope"))
    for bad, message in (
        ("quantify.method=magic", "quantify.method='magic': expected one of cc, pcc"),
        ("calibration.method=platt", "calibration.method='platt': expected one of none, ts"),
        ("ood.false_alarm_rate=5", "ood.false_alarm_rate=5.0: expected a number in"),
    ):
        with pytest.raises(NscfateError, match=message):
            train(compose_train(tmp_path, data_dir, bad))


class _Explode(Callback):
    def on_train_epoch_end(self, trainer, pl_module):
        raise RuntimeError("disk on fire")


def test_failing_run_ends_failed_in_mlflow(tmp_path, data_dir):
    from nscfate.tracking.run import tracked_train

    cfg = compose_train(tmp_path, data_dir)
    with pytest.raises(RuntimeError, match="disk on fire"):
        tracked_train(cfg, callbacks=[_Explode()])
    client = MlflowClient(cfg.tracking.uri)
    runs = client.search_runs([client.get_experiment_by_name("test").experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_ddp_two_cpu_processes_log_once(tmp_path, data_dir):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cmd = [
        sys.executable,
        "-m",
        "nscfate.cli.train",
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.precision=32-true",
        "trainer.max_epochs=2",
        f"tracking.uri={uri}",
        "tracking.experiment=ddp",
        f"paths.data_dir={data_dir}",
        "data.synthetic.cells_per_group=12",
        "data.synthetic.batches_per_group=4",
        "data.num_workers=0",
        "data.persistent_workers=false",
        "data.batch_size=16",
        f"hydra.run.dir={tmp_path}/run",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in proc.stdout + proc.stderr
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("ddp").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"  # rank 1 trained but never logged
    assert runs[0].data.params["trainer.devices"] == "2" and "test/acc" in runs[0].data.metrics


AUGMENTATIONS = sorted(p.stem for p in (CONF / "augmentation").glob("*.yaml"))


@pytest.mark.parametrize("shape", ["45x30", "57x60"])
@pytest.mark.parametrize("policy", AUGMENTATIONS)
def test_every_policy_trains_on_non_square_crops(
    tmp_path, data_dir, nonsquare_stores, shape, policy
):
    cfg = compose_train(
        tmp_path,
        data_dir,
        "data=folder",
        f"data.path={nonsquare_stores[shape]}",
        f"augmentation={policy}",
        "data.batch_size=16",
        "trainer.max_epochs=1",
    )
    metrics, objects = train(cfg)
    assert math.isfinite(metrics["train/loss"]) and 0.0 <= metrics["test/acc"] <= 1.0
    if policy == "light":  # re-evaluating the checkpoint sees the crops as training did
        from nscfate.evaluation.checkpoint import evaluate_checkpoint

        again, _ = evaluate_checkpoint(objects["best_checkpoint"])
        assert again.metrics["test/f1_macro"] == pytest.approx(metrics["test/f1_macro"], abs=1e-6)


@pytest.mark.parametrize("pad", [True, False])
def test_nscnet_trains_at_the_papers_45x30(tmp_path, data_dir, nonsquare_stores, pad):
    cfg = compose_train(
        tmp_path,
        data_dir,
        "data=folder",
        f"data.path={nonsquare_stores['45x30']}",
        "model=nscnet",
        "debug=fdr",
        f"data.pad_to_square={pad}",
        f"augmentation={'light' if pad else 'none'}",
        "data.batch_size=8",
    )
    metrics, objects = train(cfg)
    assert objects["datamodule"].input_size == ((45, 45) if pad else (45, 30))
    batch = next(iter(objects["datamodule"].train_dataloader()))
    assert tuple(batch["image"].shape[-2:]) == objects["datamodule"].input_size
    assert math.isfinite(metrics["train/loss"])


def test_a_rotating_policy_on_unpadded_non_square_crops_is_refused(
    tmp_path, data_dir, nonsquare_stores
):
    cfg = compose_train(
        tmp_path,
        data_dir,
        "data=folder",
        f"data.path={nonsquare_stores['57x60']}",
        "data.pad_to_square=false",
        "augmentation=light",
    )
    with pytest.raises(NscfateError, match="RandomRotate90 turns a 57x60 crop into 60x57"):
        train(cfg)


DEBUG_PRESETS = sorted(p.stem for p in (CONF / "debug").glob("*.yaml"))


@pytest.mark.parametrize("data", [pytest.param("default", marks=pytest.mark.slow), "small"])
@pytest.mark.parametrize("preset", DEBUG_PRESETS)
def test_every_debug_preset_runs(tmp_path, data_dir, nonsquare_stores, preset, data):
    from nscfate.tracking.run import tracked_train

    store = [] if data == "default" else ["data=folder", f"data.path={nonsquare_stores['57x60']}"]
    cfg = compose_train(tmp_path, data_dir, f"debug={preset}", *store, fast=False)
    result = tracked_train(cfg)
    assert math.isfinite(result.metrics["train/loss"]) and "test/f1_macro" in result.metrics
    assert result.run_id is None and not (tmp_path / "mlflow.db").exists()  # tracking=none
    if preset == "overfit":  # three batches are memorised: the model and loop can learn
        assert result.metrics["train/acc"] >= 0.9


def test_tracking_none_trains_evaluates_and_logs_nothing(tmp_path, data_dir, capsys):
    from nscfate.tracking.run import tracked_train
    from nscfate.tracking.summary import print_summary

    cfg = compose_train(tmp_path, data_dir, "tracking=none")
    result = tracked_train(cfg)
    assert result.run_id is None and not (tmp_path / "mlflow.db").exists()
    assert result.objective == result.metrics["val/f1_macro_best"]
    assert {"test/f1_macro", "oracle/f1_macro", "indep/frac_mae"} <= set(result.metrics)
    assert 0 <= result.metrics["oracle/frac_mae"] <= result.metrics["oracle/frac_max_err"] < 1
    print_summary(cfg, result)
    out = capsys.readouterr().out
    assert "Not tracked (tracking=none)" in out and "test macro-F1" in out
    assert f"fraction error {result.metrics['oracle/frac_mae']:.3f}" in out


def test_evaluation_runs_in_the_trainers_precision(tmp_path, data_dir):
    """bf16-mixed (what trainer=gpu uses) reaches inference after fitting too: autocast is on in
    every forward pass of the evaluation, and the metrics stay finite."""
    import torch

    seen = []

    class Spy(Callback):
        def on_fit_end(self, trainer, pl_module):
            pl_module.net.register_forward_hook(
                lambda *_: seen.append(torch.is_autocast_enabled("cpu"))
            )

    cfg = compose_train(tmp_path, data_dir, "trainer.precision=bf16-mixed", "trainer.max_epochs=1")
    metrics, _ = train(cfg, callbacks=[Spy()])
    assert seen and all(seen)
    assert math.isfinite(metrics["test/f1_macro"]) and math.isfinite(metrics["test/ece"])


def test_the_demo_recipe_validates_saves_and_evaluates_its_averaged_weights(tmp_path, data_dir):
    """experiment=cpu_baseline averages the weights (EMA): the best checkpoint's state_dict is the
    average, not the last step's weights, and the run's test metrics are those of the average
    (re-evaluating the checkpoint, which reads state_dict, gives the same figures)."""
    import torch

    from nscfate.evaluation.checkpoint import evaluate_checkpoint

    cfg = compose_train(tmp_path, data_dir, "experiment=cpu_baseline", "trainer.max_epochs=3")
    metrics, objects = train(cfg)
    ckpt = torch.load(objects["best_checkpoint"], map_location="cpu", weights_only=True)
    averaged, last_step = ckpt["state_dict"], ckpt["current_model_state"]
    weights = [k for k in averaged if k.startswith("net.") and averaged[k].is_floating_point()]
    assert any(not torch.equal(averaged[k], last_step[k]) for k in weights)
    tested = objects["module"].state_dict()
    assert all(torch.equal(tested[k].cpu(), averaged[k]) for k in weights)
    again, _ = evaluate_checkpoint(objects["best_checkpoint"])
    assert again.metrics["test/f1_macro"] == pytest.approx(metrics["test/f1_macro"], abs=1e-6)
