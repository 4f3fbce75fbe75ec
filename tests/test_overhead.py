"""What a run costs besides training (issue 13): evaluation's inference copy, the batched EM, and
what a sweep worker keeps (or must not keep) from one trial to the next."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from nscfate.evaluation.evaluate import inference_copy, logits_and_features
from nscfate.models import create_model


@pytest.mark.parametrize("name", ["small_cnn", "nscnet"])
def test_the_inference_copy_computes_what_the_network_computes(name):
    torch.manual_seed(0)
    kwargs = {"width": 0.25, "middle_blocks": 1} if name == "nscnet" else {}
    net = create_model(name=name, num_classes=3, in_chans=1, pretrained=False, **kwargs)
    with torch.no_grad():  # batch-norm statistics that are not the identity
        for _ in range(3):
            net(torch.randn(16, 1, 32, 32) * 3 + 1)
    net.eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    copy = inference_copy(net)
    assert not any(type(m) is nn.BatchNorm2d for m in copy.modules())  # every one folded
    assert not copy.training
    x = torch.randn(8, 1, 32, 32)
    logits, features = logits_and_features(net, x)
    fast_logits, fast_features = logits_and_features(
        copy, x.contiguous(memory_format=torch.channels_last)
    )
    np.testing.assert_allclose(fast_logits, logits, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(fast_features, features, atol=1e-5, rtol=1e-5)
    # the trained network is untouched (its checkpoint and pyfunc weights are what it learned)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert any(type(m) is nn.BatchNorm2d for m in net.modules())


def test_batched_em_stops_each_problem_as_quapy_does_even_when_one_runs_to_the_limit():
    from quapy.method.aggregative import EMQ

    from nscfate.estimation.quantify import em_rounds

    rng = np.random.default_rng(7)
    priors = rng.dirichlet([3, 3, 3], 40)
    posteriors = rng.dirichlet([1, 1, 1], (40, 300))
    posteriors[3] = 1 / 3  # runs to EMQ.MAX_ITER while the others stop within tens of steps
    batched = em_rounds(priors, posteriors)
    for b in (0, 3, 17, 39):
        expected, _ = EMQ.EM(priors[b], posteriors[b])
        assert np.allclose(batched[b], expected, atol=1e-12), b


#: Runs a sweep in this process and, after every trial, counts what is still alive (without
#: collecting garbage itself: what waits for Python's next full collection holds memory too): the
#: objects a trial builds, open matplotlib figures, child processes.
_WORKER = """
import gc, json, sys
from pathlib import Path
import lightning as L
import matplotlib.pyplot as plt
from torch.utils.data import DataLoader
from nscfate.data.datamodule import CellDataModule
from nscfate.search import sweeper
from nscfate.training.module import FateClassifier

log, launch = Path(sys.argv[1]), sweeper.OptunaSweeper._launch

from benchmarks.sweep_overhead import child_processes as children

def counted(self, trial, *args, **kwargs):
    outcome = launch(self, trial, *args, **kwargs)
    alive = {t.__name__: sum(isinstance(o, t) for o in gc.get_objects())
             for t in (FateClassifier, L.Trainer, CellDataModule, DataLoader)}
    line = {"trial": trial.number, "state": outcome.state.name, "alive": alive,
            "figures": len(plt.get_fignums()), "children": children()}
    with log.open("a") as f:
        f.write(json.dumps(line) + "\\n")
    return outcome

sweeper.OptunaSweeper._launch = counted
sys.argv = ["nscfate-train", *sys.argv[2:]]
from nscfate.cli.train import main
main()
"""


@pytest.mark.slow  # a real two-trial sweep with loader workers: minutes on this machine
@pytest.mark.timeout(900)
def test_a_sweep_worker_keeps_nothing_of_its_finished_trials(tmp_path, data_dir):
    """Two trials in one worker process (loader workers on, as by default): after each, no
    LightningModule, Trainer, datamodule or DataLoader of it is alive (not even as garbage waiting
    for a collection), no figure is open and no loader worker process is left."""
    import json
    import subprocess
    import sys

    from .conftest import REPO, TINY_DATA

    log = tmp_path / "alive.jsonl"
    args = [
        "-m",
        "search=default",
        "optimizer.lr=tag(log,interval(1e-4,1e-2))",
        "search.n_trials=2",
        "search.pruner=none",
        f"search.storage=sqlite:///{tmp_path}/optuna.db",
        f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
        f"paths.data_dir={data_dir}",
        f"hydra.sweep.dir={tmp_path}/sweep",
        "trainer.max_epochs=1",
        *[o for o in TINY_DATA if "workers" not in o],  # loader workers as by default (2)
    ]
    proc = subprocess.run(
        [sys.executable, "-c", _WORKER, str(log), *args],
        cwd=REPO,  # the worker imports benchmarks.sweep_overhead
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [line["state"] for line in lines] == ["COMPLETE"] * 2
    for line in lines:
        assert line["alive"] == dict.fromkeys(line["alive"], 0), line
        assert line["figures"] == 0 and line["children"] == 0, line


def test_a_trial_that_cannot_be_promoted_logs_no_model_yet_promotion_builds_it(
    tmp_path, data_dir, monkeypatch
):
    """A sweep trial that is not the best so far (``promotable`` says no) logs neither the pyfunc
    model nor the held-out conditions' evaluation (``independent`` says no), but its test metrics,
    plots and checkpoint; naming it for promotion builds the model from its checkpoint, in the
    run's experiment and under its artifact root (not MLflow's Default experiment, whose root is
    ``./mlruns/0`` of whatever directory created the database), which predicts what the run's own
    evaluation predicted, and registers it."""
    import pandas as pd
    from mlflow import MlflowClient

    from nscfate.data.schema import CLASSES
    from nscfate.tracking.predict import load_model, resolve_model_uri
    from nscfate.tracking.pyfunc import DEFERRED, DEFERRED_MODEL_TAG, MODEL_URI_TAG
    from nscfate.tracking.registry import (
        best_run_of_experiment,
        candidate_from_run,
        promote,
        test_split_crops,
    )
    from nscfate.tracking.run import tracked_train

    from .conftest import compose_train

    cfg = compose_train(tmp_path, data_dir, "cam.per_group=1")
    result = tracked_train(
        cfg,
        promotable=lambda metrics: "val/f1_macro_best" not in metrics,
        independent=lambda fit: "val/f1_macro_best" not in fit,
    )
    import matplotlib.pyplot as plt

    assert plt.get_fignums() == []  # every figure the run drew was closed
    client = MlflowClient(cfg.tracking.uri)
    run = client.get_run(result.run_id)
    assert MODEL_URI_TAG not in run.data.tags and run.data.tags[DEFERRED_MODEL_TAG] == DEFERRED
    assert [a.path for a in client.list_artifacts(result.run_id, "checkpoints")]
    assert not {"model", "cam"} & {a.path for a in client.list_artifacts(result.run_id)}
    assert "test/f1_macro" in run.data.metrics and "test/ood_frac" in run.data.metrics
    assert not [k for k in run.data.metrics if k.startswith("indep/")]
    shown = {a.path for a in client.list_artifacts(result.run_id, "plots")}
    assert "plots/confusion_matrix.png" in shown and "plots/fate_fractions.png" not in shown

    # the best run of the experiment is still a candidate; naming it builds and logs its model
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # promotion from another directory writes nothing there
    candidate = best_run_of_experiment(client, "test", "test/f1_macro")
    assert candidate.run_id == result.run_id and candidate.model_uri.startswith("models:/")
    model = client.get_logged_model(candidate.model_uri.removeprefix("models:/"))
    experiment = client.get_experiment(run.info.experiment_id)
    assert model.experiment_id == run.info.experiment_id
    assert model.artifact_location.startswith(experiment.artifact_location)
    assert list(elsewhere.iterdir()) == []
    tags = client.get_run(result.run_id).data.tags
    assert tags[MODEL_URI_TAG] == candidate.model_uri and DEFERRED_MODEL_TAG not in tags
    assert resolve_model_uri(result.run_id, client) == candidate.model_uri
    assert candidate_from_run(client, result.run_id).model_uri == candidate.model_uri  # once

    crops, cells = test_split_crops(candidate)
    probs = load_model(candidate.model_uri).predict(crops.astype("float32"))
    logged = pd.read_csv(
        client.download_artifacts(result.run_id, "predictions/cells.csv", str(tmp_path))
    )
    expected = logged.set_index("source").loc[cells["source"], [f"p_{c}" for c in CLASSES]]
    np.testing.assert_allclose(probs[list(CLASSES)].to_numpy(), expected.to_numpy(), atol=1e-5)

    decision = promote(client, "deferred", candidate, "test/f1_macro", 0.0, False)
    assert decision.promoted and str(decision.challenger.version) == "1"


def test_only_a_trial_that_beats_every_complete_one_could_be_promoted():
    import optuna

    from nscfate.search.trial import could_be_best

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for direction, better, worse in (("maximize", 0.9, 0.5), ("minimize", 0.5, 0.9)):
        study = optuna.create_study(direction=direction)
        first = study.ask()
        assert could_be_best(study, first, 0.7)  # nothing complete yet
        study.tell(first, 0.7)
        trial = study.ask()
        assert could_be_best(study, trial, better)
        assert not could_be_best(study, trial, worse)
        assert could_be_best(study, trial, 0.7)  # a tie: either may be called the best
        assert not could_be_best(study, trial, float("nan"))
        assert not could_be_best(study, trial, None)
